//! The Helm charts in `charts/` against helm itself (built from Go modules by
//! `go/build.sh helm`): `helm lint --strict` is clean, and `meshlink install`
//! renders exactly what `helm template` renders from the same values (default,
//! HA, `--gateway=false`, `--set`, other namespaces), compared as parsed YAML
//! documents.
//!
//! Needs the `meshlink` binary in the same target directory (`cargo build -p link-cli`).

// A failed unwrap is a failed test, which is what tests are for.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use multicluster_tests::{Binaries, meshlink_binary};
use serde::Deserialize;
use serde_json::Value;

fn chart(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts")
        .join(name)
}

fn run(program: &Path, args: &[String]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{stderr}",
        program.display()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every YAML document of `text`, keyed by kind, namespace and name, with nulls
/// dropped (a template's empty `with` and an absent field are the same object).
fn documents(text: &str) -> BTreeMap<String, Value> {
    let mut docs = BTreeMap::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let mut value = Value::deserialize(doc).unwrap();
        if value.is_null() {
            continue;
        }
        strip_nulls(&mut value);
        let meta = &value["metadata"];
        let key = format!(
            "{}/{}/{}",
            value["kind"].as_str().unwrap(),
            meta["namespace"].as_str().unwrap_or(""),
            meta["name"].as_str().unwrap()
        );
        assert!(docs.insert(key.clone(), value).is_none(), "{key} twice");
    }
    docs
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// A scenario: `meshlink install` flags and the equivalent helm flags.
struct Scenario {
    install: Vec<&'static str>,
    helm_sets: Vec<&'static str>,
    ha: bool,
    /// The control plane's and the multicluster namespace (helm's `-n` for
    /// each chart; the multicluster chart also gets `controlPlaneNamespace`).
    namespaces: [&'static str; 2],
}

/// The default namespaces.
const DEFAULT_NAMESPACES: [&str; 2] = ["meshlink", "meshlink-multicluster"];

fn helm_template(helm: &Path, scenario: &Scenario) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    let [control_plane, multicluster] = scenario.namespaces;
    for (name, namespace) in [
        ("meshlink", control_plane),
        ("meshlink-multicluster", multicluster),
    ] {
        let dir = chart(name);
        let mut args: Vec<String> = ["template", name, dir.to_str().unwrap()]
            .map(String::from)
            .into();
        args.extend([
            "--namespace".into(),
            namespace.into(),
            "--include-crds".into(),
        ]);
        if scenario.ha {
            args.extend([
                "-f".into(),
                dir.join("values-ha.yaml").display().to_string(),
            ]);
        }
        // Like `meshlink install`, each chart gets the values it has: its
        // schema refuses the other chart's.
        let values = std::fs::read_to_string(dir.join("values.yaml")).unwrap();
        let values: Value = serde_yaml_ng::from_str(&values).unwrap();
        for set in &scenario.helm_sets {
            let root = set.split(['.', '[', '=']).next().unwrap();
            if values.get(root).is_some() {
                args.extend(["--set".into(), (*set).to_owned()]);
            }
        }
        if name == "meshlink-multicluster" {
            args.extend([
                "--set".into(),
                format!("controlPlaneNamespace={control_plane}"),
            ]);
        }
        all.extend(documents(&run(helm, &args)));
    }
    all
}

fn meshlink_install(scenario: &Scenario) -> BTreeMap<String, Value> {
    let mut args = vec!["install".to_owned()];
    args.extend(scenario.install.iter().map(|s| (*s).to_owned()));
    let mut docs = documents(&run(&meshlink_binary("meshlink").unwrap(), &args));
    // Namespaces are the one addition: helm installs into an existing namespace.
    let namespaces: Vec<String> = docs
        .keys()
        .filter(|k| k.starts_with("Namespace/"))
        .cloned()
        .collect();
    let expected = scenario.namespaces.map(|n| format!("Namespace//{n}"));
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(namespaces, expected);
    docs.retain(|k, _| !k.starts_with("Namespace/"));
    docs
}

fn assert_same(name: &str, scenario: &Scenario, expect_kinds: &[&str]) {
    let helm = Binaries::helm().unwrap();
    let ours = meshlink_install(scenario);
    let theirs = helm_template(&helm, scenario);
    let keys = |m: &BTreeMap<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&theirs), "{name}: different objects");
    for (key, value) in &theirs {
        assert_eq!(
            &ours[key],
            value,
            "{name}: {key} differs\nmeshlink install:\n{}\nhelm template:\n{}",
            serde_yaml_ng::to_string(&ours[key]).unwrap(),
            serde_yaml_ng::to_string(value).unwrap()
        );
    }
    for kind in expect_kinds {
        assert!(
            theirs.keys().any(|k| k.starts_with(kind)),
            "{name}: no {kind} in {:?}",
            keys(&theirs)
        );
    }
}

#[test]
fn meshlink_install_equals_helm_template_by_default() {
    let scenario = Scenario {
        install: vec![],
        helm_sets: vec![],
        ha: false,
        namespaces: DEFAULT_NAMESPACES,
    };
    let kinds = [
        "CustomResourceDefinition/",
        "Deployment/meshlink/meshlink-controller",
        "Deployment/meshlink-multicluster/meshlink-gateway",
        "Service/meshlink-multicluster/meshlink-gateway",
        "ClusterRole/",
    ];
    assert_same("default", &scenario, &kinds);
}

#[test]
fn meshlink_install_equals_helm_template_with_ha_values_and_links() {
    let scenario = Scenario {
        install: vec!["--ha", "--set", "links[0].name=east,links[1].name=north"],
        helm_sets: vec!["links[0].name=east,links[1].name=north"],
        ha: true,
        namespaces: DEFAULT_NAMESPACES,
    };
    let kinds = [
        "PodDisruptionBudget/meshlink/meshlink-controller",
        "PodDisruptionBudget/meshlink-multicluster/meshlink-gateway",
        "PodDisruptionBudget/meshlink-multicluster/meshlink-mirror-north",
        "Deployment/meshlink-multicluster/meshlink-mirror-east",
        "Role/meshlink-multicluster/meshlink-mirror",
    ];
    assert_same("ha", &scenario, &kinds);
}

#[test]
fn meshlink_install_equals_helm_template_without_the_gateway() {
    let scenario = Scenario {
        install: vec!["--gateway=false", "--set", "links[0].name=east"],
        helm_sets: vec!["gateway.enabled=false", "links[0].name=east"],
        ha: false,
        namespaces: DEFAULT_NAMESPACES,
    };
    assert_same(
        "gateway=false",
        &scenario,
        &["Deployment/meshlink-multicluster/meshlink-mirror-east"],
    );
    let ours = meshlink_install(&scenario);
    assert!(!ours.keys().any(|k| k.contains("meshlink-gateway")));
}

#[test]
fn meshlink_install_equals_helm_template_with_set_values() {
    let sets = vec![
        "clusterName=west",
        "image.tag=dev",
        "controller.replicas=2",
        "gateway.serviceType=NodePort",
        "gateway.balancePolicy=cheapest",
        "gateway.serviceAnnotations.team=net",
        "mirror.nodeSelector.pool=infra",
        "controller.podDisruptionBudget.enabled=true",
        "controller.podDisruptionBudget.maxUnavailable=50%",
        "controller.identity.issuerSecret=meshlink-identity-issuer",
        "controller.identity.trustDomain=west.example.org",
        "controller.identity.lifetimeSeconds=3600",
    ];
    let mut install = Vec::new();
    for set in &sets {
        install.extend(["--set", set]);
    }
    let mut with_link = sets.clone();
    with_link.push("links[0].name=east");
    install.extend(["--set", "links[0].name=east"]);
    let scenario = Scenario {
        install,
        helm_sets: with_link,
        ha: false,
        namespaces: DEFAULT_NAMESPACES,
    };
    assert_same(
        "set",
        &scenario,
        &["PodDisruptionBudget/meshlink/meshlink-controller"],
    );
    // The identity service is on, with its issuer mounted and its own identity
    // in the release namespace.
    let rendered = meshlink_install(&scenario);
    let pod = &rendered["Deployment/meshlink/meshlink-controller"]["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].as_array().unwrap();
    for arg in [
        "--identity-addr=0.0.0.0:8080",
        "--identity-server-id=spiffe://west.example.org/ns/meshlink/sa/meshlink-controller",
        "--identity-lifetime-secs=3600",
    ] {
        assert!(args.iter().any(|a| a == arg), "no {arg} in {args:?}");
    }
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "meshlink-identity-issuer"
    );
}

#[test]
fn meshlink_install_equals_helm_template_in_other_namespaces() {
    // -n alone: the multicluster namespace is derived from it.
    let derived = Scenario {
        install: vec!["-n", "mesh", "--set", "links[0].name=east"],
        helm_sets: vec!["links[0].name=east"],
        ha: false,
        namespaces: ["mesh", "mesh-multicluster"],
    };
    let kinds = [
        "Deployment/mesh/meshlink-controller",
        "RoleBinding/mesh/meshlink-controller",
        "Service/mesh-multicluster/meshlink-gateway",
        "Deployment/mesh-multicluster/meshlink-mirror-east",
        "ClusterRole//meshlink-mirror-mesh-multicluster",
        "ClusterRoleBinding//meshlink-controller-mesh",
    ];
    assert_same("-n mesh", &derived, &kinds);
    // Both set, with HA (anti-affinity and PDBs in both namespaces).
    let both = Scenario {
        install: vec![
            "--namespace",
            "mesh-system",
            "--multicluster-namespace",
            "links",
            "--ha",
            "--set",
            "links[0].name=east",
        ],
        helm_sets: vec!["links[0].name=east"],
        ha: true,
        namespaces: ["mesh-system", "links"],
    };
    let kinds = [
        "PodDisruptionBudget/mesh-system/meshlink-controller",
        "PodDisruptionBudget/links/meshlink-gateway",
        "Role/links/meshlink-mirror",
    ];
    assert_same(
        "-n mesh-system --multicluster-namespace links",
        &both,
        &kinds,
    );
}

/// A value of the wrong type, or outside its set, is refused by helm (`template`
/// and `lint --strict`, through the chart's `values.schema.json`) and by
/// `meshlink install` (one line, usage exit code), each naming the field.
#[test]
fn bad_values_are_refused_by_helm_and_by_meshlink_install_naming_the_field() {
    let helm = Binaries::helm().unwrap();
    let dir = chart("meshlink-multicluster").display().to_string();
    for (set, helm_says, meshlink_says) in [
        (
            "gateway.port=http",
            "at '/gateway/port': got string, want integer",
            "gateway.port: got string \"http\", want integer",
        ),
        (
            "gateway.balancePolicy=fastest",
            "at '/gateway/balancePolicy': value must be one of",
            "gateway.balancePolicy: got \"fastest\", want one of",
        ),
    ] {
        for verb in [["template", "x"], ["lint", "--strict"]] {
            let out = Command::new(&helm)
                .args(verb)
                .args([dir.as_str(), "--set", set])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "helm {verb:?} --set {set} passed:\n{text}"
            );
            assert!(
                text.contains(helm_says),
                "helm {verb:?} --set {set}:\n{text}"
            );
        }
        let out = Command::new(meshlink_binary("meshlink").unwrap())
            .args(["install", "--set", set])
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(out.stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: values of chart meshlink-multicluster: ")
                && stderr.contains(meshlink_says),
            "{stderr}"
        );
    }
}

#[test]
fn helm_lint_is_clean_for_both_charts_default_and_ha() {
    let helm = Binaries::helm().unwrap();
    for (name, set) in [
        ("meshlink", "clusterName=west"),
        ("meshlink-multicluster", "links[0].name=east"),
    ] {
        let dir = chart(name);
        let ha = dir.join("values-ha.yaml").display().to_string();
        let d = dir.display().to_string();
        for extra in [
            vec![],
            vec!["-f".to_owned(), ha, "--set".into(), set.into()],
        ] {
            let mut args = vec!["lint".to_owned(), "--strict".into(), d.clone()];
            args.extend(extra);
            let out = run(&helm, &args);
            assert!(
                out.contains("1 chart(s) linted, 0 chart(s) failed"),
                "{out}"
            );
            assert!(
                !out.contains("[WARNING]") && !out.contains("[ERROR]"),
                "{out}"
            );
        }
    }
}
