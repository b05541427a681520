//! Inbound Phoenix frames (every typed view of a reply, batch payload verification).
#![no_main]
use khala_sync::protocol::phoenix::{self, HeartbeatOk, JoinOk, ServerMessage, SubscribeOk, UnsubscribeOk};
use khala_sync::protocol::DecodeLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let limits = DecodeLimits { max_frame_bytes: 1 << 20 };
    match phoenix::decode(&text, &limits) {
        Ok(ServerMessage::Reply(r)) => {
            let _ = r.decode::<JoinOk>("join");
            let _ = r.decode::<SubscribeOk>("subscribe");
            let _ = r.decode::<UnsubscribeOk>("unsubscribe");
            let _ = r.decode::<HeartbeatOk>("heartbeat");
            let _ = r.error();
        }
        Ok(ServerMessage::UpdateBatch(b)) => {
            for u in &b.updates {
                if let Some(p) = &u.payload {
                    let _ = khala_sync::protocol::hash::verify(p, u.payload_hash.as_ref());
                }
            }
        }
        _ => {}
    }
    let _ = phoenix::decode_subscribe_request(&text, &limits);
});
