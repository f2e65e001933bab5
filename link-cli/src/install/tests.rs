use super::*;
use crate::golden;

fn args(gateway: bool, ha: bool, set: &[&str]) -> InstallArgs {
    InstallArgs {
        gateway,
        ha,
        multicluster_namespace: None,
        set: set.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Renders into the default namespaces (no `-n`).
fn render(args: &InstallArgs) -> Result<Vec<Value>, String> {
    super::render(args, None)
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn default_install_matches_golden() {
    let objects = render(&args(true, false, &["links[0].name=east"])).unwrap();
    // The CRD is api/crds/link.yaml (see below); the golden holds everything else.
    assert_eq!(objects[2]["kind"], "CustomResourceDefinition");
    let rest: Vec<Value> = objects
        .into_iter()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
        .collect();
    golden::check("install.yaml", &output::manifests(&rest, None).unwrap());
}

#[test]
fn chart_crd_is_the_api_crd() {
    let api = include_str!("../../../api/crds/link.yaml");
    assert!(
        LINK_CRD == api,
        "charts/meshlink-multicluster/crds/link.yaml differs from api/crds/link.yaml: copy it over"
    );
}

#[test]
fn gateway_false_drops_only_the_gateway() {
    let with = kinds(&render(&args(true, false, &[])).unwrap());
    let without = kinds(&render(&args(false, false, &[])).unwrap());
    let dropped: Vec<_> = with.iter().filter(|k| !without.contains(k)).collect();
    assert_eq!(
        dropped,
        [
            "ServiceAccount/meshlink-gateway",
            "Service/meshlink-gateway",
            "Deployment/meshlink-gateway"
        ]
    );
    assert!(without.contains(&"Deployment/meshlink-controller".to_owned()));
}

#[test]
fn every_container_is_locked_down_and_bounded() {
    let objects = render(&args(true, true, &["links={}", "links[0].name=east"])).unwrap();
    let deployments: Vec<_> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .collect();
    assert_eq!(deployments.len(), 3, "{:?}", kinds(&objects));
    for d in deployments {
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert!(
            pod["affinity"]["podAntiAffinity"].is_object(),
            "HA spreads {}",
            d["metadata"]["name"]
        );
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert!(c["resources"]["limits"]["memory"].is_string());
            assert!(c["resources"]["requests"]["cpu"].is_string());
        }
    }
    let pdbs = objects
        .iter()
        .filter(|o| o["kind"] == "PodDisruptionBudget")
        .count();
    assert_eq!(pdbs, 3);
}

#[test]
fn set_reaches_each_chart_with_the_key_and_refuses_unknown_keys() {
    let objects = render(&args(
        true,
        false,
        &["image.tag=dev", "controller.replicas=2"],
    ))
    .unwrap();
    let images: Vec<_> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .map(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        images,
        [
            "ghcr.io/meshlink/controller:dev",
            "ghcr.io/meshlink/gateway:dev"
        ]
    );
    let err = render(&args(true, false, &["nosuch.key=1"])).unwrap_err();
    assert!(
        err.contains("neither chart has a value \"nosuch\""),
        "{err}"
    );
    let err = render(&args(true, false, &["controller.replicas=many"])).unwrap_err();
    assert!(
        err.starts_with("values of chart meshlink: controller.replicas: got string \"many\""),
        "{err}"
    );
    let err = render(&args(true, false, &["controller.typo=1"])).unwrap_err();
    assert!(err.contains("controller: unknown value \"typo\""), "{err}");
}

#[test]
fn the_charts_schemas_use_only_what_the_validator_implements() {
    for (chart, text) in [
        ("meshlink", CP_SCHEMA),
        ("meshlink-multicluster", MC_SCHEMA),
    ] {
        let schema: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            schema::unsupported_keywords(&schema),
            Vec::<String>::new(),
            "{chart}"
        );
    }
}

#[test]
fn values_the_schema_refuses_are_refused_naming_the_field() {
    for (set, expected) in [
        (
            "gateway.port=http",
            "values of chart meshlink-multicluster: gateway.port: got string \"http\", want integer;",
        ),
        (
            "gateway.balancePolicy=fastest",
            "values of chart meshlink-multicluster: gateway.balancePolicy: got \"fastest\", want one of",
        ),
        (
            "controller.adminPort=0",
            "values of chart meshlink: controller.adminPort: got 0, want at least 1;",
        ),
        (
            "links[0].name=East",
            "values of chart meshlink-multicluster: links[0].name: got \"East\", which does not match",
        ),
        (
            "logFormat=xml",
            "values of chart meshlink: logFormat: got \"xml\", want one of \"plain\", \"json\";",
        ),
        (
            "controller.podDisruptionBudget.maxUnavailable=half",
            "values of chart meshlink: controller.podDisruptionBudget.maxUnavailable: got \"half\"",
        ),
    ] {
        let err = render(&args(true, false, &[set])).unwrap_err();
        assert!(err.starts_with(expected), "{set}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn balance_policy_reaches_the_gateway_only_when_set() {
    let gateway_args = |set: &[&str]| -> Vec<Value> {
        let objects = render(&args(true, false, set)).unwrap();
        let gateway = objects
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "meshlink-gateway")
            .unwrap();
        gateway["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .clone()
    };
    let policy = |args: &[Value]| {
        args.iter()
            .filter(|a| a.as_str().unwrap().starts_with("--balance-policy"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(policy(&gateway_args(&[])).is_empty());
    assert_eq!(
        policy(&gateway_args(&["gateway.balancePolicy=cheapest"])),
        ["--balance-policy=cheapest"]
    );
}

/// Every object's namespace (`-` for cluster-scoped ones) by kind and name.
fn namespaces_of(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}: {}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap(),
                o["metadata"]["namespace"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

#[test]
fn namespace_moves_the_control_plane_and_derives_the_multicluster_namespace() {
    let objects = super::render(&args(true, false, &["links[0].name=east"]), Some("mesh")).unwrap();
    // Everything that named meshlink or meshlink-multicluster now names mesh or
    // mesh-multicluster: metadata, SPIFFE ID, ClusterRole names, flags.
    golden::check(
        "install-namespace.yaml",
        &output::manifests(
            &objects
                .iter()
                .filter(|o| o["kind"] != "CustomResourceDefinition")
                .cloned()
                .collect::<Vec<_>>(),
            None,
        )
        .unwrap(),
    );
    // No trace of the default namespaces is left.
    let text = serde_json::to_string(&objects).unwrap();
    for default in [
        r#""namespace":"meshlink"#,
        "/ns/meshlink-multicluster/",
        "meshlink-mirror-meshlink-multicluster",
        "=meshlink/",
        ".meshlink.svc",
    ] {
        assert!(!text.contains(default), "{default} in {text}");
    }
    let placed = namespaces_of(&objects);
    assert!(
        placed.contains(&"Namespace/mesh: -".to_owned()),
        "{placed:?}"
    );
    assert!(placed.contains(&"Deployment/meshlink-controller: mesh".to_owned()));
    assert!(placed.contains(&"Deployment/meshlink-gateway: mesh-multicluster".to_owned()));
    assert!(placed.contains(&"ClusterRole/meshlink-mirror-mesh-multicluster: -".to_owned()));
}

#[test]
fn control_planes_in_two_namespaces_keep_their_own_cluster_scoped_rbac() {
    let install = |namespace| {
        let objects =
            super::render(&args(true, false, &["links[0].name=east"]), Some(namespace)).unwrap();
        objects
            .into_iter()
            .filter(|o| o["kind"].as_str().unwrap().starts_with("ClusterRole"))
            .collect::<Vec<_>>()
    };
    let (mesh, other) = (install("mesh"), install("other"));
    // Controller and mirror: a ClusterRole and its binding each.
    assert_eq!(mesh.len(), 4, "{:?}", kinds(&mesh));
    let mesh_names = kinds(&mesh);
    let shared: Vec<_> = kinds(&other)
        .into_iter()
        .filter(|k| mesh_names.contains(k))
        .collect();
    assert!(
        shared.is_empty(),
        "{shared:?} rendered by both installs: the second would overwrite the first"
    );
    for binding in mesh.iter().filter(|o| o["kind"] == "ClusterRoleBinding") {
        let subject_ns = binding["subjects"][0]["namespace"].as_str().unwrap();
        assert!(subject_ns.starts_with("mesh"), "{binding}");
        assert_eq!(binding["roleRef"]["name"], binding["metadata"]["name"]);
    }
    assert!(mesh_names.contains(&"ClusterRole/meshlink-controller-mesh".to_owned()));
}

#[test]
fn multicluster_namespace_has_its_own_flag_and_the_gateway_finds_the_control_plane() {
    let mut a = args(true, false, &[]);
    a.multicluster_namespace = Some("links".into());
    let objects = super::render(&a, Some("mesh")).unwrap();
    let placed = namespaces_of(&objects);
    assert_eq!(placed[..2], ["Namespace/mesh: -", "Namespace/links: -"]);
    let gateway = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "meshlink-gateway")
        .unwrap();
    assert_eq!(gateway["metadata"]["namespace"], "links");
    let args = &gateway["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&"--discovery-addr=meshlink-controller.mesh.svc.cluster.local:8086".into()),
        "{args}"
    );
}

#[test]
fn bad_namespaces_are_refused_naming_the_flag() {
    let err = super::render(&args(true, false, &[]), Some("Mesh")).unwrap_err();
    assert!(
        err.starts_with("-n: namespace \"Mesh\" is not a DNS label"),
        "{err}"
    );
    let long = "m".repeat(60);
    let err = super::render(&args(true, false, &[]), Some(&long)).unwrap_err();
    assert!(err.contains("derived from -n"), "{err}");
    let mut a = args(true, false, &[]);
    a.multicluster_namespace = Some("meshlink".into());
    let err = super::render(&a, None).unwrap_err();
    assert!(err.contains("need two namespaces"), "{err}");
    let err = render(&args(true, false, &["controlPlaneNamespace=x"])).unwrap_err();
    assert!(err.contains("use -n"), "{err}");
}
