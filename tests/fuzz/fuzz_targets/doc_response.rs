//! Hydration (doc route) bodies.
#![no_main]
use khala_sync::protocol::http::decode_doc_response;
use khala_sync::protocol::DecodeLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = decode_doc_response(&text, &DecodeLimits::default());
});
