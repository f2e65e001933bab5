//! The meshlink sidecar proxy as a library: listeners, transparent interception,
//! protocol detection, mutual TLS with SPIFFE identities, load balancing with cost
//! tiers, and the admin server. The gateway is this proxy in gateway mode, and the
//! other long-running components reuse its identity and admin pieces.

pub mod admin;
pub mod metrics;
pub mod pki;
pub mod tls;
