//! The service-mirror controller, one per Link: it watches the linked cluster with
//! the Link's credentials, keeps local mirror Services and EndpointSlices converged
//! with the remote exports, probes the remote gateway and reports status on the Link.

pub mod desired;
pub mod index;

#[cfg(test)]
mod fixtures;
