//! Command-line and environment configuration of the proxy and gateway binaries.
//! clap reads flags with `MESHLINK_*` environment fallbacks; everything is then
//! parsed into the plain config structs the listeners take and validated before
//! any port is bound, so a bad value exits with a usage error naming it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::identity::SpiffeId;
use clap::{ArgGroup, Args, Parser, Subcommand};

mod balance;
pub use balance::BalanceArgs;

use crate::Error;
use crate::accept::AcceptConfig;
use crate::certify::{CertifyConfig, identity_channel};
use crate::detect::{DEFAULT_OPAQUE_PORTS, DetectConfig};
use crate::discovery::{Discovery, StaticDiscovery};
use crate::discovery_grpc::GrpcDiscovery;
use crate::inbound::{AppTarget, InboundConfig};
use crate::init::InitConfig;
use crate::outbound::{OutboundConfig, TargetMode};
use crate::tls::{
    BundleFile, CredentialFiles, CredentialWatch, IdPattern, Policy, watch_credentials,
};

/// The `proxy` binary.
#[derive(Debug, Parser)]
#[command(name = "proxy", about = "meshlink sidecar proxy")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `proxy` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Run(Box<RunArgs>),
    /// Write the iptables rules for transparent interception, then exit.
    Init(InitArgs),
}

/// TLS credential files, shared by proxy and gateway.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain of this workload (leaf first).
    #[arg(long, env = "MESHLINK_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of this workload.
    #[arg(long, env = "MESHLINK_TLS_KEY")]
    pub tls_key: PathBuf,
    /// PEM trust bundle(s): roots peers must chain to.
    #[arg(long, env = "MESHLINK_TLS_TRUST", required = true)]
    pub tls_trust: Vec<PathBuf>,
}

impl TlsArgs {
    /// The files to load and watch. Bundles carry no trust-domain restriction.
    pub fn files(&self) -> CredentialFiles {
        CredentialFiles {
            cert_chain: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            bundles: self
                .tls_trust
                .iter()
                .map(|path| BundleFile {
                    path: path.clone(),
                    trust_domain: None,
                })
                .collect(),
        }
    }
}

/// Where endpoints come from: exactly one of a static file or the control
/// plane's discovery service.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("discovery").required(true).args(["discovery_file", "discovery_addr"])))]
pub struct DiscoveryArgs {
    /// Static discovery file (YAML or JSON).
    #[arg(long, env = "MESHLINK_DISCOVERY_FILE")]
    pub discovery_file: Option<PathBuf>,
    /// The control plane's discovery service, `host:port`.
    #[arg(long, env = "MESHLINK_DISCOVERY_ADDR")]
    pub discovery_addr: Option<String>,
    /// This proxy's zone (`topology.kubernetes.io/zone`), sent to discovery so
    /// endpoints come with cost tiers relative to it.
    #[arg(long, env = "MESHLINK_ZONE", default_value = "")]
    pub zone: String,
}

impl DiscoveryArgs {
    /// The discovery source. A service address connects lazily, so a control
    /// plane that is not up yet does not stop the proxy from starting. Must be
    /// called within a Tokio runtime.
    pub fn discovery(&self) -> Result<Arc<dyn Discovery>, Error> {
        match (&self.discovery_file, &self.discovery_addr) {
            (Some(file), _) => Ok(Arc::new(StaticDiscovery::from_file(file)?)),
            (None, Some(addr)) => Ok(Arc::new(GrpcDiscovery::new(
                lazy_channel("discovery-addr", addr)?,
                self.zone.clone(),
            ))),
            (None, None) => Err(Error::Config(
                "one of --discovery-file or --discovery-addr is required".into(),
            )),
        }
    }
}

/// A gRPC channel to `addr` (`host:port`, named by `flag` in errors) that
/// connects on first use, so a control plane that is not up yet does not stop a
/// proxy from starting. Must be called within a Tokio runtime.
fn lazy_channel(flag: &str, addr: &str) -> Result<tonic::transport::Channel, Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::Config(format!("--{flag} {addr:?}: {e}")))?;
    Ok(endpoint.connect_lazy())
}

/// Where the proxy's certificate comes from when it is not mounted.
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// The control plane's identity service, `host:port` (TLS, the controller's
    /// `--identity-addr`). With it the proxy obtains its certificate there before it starts serving,
    /// renews it, and writes --tls-cert and --tls-key; without it those files
    /// are mounted.
    #[arg(long, env = "MESHLINK_IDENTITY_ADDR", requires = "identity")]
    pub identity_addr: Option<String>,
    /// The SPIFFE ID to ask for, `spiffe://<trust domain>/ns/<namespace>/sa/<account>`.
    #[arg(long, env = "MESHLINK_IDENTITY", requires = "identity_addr")]
    pub identity: Option<SpiffeId>,
    /// The identity the identity service must prove; by default
    /// `spiffe://<trust domain of --identity>/ns/meshlink/sa/meshlink-controller`.
    #[arg(long, env = "MESHLINK_IDENTITY_SERVER_ID")]
    pub identity_server_id: Option<SpiffeId>,
    /// The projected service-account token for audience `identity.meshlink.io`.
    #[arg(
        long,
        env = "MESHLINK_IDENTITY_TOKEN_FILE",
        default_value = "/var/run/secrets/tokens/meshlink-identity"
    )]
    pub identity_token_file: PathBuf,
}

impl IdentityArgs {
    /// How to obtain the certificate written to `tls`'s files, if from the
    /// identity service. Must be called within a Tokio runtime.
    pub fn certify(&self, tls: &TlsArgs) -> Result<Option<CertifyConfig>, Error> {
        let (Some(addr), Some(identity)) = (&self.identity_addr, &self.identity) else {
            return Ok(None);
        };
        let server_id = match &self.identity_server_id {
            Some(id) => id.clone(),
            None => SpiffeId::workload(identity.trust_domain(), "meshlink", "meshlink-controller")
                .map_err(|e| Error::Config(format!("--identity {identity}: {e}")))?,
        };
        let bundles = tls.files().load_bundles()?;
        Ok(Some(CertifyConfig {
            channel: identity_channel(addr, &bundles, &server_id)?,
            identity: identity.clone(),
            token_file: self.identity_token_file.clone(),
            cert_file: tls.tls_cert.clone(),
            key_file: tls.tls_key.clone(),
        }))
    }
}

/// Loads what every data-plane binary needs before binding: discovery and the
/// credentials (watched for rotation every `poll`), with client and server
/// configs offering the transport-header ALPN.
pub fn load(
    discovery: &DiscoveryArgs,
    tls: &TlsArgs,
    poll: Duration,
) -> Result<(Arc<dyn Discovery>, CredentialWatch), Error> {
    let discovery = discovery.discovery()?;
    let creds = watch_credentials(tls.files(), vec![crate::header::ALPN.to_vec()], poll)?;
    Ok((discovery, creds))
}

/// Timeouts and limits, shared by proxy and gateway.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Connect timeout to upstream endpoints, in milliseconds.
    #[arg(long, env = "MESHLINK_CONNECT_TIMEOUT_MS", default_value_t = 3000)]
    pub connect_timeout_ms: u64,
    /// TLS handshake timeout, in milliseconds.
    #[arg(long, env = "MESHLINK_HANDSHAKE_TIMEOUT_MS", default_value_t = 5000)]
    pub handshake_timeout_ms: u64,
    /// Opaque connections idle this long are closed, in seconds.
    #[arg(long, env = "MESHLINK_IDLE_TIMEOUT_S", default_value_t = 3600)]
    pub idle_timeout_s: u64,
    /// Peer identities allowed to connect (SPIFFE IDs, a trailing `*` matches a
    /// prefix); repeatable. None given: any identity from a trusted bundle.
    #[arg(
        long = "allow-identity",
        env = "MESHLINK_ALLOW_IDENTITIES",
        value_delimiter = ','
    )]
    pub allow_identities: Vec<String>,
    /// Time allowed to drain after SIGTERM, in seconds.
    #[arg(long, env = "MESHLINK_DRAIN_DEADLINE_S", default_value_t = 30)]
    pub drain_deadline_s: u64,
    /// Connections served at once per listener.
    #[arg(long, env = "MESHLINK_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Copy buffer per direction for opaque connections, in bytes.
    #[arg(long, env = "MESHLINK_BUFFER_BYTES", default_value_t = 16 * 1024)]
    pub buffer_bytes: usize,
    /// Runtime threads: 1 serves everything on one thread (the least CPU per
    /// request: no work stealing, no cross-thread wake-ups), 0 one per CPU.
    #[arg(long, env = "MESHLINK_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
}

impl LimitArgs {
    /// Validated connection limits.
    pub fn accept(&self) -> Result<AcceptConfig, Error> {
        nonzero("max-connections", self.max_connections as u64)?;
        Ok(AcceptConfig {
            max_connections: self.max_connections,
            drain_deadline: Duration::from_secs(self.drain_deadline_s),
        })
    }

    /// Validated `(connect, handshake, idle)` timeouts.
    pub fn timeouts(&self) -> Result<(Duration, Duration, Duration), Error> {
        nonzero("connect-timeout-ms", self.connect_timeout_ms)?;
        nonzero("handshake-timeout-ms", self.handshake_timeout_ms)?;
        nonzero("idle-timeout-s", self.idle_timeout_s)?;
        Ok((
            Duration::from_millis(self.connect_timeout_ms),
            Duration::from_millis(self.handshake_timeout_ms),
            Duration::from_secs(self.idle_timeout_s),
        ))
    }

    /// The peer policy from `--allow-identity`.
    pub fn policy(&self) -> Result<Policy, Error> {
        if self.allow_identities.is_empty() {
            return Ok(Policy::AnyTrusted);
        }
        let patterns = self.allow_identities.iter().map(|p| {
            IdPattern::parse(p).map_err(|e| Error::Config(format!("allow-identity {p:?}: {e}")))
        });
        Ok(Policy::Allow(patterns.collect::<Result<_, _>>()?))
    }

    /// The validated opaque copy buffer size.
    pub fn buffer(&self) -> Result<usize, Error> {
        if !(1024..=1 << 20).contains(&self.buffer_bytes) {
            return Err(Error::Config(format!(
                "buffer-bytes {} is outside 1024..=1048576",
                self.buffer_bytes
            )));
        }
        Ok(self.buffer_bytes)
    }
}

/// `proxy run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Outbound listener (iptables redirects app traffic here).
    #[arg(long, env = "MESHLINK_OUTBOUND_ADDR", default_value = "127.0.0.1:4140")]
    pub outbound_addr: SocketAddr,
    /// Inbound mTLS listener.
    #[arg(long, env = "MESHLINK_INBOUND_ADDR", default_value = "0.0.0.0:4143")]
    pub inbound_addr: SocketAddr,
    /// Admin listener (/ready, /live, /metrics).
    #[arg(long, env = "MESHLINK_ADMIN_ADDR", default_value = "0.0.0.0:4191")]
    pub admin_addr: SocketAddr,
    /// Where the local app listens; inbound traffic goes here. Without it,
    /// inbound traffic goes to 127.0.0.1 at its original destination port
    /// (transparent mode, after `proxy init`).
    #[arg(long, env = "MESHLINK_APP_ADDR")]
    pub app_addr: Option<SocketAddr>,
    /// Send every outbound connection to this `name:port` instead of its
    /// original destination (explicit-proxy mode, for tests and demos).
    #[arg(long, env = "MESHLINK_OUTBOUND_TARGET")]
    pub outbound_target: Option<String>,
    /// Where endpoints come from.
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    /// Destination ports never detected (always opaque), comma-separated; the
    /// list replaces the default one, and the flag alone leaves every port to
    /// detection.
    #[arg(
        long,
        env = "MESHLINK_OPAQUE_PORTS",
        value_delimiter = ',',
        num_args = 0..,
        default_values_t = DEFAULT_OPAQUE_PORTS
    )]
    pub opaque_ports: Vec<u16>,
    /// How long to wait for a client's first bytes before deciding opaque, in ms.
    #[arg(long, env = "MESHLINK_DETECT_TIMEOUT_MS", default_value_t = 1000)]
    pub detect_timeout_ms: u64,
    /// TLS credentials.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The identity service, when it issues the credentials.
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Timeouts and limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Load balancing.
    #[command(flatten)]
    pub balance: BalanceArgs,
    /// Fail over on the proxy's own: skip split backends whose endpoints all
    /// failed, and retry idempotent requests once within a budget of 20% plus
    /// 10 per second. `false` follows the routes' weights only.
    #[arg(
        long,
        env = "MESHLINK_FAILOVER_FAST_PATH",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub failover_fast_path: bool,
}

/// `proxy run`, parsed and validated.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The outbound listener's settings.
    pub outbound: OutboundConfig,
    /// The inbound listener's settings.
    pub inbound: InboundConfig,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Load balancing.
    pub balance: crate::balance::BalanceConfig,
    /// Whether the failover fast path is on.
    pub failover_fast_path: bool,
}

impl RunArgs {
    /// Parses and validates everything but the files (read by the caller).
    pub fn config(&self) -> Result<ProxyConfig, Error> {
        let Self {
            outbound_addr,
            inbound_addr,
            admin_addr,
            app_addr,
            outbound_target,
            discovery: _,
            opaque_ports,
            detect_timeout_ms,
            tls: _,
            identity: _,
            limits,
            balance,
            failover_fast_path,
        } = self;
        let addrs = [outbound_addr, inbound_addr, admin_addr];
        let ports: HashSet<_> = addrs.iter().map(|a| a.port()).collect();
        if ports.len() != addrs.len() && !ports.contains(&0) {
            return Err(Error::Config(
                "outbound, inbound and admin ports must differ".into(),
            ));
        }
        nonzero("detect-timeout-ms", *detect_timeout_ms)?;
        let detect = DetectConfig {
            timeout: Duration::from_millis(*detect_timeout_ms),
            opaque_ports: opaque_ports.iter().copied().collect(),
            ..DetectConfig::default()
        };
        let target = match outbound_target {
            Some(t)
                if t.rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err()) =>
            {
                return Err(Error::Config(format!(
                    "outbound-target {t:?} is not name:port"
                )));
            }
            Some(t) => TargetMode::Fixed(t.clone()),
            None => TargetMode::OriginalDst,
        };
        let (connect_timeout, handshake_timeout, idle_timeout) = limits.timeouts()?;
        let (accept, buffer_size) = (limits.accept()?, limits.buffer()?);
        Ok(ProxyConfig {
            outbound: OutboundConfig {
                target,
                detect: detect.clone(),
                accept,
                idle_timeout,
                buffer_size,
            },
            inbound: InboundConfig {
                app: app_addr.map_or(AppTarget::OriginalDstPort, AppTarget::Fixed),
                detect,
                policy: limits.policy()?,
                accept,
                handshake_timeout,
                idle_timeout,
                buffer_size,
            },
            connect_timeout,
            balance: balance.config()?,
            failover_fast_path: *failover_fast_path,
        })
    }
}

/// `proxy init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The uid the proxy runs as (its traffic is not redirected).
    #[arg(long, env = "MESHLINK_PROXY_UID", default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Inbound listener port.
    #[arg(long, env = "MESHLINK_INBOUND_PORT", default_value_t = 4143)]
    pub inbound_port: u16,
    /// Outbound listener port.
    #[arg(long, env = "MESHLINK_OUTBOUND_PORT", default_value_t = 4140)]
    pub outbound_port: u16,
    /// Inbound ports left alone, comma-separated (the admin port by default).
    #[arg(
        long,
        env = "MESHLINK_SKIP_INBOUND_PORTS",
        value_delimiter = ',',
        default_value = "4191"
    )]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound ports left alone, comma-separated.
    #[arg(long, env = "MESHLINK_SKIP_OUTBOUND_PORTS", value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,
    /// Print the rules instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}

impl InitArgs {
    /// The validated init configuration.
    pub fn config(&self) -> Result<InitConfig, Error> {
        if self.inbound_port == 0
            || self.outbound_port == 0
            || self.inbound_port == self.outbound_port
        {
            return Err(Error::Config(
                "inbound and outbound ports must be distinct and nonzero".into(),
            ));
        }
        Ok(InitConfig {
            proxy_uid: self.proxy_uid,
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            skip_inbound_ports: self.skip_inbound_ports.clone(),
            skip_outbound_ports: self.skip_outbound_ports.clone(),
        })
    }
}

fn nonzero(name: &str, v: u64) -> Result<(), Error> {
    if v == 0 {
        return Err(Error::Config(format!("{name} must be greater than zero")));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<ProxyConfig, String> {
        let required = "proxy run --app-addr 127.0.0.1:8080 --discovery-file d.yaml \
                        --tls-cert c.pem --tls-key k.pem --tls-trust r.pem";
        let argv = required.split_whitespace().chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Run(r) => r.config().map_err(|e| e.to_string()),
            Command::Init(_) => Err("init".into()),
        }
    }

    #[test]
    fn exactly_one_discovery_source() {
        let both = run(&["--discovery-addr", "198.18.0.1:8086"]).unwrap_err();
        assert!(both.contains("cannot be used with"), "{both}");
        let argv = "proxy run --tls-cert c --tls-key k --tls-trust r".split(' ');
        let none = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(
            none.contains("--discovery-file") && none.contains("--discovery-addr"),
            "{none}"
        );
    }

    #[tokio::test]
    async fn a_discovery_address_connects_lazily() {
        let args = DiscoveryArgs {
            discovery_file: None,
            discovery_addr: Some("127.0.0.1:1".into()),
            zone: "a".into(),
        };
        assert!(args.discovery().is_ok(), "no control plane needed to start");
        let bad = DiscoveryArgs {
            discovery_addr: Some("bad host:1".into()),
            ..args
        };
        assert!(matches!(bad.discovery(), Err(Error::Config(m)) if m.contains("bad host")));
    }

    #[test]
    fn defaults_parse() {
        let c = run(&[]).unwrap();
        assert_eq!(c.outbound.target, TargetMode::OriginalDst);
        assert_eq!(
            c.inbound.app,
            AppTarget::Fixed("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(c.outbound.detect.timeout, Duration::from_secs(1));
        assert_eq!(c.inbound.policy, Policy::AnyTrusted);
        for port in [25, 3306, 5432, 6379] {
            assert!(c.outbound.detect.opaque_ports.contains(&port), "{port}");
        }
    }

    #[test]
    fn opaque_ports_and_fixed_target() {
        let c = run(&[
            "--opaque-ports",
            "3306,5432",
            "--outbound-target",
            "books.svc:80",
        ])
        .unwrap();
        assert!(c.outbound.detect.opaque_ports.contains(&5432));
        assert!(
            !c.outbound.detect.opaque_ports.contains(&25),
            "a list replaces the defaults"
        );
        assert_eq!(c.outbound.target, TargetMode::Fixed("books.svc:80".into()));
        let none = run(&["--opaque-ports"]).unwrap();
        assert!(none.outbound.detect.opaque_ports.is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        for (args, named) in [
            (["--detect-timeout-ms", "0"], "detect-timeout-ms"),
            (["--outbound-target", "noport"], "outbound-target"),
            (["--inbound-addr", "0.0.0.0:4191"], "must differ"),
            (["--opaque-ports", "x"], "opaque-ports"),
            (["--buffer-bytes", "1"], "buffer-bytes"),
        ] {
            let error = run(&args).unwrap_err();
            assert!(error.contains(named), "{args:?}: {error}");
        }
    }
}
