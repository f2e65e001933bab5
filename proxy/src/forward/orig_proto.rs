//! HTTP/1 between meshed peers travels as HTTP/2. The proxy that sends an
//! HTTP/1 request to a meshed endpoint (a sidecar or a gateway) sends it on that
//! endpoint's HTTP/2 connection and marks it with [`HEADER`] (the original
//! version); gateways pass it on unchanged; the proxy that hands it to a plain
//! endpoint (the app) removes the mark and sends HTTP/1 again. All requests
//! between two peers then share one connection instead of one connection per
//! request in flight, which saves a TLS session and two sets of HTTP/1 buffers
//! per connection, and lets one read or write carry many requests under load.
//!
//! Requests that need the HTTP/1 connection itself (CONNECT, `Upgrade`) keep it.

use http::header::{HeaderName, HeaderValue, UPGRADE};
use http::{Method, Request, Version};

use crate::detect::Protocol;

/// Marks an HTTP/1 request carried as HTTP/2 between meshed peers; its value is
/// the original version (`HTTP/1.1` or `HTTP/1.0`).
pub const HEADER: HeaderName = HeaderName::from_static("meshlink-orig-proto");

/// Prepares `req`, which arrived as `protocol`, for an endpoint that is `meshed`
/// (reached over mutual TLS) or not, and returns the protocol to send it with.
pub fn prepare<B>(req: &mut Request<B>, protocol: Protocol, meshed: bool) -> Protocol {
    match protocol {
        Protocol::Http1 if meshed && upgradable(req) => {
            let original = if req.version() == Version::HTTP_10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
            req.headers_mut()
                .insert(HEADER, HeaderValue::from_static(original));
            Protocol::Http2
        }
        Protocol::Http2 if !meshed => match req.headers_mut().remove(HEADER) {
            Some(original) => {
                *req.version_mut() = if original == "HTTP/1.0" {
                    Version::HTTP_10
                } else {
                    Version::HTTP_11
                };
                Protocol::Http1
            }
            None => Protocol::Http2,
        },
        other => other,
    }
}

/// Whether an HTTP/1 request can be carried as an HTTP/2 stream.
fn upgradable<B>(req: &Request<B>) -> bool {
    req.method() != Method::CONNECT && !req.headers().contains_key(UPGRADE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    fn request(version: Version) -> Request<()> {
        Request::builder()
            .uri("http://books:8080/")
            .version(version)
            .body(())
            .unwrap()
    }

    #[test]
    fn http1_to_a_meshed_endpoint_is_marked_and_sent_as_http2() {
        let mut req = request(Version::HTTP_11);
        assert_eq!(prepare(&mut req, Protocol::Http1, true), Protocol::Http2);
        assert_eq!(req.headers()[HEADER], "HTTP/1.1");
        let mut req = request(Version::HTTP_10);
        assert_eq!(prepare(&mut req, Protocol::Http1, true), Protocol::Http2);
        assert_eq!(req.headers()[HEADER], "HTTP/1.0");
    }

    #[test]
    fn http1_to_a_plain_endpoint_is_left_alone() {
        let mut req = request(Version::HTTP_11);
        assert_eq!(prepare(&mut req, Protocol::Http1, false), Protocol::Http1);
        assert!(req.headers().get(HEADER).is_none());
    }

    #[test]
    fn upgrades_and_connect_keep_http1() {
        let mut req = request(Version::HTTP_11);
        req.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(prepare(&mut req, Protocol::Http1, true), Protocol::Http1);
        let mut req = request(Version::HTTP_11);
        *req.method_mut() = Method::CONNECT;
        assert_eq!(prepare(&mut req, Protocol::Http1, true), Protocol::Http1);
        assert!(req.headers().get(HEADER).is_none());
    }

    #[test]
    fn a_marked_request_goes_to_the_app_as_its_original_version() {
        for (mark, version) in [
            ("HTTP/1.1", Version::HTTP_11),
            ("HTTP/1.0", Version::HTTP_10),
        ] {
            let mut req = request(Version::HTTP_2);
            req.headers_mut()
                .insert(HEADER, HeaderValue::from_static(mark));
            assert_eq!(prepare(&mut req, Protocol::Http2, false), Protocol::Http1);
            assert_eq!(req.version(), version);
            assert!(req.headers().get(HEADER).is_none());
        }
    }

    #[test]
    fn marked_requests_stay_http2_between_meshed_peers_and_real_http2_stays() {
        // A gateway forwards to a sidecar: the mark travels on.
        let mut req = request(Version::HTTP_2);
        req.headers_mut()
            .insert(HEADER, HeaderValue::from_static("HTTP/1.1"));
        assert_eq!(prepare(&mut req, Protocol::Http2, true), Protocol::Http2);
        assert_eq!(req.headers()[HEADER], "HTTP/1.1");
        // An app's own HTTP/2 reaches the app as HTTP/2.
        let mut req = request(Version::HTTP_2);
        assert_eq!(prepare(&mut req, Protocol::Http2, false), Protocol::Http2);
        assert_eq!(req.version(), Version::HTTP_2);
    }
}
