//! Codec tests: round trips, split reads, every error, the documented vectors, and
//! a pseudo-random sweep that must never panic.

use super::*;
use std::num::NonZeroU16;

fn header(name: &str, port: u16, protocol: SessionProtocol, hops: u8) -> TransportHeader {
    TransportHeader {
        name: TargetName::parse(name).unwrap(),
        port: NonZeroU16::new(port).unwrap(),
        protocol,
        hops,
    }
}

fn encode(h: &TransportHeader) -> Vec<u8> {
    let mut buf = Vec::new();
    h.encode(&mut buf);
    assert_eq!(buf.len(), h.encoded_len());
    buf
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Tiny xorshift generator: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn round_trips_and_leaves_session_bytes() {
    let h = header(
        "books.shop.svc.cluster.local",
        8080,
        SessionProtocol::Http1,
        0,
    );
    let mut wire = encode(&h);
    wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let (decoded, used) = TransportHeader::decode(&wire).unwrap().unwrap();
    assert_eq!(decoded, h);
    assert_eq!(used, h.encoded_len());
    assert_eq!(&wire[used..], b"GET / HTTP/1.1\r\n");
}

#[test]
fn every_split_point_needs_more_until_complete() {
    let longest = vec!["a".repeat(63); 4].join(".")[..MAX_NAME_LEN].to_owned();
    let longest = longest.trim_end_matches('.').to_owned();
    for h in [
        header("x", 1, SessionProtocol::Opaque, 255),
        header(&longest, 65535, SessionProtocol::Http2, 1),
    ] {
        let wire = encode(&h);
        for cut in 0..wire.len() {
            assert_eq!(TransportHeader::decode(&wire[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(
            TransportHeader::decode(&wire),
            Ok(Some((h.clone(), wire.len())))
        );
    }
}

#[test]
fn errors_are_reported_as_early_as_possible() {
    assert_eq!(TransportHeader::decode(b"G"), Err(HeaderError::BadMagic));
    assert_eq!(TransportHeader::decode(b"MLT"), Ok(None));
    assert_eq!(
        TransportHeader::decode(b"MLTH\x09"),
        Err(HeaderError::UnknownVersion(9))
    );
    assert_eq!(
        TransportHeader::decode(b"MLTH\x01\xff\xff"),
        Err(HeaderError::Oversized(0xffff))
    );
    // The largest body that fits in 512 bytes is accepted at the prefix stage.
    assert_eq!(decode_prefix(b"MLTH\x01\x01\xf9"), Ok(505));
}

#[test]
fn body_errors() {
    let good = encode(&header("db", 5432, SessionProtocol::Opaque, 1));
    let with = |at: usize, byte: u8| {
        let mut w = good.clone();
        w[at] = byte;
        TransportHeader::decode(&w)
    };
    let mut zero_port = good.clone();
    zero_port[7..9].fill(0);
    assert_eq!(
        TransportHeader::decode(&zero_port),
        Err(HeaderError::ZeroPort)
    );
    assert_eq!(with(9, 3), Err(HeaderError::UnknownProtocol(3)));
    assert_eq!(with(11, 0xc3), Err(HeaderError::NameNotUtf8));
    assert_eq!(
        with(11, b'-'),
        Err(HeaderError::InvalidName(NameError::HyphenAtEdge))
    );
    assert_eq!(decode_body(&[0, 1, 0]), Err(HeaderError::BodyTooShort(3)));
    // A 254-byte name fits the 512-byte limit but not DNS.
    let mut wire = b"MLTH\x01".to_vec();
    wire.extend_from_slice(&(4u16 + 254).to_be_bytes());
    wire.extend_from_slice(&[0, 80, 0, 0]);
    wire.extend_from_slice(&[b'a'; 254]);
    assert_eq!(
        TransportHeader::decode(&wire),
        Err(HeaderError::InvalidName(NameError::TooLong))
    );
}

#[test]
fn target_names() {
    use NameError::*;
    let ok = [
        "a",
        "books.shop.svc.cluster.local",
        "x-1.y2",
        &"a".repeat(63),
    ];
    for name in ok {
        assert_eq!(TargetName::parse(name).unwrap().as_str(), name);
    }
    let bad: &[(&str, NameError)] = &[
        ("", Empty),
        (&"a".repeat(254), TooLong),
        ("a..b", EmptyLabel),
        (".a", EmptyLabel),
        ("a.", EmptyLabel),
        (&"a".repeat(64), LabelTooLong),
        ("-a", HyphenAtEdge),
        ("a-.b", HyphenAtEdge),
        ("Books", BadChar('B')),
        ("a_b", BadChar('_')),
        ("a b", BadChar(' ')),
    ];
    for (name, want) in bad {
        assert_eq!(TargetName::parse(name), Err(*want), "{name:?}");
    }
}

#[test]
fn within_domain_respects_label_boundaries() {
    let n = TargetName::parse("books.shop.svc.cluster.local").unwrap();
    assert!(n.is_within("svc.cluster.local"));
    assert!(n.is_within("svc.cluster.local."));
    assert!(n.is_within("books.shop.svc.cluster.local"));
    assert!(!n.is_within("vc.cluster.local"));
    assert!(!n.is_within("svc.east.local"));
    assert!(!n.is_within(""));
}

#[test]
fn reasons_are_distinct_labels() {
    let all = [
        HeaderError::BadMagic,
        HeaderError::UnknownVersion(2),
        HeaderError::Oversized(600),
        HeaderError::BodyTooShort(1),
        HeaderError::Truncated { got: 1, need: 7 },
        HeaderError::ZeroPort,
        HeaderError::UnknownProtocol(9),
        HeaderError::NameNotUtf8,
        HeaderError::InvalidName(NameError::Empty),
    ];
    let labels: std::collections::HashSet<_> = all.iter().map(HeaderError::reason).collect();
    assert_eq!(labels.len(), all.len());
}

fn parse_vector(line: &str) -> TransportHeader {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("vector line lacks {key}: {line}"))
    };
    let protocol = match field("protocol") {
        "opaque" => SessionProtocol::Opaque,
        "http1" => SessionProtocol::Http1,
        "http2" => SessionProtocol::Http2,
        other => panic!("unknown protocol {other}"),
    };
    header(
        field("name"),
        field("port").parse().unwrap(),
        protocol,
        field("hops").parse().unwrap(),
    )
}

#[test]
fn doc_vectors_match_codec() {
    let doc = include_str!("../../../docs/protocol.md");
    let mut lines = doc.lines();
    let (mut vectors, mut rejects) = (0, 0);
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("vector ") {
            let h = parse_vector(rest);
            let bytes = lines.next().and_then(|l| l.strip_prefix("bytes ")).unwrap();
            let wire = hex(bytes);
            assert_eq!(encode(&h), wire, "encoding of {rest}");
            assert_eq!(TransportHeader::decode(&wire), Ok(Some((h, wire.len()))));
            vectors += 1;
        } else if let Some(rest) = line.strip_prefix("reject ") {
            let (reason, bytes) = rest.split_once(' ').unwrap();
            let err = TransportHeader::decode(&hex(bytes)).unwrap_err();
            assert_eq!(err.reason(), reason, "{rest}");
            rejects += 1;
        }
    }
    assert!(vectors >= 3, "docs/protocol.md has only {vectors} vectors");
    assert!(
        rejects >= 8,
        "docs/protocol.md has only {rejects} reject vectors"
    );
}

#[test]
fn random_inputs_never_panic_and_valid_ones_reencode_exactly() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seed = encode(&header(
        "books.shop.svc.cluster.local",
        8080,
        SessionProtocol::Http1,
        0,
    ));
    let mut decoded = 0;
    for _ in 0..200_000 {
        // Half pure noise, half mutations of a valid header (which reach deeper).
        let input: Vec<u8> = if rng.next() & 1 == 0 {
            (0..rng.below(64)).map(|_| rng.next() as u8).collect()
        } else {
            let mut w = seed.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(w.len());
                w[at] = rng.next() as u8;
            }
            w.truncate(rng.below(w.len() + 8));
            w
        };
        if let Ok(Some((h, used))) = TransportHeader::decode(&input) {
            assert_eq!(encode(&h), input[..used]);
            decoded += 1;
        }
    }
    assert!(decoded > 0, "the sweep never produced a valid header");
}
