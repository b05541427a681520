//! `POST /api/sync/token` response bodies.
#![no_main]
use khala_sync::protocol::token::decode_token_response;
use khala_sync::protocol::DecodeLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(grant) = decode_token_response(&text, &DecodeLimits::default()) {
        let _ = grant.refresh_after_secs();
    }
});
