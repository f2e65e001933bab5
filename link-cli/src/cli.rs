//! The command-line surface: kubectl-like global flags and one subcommand per verb.
//!
//! Kept apart from the commands so `meshlink completion` and the help text are
//! generated from the same definitions the parser uses.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Namespace of the control plane when `-n` is not given to `install`.
pub const DEFAULT_CONTROL_PLANE_NAMESPACE: &str = "meshlink";

/// Namespace of the multicluster components (gateway, Links, remote ServiceAccount)
/// when `-n` is not given to `link`, `unlink` or `allow`; `install` derives it
/// from the control plane's as `<namespace>-multicluster`, which gives this.
pub const DEFAULT_MULTICLUSTER_NAMESPACE: &str = "meshlink-multicluster";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure: the cluster refused the request, or an object is missing or invalid
  2  usage: bad flags or arguments, unknown --context, unreadable --kubeconfig
  3  cluster unreachable: connection refused, TLS or DNS failure, timeout";

/// `meshlink`: link Kubernetes clusters with the meshlink service mesh.
#[derive(Parser, Debug)]
#[command(name = "meshlink", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Flags every command accepts.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// kubectl-like flags shared by every command.
#[derive(Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace. install: of the control plane (default: meshlink).
    /// link/unlink/allow: of the multicluster components, where Links live
    /// (default: meshlink-multicluster). check/gateways/failover status: only
    /// that namespace's Links or TrafficSplits (default: all).
    /// export/unexport: of the Service (default: the context's).
    #[arg(short, long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
    /// Output format (manifests default to yaml, listings to table).
    #[arg(short, long, global = true, value_enum)]
    pub output: Option<OutputFormat>,
}

impl GlobalArgs {
    /// The multicluster namespace of `link`, `unlink` and `allow`: `-n`, else
    /// [`DEFAULT_MULTICLUSTER_NAMESPACE`].
    pub fn multicluster_namespace(&self) -> &str {
        self.namespace
            .as_deref()
            .unwrap_or(DEFAULT_MULTICLUSTER_NAMESPACE)
    }
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable columns.
    Table,
    /// YAML documents separated by `---`.
    Yaml,
    /// JSON (a `v1 List` for several objects).
    Json,
}

/// The verbs.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Export a Service to linked clusters (label mirror.meshlink.io/exported).
    Export(ExportArgs),
    /// Stop exporting a Service (remove mirror.meshlink.io/exported).
    Unexport(UnexportArgs),
    /// Print the least-privilege RBAC a remote mirror controller needs here.
    Allow(AllowArgs),
    /// Run against the TARGET cluster: print the Link and credentials Secret to
    /// apply to the SOURCE cluster (creates the ServiceAccount, RBAC and a token).
    Link(Box<LinkArgs>),
    /// Run against the SOURCE cluster: list (and with --apply delete) a Link,
    /// its Secret and its mirror Services and EndpointSlices.
    Unlink(UnlinkArgs),
    /// Run against the SOURCE cluster: named checks of the Link CRD, every
    /// Link (spec, trust bundles, gateway, mirror controller leadership, mirror
    /// endpoints, credentials, remote API and permissions), orphan mirrors and
    /// versions, with a hint for each problem. Checks the Links of every
    /// namespace, or of -n's only. Exits 1 if a check fails.
    Check(CheckArgs),
    /// Run against the SOURCE cluster: one row per Link (of every namespace,
    /// or of -n's only) with its gateway's last reported liveness, mirrored
    /// services, probe latency p50/p99 and probe age.
    Gateways,
    /// Live views read from proxies' and gateways' metrics endpoints.
    #[command(subcommand)]
    Top(TopCommand),
    /// Failover TrafficSplits (`failover status`).
    #[command(subcommand)]
    Failover(FailoverCommand),
    /// Print the control-plane and multicluster manifests (the charts in
    /// charts/, rendered with the same values) for `kubectl apply -f -`: the
    /// control plane in -n (default meshlink), the multicluster components in
    /// --multicluster-namespace (default <namespace>-multicluster). Contacts no
    /// cluster.
    Install(InstallArgs),
    /// Print a shell completion script.
    Completion(CompletionArgs),
}

/// `meshlink top`.
#[derive(Subcommand, Debug)]
pub enum TopCommand {
    /// Where balanced traffic goes: requests per (source zone, destination
    /// zone), each pair's share of its source zone, and the cross-zone share.
    Zones(TopZonesArgs),
}

/// `meshlink top zones`.
#[derive(Args, Debug)]
pub struct TopZonesArgs {
    /// A proxy's or gateway's admin metrics endpoint, `host:port[/path]`
    /// (path /metrics by default); repeatable, comma-separated.
    #[arg(
        long = "metrics",
        required = true,
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub metrics: Vec<String>,
}

/// `meshlink failover ...`.
#[derive(Subcommand, Debug)]
pub enum FailoverCommand {
    /// One row per managed TrafficSplit (label failover.meshlink.io/controlled-by)
    /// in every namespace, or in -n's: its chain, the active tier and its
    /// backends, and the last shift.
    Status,
}

/// `meshlink export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Name of the Service.
    pub service: String,
    /// Mirror with pod addresses (flat network) instead of through the gateway.
    #[arg(long)]
    pub remote_discovery: bool,
}

/// `meshlink unexport`.
#[derive(Args, Debug)]
pub struct UnexportArgs {
    /// Name of the Service.
    pub service: String,
}

/// `meshlink allow`.
#[derive(Args, Debug)]
pub struct AllowArgs {
    /// ServiceAccount the remote mirror controller authenticates as.
    #[arg(long, value_name = "NAME")]
    pub service_account: String,
}

/// `meshlink link`.
#[derive(Args, Debug)]
pub struct LinkArgs {
    /// Name of the target cluster (this one), as the source cluster will call it.
    #[arg(long, value_name = "NAME")]
    pub cluster_name: String,
    /// Gateway addresses (IPs or DNS names); skips reading the gateway Service.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub gateway_addresses: Vec<String>,
    /// Gateway mTLS port (default: from the gateway Service, else 4143).
    #[arg(long, value_name = "PORT")]
    pub gateway_port: Option<u16>,
    /// Gateway probe port (default: from the gateway Service, else 4191).
    #[arg(long, value_name = "PORT")]
    pub probe_port: Option<u16>,
    /// SPIFFE identity the gateway presents.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub gateway_identity: Option<String>,
    /// PEM file of the target cluster's trust roots, when they differ from the
    /// source cluster's (trust-domain federation).
    #[arg(long, value_name = "PEM_FILE")]
    pub remote_trust_bundle: Option<PathBuf>,
    /// Label selector of the Services to mirror through the gateway, e.g.
    /// `app=web,tier!=db,exported` (default: mirror.meshlink.io/exported=true).
    #[arg(long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Name of the gateway Service.
    #[arg(long, default_value = "meshlink-gateway", value_name = "NAME")]
    pub gateway_service: String,
    /// Namespace of the gateway Service (default: the multicluster namespace).
    #[arg(long, value_name = "NS")]
    pub gateway_namespace: Option<String>,
    /// ServiceAccount the source's mirror controller authenticates as.
    #[arg(long, default_value = "meshlink-mirror", value_name = "NAME")]
    pub service_account: String,
    /// Lifetime of the minted token: `<n>s`, `<n>m`, `<n>h` or `<n>d`.
    #[arg(long, default_value = "365d", value_name = "DURATION")]
    pub token_ttl: String,
    /// API server URL the source cluster uses (default: the kubeconfig's).
    #[arg(long, value_name = "URL")]
    pub api_server_address: Option<String>,
    /// DNS domain of the target cluster.
    #[arg(long, default_value = api::link::DEFAULT_CLUSTER_DOMAIN, value_name = "DOMAIN")]
    pub cluster_domain: String,
}

/// `meshlink unlink`.
#[derive(Args, Debug)]
pub struct UnlinkArgs {
    /// Name of the linked (target) cluster.
    #[arg(long, value_name = "NAME")]
    pub cluster_name: String,
    /// Delete what is listed (default: only list it).
    #[arg(long)]
    pub apply: bool,
}

/// `meshlink check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Retry for up to this long (`30s`, `2m`) until no check fails.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
}

/// `meshlink install`.
#[derive(Args, Debug, Clone, Default)]
pub struct InstallArgs {
    /// Include the multicluster gateway (`--gateway=false` for remote discovery only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub gateway: bool,
    /// Apply the charts' values-ha.yaml: replicas, PodDisruptionBudgets, anti-affinity.
    #[arg(long)]
    pub ha: bool,
    /// Namespace of the multicluster components (gateway, mirrors, Links);
    /// default: the control plane's namespace (-n) followed by `-multicluster`.
    #[arg(long, value_name = "NS")]
    pub multicluster_namespace: Option<String>,
    /// Set chart values like helm's --set (`controller.replicas=2`,
    /// `links[0].name=east`); repeatable, applies to each chart that has the key.
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// `meshlink completion`.
#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// Shell to generate the script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn install(args: &[&str]) -> InstallArgs {
        let all = ["meshlink", "install"].iter().chain(args);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Install(args) => args,
            other => panic!("not install: {other:?}"),
        }
    }

    #[test]
    fn install_gateway_flag_defaults_to_true_and_takes_false() {
        assert!(install(&[]).gateway);
        assert!(install(&["--gateway"]).gateway);
        assert!(!install(&["--gateway=false"]).gateway);
        let args = install(&["--ha", "--set", "a=1", "--set", "b=2"]);
        assert!(args.ha);
        assert_eq!(args.set, ["a=1", "b=2"]);
    }

    #[test]
    fn namespace_flags_parse_for_install_and_the_link_commands() {
        let cli = Cli::try_parse_from([
            "meshlink",
            "install",
            "-n",
            "mesh",
            "--multicluster-namespace",
            "links",
        ])
        .unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("mesh"));
        let Command::Install(args) = cli.command else {
            panic!("not install")
        };
        assert_eq!(args.multicluster_namespace.as_deref(), Some("links"));
        for verb in ["gateways", "check"] {
            let cli = Cli::try_parse_from(["meshlink", verb, "-n", "links"]).unwrap();
            assert_eq!(cli.global.multicluster_namespace(), "links");
        }
        let cli = Cli::try_parse_from(["meshlink", "unlink", "--cluster-name", "east"]).unwrap();
        assert_eq!(
            cli.global.multicluster_namespace(),
            DEFAULT_MULTICLUSTER_NAMESPACE
        );
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("3  cluster unreachable"), "{help}");
    }

    #[test]
    fn gateway_addresses_split_on_commas() {
        let cli = Cli::try_parse_from([
            "meshlink",
            "link",
            "--cluster-name",
            "east",
            "--gateway-addresses",
            "10.0.0.1,gw.example.com",
        ])
        .unwrap();
        let Command::Link(args) = cli.command else {
            panic!("not link")
        };
        assert_eq!(args.gateway_addresses, ["10.0.0.1", "gw.example.com"]);
    }
}
