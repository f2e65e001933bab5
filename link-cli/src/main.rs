//! `meshlink`, the operator's command-line tool: export Services, grant and create
//! Links between clusters and remove them, with kubectl-like flags.
//!
//! Every failure ends as one `error: ...` line on stderr and an exit code from
//! [`error::CliError::exit_code`]; results go to stdout so they can be piped into
//! `kubectl apply -f -`.

mod check;
mod cli;
mod error;
mod export;
mod failover;
mod gateways;
#[cfg(test)]
mod golden;
mod install;
mod link;
mod output;
mod rbac;
mod render;
mod target;
mod top;
mod unlink;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, FailoverCommand};
use crate::error::CliError;

/// Field manager for everything the CLI server-side applies.
pub const FIELD_MANAGER: &str = "meshlink-cli";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // kube's rustls client needs a process-wide provider; aws-lc-rs per STYLE.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok((text, failure)) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`meshlink ... | head`) is not an error worth a line.
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
            match failure {
                None => ExitCode::SUCCESS,
                Some(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs a command: what to print, and a failure to report after printing it
/// (`check` prints its report even when a check fails).
async fn run(cli: Cli) -> Result<(String, Option<CliError>), CliError> {
    if let Command::Check(args) = &cli.command {
        return check::run(&cli.global, args).await;
    }
    run_simple(&cli).await.map(|text| (text, None))
}

async fn run_simple(cli: &Cli) -> Result<String, CliError> {
    let global = &cli.global;
    match &cli.command {
        Command::Export(args) => {
            let value = export::export_value(args.remote_discovery);
            export::run(global, &args.service, Some(value)).await
        }
        Command::Unexport(args) => export::run(global, &args.service, None).await,
        Command::Allow(args) => {
            let namespace = global.multicluster_namespace();
            let access = rbac::remote_mirror_access(namespace, &args.service_account);
            output::manifests(&access.to_values()?, global.output)
        }
        Command::Link(args) => link::run(global, args).await,
        Command::Unlink(args) => unlink::run(global, args).await,
        Command::Gateways => gateways::run(global).await,
        Command::Top(cli::TopCommand::Zones(args)) => {
            top::zones(&args.metrics, global.output).await
        }
        Command::Failover(FailoverCommand::Status) => failover::run(global).await,
        // Handled by `run`, which keeps the report when a check fails.
        Command::Check(_) => Ok(String::new()),
        Command::Install(args) => install::run(args, global),
        Command::Completion(args) => {
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "meshlink", &mut script);
            String::from_utf8(script)
                .map_err(|e| CliError::Failed(format!("completion script is not UTF-8: {e}")))
        }
    }
}
