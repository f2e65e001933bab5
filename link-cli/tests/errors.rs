//! The built `meshlink` binary on bad input that needs no cluster: each case must
//! exit with its documented code and print exactly one `error:` line, pinned by
//! the golden file `tests/golden/errors.txt` (`MESHLINK_UPDATE_GOLDEN=1` rewrites it).

// A failed unwrap is a failed test, which is what tests are for.
#![allow(clippy::unwrap_used)]

#[path = "../src/golden.rs"]
mod golden;

use std::path::Path;
use std::process::Command;

/// A kubeconfig whose only context points at a closed loopback port.
const UNREACHABLE: &str = "apiVersion: v1
kind: Config
clusters:
- name: dead
  cluster:
    server: https://127.0.0.1:1
users:
- name: u
  user:
    token: t
contexts:
- name: dead
  context:
    cluster: dead
    user: u
current-context: dead
";

/// Runs meshlink; returns (exit code, stdout, stderr with the temp dir replaced).
fn meshlink(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshlink"))
        .args(args)
        .env("HOME", dir)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let stderr = stderr.replace(dir.to_str().unwrap(), "$DIR");
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        stderr,
    )
}

#[test]
fn bad_input_gives_one_clear_line_and_the_documented_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("kubeconfig"), UNREACHABLE).unwrap();
    std::fs::write(dir.path().join("bundle.pem"), "not a certificate").unwrap();
    // Arguments split on spaces; `$DIR` is the temp dir (HOME).
    #[rustfmt::skip]
    let cases = [
        ("unreachable cluster", "--kubeconfig $DIR/kubeconfig export web", 3),
        ("unreachable cluster (link)", "--kubeconfig $DIR/kubeconfig link --cluster-name east --gateway-addresses 10.0.0.1", 3),
        ("unknown context", "--kubeconfig $DIR/kubeconfig --context nope link --cluster-name east", 2),
        ("missing kubeconfig", "--kubeconfig $DIR/missing unlink --cluster-name east", 2),
        ("no default kubeconfig", "unexport web", 2),
        ("token ttl too short", "link --cluster-name east --token-ttl 1m", 2),
        ("bad selector", "link --cluster-name east --selector a=b,,c", 2),
        ("garbage trust bundle", "link --cluster-name east --remote-trust-bundle $DIR/bundle.pem", 2),
        ("table for manifests", "-o table allow --service-account m", 2),
        ("install: unknown value", "install --set gatway.replicas=2", 2),
        ("install: misspelled nested value", "install --set gateway.replica=2", 2),
        ("install: wrong type", "install --set controller.replicas=three", 2),
        ("install: no value", "install --set clusterName", 2),
        ("install: bad list index", "install --set links[x].name=east", 2),
        ("install: a string for a port", "install --set gateway.port=http", 2),
        ("install: unknown balance policy", "install --set gateway.balancePolicy=fastest", 2),
        ("install: bad namespace", "install -n Mesh_System", 2),
    ];
    let mut transcript = String::new();
    for (name, args, code) in cases {
        let args: Vec<String> = args.split(' ').map(|a| a.replace("$DIR", home)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (actual, stdout, stderr) = meshlink(dir.path(), &args);
        assert_eq!(actual, code, "{name}: exit code; stderr: {stderr}");
        assert!(stdout.is_empty(), "{name}: printed to stdout: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{name}: not one line: {stderr}");
        assert!(stderr.starts_with("error: "), "{name}: {stderr}");
        transcript.push_str(&format!("# {name} (exit {code})\n{stderr}"));
    }
    golden::check("errors.txt", &transcript);
}

#[test]
fn install_needs_no_cluster_and_prints_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) =
        meshlink(dir.path(), &["install", "-o", "json", "--gateway=false"]);
    assert_eq!(code, 0, "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["kind"], "List");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[..3],
        [
            "meshlink",
            "meshlink-multicluster",
            "links.multicluster.meshlink.io"
        ]
    );
    assert!(!names.contains(&"meshlink-gateway"), "{names:?}");
}

#[test]
fn missing_arguments_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = meshlink(dir.path(), &["link"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--cluster-name"), "{stderr}");
}

#[test]
fn completion_scripts_name_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let (code, stdout, _) = meshlink(dir.path(), &["completion", shell]);
        assert_eq!(code, 0, "{shell}");
        for verb in ["export", "unexport", "allow", "link", "unlink"] {
            assert!(stdout.contains(verb), "{shell} completion lacks {verb}");
        }
    }
}

#[test]
fn allow_needs_no_cluster_and_honours_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = meshlink(
        dir.path(),
        &["-n", "mc", "-o", "json", "allow", "--service-account", "m"],
    );
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    );
    assert_eq!(list["items"][0]["metadata"]["namespace"], "mc");
}
