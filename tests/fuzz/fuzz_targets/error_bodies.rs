//! HTTP error bodies and `sync:error` payloads, and payload-hash strings.
#![no_main]
use khala_sync::protocol::http::decode_error_body;
use khala_sync::protocol::{PayloadHash, ServerError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = decode_error_body(&text);
    let _ = ServerError::from_json(&text);
    let _ = PayloadHash::parse(&text);
});
