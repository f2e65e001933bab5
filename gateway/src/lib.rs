//! The cross-cluster gateway: the proxy in gateway mode. It accepts mutual-TLS
//! connections from other clusters, reads the transport header, authorizes the peer,
//! resolves the local target and forwards, reusing the proxy's TLS and balancing
//! stacks.
