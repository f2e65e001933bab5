//! Fuzzes the transport-header decoder with arbitrary bytes: it must never panic,
//! and whatever it accepts must re-encode to exactly the bytes it consumed (the
//! wire format has one encoding per header).
#![no_main]

#[path = "../../api/src/transport_header.rs"]
#[allow(dead_code)] // the target uses only the decoder and encoder
mod transport_header;

use transport_header::{MAX_HEADER_LEN, TransportHeader};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, used))) = TransportHeader::decode(data) {
        assert!(used <= MAX_HEADER_LEN);
        let mut again = Vec::new();
        header.encode(&mut again);
        assert_eq!(again.as_slice(), &data[..used]);
    }
});
