//! The contract every meshlink crate shares: the Link and TrafficSplit custom
//! resources, label and annotation keys, SPIFFE identity names, the discovery protocol
//! and the transport-header codec. It performs no I/O, so every other crate can depend
//! on it without pulling in a runtime.

pub mod discovery;
pub mod identity;
pub mod labels;
pub mod link;
pub mod split;
pub mod transport_header;
