//! The multi-cluster test harness: several real clusters on one machine (a real
//! kube-apiserver and etcd per cluster, network namespaces for cluster networks),
//! processes started as pods, the end-to-end tests, the demo and the benchmarks.
