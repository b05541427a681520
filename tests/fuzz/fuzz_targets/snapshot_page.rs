//! Snapshot route pages.
#![no_main]
use khala_sync::protocol::http::decode_snapshot_page;
use khala_sync::protocol::DecodeLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = decode_snapshot_page(&text, &DecodeLimits::default());
});
