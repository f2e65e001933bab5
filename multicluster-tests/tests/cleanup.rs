//! Nothing outlives a harness: after drop, after a panic in a test, and after
//! SIGTERM to a process running one, its network namespaces, root link, processes
//! and temp dir are gone.

// A failed unwrap is a failed test, which is what tests are for.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use multicluster_tests::{Harness, Pod, netns_names};

const ECHO: &str = env!("CARGO_BIN_EXE_harness-echo");

/// What a harness created, recorded while it runs.
#[derive(Debug)]
struct Footprint {
    netns_prefix: String,
    root_link: String,
    dir: PathBuf,
    pids: Vec<u32>,
}

impl Footprint {
    fn of(harness: &Harness, pods: &[&Pod]) -> Self {
        let mut pids = harness.pids();
        pids.extend(pods.iter().flat_map(|p| p.pids()));
        let fp = Self {
            netns_prefix: harness.address_plan().netns_prefix(),
            root_link: harness.address_plan().root_link(),
            dir: harness.dir().to_path_buf(),
            pids,
        };
        // Make sure the checks below look at something that existed.
        assert!(fp.dir.is_dir());
        assert!(!namespaces(&fp.netns_prefix).is_empty());
        assert!(link_exists(&fp.root_link));
        assert!(fp.pids.len() >= 3, "etcd, apiserver and a pod at least");
        assert!(fp.pids.iter().all(|p| alive(*p)));
        fp
    }

    fn assert_gone(&self) {
        assert_eq!(namespaces(&self.netns_prefix), Vec::<String>::new());
        assert!(!link_exists(&self.root_link), "{} remains", self.root_link);
        assert!(!self.dir.exists(), "{} remains", self.dir.display());
        let alive: Vec<_> = self.pids.iter().filter(|p| alive(**p)).collect();
        assert!(alive.is_empty(), "processes remain: {alive:?}");
        let mentioning = processes_mentioning(&self.dir);
        assert!(mentioning.is_empty(), "processes remain: {mentioning:?}");
    }
}

fn namespaces(prefix: &str) -> Vec<String> {
    netns_names()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Running (not zombie) process with this pid.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Pids whose command line names `dir` (etcd, apiservers, controller managers).
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
                && alive(*pid)
        })
        .collect()
}

async fn harness_with_pod() -> (Harness, Pod) {
    let harness = Harness::builder().cluster("east").start().await.unwrap();
    let pod = harness
        .cluster("east")
        .create_pod("echo", "east-a")
        .unwrap();
    pod.spawn(ECHO, ["serve", "7000", "echo"]).unwrap();
    pod.wait_listening(7000, Duration::from_secs(10))
        .await
        .unwrap();
    (harness, pod)
}

#[tokio::test]
async fn drop_removes_everything() {
    let (harness, pod) = harness_with_pod().await;
    let footprint = Footprint::of(&harness, &[&pod]);
    drop(pod);
    drop(harness);
    footprint.assert_gone();
}

#[test]
fn panic_in_a_test_removes_everything() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (harness, pod) = harness_with_pod().await;
            tx.send(Footprint::of(&harness, &[&pod])).unwrap();
            panic!("a failing assertion while the harness runs");
        })
    })
    .join();
    assert!(outcome.is_err(), "the thread should have panicked");
    rx.recv().unwrap().assert_gone();
}

#[test]
fn sigterm_to_the_demo_removes_everything() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(demo.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            println!("demo: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut dir, mut prefix) = (None, None);
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) {
        if let Some(d) = line.strip_prefix("harness dir: ") {
            dir = Some(PathBuf::from(d));
        } else if let Some(p) = line.strip_prefix("network namespaces: ") {
            prefix = Some(p.trim_end_matches('*').to_owned());
        } else if line.contains("ready; press Ctrl-C") {
            break;
        }
    }
    let (dir, prefix) = (
        dir.expect("demo printed its dir"),
        prefix.expect("and prefix"),
    );
    assert!(dir.is_dir() && !namespaces(&prefix).is_empty());
    let slot = prefix
        .trim_start_matches("mlh")
        .trim_end_matches('-')
        .to_owned();
    let control_plane = processes_mentioning(&dir);
    // etcd, two apiservers and, naming files in the dir too, the demo's
    // controllers, gateways, mirrors and sidecars.
    assert!(
        control_plane.len() >= 11,
        "etcd, apiservers and meshlink's components: {control_plane:?}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = demo.wait().unwrap();
    assert_eq!(status.code(), Some(143), "exit code after SIGTERM");
    Footprint {
        netns_prefix: prefix,
        root_link: format!("mlh{slot}"),
        dir,
        pids: control_plane,
    }
    .assert_gone();
}
