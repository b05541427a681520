//! Dialect F WebSocket frames (and the message → update conversion).
#![no_main]
use khala_sync::protocol::fanout::{decode_frame, FanoutFrame};
use khala_sync::protocol::DecodeLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match decode_frame(&text, &DecodeLimits::default()) {
        Ok(FanoutFrame::Message(m)) => {
            let seq = m.sequence;
            let u = m.into_update();
            assert_eq!(u.watermark, seq);
            assert_eq!(u.doc_key.as_str(), seq.get().to_string());
        }
        Ok(FanoutFrame::StaleCursor(d)) => {
            // The resume point never lies below what the server said it still has.
            assert!(d.resume_cursor() >= d.oldest_available_cursor);
        }
        _ => {}
    }
});
