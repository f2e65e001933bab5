//! The meshlink sidecar proxy as a library: listeners, transparent interception,
//! protocol detection, mutual TLS with SPIFFE identities, load balancing with cost
//! tiers, and the admin server. The gateway is this proxy in gateway mode, and the
//! other long-running components reuse its identity and admin pieces.
//!
//! A connection walks one stage per module: [`accept`] → TLS ([`tls`], via
//! [`inbound`]) → [`detect`] → [`route`] (with [`discovery`] and [`split`]) →
//! [`balance`] → [`forward`] (with [`retry`]).

pub mod accept;
pub mod admin;
pub mod balance;
pub mod certify;
pub mod config;
pub mod detect;
pub mod discovery;
pub mod discovery_grpc;
mod error;
pub mod forward;
pub mod header;
pub mod inbound;
pub mod init;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod pki;
pub mod retry;
pub mod route;
pub mod split;
pub mod tls;

pub use error::Error;
