//! The mirror crate's one error type.

/// Everything that can go wrong while mirroring a Link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),
    /// The Link is missing or its spec is unusable.
    #[error("link {name}: {reason}")]
    InvalidLink {
        /// `namespace/name` of the Link.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Link's credentials Secret is missing or malformed.
    #[error("credentials secret {name}: {reason}")]
    InvalidCredentials {
        /// `namespace/name` of the Secret.
        name: String,
        /// What is wrong with it (never its contents).
        reason: String,
    },
    /// The kubeconfig parsed but a client could not be built from it.
    #[error("kubeconfig in secret {name} is unusable: {source}")]
    Kubeconfig {
        /// `namespace/name` of the Secret.
        name: String,
        /// Why kube refused it.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A client could not be built from a valid config.
    #[error("cannot build a client for the remote cluster: {0}")]
    Client(#[source] kube::Error),
    /// The gateway's TLS settings are unusable.
    #[error("gateway TLS: {0}")]
    Tls(#[source] proxy::tls::TlsError),
    /// A probe of the gateway failed.
    #[error("gateway probe of {addr} failed: {reason}")]
    Probe {
        /// Address probed.
        addr: std::net::SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The DNS resolver could not be built.
    #[error("DNS resolver: {0}")]
    Resolver(String),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

impl Error {
    /// The `reason` used on the Link's `RemoteReachable` condition.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            Self::InvalidLink { .. } => "InvalidLink",
            Self::InvalidCredentials { .. } | Self::Kubeconfig { .. } | Self::Client(_) => {
                "InvalidCredentials"
            }
            _ => "Error",
        }
    }
}

/// Whether a kube error is a 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether a kube error is a 409 (resourceVersion conflict or already exists).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
