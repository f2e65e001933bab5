//! Finds the Kubernetes binaries (etcd, kube-apiserver, kube-controller-manager)
//! and helm, running `go/build.sh` when they are not cached yet. The script is
//! idempotent and prints where they are on stdout, so asking it is also how we
//! find the path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Paths of the binaries one harness runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`, when it has been built.
    pub kube_controller_manager: Option<PathBuf>,
}

impl Binaries {
    /// Uses `$MESHLINK_K8S_BIN` when set, otherwise runs `go/build.sh` (which builds
    /// only what is missing) and uses the directory it prints.
    pub fn locate() -> Result<Self> {
        let dir = match std::env::var_os("MESHLINK_K8S_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(run_build_script(&[])?),
        };
        Self::in_dir(&dir)
    }

    /// The helm binary (built from its own Go module, `go/helm`): `$MESHLINK_HELM` when
    /// set, otherwise what `go/build.sh helm` builds or finds in the cache.
    pub fn helm() -> Result<PathBuf> {
        let path = match std::env::var_os("MESHLINK_HELM") {
            Some(path) => PathBuf::from(path),
            None => PathBuf::from(run_build_script(&["helm"])?),
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Invalid(format!("{} is missing", path.display())))
        }
    }

    /// The binaries inside `dir`; etcd and kube-apiserver must exist.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let required = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Invalid(format!("{} is missing", path.display())))
            }
        };
        let kcm = dir.join("kube-controller-manager");
        Ok(Self {
            etcd: required("etcd")?,
            kube_apiserver: required("kube-apiserver")?,
            kube_controller_manager: kcm.is_file().then_some(kcm),
        })
    }
}

/// Runs `go/build.sh args...`; returns the last line it printed.
fn run_build_script(args: &[&str]) -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/build.sh");
    let fail = |reason: String| Error::Build {
        script: script.clone(),
        reason,
    };
    // Progress goes to our stderr so a first, slow build is visible in test output.
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!("exited with {}", out.status)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| fail("printed no directory".into()))?;
    Ok(dir.trim().to_owned())
}

/// The path of a meshlink binary (`controller`, `proxy`, `gateway`, `mirror`,
/// `meshlink`) built into the same target directory as the running test or demo.
/// `cargo test --workspace` builds them all before any test runs.
pub fn meshlink_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("locating the running binary: {e}")))?;
    // Tests run from target/<profile>/deps, binaries like the demo from target/<profile>.
    let candidates = exe.ancestors().skip(1).take(2).map(|dir| dir.join(name));
    let found = candidates.clone().find(|p| p.is_file());
    found.ok_or_else(|| {
        let looked: Vec<_> = candidates.map(|p| p.display().to_string()).collect();
        Error::Invalid(format!(
            "meshlink binary {name:?} not found (looked at {}); build it with `cargo build --workspace --bins`",
            looked.join(", ")
        ))
    })
}
