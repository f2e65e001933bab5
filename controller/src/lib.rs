//! The control plane of one cluster: discovery (streams of endpoints and routes
//! for proxies, built from Services, EndpointSlices, mirrored services and
//! TrafficSplits), failover (TrafficSplit weights driven by endpoint health) and
//! identity (workload certificate signing).

pub mod discovery;
pub mod failover;
pub mod identity;
pub mod watch_errors;
