//! The harness's one error type: every fallible library call returns it, so tests
//! can print a single chain that names the step that failed.

use std::path::PathBuf;

/// Result alias used across the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while building, starting or tearing down clusters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `go/build.sh` failed or printed no usable directory.
    #[error("building Kubernetes binaries with {script}: {reason}")]
    Build {
        /// The build script that was run.
        script: PathBuf,
        /// What went wrong (exit status, stderr tail).
        reason: String,
    },
    /// A file-system or process operation failed.
    #[error("{context}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Generating a certificate or key failed.
    #[error("generating {what}")]
    Pki {
        /// Which certificate or key.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// The generated kubeconfig could not be turned into a client configuration.
    #[error("loading kubeconfig for cluster {cluster}")]
    Kubeconfig {
        /// The cluster name.
        cluster: String,
        /// The underlying error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A Kubernetes API call failed.
    #[error("{context}")]
    Kube {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
    /// Something did not become ready before its deadline.
    #[error("{what} not ready after {seconds} s: {detail}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The deadline in seconds.
        seconds: u64,
        /// The last observation (error, log tail).
        detail: String,
    },
    /// An external command (`ip`, `iptables`) exited unsuccessfully.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error.
        stderr: String,
    },
    /// A process the harness started exited early.
    #[error("{name} exited early ({status}); log tail:\n{log_tail}")]
    Exited {
        /// The component name.
        name: String,
        /// Its exit status.
        status: String,
        /// Last lines of its log.
        log_tail: String,
    },
    /// The builder or a helper was given input it cannot use.
    #[error("invalid harness input: {0}")]
    Invalid(String),
    /// Every harness slot is taken by a live process.
    #[error("all {0} harness slots under /run/meshlink-harness are in use")]
    NoFreeSlot(usize),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let context = context.into();
        move |source| Error::Kube { context, source }
    }

    pub(crate) fn pki(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
        move |source| Error::Pki { what, source }
    }
}
