//go:build tools

// Package tools pins the helm command the harness builds. It is its own module so
// helm's Kubernetes library versions never have to agree with kube-apiserver's.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
