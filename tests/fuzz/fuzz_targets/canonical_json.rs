//! Canonical JSON (payload hash input): total, and a fixed point when it succeeds.
#![no_main]
use khala_sync::protocol::hash::canonical_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = canonical_json(&text) {
        assert_eq!(canonical_json(&c).ok().as_deref(), Some(c.as_str()));
    }
});
