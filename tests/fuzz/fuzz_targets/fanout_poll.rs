//! Dialect F poll answers: every status with any body.
#![no_main]
use khala_sync::protocol::fanout::decode_poll;
use khala_sync::protocol::DecodeLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let statuses = [200u16, 400, 401, 403, 404, 409, 410, 413, 429, 500, 503];
    let status = statuses[usize::from(data[0]) % statuses.len()];
    let text = String::from_utf8_lossy(&data[1..]);
    let _ = decode_poll(status, &text, Some(1_000), &DecodeLimits::default());
});
