//! The pure half of `meshlink link`: from what was read off the target cluster
//! (gateway Service, server URL, CA, token) to the Link and credentials Secret for
//! the source cluster. No I/O, so golden tests pin the exact output.

use std::collections::BTreeMap;

use api::labels;
use api::link::{Link, LinkSpec};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Node, Secret, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use serde_json::{Value, json};

/// Name of the gateway Service port carrying mTLS traffic.
pub const GATEWAY_PORT_NAME: &str = "mc-gateway";
/// Name of the gateway Service port serving probes.
pub const PROBE_PORT_NAME: &str = "mc-probe";

/// Where the source cluster reaches the target's gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// IPs or DNS names.
    pub addresses: Vec<String>,
    /// mTLS port.
    pub port: u16,
    /// Probe port.
    pub probe_port: u16,
    /// SPIFFE identity the gateway presents, if known.
    pub identity: Option<String>,
}

/// Reads the gateway's addresses and ports off its Service: LoadBalancer ingress
/// with the service ports, or node addresses with the node ports (the node port
/// then serves both traffic and probes on its own number). `Err` is the reason,
/// completed by the caller with the Service's name.
pub fn gateway_from_service(service: &Service, nodes: &[Node]) -> Result<Gateway, String> {
    let spec = service.spec.clone().unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let find = |name: &str, default: u16| {
        ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .or_else(|| ports.iter().find(|p| p.port == i32::from(default)))
    };
    let traffic = find(GATEWAY_PORT_NAME, api::link::DEFAULT_GATEWAY_PORT)
        .ok_or_else(|| format!("has no port named {GATEWAY_PORT_NAME} or numbered 4143"))?;
    let probe = find(PROBE_PORT_NAME, api::link::DEFAULT_PROBE_PORT);
    let (addresses, port, probe_port) = match spec.type_.as_deref() {
        Some("LoadBalancer") => {
            let probe_port =
                probe.map_or(Ok(api::link::DEFAULT_PROBE_PORT), |p| port_number(p.port));
            (
                ingress_addresses(service)?,
                port_number(traffic.port)?,
                probe_port?,
            )
        }
        Some("NodePort") => {
            let addresses = node_addresses(nodes);
            if addresses.is_empty() {
                return Err("is a NodePort but no Node has an address".into());
            }
            let port = node_port(traffic)?;
            (addresses, port, probe.map_or(Ok(port), node_port)?)
        }
        other => {
            let type_ = other.unwrap_or("ClusterIP");
            return Err(format!(
                "is of type {type_} (need LoadBalancer or NodePort)"
            ));
        }
    };
    let annotations = service.metadata.annotations.as_ref();
    Ok(Gateway {
        addresses,
        port,
        probe_port,
        identity: annotations.and_then(|a| a.get(labels::ENDPOINT_IDENTITY).cloned()),
    })
}

fn ingress_addresses(service: &Service) -> Result<Vec<String>, String> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    let addresses: Vec<String> = ingress
        .into_iter()
        .filter_map(|i| i.ip.or(i.hostname))
        .collect();
    if addresses.is_empty() {
        return Err("is a LoadBalancer without ingress addresses yet".into());
    }
    Ok(addresses)
}

fn node_port(port: &ServicePort) -> Result<u16, String> {
    port.node_port
        .ok_or_else(|| format!("port {} has no nodePort assigned", port.port))
        .and_then(port_number)
}

fn port_number(port: i32) -> Result<u16, String> {
    u16::try_from(port).map_err(|_| format!("port {port} is out of range"))
}

/// External addresses of every Node, else their internal ones.
fn node_addresses(nodes: &[Node]) -> Vec<String> {
    let of_type = |kind: &str| -> Vec<String> {
        nodes
            .iter()
            .filter_map(|n| n.status.as_ref()?.addresses.clone())
            .flatten()
            .filter(|a| a.type_ == kind)
            .map(|a| a.address)
            .collect()
    };
    let external = of_type("ExternalIP");
    if external.is_empty() {
        of_type("InternalIP")
    } else {
        external
    }
}

/// Parses a label selector: `k=v`, `k==v`, `k!=v`, `k` and `!k`, comma-separated.
pub fn parse_selector(text: &str) -> Result<LabelSelector, String> {
    let mut match_labels = BTreeMap::new();
    let mut expressions = Vec::new();
    let requirement = |key: &str, operator: &str, values: Option<&str>| LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: values.map(|v| vec![v.to_owned()]),
    };
    for term in text.split(',').map(str::trim) {
        if let Some((k, v)) = term.split_once("!=") {
            expressions.push(requirement(k.trim(), "NotIn", Some(v.trim())));
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            match_labels.insert(k.trim().to_owned(), v.trim().to_owned());
        } else if let Some(k) = term.strip_prefix('!') {
            expressions.push(requirement(k.trim(), "DoesNotExist", None));
        } else {
            expressions.push(requirement(term, "Exists", None));
        }
    }
    let keys = match_labels
        .keys()
        .chain(expressions.iter().map(|e| &e.key));
    if let Some(bad) = keys
        .into_iter()
        .find(|k| k.is_empty() || k.contains(char::is_whitespace))
    {
        return Err(format!("invalid selector {text:?}: bad key {bad:?}"));
    }
    Ok(LabelSelector {
        match_labels: (!match_labels.is_empty()).then_some(match_labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    })
}

/// Parses `<n>s`, `<n>m`, `<n>h` or `<n>d` into seconds; `flag` names the flag
/// in the error.
pub fn parse_duration(flag: &str, text: &str) -> Result<i64, String> {
    let bad = || format!("invalid {flag} {text:?}: use e.g. 3600s, 90m, 24h or 365d");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).filter(|s| *s >= 0).ok_or_else(bad)
}

/// A token lifetime: a duration of at least 10 minutes, the TokenRequest minimum.
pub fn parse_ttl(text: &str) -> Result<i64, String> {
    let seconds = parse_duration("--token-ttl", text)?;
    if seconds < 600 {
        return Err(format!("--token-ttl {text:?} is under the 10m minimum"));
    }
    Ok(seconds)
}

/// What the rendered Link says, besides the credentials.
#[derive(Clone, Debug)]
pub struct LinkPlan {
    /// Target cluster name; also the Link's name.
    pub cluster_name: String,
    /// Namespace of the Link and Secret in the source cluster.
    pub namespace: String,
    /// Target cluster DNS domain.
    pub cluster_domain: String,
    /// The target's gateway.
    pub gateway: Gateway,
    /// Services to mirror through the gateway; `None` keeps the CRD default.
    pub selector: Option<LabelSelector>,
    /// The target's trust roots (PEM), when they differ from the source's.
    pub trust_bundle: Option<String>,
}

impl LinkPlan {
    /// Name of the credentials Secret.
    pub fn secret_name(&self) -> String {
        format!("link-{}-credentials", self.cluster_name)
    }

    /// The Link object, validated.
    pub fn link(&self) -> Result<Link, String> {
        // Deserializing applies the CRD's defaults (probe, selectors) in one place.
        let mut spec: LinkSpec = serde_json::from_value(json!({
            "targetClusterName": self.cluster_name,
            "credentialsSecret": self.secret_name(),
        }))
        .map_err(|e| format!("building the Link: {e}"))?;
        spec.target_cluster_domain = self.cluster_domain.clone();
        spec.gateway_addresses = self.gateway.addresses.clone();
        spec.gateway_port = self.gateway.port;
        spec.probe.port = self.gateway.probe_port;
        spec.gateway_identity = self.gateway.identity.clone();
        spec.remote_trust_bundle.clone_from(&self.trust_bundle);
        if let Some(selector) = &self.selector {
            spec.selector = selector.clone();
        }
        spec.validate().map_err(|e| e.to_string())?;
        let mut link = Link::new(&self.cluster_name, spec);
        link.metadata = self.meta(&self.cluster_name);
        Ok(link)
    }

    /// The Secret holding `kubeconfig` for the target cluster.
    pub fn secret(&self, kubeconfig: &str) -> Secret {
        Secret {
            metadata: self.meta(&self.secret_name()),
            type_: Some(labels::REMOTE_KUBECONFIG_SECRET_TYPE.to_owned()),
            data: Some(BTreeMap::from([(
                labels::REMOTE_KUBECONFIG_KEY.to_owned(),
                ByteString(kubeconfig.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(BTreeMap::from([(
                labels::CLUSTER_NAME.to_owned(),
                self.cluster_name.clone(),
            )])),
            ..ObjectMeta::default()
        }
    }
}

/// A kubeconfig that reaches `server` with bearer `token`, trusting `ca_pem` (or
/// the system roots when the target's kubeconfig named no CA).
pub fn token_kubeconfig(cluster: &str, server: &str, ca_pem: Option<&str>, token: &str) -> String {
    let mut cluster_entry = json!({"server": server});
    if let Some(ca) = ca_pem {
        cluster_entry["certificate-authority-data"] = Value::from(BASE64.encode(ca));
    }
    let user = format!("meshlink-mirror@{cluster}");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": cluster_entry}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    });
    // A Value of strings and arrays always serializes.
    serde_yaml_ng::to_string(&config).unwrap_or_default()
}

/// Checks that `text` is one or more PEM certificates whose bodies are base64.
pub fn check_pem_bundle(text: &str) -> Result<(), String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut rest = text.trim();
    let mut count = 0;
    while !rest.is_empty() {
        let body = rest
            .strip_prefix(BEGIN)
            .ok_or_else(|| format!("expected {BEGIN} after {count} certificate(s)"))?;
        let (body, after) = body
            .split_once(END)
            .ok_or_else(|| format!("certificate {} has no {END}", count + 1))?;
        let compact: String = body.split_whitespace().collect();
        BASE64
            .decode(compact)
            .map_err(|e| format!("certificate {} is not base64: {e}", count + 1))?;
        count += 1;
        rest = after.trim_start();
    }
    if count == 0 {
        return Err("no certificate found".into());
    }
    Ok(())
}

/// DER certificates as one PEM bundle.
pub fn pem_bundle(ders: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = BASE64.encode(der);
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

#[cfg(test)]
mod tests;
