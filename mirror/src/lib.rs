//! The service-mirror controller, one per Link: it watches the linked cluster with
//! the Link's credentials, keeps local mirror Services and EndpointSlices converged
//! with the remote exports, probes the remote gateway and reports status on the Link.
//!
//! Layers, from pure to wired: [`desired`] (one remote Service → its mirror
//! objects) ← [`index`] (apply/delete/reset state) ← [`writer`] (server-side
//! apply) ← [`session`] (watches and loops for one set of credentials) ←
//! [`controller`] (leader election, Link lifecycle).

pub mod controller;
pub mod desired;
pub mod error;
pub mod gateway;
pub mod index;
pub mod lease;
pub mod metrics;
pub mod session;
pub mod status;
pub mod writer;

pub use error::Error;

#[cfg(test)]
mod fixtures;
