//! `meshlink install`: the manifests of the two charts in `charts/` (control plane
//! `meshlink`, and `meshlink-multicluster`) for `kubectl apply -f -`, plus their
//! two Namespaces: `-n` (default `meshlink`) and `--multicluster-namespace`
//! (default `<-n>-multicluster`), as `helm template -n` would place them. The chart files (values, HA values, CRDs) are embedded, and
//! the templates are mirrored here object by object; `multicluster-tests/tests/
//! charts.rs` asserts this output equals `helm template` for the same values, so
//! a change to one side without the other fails a test.

mod schema;
mod values;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::{DEFAULT_CONTROL_PLANE_NAMESPACE, GlobalArgs, InstallArgs};
use crate::error::CliError;
use crate::output;

/// The multicluster chart's value naming the control plane's namespace, which
/// `install` takes from `-n`.
const CONTROL_PLANE_NAMESPACE_KEY: &str = "controlPlaneNamespace";

/// The charts' `appVersion`, which is the workspace version.
const APP_VERSION: &str = env!("CARGO_PKG_VERSION");

const CP_VALUES: &str = include_str!("../../charts/meshlink/values.yaml");
const CP_VALUES_HA: &str = include_str!("../../charts/meshlink/values-ha.yaml");
const MC_VALUES: &str = include_str!("../../charts/meshlink-multicluster/values.yaml");
const MC_VALUES_HA: &str = include_str!("../../charts/meshlink-multicluster/values-ha.yaml");
const CP_SCHEMA: &str = include_str!("../../charts/meshlink/values.schema.json");
const MC_SCHEMA: &str = include_str!("../../charts/meshlink-multicluster/values.schema.json");
/// The Link CRD as the multicluster chart ships it (a test keeps it equal to api/crds).
pub const LINK_CRD: &str = include_str!("../../charts/meshlink-multicluster/crds/link.yaml");

/// Runs `install`: renders without contacting any cluster.
pub fn run(args: &InstallArgs, global: &GlobalArgs) -> Result<String, CliError> {
    output::manifest_format(global.output)?;
    let objects = render(args, global.namespace.as_deref()).map_err(CliError::Usage)?;
    output::manifests(&objects, global.output)
}

/// Where the two charts render.
struct Namespaces {
    control_plane: String,
    multicluster: String,
}

impl Namespaces {
    /// `-n` (default `meshlink`) and `--multicluster-namespace` (default
    /// `<control plane>-multicluster`), both checked to be namespace names.
    fn resolve(namespace: Option<&str>, multicluster: Option<&str>) -> Result<Self, String> {
        let control_plane = namespace.unwrap_or(DEFAULT_CONTROL_PLANE_NAMESPACE);
        let (multicluster, source) = match multicluster {
            Some(name) => (name.to_owned(), "--multicluster-namespace"),
            None => (
                format!("{control_plane}-multicluster"),
                "--multicluster-namespace (derived from -n; pass it shorter)",
            ),
        };
        for (flag, name) in [("-n", control_plane), (source, &multicluster)] {
            if !api::link::is_dns_label(name) {
                return Err(format!(
                    "{flag}: namespace {name:?} is not a DNS label (at most 63 lowercase letters, digits and '-', starting and ending alphanumeric)"
                ));
            }
        }
        if control_plane == multicluster {
            return Err(format!(
                "-n and --multicluster-namespace are both {multicluster:?}; the charts need two namespaces"
            ));
        }
        Ok(Self {
            control_plane: control_plane.to_owned(),
            multicluster,
        })
    }
}

/// Every object, Namespaces and CRDs first so `kubectl apply -f -` succeeds in
/// one go; `namespace_flag` is `-n`.
pub fn render(args: &InstallArgs, namespace_flag: Option<&str>) -> Result<Vec<Value>, String> {
    let ns = Namespaces::resolve(namespace_flag, args.multicluster_namespace.as_deref())?;
    let (cp, mc) = chart_values(args, &ns)?;
    let cp: ControlPlane = typed("meshlink", CP_SCHEMA, cp)?;
    let mc: Multicluster = typed("meshlink-multicluster", MC_SCHEMA, mc)?;
    let mut objects = vec![namespace(&ns.control_plane), namespace(&ns.multicluster)];
    objects.push(serde_yaml_ng::from_str(LINK_CRD).map_err(|e| format!("Link CRD: {e}"))?);
    objects.extend(control_plane(&cp, &ns.control_plane));
    objects.extend(multicluster(&mc, &ns.multicluster));
    Ok(objects)
}

/// Defaults, then the HA files, then the control plane's namespace (the
/// multicluster chart's `controlPlaneNamespace`), `--gateway` and `--set` (each
/// applied to the charts that have its top-level key).
fn chart_values(args: &InstallArgs, ns: &Namespaces) -> Result<(Value, Value), String> {
    let mut cp = values::parse_yaml("meshlink/values.yaml", CP_VALUES)?;
    let mut mc = values::parse_yaml("meshlink-multicluster/values.yaml", MC_VALUES)?;
    if args.ha {
        values::merge(
            &mut cp,
            &values::parse_yaml("meshlink/values-ha.yaml", CP_VALUES_HA)?,
        );
        let ha = values::parse_yaml("meshlink-multicluster/values-ha.yaml", MC_VALUES_HA)?;
        values::merge(&mut mc, &ha);
    }
    let mut user = Vec::new();
    for text in &args.set {
        user.extend(values::parse_set(text)?);
    }
    if user.iter().any(|a| a.root() == CONTROL_PLANE_NAMESPACE_KEY) {
        return Err(format!(
            "--set {CONTROL_PLANE_NAMESPACE_KEY}: install puts the control plane in -n's namespace and sets it from there; use -n"
        ));
    }
    let mut assignments = values::parse_set(&format!(
        "{CONTROL_PLANE_NAMESPACE_KEY}={}",
        ns.control_plane
    ))?;
    if !args.gateway {
        assignments.extend(values::parse_set("gateway.enabled=false")?);
    }
    assignments.extend(user);
    for a in &assignments {
        let mut known = false;
        for chart in [&mut cp, &mut mc] {
            if chart.get(a.root()).is_some() {
                values::apply(chart, a)?;
                known = true;
            }
        }
        if !known {
            return Err(format!(
                "--set {}: neither chart has a value {:?} (see charts/*/values.yaml)",
                a.root(),
                a.root()
            ));
        }
    }
    Ok((cp, mc))
}

/// `values` checked against the chart's `values.schema.json` (as helm does),
/// then read into the chart's value types.
fn typed<T: serde::de::DeserializeOwned>(
    chart: &str,
    schema: &str,
    values: Value,
) -> Result<T, String> {
    let schema: Value = serde_json::from_str(schema)
        .map_err(|e| format!("chart file {chart}/values.schema.json: {e}"))?;
    schema::validate(&schema, &values).map_err(|e| {
        format!("values of chart {chart}: {e}; see charts/{chart}/values.schema.json")
    })?;
    serde_json::from_value(values).map_err(|e| format!("values of chart {chart}: {e}"))
}

// The value types: what the templates read. The schema has already refused
// unknown and mistyped values, so these only give them Rust types.

/// Values both charts have.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Common {
    cluster_domain: String,
    log_level: String,
    log_format: String,
    image: Image,
    enable_pod_anti_affinity: bool,
    pod_security_context: Value,
    security_context: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Image {
    registry: String,
    tag: String,
    pull_policy: String,
}

/// Values every component (controller, gateway, mirror) has.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Workload {
    replicas: i64,
    resources: Value,
    pod_disruption_budget: Pdb,
    node_selector: Value,
    tolerations: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pdb {
    enabled: bool,
    max_unavailable: Value,
}

/// Values of the `meshlink` chart.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ControlPlane {
    #[serde(flatten)]
    common: Common,
    cluster_name: String,
    controller: Controller,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Controller {
    #[serde(flatten)]
    workload: Workload,
    discovery_port: u16,
    admin_port: u16,
    zone_costs_config_map: String,
    identity: ControllerIdentity,
}

/// The controller's identity service; off while `issuer_secret` is empty.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ControllerIdentity {
    issuer_secret: String,
    trust_domain: String,
    port: u16,
    lifetime_seconds: u64,
}

/// Values of the `meshlink-multicluster` chart.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Multicluster {
    #[serde(flatten)]
    common: Common,
    identity_trust_domain: String,
    control_plane_namespace: String,
    gateway: Gateway,
    mirror: Mirror,
    links: Vec<LinkEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Gateway {
    #[serde(flatten)]
    workload: Workload,
    enabled: bool,
    port: u16,
    probe_port: u16,
    admin_port: u16,
    service_type: String,
    service_annotations: Value,
    identity_secret: String,
    balance_policy: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mirror {
    #[serde(flatten)]
    workload: Workload,
    lease_duration_seconds: u64,
    identity_secret: String,
    admin_port: u16,
}

#[derive(Debug, Deserialize)]
struct LinkEntry {
    name: String,
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// Which chart renders, for labels and images (`_helpers.tpl` of each chart).
struct Ctx<'a> {
    chart: &'a str,
    namespace: &'a str,
    common: &'a Common,
}

impl Ctx<'_> {
    fn selector(&self, component: &str) -> Value {
        json!({"app.kubernetes.io/name": self.chart, "app.kubernetes.io/component": component})
    }

    fn labels(&self, component: &str) -> Value {
        let mut labels = self.selector(component);
        labels["app.kubernetes.io/part-of"] = "meshlink".into();
        labels["app.kubernetes.io/version"] = APP_VERSION.into();
        labels
    }

    fn meta(&self, name: &str, labels: &Value) -> Value {
        json!({"name": name, "namespace": self.namespace, "labels": labels})
    }

    fn image(&self, component: &str) -> String {
        let image = &self.common.image;
        let tag = if image.tag.is_empty() {
            APP_VERSION
        } else {
            &image.tag
        };
        format!("{}/{component}:{tag}", image.registry)
    }

    /// The container fields every component shares.
    fn container(&self, name: &str, args: Vec<String>, resources: &Value) -> Value {
        let mut env = vec![
            json!({"name": "RUST_LOG", "value": self.common.log_level}),
            json!({"name": "MESHLINK_LOG_FORMAT", "value": self.common.log_format}),
        ];
        if name == "mirror" {
            let field = |n: &str, path: &str| json!({"name": n, "valueFrom": {"fieldRef": {"fieldPath": path}}});
            env.splice(
                0..0,
                [
                    field("POD_NAMESPACE", "metadata.namespace"),
                    field("POD_NAME", "metadata.name"),
                ],
            );
        }
        json!({
            "name": name,
            "image": self.image(name),
            "imagePullPolicy": self.common.image.pull_policy,
            "args": args,
            "env": env,
            "resources": resources,
            "securityContext": self.common.security_context,
        })
    }

    /// The pod spec fields every component shares (`mc.affinity`, `with` blocks).
    fn pod_spec(&self, account: &str, selector: &Value, w: &Workload) -> Value {
        let mut spec = json!({
            "serviceAccountName": account,
            "securityContext": self.common.pod_security_context,
        });
        if self.common.enable_pod_anti_affinity {
            let term =
                |key: &str| json!({"labelSelector": {"matchLabels": selector}, "topologyKey": key});
            spec["affinity"] = json!({"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [term("kubernetes.io/hostname")],
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": term("topology.kubernetes.io/zone")}
                ],
            }});
        }
        if truthy(&w.node_selector) {
            spec["nodeSelector"] = w.node_selector.clone();
        }
        if truthy(&w.tolerations) {
            spec["tolerations"] = w.tolerations.clone();
        }
        spec
    }

    /// The Deployment of `pod`, and its PodDisruptionBudget when enabled.
    fn deployment_and_pdb(
        &self,
        name: &str,
        w: &Workload,
        labels: &Value,
        selector: &Value,
        pod: Value,
    ) -> Vec<Value> {
        let mut objects = vec![json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": self.meta(name, labels),
            "spec": {
                "replicas": w.replicas,
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        })];
        let pdb = &w.pod_disruption_budget;
        if pdb.enabled {
            objects.push(json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": self.meta(name, labels),
                "spec": {"maxUnavailable": pdb.max_unavailable, "selector": {"matchLabels": selector}},
            }));
        }
        objects
    }

    fn service_account(&self, name: &str, labels: &Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": self.meta(name, labels)})
    }
}

/// Go templates' truthiness for `with`: empty maps, lists, strings and null are false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
    }
}

fn probe(path: &str, port: &str) -> Value {
    json!({"httpGet": {"path": path, "port": port}})
}

fn port(name: &str, number: u16) -> Value {
    json!({"name": name, "containerPort": number})
}

fn rule(group: &str, resource: &str, verbs: &[&str]) -> Value {
    json!({"apiGroups": [group], "resources": [resource], "verbs": verbs})
}

/// A Role or ClusterRole (`kind`) granting `rules`, and its binding of the same
/// name to ServiceAccount `account` in `account_ns`; both carry `meta`.
fn role_and_binding(
    kind: &str,
    meta: &Value,
    rules: Value,
    account: &str,
    account_ns: &str,
) -> [Value; 2] {
    const RBAC: &str = "rbac.authorization.k8s.io";
    [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": format!("{kind}Binding"), "metadata": meta,
            "roleRef": {"apiGroup": RBAC, "kind": kind, "name": meta["name"]},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": account_ns}],
        }),
    ]
}

impl Ctx<'_> {
    /// ServiceAccount `name` with a ClusterRole `<name>-<namespace>` granting
    /// `cluster_rules` and a Role `name` (in this namespace) granting `rules`,
    /// each bound to it. The cluster-scoped names carry the namespace, so
    /// installs in two namespaces of one cluster do not overwrite each other's.
    fn account_with_roles(
        &self,
        name: &str,
        labels: &Value,
        cluster_rules: Value,
        rules: Value,
    ) -> Vec<Value> {
        let cluster_name = format!("{name}-{}", self.namespace);
        let cluster_meta = json!({"name": cluster_name, "labels": labels});
        let mut objects = vec![self.service_account(name, labels)];
        objects.extend(role_and_binding(
            "ClusterRole",
            &cluster_meta,
            cluster_rules,
            name,
            self.namespace,
        ));
        let meta = self.meta(name, labels);
        objects.extend(role_and_binding("Role", &meta, rules, name, self.namespace));
        objects
    }
}

/// The `meshlink` chart's templates.
fn control_plane(v: &ControlPlane, namespace: &str) -> Vec<Value> {
    let ctx = Ctx {
        chart: "meshlink",
        namespace,
        common: &v.common,
    };
    let c = &v.controller;
    let name = "meshlink-controller";
    let labels = ctx.labels("controller");
    let selector = ctx.selector("controller");
    let mut pod = ctx.pod_spec(name, &selector, &c.workload);
    let mut args = vec![
        format!("--cluster-name={}", v.cluster_name),
        format!("--cluster-domain={}", v.common.cluster_domain),
        format!("--discovery-addr=0.0.0.0:{}", c.discovery_port),
        format!("--admin-addr=0.0.0.0:{}", c.admin_port),
        format!(
            "--zone-costs-configmap={}/{}",
            ctx.namespace, c.zone_costs_config_map
        ),
    ];
    let id = &c.identity;
    let identity = !id.issuer_secret.is_empty();
    if identity {
        let dir = "/var/run/meshlink/identity-issuer";
        args.extend([
            format!("--identity-addr=0.0.0.0:{}", id.port),
            format!("--identity-issuer-cert={dir}/tls.crt"),
            format!("--identity-issuer-key={dir}/tls.key"),
            format!("--identity-trust-anchors={dir}/ca.crt"),
            format!("--trust-domain={}", id.trust_domain),
            format!(
                "--identity-server-id=spiffe://{}/ns/{}/sa/{name}",
                id.trust_domain, ctx.namespace
            ),
            format!("--identity-lifetime-secs={}", id.lifetime_seconds),
        ]);
    }
    let mut container = ctx.container("controller", args, &c.workload.resources);
    let mut ports = vec![port("grpc", c.discovery_port), port("admin", c.admin_port)];
    let mut service_ports = vec![
        json!({"name": "grpc", "port": c.discovery_port, "targetPort": "grpc", "appProtocol": "grpc"}),
        json!({"name": "admin", "port": c.admin_port, "targetPort": "admin"}),
    ];
    if identity {
        ports.push(port("identity", id.port));
        service_ports.push(json!({"name": "identity", "port": id.port, "targetPort": "identity"}));
        let (mount, volume) = secret_volume("identity-issuer", &id.issuer_secret);
        container["volumeMounts"] = mount;
        pod["volumes"] = volume;
    }
    container["ports"] = Value::Array(ports);
    container["readinessProbe"] = probe("/ready", "admin");
    container["livenessProbe"] = probe("/live", "admin");
    pod["containers"] = json!([container]);
    let read = ["get", "list", "watch"];
    let cluster_rules = json!([
        {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": read},
        rule("discovery.k8s.io", "endpointslices", &read),
        rule("split.smi-spec.io", "trafficsplits", &["get", "list", "watch", "patch"]),
        rule("events.k8s.io", "events", &["create", "patch"]),
        rule("authentication.k8s.io", "tokenreviews", &["create"]),
    ]);
    let rules = json!([rule("", "configmaps", &read)]);
    let mut objects = ctx.account_with_roles(name, &labels, cluster_rules, rules);
    objects.push(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": ctx.meta(name, &labels),
        "spec": {"type": "ClusterIP", "selector": selector, "ports": service_ports},
    }));
    objects.extend(ctx.deployment_and_pdb(name, &c.workload, &labels, &selector, pod));
    objects
}

/// The `meshlink-multicluster` chart's templates (CRDs are added by [`render`]).
fn multicluster(v: &Multicluster, namespace: &str) -> Vec<Value> {
    let ctx = Ctx {
        chart: "meshlink-multicluster",
        namespace,
        common: &v.common,
    };
    let mut objects = Vec::new();
    if v.gateway.enabled {
        objects.extend(gateway(&ctx, v));
    }
    if !v.links.is_empty() {
        objects.extend(mirror_rbac(&ctx));
    }
    for link in &v.links {
        objects.extend(mirror(&ctx, &v.mirror, &link.name));
    }
    objects
}

fn identity_volume(secret: &str) -> (Value, Value) {
    secret_volume("identity", secret)
}

/// A read-only mount of Secret `secret` at `/var/run/meshlink/<name>`, and its volume.
fn secret_volume(name: &str, secret: &str) -> (Value, Value) {
    let path = format!("/var/run/meshlink/{name}");
    let mount = json!([{"name": name, "mountPath": path, "readOnly": true}]);
    let volume = json!([{"name": name, "secret": {"secretName": secret}}]);
    (mount, volume)
}

fn gateway(ctx: &Ctx<'_>, v: &Multicluster) -> Vec<Value> {
    let g = &v.gateway;
    let name = "meshlink-gateway";
    let labels = ctx.labels("gateway");
    let selector = ctx.selector("gateway");
    let mut annotations = json!({
        api::labels::ENDPOINT_IDENTITY:
            format!("spiffe://{}/ns/{}/sa/{name}", v.identity_trust_domain, ctx.namespace),
    });
    if let (Value::Object(extra), Some(map)) = (&g.service_annotations, annotations.as_object_mut())
    {
        map.extend(extra.clone());
    }
    let mut service_meta = ctx.meta(name, &labels);
    service_meta["annotations"] = annotations;
    let domain = &v.common.cluster_domain;
    let mut args = vec![
        format!("--addr=0.0.0.0:{}", g.port),
        format!("--admin-addr=0.0.0.0:{}", g.admin_port),
        format!("--probe-addr=0.0.0.0:{}", g.probe_port),
        format!("--cluster-domain={domain}"),
        format!(
            "--discovery-addr=meshlink-controller.{}.svc.{domain}:8086",
            v.control_plane_namespace
        ),
        "--tls-cert=/var/run/meshlink/identity/tls.crt".into(),
        "--tls-key=/var/run/meshlink/identity/tls.key".into(),
        "--tls-trust=/var/run/meshlink/identity/ca.crt".into(),
    ];
    if !g.balance_policy.is_empty() {
        args.push(format!("--balance-policy={}", g.balance_policy));
    }
    let mut container = ctx.container("gateway", args, &g.workload.resources);
    container["ports"] = json!([
        port("mc-gateway", g.port),
        port("mc-probe", g.probe_port),
        port("admin", g.admin_port),
    ]);
    container["readinessProbe"] = probe("/ready", "admin");
    container["livenessProbe"] = probe("/live", "admin");
    let (mount, volume) = identity_volume(&g.identity_secret);
    container["volumeMounts"] = mount;
    let mut pod = ctx.pod_spec(name, &selector, &g.workload);
    pod["containers"] = json!([container]);
    pod["volumes"] = volume;
    let mut objects = vec![
        ctx.service_account(name, &labels),
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": service_meta,
            "spec": {"type": g.service_type, "selector": selector, "ports": [
                {"name": "mc-gateway", "port": g.port, "targetPort": "mc-gateway"},
                {"name": "mc-probe", "port": g.probe_port, "targetPort": "mc-probe"},
            ]},
        }),
    ];
    objects.extend(ctx.deployment_and_pdb(name, &g.workload, &labels, &selector, pod));
    objects
}

fn mirror_rbac(ctx: &Ctx<'_>) -> Vec<Value> {
    let name = "meshlink-mirror";
    let labels = ctx.labels("mirror");
    let rules = json!([
        rule("multicluster.meshlink.io", "links", &["get", "list", "watch", "patch", "update"]),
        rule("multicluster.meshlink.io", "links/status", &["get", "patch", "update"]),
        rule("", "secrets", &["get", "list", "watch"]),
        rule("coordination.k8s.io", "leases", &["get", "create", "update", "patch"]),
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]);
    let write = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let cluster_rules = json!([
        rule("", "services", &write),
        rule("discovery.k8s.io", "endpointslices", &write),
        rule("", "namespaces", &["get", "list", "watch", "create"]),
    ]);
    ctx.account_with_roles(name, &labels, cluster_rules, rules)
}

fn mirror(ctx: &Ctx<'_>, m: &Mirror, link: &str) -> Vec<Value> {
    let name = format!("meshlink-mirror-{link}");
    let mut labels = ctx.labels("mirror");
    let mut selector = ctx.selector("mirror");
    labels["multicluster.meshlink.io/link"] = link.into();
    selector["multicluster.meshlink.io/link"] = link.into();
    let args = vec![
        format!("--link={link}"),
        format!("--admin-addr=0.0.0.0:{}", m.admin_port),
        "--identity-dir=/var/run/meshlink/identity".into(),
        format!("--lease-duration-secs={}", m.lease_duration_seconds),
    ];
    let mut container = ctx.container("mirror", args, &m.workload.resources);
    container["ports"] = json!([port("admin", m.admin_port)]);
    container["readinessProbe"] = probe("/ready", "admin");
    container["livenessProbe"] = probe("/live", "admin");
    let (mount, volume) = identity_volume(&m.identity_secret);
    container["volumeMounts"] = mount;
    let mut pod = ctx.pod_spec("meshlink-mirror", &selector, &m.workload);
    pod["containers"] = json!([container]);
    pod["volumes"] = volume;
    ctx.deployment_and_pdb(&name, &m.workload, &labels, &selector, pod)
}

#[cfg(test)]
mod tests;
