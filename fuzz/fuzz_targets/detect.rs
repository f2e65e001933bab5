//! Fuzzes protocol detection with arbitrary first bytes: `classify` must never
//! panic, and once it decides on a prefix every longer input must get the same
//! verdict (detection reads incrementally, so a later flip would misroute).
#![no_main]

#[path = "../../proxy/src/detect.rs"]
#[allow(dead_code)] // the target uses only the pure classifier
mod detect;

use detect::{Verdict, classify};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for end in 0..=data.len() {
        let verdict = classify(&data[..end]);
        match (decided, verdict) {
            (None, Verdict::Known(p)) => decided = Some(p),
            (Some(p), v) => assert_eq!(v, Verdict::Known(p), "verdict changed at {end} bytes"),
            (None, Verdict::NeedMore) => {}
        }
    }
});
