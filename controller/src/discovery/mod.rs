//! Discovery: proxies subscribe to a destination and receive its endpoints and
//! routes as they change. The [`index`] holds the cluster's state and knows
//! nothing of gRPC; [`grpc`] serves it and knows nothing of Kubernetes; [`k8s`]
//! feeds the index from watches.

pub mod grpc;
pub mod index;
pub mod k8s;
pub mod target;
