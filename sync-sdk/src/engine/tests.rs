//! Scenario tests for the sans-IO engine. The test plays both the driver and the server:
//! it feeds events with a scripted clock and answers the engine's actions by hand.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::protocol::http::{decode_doc_response, decode_snapshot_page};
use crate::protocol::token::decode_token_response;
use crate::protocol::{DecodeLimits, PayloadHash};

const A: &str = "runtime.run_summaries";
const B: &str = "runtime.codex_worker_summaries";

// ----- harness ---------------------------------------------------------------------------

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

fn key(s: &str) -> DocKey {
    DocKey::new(s).unwrap()
}

fn alias(t: &str) -> String {
    match t {
        A => "A".into(),
        B => "B".into(),
        other => other.into(),
    }
}

fn cfg(topics: &[&str]) -> EngineConfig {
    let mut c = EngineConfig::new(
        "https://sync.example.com",
        topics.iter().map(|t| topic(t)).collect(),
    );
    c.seed = 7;
    // The Phoenix scenarios pin the dialect; `Dialect::Auto` has its own tests.
    c.dialect = Dialect::Phoenix;
    c
}

/// A token response decoded exactly as the driver would decode the route's body.
fn grant(expires_in: u64, refresh_after_in: Option<u64>) -> TokenGrant {
    let mut data = json!({
        "token": "header.claims.sig", "token_type": "Bearer", "expires_in": expires_in,
        "issuer": "https://openagents.com", "audience": "openagents-sync",
        "subject": "user:42", "org_id": "org:7", "claims_version": "oa_sync_claims_v1",
        "scopes": [A, B], "kid": "sync-auth-v1",
        "granted_topics": [{"topic": A, "required_scope": A}, B],
    });
    if let Some(r) = refresh_after_in {
        data["refresh_after_in"] = json!(r);
    }
    decode_token_response(
        &json!({ "data": data }).to_string(),
        &DecodeLimits::default(),
    )
    .unwrap()
}

fn http_status(status: u16, code: &str, retry_after: Option<Duration>) -> HttpFailure {
    HttpFailure::Status {
        status,
        code: Some(code.into()),
        message: format!("{status} {code}"),
        retry_after,
    }
}

fn hash_of(payload: &Value) -> String {
    PayloadHash::of_json_text(&payload.to_string())
        .unwrap()
        .to_base64()
}

/// An inline update with a correct `payload_hash`.
fn upd(t: &str, doc: &str, version: u64, w: u64, payload: Value) -> Value {
    json!({"topic": t, "doc_key": doc, "doc_version": version, "payload": payload,
           "payload_hash": hash_of(&payload), "watermark": w, "hydration_required": false})
}

/// A tombstone (khala-sync): payload and hash null.
fn tomb(t: &str, doc: &str, version: u64, w: u64) -> Value {
    json!({"topic": t, "doc_key": doc, "doc_version": version, "payload": null,
           "payload_hash": null, "watermark": w, "deleted": true})
}

/// A hydration-required update: payload null, hash of the full payload.
fn hydr(t: &str, doc: &str, version: u64, w: u64, full: &Value) -> Value {
    json!({"topic": t, "doc_key": doc, "doc_version": version, "payload": null,
           "payload_hash": hash_of(full), "watermark": w, "hydration_required": true})
}

fn snapshot_page(t: &str, w: u64, docs: Vec<Value>, next: Option<&str>) -> SnapshotPage {
    let body = json!({"topic": t, "snapshot_watermark": w, "docs": docs, "next_cursor": next});
    decode_snapshot_page(&body.to_string(), &DecodeLimits::default()).unwrap()
}

fn snap_doc(doc: &str, version: u64, payload: Value) -> Value {
    json!({"doc_key": doc, "doc_version": version, "payload_hash": hash_of(&payload), "payload": payload})
}

/// A frame the engine sent, parsed.
#[derive(Debug, Clone)]
struct Sent {
    conn: ConnId,
    join_ref: Value,
    reference: Value,
    event: String,
    payload: Value,
}

fn parse_send(conn: ConnId, text: &str) -> Sent {
    let v: Value = serde_json::from_str(text).unwrap();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 5, "phoenix v2 frame: {text}");
    assert_eq!(a[2], json!("sync:v1"), "every push is on sync:v1: {text}");
    Sent {
        conn,
        join_ref: a[0].clone(),
        reference: a[1].clone(),
        event: a[3].as_str().unwrap().to_owned(),
        payload: a[4].clone(),
    }
}

fn sends(acts: &[Action]) -> Vec<Sent> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send { conn, text } => Some(parse_send(*conn, text)),
            _ => None,
        })
        .collect()
}

/// The last `sync:subscribe` among `acts`.
fn subscribe_in(acts: &[Action]) -> Sent {
    sends(acts)
        .into_iter()
        .rev()
        .find(|s| s.event == "sync:subscribe")
        .unwrap_or_else(|| panic!("no subscribe in {:?}", kinds(acts)))
}

fn applies(acts: &[Action]) -> Vec<ApplyBatch> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Apply(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

fn changes(acts: &[Action]) -> Vec<Change> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Notify(Notification::Changes(c)) => Some(c.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn store_pages(acts: &[Action]) -> Vec<(Vec<DocWrite>, Option<Watermark>)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::StoreSnapshotPage { docs, finish, .. } => Some((docs.clone(), *finish)),
            _ => None,
        })
        .collect()
}

/// Compact, assertion-friendly description of every action except status notifications.
fn kinds(acts: &[Action]) -> Vec<String> {
    acts.iter().filter_map(kind).collect()
}

fn kind(a: &Action) -> Option<String> {
    Some(match a {
        Action::FetchToken => "FetchToken".into(),
        Action::BindIdentity(_) => "BindIdentity".into(),
        Action::Connect { conn, .. } => format!("Connect#{}", conn.0),
        Action::Send { conn, text } => {
            let s = parse_send(*conn, text);
            match s.event.as_str() {
                "phx_join" => format!("join#{}", conn.0),
                "sync:heartbeat" => format!("heartbeat#{}", conn.0),
                "phx_leave" => format!("leave#{}", conn.0),
                "sync:unsubscribe" => {
                    let ts: Vec<String> = s.payload["topics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| alias(t.as_str().unwrap()))
                        .collect();
                    format!("unsubscribe#{}[{}]", conn.0, ts.join(","))
                }
                "sync:subscribe" => {
                    let resume = s.payload.get("resume_after").cloned().unwrap_or(json!({}));
                    let ts: Vec<String> = s.payload["topics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| {
                            let t = t.as_str().unwrap();
                            match resume.get(t) {
                                Some(w) => format!("{}@{}", alias(t), w),
                                None => alias(t),
                            }
                        })
                        .collect();
                    format!("subscribe#{}[{}]", conn.0, ts.join(","))
                }
                other => format!("send#{}:{other}", conn.0),
            }
        }
        Action::Close(c) => format!("Close#{}", c.0),
        Action::Ping(c) => format!("Ping#{}", c.0),
        Action::ConnectTopic {
            conn,
            topic,
            after_seq,
            ..
        } => format!(
            "ConnectTopic#{} {}@{}",
            conn.0,
            alias(topic.as_str()),
            after_seq.get()
        ),
        Action::Poll {
            topic,
            after_seq,
            limit,
            ..
        } => format!(
            "Poll {}@{} limit={}",
            alias(topic.as_str()),
            after_seq.get(),
            limit
        ),
        Action::Apply(b) => format!(
            "Apply {} {}→{}",
            alias(b.topic.as_str()),
            b.expected_watermark.get(),
            b.new_watermark.get()
        ),
        Action::BeginSnapshot(t) => format!("BeginSnapshot {}", alias(t.as_str())),
        Action::FetchSnapshotPage { topic, cursor, .. } => format!(
            "FetchSnapshotPage {} cursor={}",
            alias(topic.as_str()),
            cursor.as_deref().unwrap_or("-")
        ),
        Action::StoreSnapshotPage {
            topic,
            docs,
            finish,
            ..
        } => format!(
            "StoreSnapshotPage {} docs={} finish={}",
            alias(topic.as_str()),
            docs.len(),
            finish.map_or("-".to_owned(), |w| w.get().to_string())
        ),
        Action::FetchDoc { topic, doc_key, .. } => {
            format!("FetchDoc {} {}", alias(topic.as_str()), doc_key.as_str())
        }
        Action::Notify(Notification::Changes(c)) => format!("Changes({})", c.len()),
        Action::Notify(Notification::Status(_)) => return None,
    })
}

/// Driver + server stand-in around one engine.
struct Sim {
    e: Engine,
    now: Millis,
    /// Answer every client `sync:heartbeat` at once (like a healthy server) while advancing.
    answer_heartbeats: bool,
    /// Every action the engine produced, with its time (determinism checks).
    log: Vec<String>,
}

impl Sim {
    fn new(topics: &[&str]) -> Self {
        Sim::with_cfg(cfg(topics))
    }

    fn with_cfg(cfg: EngineConfig) -> Self {
        Sim {
            e: Engine::new(cfg),
            now: Millis(1_000),
            answer_heartbeats: false,
            log: Vec::new(),
        }
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = self.e.poll_action() {
            self.log.push(format!("{} {a:?}", self.now.0));
            out.push(a);
        }
        out
    }

    fn handle(&mut self, ev: Event) -> Vec<Action> {
        self.e.handle(ev, self.now);
        self.drain()
    }

    /// Moves the clock `ms` forward, firing `Event::Timer` whenever `poll_timeout` is due.
    fn advance(&mut self, ms: u64) -> Vec<Action> {
        let target = Millis(self.now.0 + ms);
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match self.e.poll_timeout() {
                Some(d) if d <= target => {
                    self.now = self.now.max(d);
                    let acts = self.handle(Event::Timer);
                    if self.answer_heartbeats {
                        // Dialect F: a healthy server answers WebSocket pings.
                        for a in &acts {
                            if let Action::Ping(c) = a {
                                let c = *c;
                                out.extend(self.handle(Event::Pong(c)));
                            }
                        }
                        for s in sends(&acts) {
                            if s.event == "sync:heartbeat" {
                                let r = self.reply(
                                    s.conn,
                                    &s,
                                    true,
                                    json!({"subscription_id": "sub_1", "watermarks": []}),
                                );
                                out.extend(r);
                            }
                        }
                    }
                    out.extend(acts);
                }
                _ => {
                    self.now = target;
                    return out;
                }
            }
        }
        panic!("timer storm: poll_timeout keeps firing at {:?}", self.now);
    }

    fn frame(&mut self, conn: ConnId, v: Value) -> Vec<Action> {
        self.handle(Event::Frame(conn, v.to_string()))
    }

    fn reply(&mut self, conn: ConnId, to: &Sent, ok: bool, response: Value) -> Vec<Action> {
        let status = if ok { "ok" } else { "error" };
        self.frame(
            conn,
            json!([to.join_ref, to.reference, "sync:v1", "phx_reply",
                   {"status": status, "response": response}]),
        )
    }

    fn push(&mut self, conn: ConnId, event: &str, payload: Value) -> Vec<Action> {
        self.frame(conn, json!(["1", null, "sync:v1", event, payload]))
    }

    fn batch(&mut self, conn: ConnId, t: &str, updates: Vec<Value>, head: u64) -> Vec<Action> {
        self.push(
            conn,
            "sync:update_batch",
            json!({"updates": updates, "replay_complete": false,
                   "head_watermarks": [{"topic": t, "watermark": head}]}),
        )
    }

    fn sub_ok(&mut self, conn: ConnId, sub: &Sent, heads: &[(&str, u64)]) -> Vec<Action> {
        let topics: Vec<&str> = heads.iter().map(|(t, _)| *t).collect();
        let cw: Vec<Value> = heads
            .iter()
            .map(|(t, w)| json!({"topic": t, "watermark": w}))
            .collect();
        self.reply(
            conn,
            sub,
            true,
            json!({"subscription_id": "sub_1", "topics": topics, "current_watermarks": cw}),
        )
    }

    fn token(&mut self, g: TokenGrant) -> Vec<Action> {
        self.handle(Event::TokenFetched(Ok(g)))
    }

    /// Answers every `Apply` in `acts` with success.
    fn apply_ok(&mut self, acts: &[Action]) -> Vec<Action> {
        let mut out = Vec::new();
        for b in applies(acts) {
            out.extend(self.handle(Event::Applied(
                b.topic.clone(),
                Ok(ApplyOutcome {
                    watermark: b.new_watermark,
                    kept_local: vec![],
                }),
            )));
        }
        out
    }

    /// Start → token → bind with `marks`; returns the actions after `IdentityBound`.
    fn start_with(&mut self, marks: &[(&str, u64)]) -> Vec<Action> {
        self.start_with_grant(marks, grant(300, None))
    }

    fn start_with_grant(&mut self, marks: &[(&str, u64)], g: TokenGrant) -> Vec<Action> {
        assert_eq!(kinds(&self.handle(Event::Start)), ["FetchToken"]);
        let acts = self.token(g);
        assert_eq!(kinds(&acts), ["BindIdentity"]);
        match &acts[0] {
            Action::BindIdentity(id) => {
                assert_eq!(id.server, "https://sync.example.com");
                assert_eq!(id.subject.as_deref(), Some("user:42"));
                assert_eq!(id.org.as_deref(), Some("org:7"));
            }
            other => panic!("{other:?}"),
        }
        let marks = marks
            .iter()
            .map(|(t, w)| (topic(t), Watermark(*w)))
            .collect();
        self.handle(Event::IdentityBound(Ok(marks)))
    }

    /// Socket open → `phx_join` → ok; returns the actions after the join reply.
    fn join(&mut self, conn: ConnId) -> Vec<Action> {
        let acts = self.handle(Event::Connected(conn));
        assert_eq!(kinds(&acts), [format!("join#{}", conn.0)]);
        let join = sends(&acts).remove(0);
        assert_eq!(join.join_ref, json!("1"));
        assert_eq!(join.reference, json!("1"));
        self.reply(
            conn,
            &join,
            true,
            json!({"subscription_id": "sub_1", "allowed_topics": [A, B], "current_watermarks": []}),
        )
    }

    /// Restart with stored watermarks, join conn 1, subscribe ok at head = stored: all live.
    fn live(marks: &[(&str, u64)]) -> Sim {
        let topics: Vec<&str> = marks.iter().map(|(t, _)| *t).collect();
        let mut s = Sim::new(&topics);
        assert_eq!(kinds(&s.start_with(marks)), ["Connect#1"]);
        let acts = s.join(ConnId(1));
        let sub = subscribe_in(&acts);
        s.sub_ok(ConnId(1), &sub, marks);
        for t in &topics {
            assert_eq!(s.phase(t), TopicPhase::Live);
        }
        s
    }

    fn phase(&self, t: &str) -> TopicPhase {
        self.topic_status(t).phase
    }

    fn topic_status(&self, t: &str) -> TopicStatus {
        self.e
            .status()
            .topics
            .into_iter()
            .find(|s| s.topic.as_str() == t)
            .unwrap()
    }

    fn wm(&self, t: &str) -> u64 {
        self.e.watermark(&topic(t)).unwrap().get()
    }

    /// The generation of `t`'s snapshot in progress (what the driver echoes in its answers).
    fn snap_gen(&self, t: &str) -> SnapshotGen {
        let i = self.e.topic_idx(&topic(t)).unwrap();
        self.e.topics[i]
            .snapshot
            .as_ref()
            .and_then(|s| s.generation)
            .unwrap()
    }

    fn state(&self) -> ConnectionState {
        self.e.status().state
    }

    fn m(&self) -> Metrics {
        self.e.metrics().clone()
    }

    /// Milliseconds until the engine's next deadline.
    fn due_in(&self) -> Option<u64> {
        self.e
            .poll_timeout()
            .map(|t| t.0.saturating_sub(self.now.0))
    }
}

const C1: ConnId = ConnId(1);
const C2: ConnId = ConnId(2);

// ----- scenarios -------------------------------------------------------------------------

#[test]
fn first_run_bootstraps_from_snapshot_then_subscribes_from_its_watermark() {
    let mut s = Sim::new(&[A]);
    assert_eq!(kinds(&s.start_with(&[])), ["BeginSnapshot A", "Connect#1"]);
    assert_eq!(s.phase(A), TopicPhase::Bootstrapping);
    // The socket joins while the snapshot loads: nothing to subscribe yet.
    assert_eq!(kinds(&s.join(C1)), Vec::<String>::new());

    let acts = s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(1))));
    assert_eq!(kinds(&acts), ["FetchSnapshotPage A cursor=-"]);
    match &acts[0] {
        Action::FetchSnapshotPage { limit, token, .. } => {
            assert_eq!(*limit, 2000);
            assert_eq!(token.expose(), "header.claims.sig");
        }
        other => panic!("{other:?}"),
    }
    let page1 = snapshot_page(
        A,
        100,
        vec![
            snap_doc("run:1", 3, json!({"s": 1})),
            snap_doc("run:2", 1, json!({"s": 2})),
        ],
        Some("c1"),
    );
    let acts = s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Ok(page1),
    ));
    // Pipelined: the next page is fetched (asked for first) while this one is stored.
    assert_eq!(
        kinds(&acts),
        [
            "FetchSnapshotPage A cursor=c1",
            "StoreSnapshotPage A docs=2 finish=-"
        ]
    );
    let (docs, _) = store_pages(&acts).remove(0);
    assert!(docs
        .iter()
        .all(|d| d.verified && d.watermark == Watermark(100)));
    assert_eq!(docs[0].payload.as_deref(), Some(r#"{"s":1}"#));
    // Progress counts what the store has staged, not what was received.
    assert_eq!(s.topic_status(A).snapshot_docs, 0);

    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    assert_eq!(kinds(&acts), Vec::<String>::new());
    assert_eq!(s.topic_status(A).snapshot_docs, 2);
    let page2 = snapshot_page(A, 100, vec![snap_doc("run:3", 9, json!([1, 2]))], None);
    let acts = s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Ok(page2),
    ));
    assert_eq!(kinds(&acts), ["StoreSnapshotPage A docs=1 finish=100"]);
    // Nothing is committed until the final page is stored.
    assert_eq!(s.wm(A), 0);

    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@100]"]);
    assert_eq!(
        changes(&acts),
        [Change::Bootstrapped {
            topic: topic(A),
            watermark: Watermark(100),
            docs: 3
        }]
    );
    assert_eq!(s.wm(A), 100);
    assert_eq!(s.phase(A), TopicPhase::Subscribing);
    let sub = subscribe_in(&acts);
    assert_eq!(sub.payload["replay_batch_size"], json!(200));

    s.sub_ok(C1, &sub, &[(A, 100)]);
    assert_eq!(s.phase(A), TopicPhase::Live);
    assert!(s.e.status().is_live());
    assert_eq!(s.state(), ConnectionState::Connected);
    let m = s.m();
    assert_eq!(
        (m.snapshots, m.snapshot_docs, m.connects, m.reconnects),
        (1, 3, 1, 0)
    );
    assert!(m.catch_up_ms.is_some());
}

#[test]
fn restart_with_stored_watermarks_resumes_without_snapshot() {
    let mut s = Sim::new(&[A, B]);
    assert_eq!(kinds(&s.start_with(&[(A, 10), (B, 20)])), ["Connect#1"]);
    assert_eq!(s.state(), ConnectionState::Connecting);
    let acts = s.join(C1);
    assert_eq!(kinds(&acts), ["subscribe#1[A@10,B@20]"]);
    assert_eq!(s.phase(A), TopicPhase::Subscribing);
    assert_eq!(s.m().snapshots, 0);
}

#[test]
fn replay_batches_then_ok_reply_goes_live() {
    let mut s = Sim::new(&[A]);
    s.start_with(&[(A, 10)]);
    let sub = subscribe_in(&s.join(C1));
    let acts = s.batch(
        C1,
        A,
        vec![
            upd(A, "run:1", 1, 11, json!({"n": 11})),
            upd(A, "run:2", 1, 12, json!({"n": 12})),
        ],
        14,
    );
    assert_eq!(kinds(&acts), ["Apply A 10→12"]);
    assert_eq!(s.phase(A), TopicPhase::Replaying);
    assert_eq!(s.topic_status(A).head, Some(Watermark(14)));
    // The next page arrives before the store answered: it waits.
    let acts2 = s.batch(
        C1,
        A,
        vec![
            upd(A, "run:1", 2, 13, json!({"n": 13})),
            upd(A, "run:3", 1, 14, json!({})),
        ],
        14,
    );
    assert_eq!(kinds(&acts2), Vec::<String>::new());
    assert_eq!(s.wm(A), 10, "never ahead of disk");
    let acts = s.apply_ok(&acts);
    assert_eq!(kinds(&acts), ["Changes(2)", "Apply A 12→14"]);
    assert_eq!(
        changes(&acts)[0],
        Change::Upsert {
            topic: topic(A),
            doc_key: key("run:1"),
            doc_version: 1,
            payload: r#"{"n":11}"#.into(),
            watermark: Watermark(11)
        }
    );
    assert_eq!(s.wm(A), 12);
    let p = s.topic_status(A).replay_progress.unwrap();
    assert!((p - 0.5).abs() < 1e-6, "{p}");
    assert_eq!(kinds(&s.apply_ok(&acts)), ["Changes(2)"]);
    s.sub_ok(C1, &sub, &[(A, 14)]);
    assert_eq!(s.phase(A), TopicPhase::Live);
    assert_eq!(s.topic_status(A).replay_progress, Some(1.0));
    let m = s.m();
    assert_eq!((m.updates_applied, m.batches_committed), (4, 2));
}

#[test]
fn duplicate_batch_is_not_applied_twice() {
    let mut s = Sim::live(&[(A, 10)]);
    let b = vec![upd(A, "k", 1, 11, json!(1)), upd(A, "k", 2, 12, json!(2))];
    let acts = s.batch(C1, A, b.clone(), 12);
    assert_eq!(kinds(&acts), ["Apply A 10→12"]);
    s.apply_ok(&acts);
    assert_eq!(kinds(&s.batch(C1, A, b, 12)), Vec::<String>::new());
    assert_eq!(s.m().duplicates_skipped, 2);
    // Overlap: the known prefix is skipped, the rest applied.
    let acts = s.batch(
        C1,
        A,
        vec![upd(A, "k", 2, 12, json!(2)), upd(A, "k", 3, 13, json!(3))],
        13,
    );
    assert_eq!(kinds(&acts), ["Apply A 12→13"]);
    assert_eq!(applies(&acts)[0].writes.len(), 1);
    assert_eq!(s.m().duplicates_skipped, 3);
    // A duplicate of a batch still being applied is dropped after it commits.
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k", 3, 13, json!(3))], 13)),
        Vec::<String>::new()
    );
    assert_eq!(kinds(&s.apply_ok(&acts)), ["Changes(1)"]);
    assert_eq!(s.m().duplicates_skipped, 4);
    assert_eq!(s.m().batches_committed, 2);
}

/// A replaying engine with commit ahead on and groups of four updates.
fn ahead_sim() -> Sim {
    let mut c = cfg(&[A]);
    c.commit_ahead = true;
    c.group_commit_max_updates = 4;
    let mut s = Sim::with_cfg(c);
    assert_eq!(kinds(&s.start_with(&[(A, 10)])), ["Connect#1"]);
    assert_eq!(kinds(&s.join(C1)), ["subscribe#1[A@10]"]);
    s
}

fn two(from: u64) -> Vec<Value> {
    (from..from + 2)
        .map(|w| upd(A, &format!("k{w}"), 1, w, json!(w)))
        .collect()
}

fn applied_ok(s: &mut Sim, _from: u64, to: u64) -> Vec<Action> {
    s.handle(Event::Applied(
        topic(A),
        Ok(ApplyOutcome {
            watermark: Watermark(to),
            kept_local: vec![],
        }),
    ))
}

/// Commit ahead: once a full group is queued behind the commit in flight, it goes to the store
/// at once (expecting the first one's watermark), never more than two in flight, in order.
#[test]
fn commit_ahead_hands_over_a_full_group_behind_the_commit_in_flight() {
    let mut s = ahead_sim();
    assert_eq!(kinds(&s.batch(C1, A, two(11), 100)), ["Apply A 10→12"]);
    assert_eq!(s.phase(A), TopicPhase::Replaying);
    // Two queued: not a full group yet.
    assert_eq!(kinds(&s.batch(C1, A, two(13), 100)), Vec::<String>::new());
    // Four queued: handed over behind 10→12.
    assert_eq!(kinds(&s.batch(C1, A, two(15), 100)), ["Apply A 12→16"]);
    // Two in flight: the next full group waits.
    s.batch(C1, A, two(17), 100);
    assert_eq!(kinds(&s.batch(C1, A, two(19), 100)), Vec::<String>::new());
    // The first commit ends: 12→16 is the one in flight now, and the full group behind it
    // goes at once.
    let acts = applied_ok(&mut s, 10, 12);
    assert_eq!(kinds(&acts), ["Changes(2)", "Apply A 16→20"]);
    assert_eq!(s.wm(A), 12);
    assert_eq!(kinds(&applied_ok(&mut s, 12, 16)), ["Changes(4)"]);
    assert_eq!(kinds(&applied_ok(&mut s, 16, 20)), ["Changes(4)"]);
    assert_eq!(s.wm(A), 20);
    assert_eq!(s.m().batches_committed, 3);
    assert_eq!(s.m().updates_applied, 10);
}

/// Only plain groups go ahead: one with a gap (or an unverified payload, or a hydration) waits
/// for the commit in flight and takes the normal path.
#[test]
fn commit_ahead_leaves_a_group_with_a_gap_to_the_normal_path() {
    let mut s = ahead_sim();
    s.batch(C1, A, two(11), 100);
    s.batch(C1, A, two(13), 100);
    // 16 is missing.
    let acts = s.batch(
        C1,
        A,
        vec![upd(A, "a", 1, 15, json!(1)), upd(A, "b", 1, 17, json!(2))],
        100,
    );
    assert_eq!(kinds(&acts), Vec::<String>::new());
    let mut bad = upd(A, "c", 1, 13, json!({"x": 1}));
    bad["payload_hash"] = json!(hash_of(&json!({"x": 2})));
    let mut s2 = ahead_sim();
    s2.batch(C1, A, two(11), 100);
    s2.batch(C1, A, vec![bad, upd(A, "d", 1, 14, json!(3))], 100);
    assert_eq!(kinds(&s2.batch(C1, A, two(15), 100)), Vec::<String>::new());
    // After the commit, the normal path commits the contiguous prefix (the hole is left to
    // the replay still in progress: its subscribe has not been answered yet).
    let acts = applied_ok(&mut s, 10, 12);
    assert_eq!(kinds(&acts), ["Changes(2)", "Apply A 12→15"]);
}

/// The commit in flight fails: the one handed over behind it cannot succeed (it expects a
/// watermark that was not written); its answer is ignored and the topic retries from the
/// committed watermark as after any failed commit.
#[test]
fn commit_ahead_behind_a_failed_commit_is_given_up() {
    let mut s = ahead_sim();
    s.batch(C1, A, two(11), 100);
    s.batch(C1, A, two(13), 100);
    assert_eq!(kinds(&s.batch(C1, A, two(15), 100)), ["Apply A 12→16"]);
    let acts = s.handle(Event::Applied(
        topic(A),
        Err(StoreError::Other("disk I/O error".into())),
    ));
    assert_eq!(kinds(&acts), Vec::<String>::new());
    assert_eq!(s.wm(A), 10);
    // The late answer of 12→16 (a compare-and-set failure) changes nothing.
    let acts = s.handle(Event::Applied(
        topic(A),
        Err(StoreError::WatermarkConflict {
            topic: topic(A),
            expected: Watermark(12),
            found: Watermark(10),
        }),
    ));
    assert!(kinds(&acts).is_empty(), "{:?}", kinds(&acts));
    assert_eq!(s.wm(A), 10);
    // After the backoff, the topic resubscribes from 10.
    let acts = s.advance(60_000);
    assert!(
        kinds(&acts).contains(&"subscribe#1[A@10]".to_string()),
        "{:?}",
        kinds(&acts)
    );
}

#[test]
fn gap_applies_prefix_and_resubscribes_exactly_once() {
    let mut s = Sim::live(&[(A, 10)]);
    let acts = s.batch(
        C1,
        A,
        vec![
            upd(A, "k", 1, 11, json!(11)),
            upd(A, "k", 2, 12, json!(12)),
            upd(A, "k", 4, 14, json!(14)),
            upd(A, "k", 5, 15, json!(15)),
        ],
        15,
    );
    assert_eq!(kinds(&acts), ["Apply A 10→12"]);
    assert_eq!(applies(&acts)[0].writes.len(), 2);
    assert_eq!(s.m().gaps, 1);
    // The resubscribe goes out only once the prefix is committed, from the new watermark.
    let acts = s.apply_ok(&acts);
    assert_eq!(kinds(&acts), ["Changes(2)", "subscribe#1[A@12]"]);
    let sub = subscribe_in(&acts);
    // Live pushes that still show the gap before the reply: no second resubscribe.
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k", 6, 16, json!(16))], 16)),
        Vec::<String>::new()
    );
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k", 7, 17, json!(17))], 17)),
        Vec::<String>::new()
    );
    assert_eq!(s.m().gaps, 1);
    // The replay fills the hole.
    let replay: Vec<Value> = (13..=17)
        .map(|w| upd(A, "k", w - 10, w, json!(w)))
        .collect();
    let acts = s.batch(C1, A, replay, 17);
    assert_eq!(kinds(&acts), ["Apply A 12→17"]);
    // A replay is coalesced: one write (and one change) for "k", its newest version.
    assert_eq!(applies(&acts)[0].writes.len(), 1);
    assert_eq!(applies(&acts)[0].writes[0].doc_version, 7);
    assert_eq!(kinds(&s.apply_ok(&acts)), ["Changes(1)"]);
    s.sub_ok(C1, &sub, &[(A, 17)]);
    assert_eq!(s.phase(A), TopicPhase::Live);
    assert_eq!(s.wm(A), 17);
    assert_eq!(s.m().gaps, 1);
}

#[test]
fn hash_mismatch_rejects_resyncs_once_and_keeps_unverified_snapshot_copy() {
    let mut s = Sim::live(&[(A, 10)]);
    let mut bad = upd(A, "k2", 1, 12, json!({"x": 1.5}));
    bad["payload_hash"] = json!(hash_of(&json!({"x": 1.25})));
    let acts = s.batch(
        C1,
        A,
        vec![
            upd(A, "k1", 1, 11, json!(1)),
            bad,
            upd(A, "k3", 1, 13, json!(3)),
        ],
        13,
    );
    // The update before the mismatch commits; the mismatching one is rejected.
    assert_eq!(kinds(&acts), ["Apply A 10→11"]);
    assert_eq!(s.m().hash_mismatches, 1);
    let acts = s.apply_ok(&acts);
    assert_eq!(
        kinds(&acts),
        ["Changes(1)", "unsubscribe#1[A]", "BeginSnapshot A"]
    );
    assert_eq!(s.phase(A), TopicPhase::Bootstrapping);
    // Live pushes for the topic are ignored while it bootstraps.
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k4", 1, 14, json!(4))], 14)),
        Vec::<String>::new()
    );

    assert_eq!(
        kinds(&s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(2))))),
        ["FetchSnapshotPage A cursor=-"]
    );
    // The snapshot's own copy mismatches too (float formatting upstream): keep, mark, count.
    let mut doc = snap_doc("k2", 1, json!({"x": 1.5}));
    doc["payload_hash"] = json!(hash_of(&json!({"x": 1.25})));
    let page = snapshot_page(A, 20, vec![doc, snap_doc("k1", 1, json!(1))], None);
    let acts = s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Ok(page),
    ));
    assert_eq!(kinds(&acts), ["StoreSnapshotPage A docs=2 finish=20"]);
    let (docs, _) = store_pages(&acts).remove(0);
    assert!(!docs[0].verified);
    assert!(docs[1].verified);
    assert_eq!(s.m().unverified_docs, 1);
    assert_eq!(s.m().hash_mismatches, 2);
    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@20]"]);
    s.sub_ok(C1, &subscribe_in(&acts), &[(A, 20)]);
    assert_eq!(s.phase(A), TopicPhase::Live);

    // Another mismatch later: no second resync (never loop); stored unverified.
    let mut bad = upd(A, "k2", 2, 21, json!({"x": 2.5}));
    bad["payload_hash"] = json!(hash_of(&json!("other")));
    let acts = s.batch(C1, A, vec![bad], 21);
    assert_eq!(kinds(&acts), ["Apply A 20→21"]);
    assert!(!applies(&acts)[0].writes[0].verified);
    assert_eq!(kinds(&s.apply_ok(&acts)), ["Changes(1)"]);
    let m = s.m();
    assert_eq!(
        (m.snapshots, m.hash_mismatches, m.unverified_docs),
        (1, 3, 2)
    );
}

#[test]
fn kept_local_updates_are_not_notified() {
    let mut s = Sim::live(&[(A, 10)]);
    let acts = s.batch(
        C1,
        A,
        vec![
            upd(A, "k1", 5, 11, json!(1)),
            upd(A, "k2", 1, 12, json!(2)),
            upd(A, "k3", 1, 13, json!(3)),
        ],
        13,
    );
    let acts = s.handle(Event::Applied(
        topic(A),
        Ok(ApplyOutcome {
            watermark: applies(&acts)[0].new_watermark,
            kept_local: vec![1],
        }),
    ));
    let keys: Vec<String> = changes(&acts)
        .iter()
        .map(|c| match c {
            Change::Upsert { doc_key, .. } => doc_key.as_str().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(keys, ["k1", "k3"]);
    assert_eq!(
        s.wm(A),
        13,
        "kept-local updates still advance the watermark"
    );
    assert_eq!(s.m().updates_applied, 3);
}

#[test]
fn tombstone_deletes_the_document() {
    let mut s = Sim::live(&[(A, 10)]);
    let acts = s.batch(
        C1,
        A,
        vec![upd(A, "k1", 1, 11, json!({"a": 1})), tomb(A, "k1", 2, 12)],
        12,
    );
    let b = applies(&acts).remove(0);
    assert_eq!(b.writes[1].payload, None);
    assert_eq!(b.writes[1].payload_hash, None);
    assert_eq!(b.writes[1].doc_version, 2);
    let acts = s.apply_ok(&acts);
    assert_eq!(
        changes(&acts)[1],
        Change::Delete {
            topic: topic(A),
            doc_key: key("k1"),
            watermark: Watermark(12)
        }
    );
}

#[test]
fn hydration_fetches_docs_before_the_batch_commits() {
    let mut s = Sim::live(&[(A, 10)]);
    let full = json!({"big": "payload", "n": 3});
    let acts = s.batch(
        C1,
        A,
        vec![
            upd(A, "k1", 1, 11, json!(1)),
            hydr(A, "k2", 3, 12, &full),
            hydr(A, "k3", 1, 13, &json!("gone")),
        ],
        13,
    );
    assert_eq!(kinds(&acts), ["FetchDoc A k2", "FetchDoc A k3"]);
    // A live push during hydration waits for the batch.
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k4", 1, 14, json!(4))], 14)),
        Vec::<String>::new()
    );
    // The doc route already has a newer version: keep it (verified against its own hash).
    let newer = json!({"big": "payload", "n": 5});
    let body = json!({"doc_key": "k2", "doc_version": 5, "payload": newer,
                      "payload_hash": hash_of(&newer), "watermark": 40});
    let doc = decode_doc_response(&body.to_string(), &DecodeLimits::default()).unwrap();
    let acts = s.handle(Event::DocFetched(topic(A), key("k2"), Ok(doc)));
    assert_eq!(kinds(&acts), Vec::<String>::new(), "k3 still missing");
    // 404: deleted since → tombstone.
    let acts = s.handle(Event::DocFetched(
        topic(A),
        key("k3"),
        Err(http_status(404, "not_found", None)),
    ));
    assert_eq!(kinds(&acts), ["Apply A 10→13"]);
    let b = applies(&acts).remove(0);
    assert_eq!(b.writes[1].doc_version, 5);
    assert_eq!(
        b.writes[1].payload.as_deref(),
        Some(r#"{"big":"payload","n":5}"#)
    );
    assert_eq!(b.writes[2].payload, None);
    assert_eq!(s.m().hydrations, 1);
    let acts = s.apply_ok(&acts);
    assert_eq!(kinds(&acts), ["Changes(3)", "Apply A 13→14"]);
    let ch = changes(&acts);
    assert!(matches!(&ch[1], Change::Upsert { doc_version: 5, .. }));
    assert!(matches!(&ch[2], Change::Delete { doc_key, .. } if doc_key.as_str() == "k3"));
}

#[test]
fn stale_cursor_bootstraps_once_then_tails() {
    let mut s = Sim::new(&[A, B]);
    s.start_with(&[(A, 10), (B, 20)]);
    let sub = subscribe_in(&s.join(C1));
    let stale = json!({"code": "stale_cursor", "message": "cursor is older than retention floor",
        "full_resync_required": true, "reason_codes": ["retention_floor_breach"],
        "stale_topics": [{"topic": A, "reason": "retention_floor_breach", "qos_tier": "warm",
            "resume_after": 10, "retention_floor": 42, "head_watermark": 90, "replay_lag": 80,
            "replay_budget_events": 20000}],
        "snapshot_plan": {"format": "openagents.sync.snapshot.v1", "topics": [A]}});
    let acts = s.reply(C1, &sub, false, stale);
    // The stale topic bootstraps; the other topic of the rejected subscribe goes on.
    assert_eq!(kinds(&acts), ["BeginSnapshot A", "subscribe#1[B@20]"]);
    assert_eq!(s.m().stale_cursors, 1);
    s.sub_ok(C1, &subscribe_in(&acts), &[(B, 20)]);
    assert_eq!(s.phase(B), TopicPhase::Live);
    assert_eq!(s.phase(A), TopicPhase::Bootstrapping);

    s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(1))));
    let page = snapshot_page(A, 90, vec![snap_doc("k", 4, json!({}))], None);
    assert_eq!(
        kinds(&s.handle(Event::SnapshotPageFetched(
            topic(A),
            s.snap_gen(A),
            Ok(page)
        ))),
        ["StoreSnapshotPage A docs=1 finish=90"]
    );
    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@90]"]);
    s.sub_ok(C1, &subscribe_in(&acts), &[(A, 90)]);
    assert_eq!(s.phase(A), TopicPhase::Live);
    // Tail.
    let acts = s.batch(C1, A, vec![upd(A, "k", 5, 91, json!(1))], 91);
    assert_eq!(kinds(&acts), ["Apply A 90→91"]);
    assert_eq!(s.m().snapshots, 1);
    assert_eq!(s.topic_status(A).error, None);
}

fn stale_for(t: &str) -> Value {
    json!({"code": "stale_cursor", "message": "replay budget exceeded for topic qos tier; full resync required",
           "full_resync_required": true, "reason_codes": ["replay_budget_exceeded"],
           "stale_topics": [{"topic": t, "reason": "replay_budget_exceeded"}]})
}

/// Answers BeginSnapshot → one page at `w` → stored; returns the actions of the final store.
fn run_snapshot(s: &mut Sim, t: &str, generation: u64, w: u64) -> Vec<Action> {
    let acts = s.handle(Event::SnapshotBegun(topic(t), Ok(SnapshotGen(generation))));
    assert_eq!(
        kinds(&acts),
        [format!("FetchSnapshotPage {} cursor=-", alias(t))]
    );
    let page = snapshot_page(t, w, vec![snap_doc("k", 1, json!(w))], None);
    s.handle(Event::SnapshotPageFetched(
        topic(t),
        s.snap_gen(t),
        Ok(page),
    ));
    s.handle(Event::SnapshotPageStored(topic(t), s.snap_gen(t), Ok(())))
}

#[test]
fn stale_again_right_after_snapshot_backs_off_and_surfaces_stale_loop() {
    let mut s = Sim::new(&[A]);
    s.start_with(&[(A, 10)]);
    let sub = subscribe_in(&s.join(C1));
    assert_eq!(
        kinds(&s.reply(C1, &sub, false, stale_for(A))),
        ["BeginSnapshot A"]
    );
    let acts = run_snapshot(&mut s, A, 1, 500);
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@500]"]);
    // Stale again right after the fresh snapshot: no immediate snapshot.
    let acts = s.reply(C1, &subscribe_in(&acts), false, stale_for(A));
    assert_eq!(kinds(&acts), Vec::<String>::new());
    let err = SyncError::StaleLoop {
        topic: topic(A),
        snapshots: 1,
    };
    assert_eq!(s.topic_status(A).error, Some(err.clone()));
    assert_eq!(s.e.status().last_error, Some(err));
    assert_eq!(s.m().snapshots, 1);
    assert_eq!(s.m().stale_cursors, 2);
    // Retry after the (first-window) backoff.
    assert!(s.due_in().unwrap() <= 250);
    let acts = s.advance(250);
    assert_eq!(kinds(&acts), ["BeginSnapshot A"]);
    let acts = run_snapshot(&mut s, A, 2, 600);
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@600]"]);
    // And again: the window grows; still no tight loop.
    let acts = s.reply(C1, &subscribe_in(&acts), false, stale_for(A));
    assert_eq!(kinds(&acts), Vec::<String>::new());
    assert!(matches!(
        s.topic_status(A).error,
        Some(SyncError::StaleLoop { snapshots: 2, .. })
    ));
    assert!(s.due_in().unwrap() <= 500);
    assert_eq!(kinds(&s.advance(500)), ["BeginSnapshot A"]);
    let acts = run_snapshot(&mut s, A, 3, 700);
    s.sub_ok(C1, &subscribe_in(&acts), &[(A, 700)]);
    assert_eq!(s.phase(A), TopicPhase::Live);
    assert_eq!(s.topic_status(A).error, None);
    assert_eq!(s.m().snapshots, 3);
}

#[test]
fn stale_push_for_a_subscribed_topic_bootstraps_only_that_topic() {
    let mut s = Sim::live(&[(A, 10), (B, 20)]);
    let acts = s.push(C1, "sync:error", stale_for(A));
    // The server already dropped the topic: no unsubscribe, just the snapshot.
    assert_eq!(kinds(&acts), ["BeginSnapshot A"]);
    assert_eq!(s.m().stale_cursors, 1);
    assert_eq!(s.phase(B), TopicPhase::Live);
    assert_eq!(
        kinds(&s.batch(C1, B, vec![upd(B, "w", 1, 21, json!(1))], 21)),
        ["Apply B 20→21"]
    );
    let acts = run_snapshot(&mut s, A, 1, 300);
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@300]"]);
}

#[test]
fn slow_consumer_throttle_keeps_going_and_disconnect_waits_reconnect_after_ms() {
    let mut s = Sim::live(&[(A, 10)]);
    let throttle = json!({"code": "slow_consumer", "message": "client cannot keep up with live fanout",
        "action": "throttle", "topic": A, "queue_depth": 65, "queue_limit": 64,
        "reconnect_after_ms": 2000, "full_resync_required": false});
    assert_eq!(
        kinds(&s.push(C1, "sync:error", throttle.clone())),
        Vec::<String>::new()
    );
    assert_eq!(s.m().slow_consumer, 1);
    assert_eq!(s.state(), ConnectionState::Connected);
    let acts = s.batch(C1, A, vec![upd(A, "k", 1, 11, json!(1))], 11);
    assert_eq!(kinds(&acts), ["Apply A 10→11"]);
    s.apply_ok(&acts);

    let mut disconnect = throttle;
    disconnect["action"] = json!("disconnect");
    assert_eq!(kinds(&s.push(C1, "sync:error", disconnect)), ["Close#1"]);
    assert_eq!(s.m().slow_consumer, 2);
    assert_eq!(s.state(), ConnectionState::Backoff);
    let wait = s.due_in().unwrap();
    assert!((2000..=2250).contains(&wait), "reconnect after {wait} ms");
    assert_eq!(s.e.status().next_retry_at, Some(Millis(s.now.0 + wait)));
    assert_eq!(kinds(&s.advance(wait - 1)), Vec::<String>::new());
    assert_eq!(kinds(&s.advance(1)), ["Connect#2"]);
    // Resume from the committed watermark.
    assert_eq!(kinds(&s.join(C2)), ["subscribe#2[A@11]"]);
}

#[test]
fn reauth_push_refreshes_token_and_switches_make_before_break() {
    let mut s = Sim::live(&[(A, 10)]);
    let reauth = json!({"code": "reauth_required", "message": "token expired",
                        "reauth_required": true, "reason": "token_expired"});
    assert_eq!(kinds(&s.push(C1, "sync:error", reauth)), ["FetchToken"]);
    // The old socket keeps streaming meanwhile.
    let acts = s.batch(C1, A, vec![upd(A, "k", 1, 11, json!(1))], 11);
    assert_eq!(kinds(&acts), ["Apply A 10→11"]);
    s.apply_ok(&acts);
    let mut g = grant(300, None);
    g.token = crate::protocol::token::SyncToken::new("fresh.jwt");
    let acts = s.token(g);
    assert_eq!(
        kinds(&acts),
        ["Connect#2"],
        "new socket while the old one is open"
    );
    match &acts[0] {
        Action::Connect { token, .. } => assert_eq!(token.expose(), "fresh.jwt"),
        other => panic!("{other:?}"),
    }
    assert_eq!(kinds(&s.handle(Event::Connected(C2))), ["join#2"]);
    let acts = s.batch(C1, A, vec![upd(A, "k", 2, 12, json!(2))], 12);
    assert_eq!(kinds(&acts), ["Apply A 11→12"]);
    s.apply_ok(&acts);
    assert_eq!(s.phase(A), TopicPhase::Live);
    // Join ok on the new socket: only now the old one closes; resubscribe from committed.
    let join = Sent {
        conn: C2,
        join_ref: json!("1"),
        reference: json!("1"),
        event: "phx_join".into(),
        payload: json!({}),
    };
    let acts = s.reply(C2, &join, true, json!({"subscription_id": "sub_2"}));
    assert_eq!(kinds(&acts), ["Close#1", "subscribe#2[A@12]"]);
    // The retired socket is ignored from now on.
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k", 3, 13, json!(3))], 13)),
        Vec::<String>::new()
    );
    let m = s.m();
    assert_eq!(
        (m.tokens_fetched, m.connects, m.reconnects, m.snapshots),
        (2, 2, 1, 0)
    );
}

/// Proactive refresh at `at_secs` after the grant: FetchToken, then make-before-break.
fn refresh_scenario(g: TokenGrant, at_secs: u64) {
    let mut s = Sim::new(&[A]);
    s.answer_heartbeats = true;
    s.start_with_grant(&[(A, 10)], g.clone());
    let granted_at = s.now.0;
    let sub = subscribe_in(&s.join(C1));
    s.sub_ok(C1, &sub, &[(A, 10)]);
    let before = s.advance(at_secs * 1000 - (s.now.0 - granted_at) - 1);
    assert!(
        kinds(&before).iter().all(|k| k == "heartbeat#1"),
        "{:?}",
        kinds(&before)
    );
    assert_eq!(s.state(), ConnectionState::Connected);
    let acts = s.advance(1);
    let work: Vec<String> = kinds(&acts)
        .into_iter()
        .filter(|k| k != "heartbeat#1")
        .collect();
    assert_eq!(work, ["FetchToken"]);
    assert_eq!(s.phase(A), TopicPhase::Live, "stream not dropped");
    assert_eq!(kinds(&s.token(g)), ["Connect#2"]);
    let acts = s.join(C2);
    assert_eq!(kinds(&acts), ["Close#1", "subscribe#2[A@10]"]);
    assert_eq!(s.m().tokens_fetched, 2);
}

#[test]
fn proactive_refresh_at_refresh_after_in_without_dropping_the_stream() {
    refresh_scenario(grant(300, Some(100)), 100);
}

#[test]
fn proactive_refresh_defaults_to_80_percent_of_expires_in() {
    refresh_scenario(grant(600, None), 480);
}

#[test]
fn forbidden_topic_fails_alone_and_the_others_go_live() {
    let mut s = Sim::new(&[A, B]);
    s.start_with(&[(A, 10), (B, 20)]);
    let sub = subscribe_in(&s.join(C1));
    let acts = s.reply(
        C1,
        &sub,
        false,
        json!({"code": "forbidden_topic", "message": "not allowed", "forbidden_topics": [B]}),
    );
    assert_eq!(kinds(&acts), ["subscribe#1[A@10]"]);
    let tb = s.topic_status(B);
    assert_eq!(tb.phase, TopicPhase::Failed);
    assert_eq!(
        tb.error,
        Some(SyncError::TopicForbidden { topic: topic(B) })
    );
    s.sub_ok(C1, &subscribe_in(&acts), &[(A, 10)]);
    assert_eq!(s.phase(A), TopicPhase::Live);
    assert!(s.e.status().is_live());
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k", 1, 11, json!(1))], 11)),
        ["Apply A 10→11"]
    );
    // Pushes for the failed topic are ignored.
    assert_eq!(
        kinds(&s.batch(C1, B, vec![upd(B, "k", 1, 21, json!(1))], 21)),
        Vec::<String>::new()
    );
}

fn upgrade_required_stops_for_good(code: &str) {
    let mut s = Sim::new(&[A]);
    s.start_with(&[(A, 10)]);
    let acts = s.handle(Event::Connected(C1));
    let join = sends(&acts).remove(0);
    let refusal = json!({"code": code, "message": "client build too old", "retryable": false,
        "upgrade_required": true, "min_client_build_id": "2026.02.01", "max_client_build_id": null,
        "min_schema_version": 1, "max_schema_version": 1, "protocol_version": "khala.ws.v1"});
    assert_eq!(kinds(&s.reply(C1, &join, false, refusal)), ["Close#1"]);
    assert_eq!(s.state(), ConnectionState::UpgradeRequired);
    assert!(matches!(
        s.e.status().last_error,
        Some(SyncError::UpgradeRequired { code: ref c, .. }) if c == code
    ));
    assert_eq!(s.e.poll_timeout(), None);
    let mut after = s.advance(3_600_000);
    for ev in [
        Event::NetworkChanged,
        Event::Resume,
        Event::Start,
        Event::Timer,
    ] {
        after.extend(s.handle(ev));
    }
    assert_eq!(
        kinds(&after),
        Vec::<String>::new(),
        "no further Connect ever"
    );
    assert_eq!(s.m().connects, 1);
}

#[test]
fn upgrade_required_join_reply_stops_syncing() {
    upgrade_required_stops_for_good("upgrade_required");
    upgrade_required_stops_for_good("unsupported_client_build");
}

#[test]
fn client_heartbeats_every_20s_and_two_missed_replies_reconnect() {
    let mut s = Sim::live(&[(A, 10)]);
    let joined = s.now.0;
    assert_eq!(kinds(&s.advance(19_999)), Vec::<String>::new());
    let acts = s.advance(1);
    assert_eq!(kinds(&acts), ["heartbeat#1"]);
    let hb = sends(&acts).remove(0);
    assert_eq!(hb.payload, json!({}));
    s.reply(
        C1,
        &hb,
        true,
        json!({"subscription_id": "sub_1", "watermarks": []}),
    );
    // Answered: the next one 20 s later (t = 40 s); from now on no replies, but the server
    // keeps the socket chatty with its own heartbeat pushes (so silence is not the trigger).
    assert_eq!(kinds(&s.advance(20_000)), ["heartbeat#1"]);
    s.advance(10_000);
    s.push(C1, "sync:heartbeat", json!({"watermarks": []}));
    assert_eq!(kinds(&s.advance(10_000)), ["heartbeat#1"]);
    s.advance(10_000);
    s.push(C1, "sync:heartbeat", json!({"watermarks": []}));
    // The 40 s and 60 s heartbeats went unanswered: dead at the next tick (t = 80 s).
    assert_eq!(kinds(&s.advance(9_999)), Vec::<String>::new());
    assert_eq!(kinds(&s.advance(1)), ["Close#1"]);
    assert_eq!(s.now.0 - joined, 80_000);
    assert_eq!(s.state(), ConnectionState::Backoff);
    // The first retry after an established connection is spread over `reconnect_spread`.
    let due = s.due_in().unwrap();
    assert!(due <= 5_000, "{due}");
    assert_eq!(kinds(&s.advance(due)), ["Connect#2"]);
}

#[test]
fn silence_for_45s_is_a_dead_connection() {
    let mut s = Sim::live(&[(A, 10)]);
    let last_rx = s.now.0;
    let acts = s.advance(44_999);
    assert_eq!(kinds(&acts), ["heartbeat#1", "heartbeat#1"]);
    assert_eq!(kinds(&s.advance(1)), ["Close#1"]);
    assert_eq!(s.now.0 - last_rx, 45_000);
    assert!(matches!(
        s.e.status().last_error,
        Some(SyncError::Transport(_))
    ));
}

/// Fails `n` connection attempts in a row; returns each wait before the next `Connect`.
fn fail_connects(s: &mut Sim, first: u64, n: u64) -> Vec<u64> {
    let mut waits = Vec::new();
    for id in first..first + n {
        let acts = s.handle(Event::ConnectFailed(
            ConnId(id),
            HttpFailure::Transport("connection refused".into()),
        ));
        assert_eq!(kinds(&acts), [format!("Close#{id}")]);
        assert_eq!(s.state(), ConnectionState::Backoff);
        let wait = s.due_in().unwrap();
        waits.push(wait);
        assert_eq!(kinds(&s.advance(wait)), [format!("Connect#{}", id + 1)]);
    }
    waits
}

#[test]
fn reconnect_backoff_is_full_jitter_and_resets_after_a_stable_connection() {
    let (base, cap) = (250u64, 30_000u64);
    let mut by_attempt: Vec<Vec<u64>> = vec![Vec::new(); 10];
    for seed in 0..40 {
        let mut c = cfg(&[A]);
        c.seed = seed;
        let mut s = Sim::with_cfg(c);
        s.start_with(&[(A, 10)]);
        for (n, w) in fail_connects(&mut s, 1, 10).into_iter().enumerate() {
            let ceiling = cap.min(base << n);
            assert!(w <= ceiling, "seed {seed} attempt {n}: {w} > {ceiling}");
            by_attempt[n].push(w);
        }
        assert_eq!(s.e.reconnect_backoff.attempt(), 10);
        // Attempt 11 joins and stays up for `stable_after` (10 s): the backoff resets.
        s.join(ConnId(11));
        s.advance(9_999);
        assert_eq!(s.e.reconnect_backoff.attempt(), 10);
        s.advance(1);
        assert_eq!(s.e.reconnect_backoff.attempt(), 0);
        assert_eq!(
            kinds(&s.handle(Event::Disconnected(ConnId(11), "reset".into()))),
            ["Close#11"]
        );
        assert!(
            s.due_in().unwrap() <= 5_000,
            "first retry after a stable connection is spread over reconnect_spread"
        );
        assert_eq!(s.m().reconnects, 10);
    }
    // Full jitter: the delays spread over the whole window [0, ceiling], not near its top.
    for (n, ws) in by_attempt.iter().enumerate().skip(3) {
        let ceiling = cap.min(base << n);
        assert!(ws.iter().any(|&w| w < ceiling / 4), "attempt {n}: {ws:?}");
        assert!(
            ws.iter().any(|&w| w > ceiling * 3 / 4),
            "attempt {n}: {ws:?}"
        );
    }
}

#[test]
fn a_connection_dropping_before_stable_after_keeps_growing_the_backoff() {
    let mut s = Sim::new(&[A]);
    s.start_with(&[(A, 10)]);
    fail_connects(&mut s, 1, 3);
    s.join(ConnId(4));
    s.advance(5_000);
    s.handle(Event::Disconnected(ConnId(4), "reset".into()));
    assert_eq!(s.e.reconnect_backoff.attempt(), 4);
    // Window: max(base << 3 = 2 s, reconnect_spread = 5 s) after losing a joined connection.
    assert_eq!(s.e.reconnect_backoff.ceiling(), Duration::from_secs(5));
    assert!(s.due_in().unwrap() <= 5_000);
}

#[test]
fn token_401_is_auth_failed_without_retry_until_resume() {
    let mut s = Sim::new(&[A]);
    assert_eq!(kinds(&s.handle(Event::Start)), ["FetchToken"]);
    let acts = s.handle(Event::TokenFetched(Err(http_status(
        401,
        "unauthorized",
        None,
    ))));
    assert_eq!(kinds(&acts), Vec::<String>::new());
    assert_eq!(s.state(), ConnectionState::AuthFailed);
    assert!(matches!(
        s.e.status().last_error,
        Some(SyncError::Auth { status: 401, .. })
    ));
    assert_eq!(s.e.poll_timeout(), None);
    let mut later = s.advance(24 * 3_600_000);
    later.extend(s.handle(Event::Timer));
    later.extend(s.handle(Event::NetworkChanged));
    assert_eq!(kinds(&later), Vec::<String>::new(), "no retry loop");
    // The app signed in again.
    assert_eq!(kinds(&s.handle(Event::Resume)), ["FetchToken"]);
    assert_eq!(kinds(&s.token(grant(300, None))), ["BindIdentity"]);
}

#[test]
fn token_401_while_connected_closes_and_waits_for_resume() {
    let mut s = Sim::live(&[(A, 10)]);
    s.push(
        C1,
        "sync:error",
        json!({"code": "reauth_required", "message": "expired"}),
    );
    let acts = s.handle(Event::TokenFetched(Err(http_status(
        401,
        "unauthorized",
        None,
    ))));
    assert_eq!(kinds(&acts), ["Close#1"]);
    assert_eq!(s.state(), ConnectionState::AuthFailed);
    assert_eq!(kinds(&s.advance(600_000)), Vec::<String>::new());
    assert_eq!(kinds(&s.handle(Event::Resume)), ["FetchToken"]);
    // Same identity: no rebind, straight to a new socket.
    assert_eq!(kinds(&s.token(grant(300, None))), ["Connect#2"]);
    assert_eq!(kinds(&s.join(C2)), ["subscribe#2[A@10]"]);
}

#[test]
fn token_503_retries_no_sooner_than_retry_after() {
    let mut s = Sim::new(&[A]);
    s.handle(Event::Start);
    let f = http_status(503, "sync_token_unavailable", Some(Duration::from_secs(7)));
    assert_eq!(
        kinds(&s.handle(Event::TokenFetched(Err(f)))),
        Vec::<String>::new()
    );
    assert_eq!(s.state(), ConnectionState::Backoff);
    assert_eq!(s.e.status().next_retry_at, Some(Millis(s.now.0 + 7_000)));
    assert_eq!(kinds(&s.advance(6_999)), Vec::<String>::new());
    assert_eq!(kinds(&s.advance(1)), ["FetchToken"]);
    // 5xx without Retry-After: plain backoff window.
    let f = http_status(502, "bad_gateway", None);
    s.handle(Event::TokenFetched(Err(f)));
    assert!(s.due_in().unwrap() <= 500);
    let wait = s.due_in().unwrap();
    assert_eq!(kinds(&s.advance(wait)), ["FetchToken"]);
}

#[test]
fn server_heartbeat_watermarks_are_never_persisted() {
    let mut s = Sim::live(&[(A, 10)]);
    let acts = s.push(
        C1,
        "sync:heartbeat",
        json!({"watermarks": [{"topic": A, "watermark": 99}]}),
    );
    assert_eq!(kinds(&acts), Vec::<String>::new());
    assert_eq!(s.wm(A), 10);
    // The reply to our own heartbeat carries delivered watermarks too: informational only.
    let acts = s.advance(20_000);
    let hb = sends(&acts).remove(0);
    let acts = s.reply(
        C1,
        &hb,
        true,
        json!({"subscription_id": "sub_1",
        "watermarks": [{"topic": A, "watermark": 120}]}),
    );
    assert_eq!(kinds(&acts), Vec::<String>::new());
    assert_eq!(s.wm(A), 10);
    assert_eq!(s.m().updates_applied, 0);
    // A later reconnect resumes from the committed watermark, not the delivered one.
    s.handle(Event::Disconnected(C1, "bye".into()));
    s.handle(Event::NetworkChanged);
    assert_eq!(kinds(&s.join(C2)), ["subscribe#2[A@10]"]);
}

#[test]
fn snapshot_404_falls_back_to_window_resync() {
    let mut s = Sim::new(&[A, B]);
    assert_eq!(
        kinds(&s.start_with(&[(B, 20)])),
        ["BeginSnapshot A", "Connect#1"]
    );
    assert_eq!(kinds(&s.join(C1)), ["subscribe#1[B@20]"]);
    s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(1))));
    let acts = s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Err(http_status(404, "not_found", None)),
    ));
    // Resubscribe without resume_after: the server replays its retained window.
    assert_eq!(kinds(&acts), ["subscribe#1[A]"]);
    let sub_a = subscribe_in(&acts);
    assert!(sub_a.payload.get("resume_after").is_none());
    assert!(s.topic_status(A).resynced_from_window);
    // The retained window starts at 500: the first replayed jump is accepted…
    let acts = s.batch(
        C1,
        A,
        vec![
            upd(A, "k", 9, 500, json!(1)),
            upd(A, "k", 10, 501, json!(2)),
        ],
        501,
    );
    assert_eq!(kinds(&acts), ["Apply A 0→501"]);
    s.apply_ok(&acts);
    s.sub_ok(C1, &sub_a, &[(A, 501)]);
    assert_eq!(s.phase(A), TopicPhase::Live);
    assert!(s.topic_status(A).resynced_from_window);
    assert_eq!(s.m().gaps, 0);
    // …but only the first one: a later gap resubscribes *with* the committed cursor, so the
    // server can say stale instead of replaying the window from its floor again and again.
    let acts = s.batch(C1, A, vec![upd(A, "k", 12, 503, json!(3))], 503);
    assert_eq!(kinds(&acts), ["subscribe#1[A@501]"]);
    assert_eq!(s.m().gaps, 1);
    let acts = s.reply(C1, &subscribe_in(&acts), false, stale_for(A));
    assert_eq!(kinds(&acts), ["BeginSnapshot A"]);
    s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(2))));
    let acts = s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Err(http_status(404, "not_found", None)),
    ));
    assert_eq!(kinds(&acts), ["subscribe#1[A]"]);
    let acts = s.batch(C1, A, vec![upd(A, "k", 20, 700, json!(4))], 700);
    assert_eq!(kinds(&acts), ["Apply A 501→700"]);
}

#[test]
fn snapshot_pages_with_different_watermarks_restart_the_snapshot() {
    let mut s = Sim::new(&[A]);
    s.start_with(&[]);
    s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(1))));
    let p1 = snapshot_page(A, 100, vec![snap_doc("k1", 1, json!(1))], Some("c1"));
    assert_eq!(
        kinds(&s.handle(Event::SnapshotPageFetched(topic(A), s.snap_gen(A), Ok(p1)))),
        [
            "FetchSnapshotPage A cursor=c1",
            "StoreSnapshotPage A docs=1 finish=-"
        ]
    );
    assert_eq!(
        kinds(&s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())))),
        Vec::<String>::new()
    );
    let p2 = snapshot_page(A, 120, vec![snap_doc("k2", 1, json!(2))], None);
    let acts = s.handle(Event::SnapshotPageFetched(topic(A), s.snap_gen(A), Ok(p2)));
    assert_eq!(
        kinds(&acts),
        ["BeginSnapshot A"],
        "not one snapshot: start over"
    );
    assert_eq!(s.wm(A), 0);
    assert_eq!(s.m().snapshots, 2);
    // The restart begins from the first page again, under the new generation.
    let acts = s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(2))));
    assert_eq!(kinds(&acts), ["FetchSnapshotPage A cursor=-"]);
    let p = snapshot_page(
        A,
        120,
        vec![snap_doc("k1", 1, json!(1)), snap_doc("k2", 1, json!(2))],
        None,
    );
    let acts = s.handle(Event::SnapshotPageFetched(topic(A), s.snap_gen(A), Ok(p)));
    match &acts[..] {
        [Action::StoreSnapshotPage {
            generation, finish, ..
        }, ..] => {
            assert_eq!(*generation, SnapshotGen(2));
            assert_eq!(*finish, Some(Watermark(120)));
        }
        other => panic!("{:?}", kinds(other)),
    }
    s.join(C1);
    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@120]"]);
}

#[test]
fn pause_closes_the_socket_and_resume_reconnects() {
    let mut s = Sim::live(&[(A, 10)]);
    assert_eq!(kinds(&s.handle(Event::Pause)), ["Close#1"]);
    assert_eq!(s.state(), ConnectionState::Paused);
    assert_eq!(s.e.poll_timeout(), None);
    assert_eq!(s.phase(A), TopicPhase::Idle);
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k", 1, 11, json!(1))], 11)),
        Vec::<String>::new()
    );
    assert_eq!(kinds(&s.advance(600_000)), Vec::<String>::new());
    assert_eq!(
        kinds(&s.handle(Event::NetworkChanged)),
        Vec::<String>::new()
    );
    // Token expired during the pause (300 s): a fresh one first, then the socket.
    assert_eq!(kinds(&s.handle(Event::Resume)), ["FetchToken"]);
    assert_eq!(kinds(&s.token(grant(300, None))), ["Connect#2"]);
    assert_eq!(kinds(&s.join(C2)), ["subscribe#2[A@10]"]);
}

#[test]
fn short_pause_resumes_with_the_current_token() {
    let mut s = Sim::live(&[(A, 10)]);
    s.handle(Event::Pause);
    s.advance(5_000);
    assert_eq!(kinds(&s.handle(Event::Resume)), ["Connect#2"]);
    assert_eq!(kinds(&s.join(C2)), ["subscribe#2[A@10]"]);
}

#[test]
fn network_change_during_backoff_reconnects_immediately() {
    let mut s = Sim::new(&[A]);
    s.start_with(&[(A, 10)]);
    fail_connects(&mut s, 1, 6);
    s.handle(Event::ConnectFailed(
        ConnId(7),
        HttpFailure::Transport("offline".into()),
    ));
    assert_eq!(s.state(), ConnectionState::Backoff);
    assert_eq!(kinds(&s.handle(Event::NetworkChanged)), ["Connect#8"]);
    assert_eq!(s.e.reconnect_backoff.attempt(), 0);
    // A joined connection is left alone.
    s.join(ConnId(8));
    assert_eq!(
        kinds(&s.handle(Event::NetworkChanged)),
        Vec::<String>::new()
    );
}

#[test]
fn watermark_conflict_resubscribes_from_the_stored_watermark() {
    let mut s = Sim::live(&[(A, 10)]);
    let acts = s.batch(
        C1,
        A,
        vec![upd(A, "k", 1, 11, json!(1)), upd(A, "k", 2, 12, json!(2))],
        12,
    );
    let acts = s.handle(Event::Applied(
        topic(A),
        Err(StoreError::WatermarkConflict {
            topic: topic(A),
            expected: applies(&acts)[0].expected_watermark,
            found: Watermark(15),
        }),
    ));
    assert_eq!(kinds(&acts), ["subscribe#1[A@15]"]);
    assert_eq!(s.wm(A), 15);
    let acts = s.batch(C1, A, vec![upd(A, "k", 6, 16, json!(6))], 16);
    assert_eq!(kinds(&acts), ["Apply A 15→16"]);
}

#[test]
fn disk_full_is_surfaced_and_retried_later_without_advancing() {
    let mut s = Sim::live(&[(A, 10)]);
    let acts = s.batch(
        C1,
        A,
        vec![upd(A, "k", 1, 11, json!(1)), upd(A, "k", 2, 12, json!(2))],
        12,
    );
    assert_eq!(kinds(&acts), ["Apply A 10→12"]);
    let acts = s.handle(Event::Applied(topic(A), Err(StoreError::DiskFull)));
    assert_eq!(kinds(&acts), Vec::<String>::new());
    assert_eq!(
        s.e.status().last_error,
        Some(SyncError::Store(StoreError::DiskFull))
    );
    assert_eq!(s.wm(A), 10);
    assert_eq!(s.m().batches_committed, 0);
    // Live pushes during the backoff do not hammer the full disk (nor resubscribe early).
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k", 3, 13, json!(3))], 13)),
        Vec::<String>::new()
    );
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k", 1, 11, json!(1))], 13)),
        Vec::<String>::new()
    );
    assert_eq!(s.m().gaps, 0);
    let wait = s.due_in().unwrap();
    assert!(wait <= 250);
    assert_eq!(kinds(&s.advance(wait)), ["subscribe#1[A@10]"]);
    let replay: Vec<Value> = (11..=13)
        .map(|w| upd(A, "k", w - 10, w, json!(w)))
        .collect();
    let acts = s.batch(C1, A, replay, 13);
    assert_eq!(kinds(&acts), ["Apply A 10→13"]);
    s.apply_ok(&acts);
    assert_eq!(s.wm(A), 13);
}

#[test]
fn head_below_committed_in_subscribe_reply_triggers_a_snapshot() {
    let mut s = Sim::new(&[A, B]);
    s.start_with(&[(A, 50), (B, 20)]);
    let sub = subscribe_in(&s.join(C1));
    // The server lost its log: head 20 < our 50.
    let acts = s.sub_ok(C1, &sub, &[(A, 20), (B, 20)]);
    assert_eq!(kinds(&acts), ["BeginSnapshot A"]);
    assert_eq!(s.m().stale_cursors, 1);
    assert_eq!(s.phase(B), TopicPhase::Live);
    let acts = run_snapshot(&mut s, A, 1, 20);
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@20]"]);
    assert_eq!(s.wm(A), 20);
}

#[test]
fn malformed_oversize_and_unknown_frames_are_counted_and_survived() {
    let mut c = cfg(&[A]);
    c.decode_limits.max_frame_bytes = 64 * 1024;
    let mut s = Sim::with_cfg(c);
    s.start_with(&[(A, 10)]);
    let sub = subscribe_in(&s.join(C1));
    s.sub_ok(C1, &sub, &[(A, 10)]);
    let before = s.m().decode_errors;
    let junk: Vec<String> = vec![
        String::new(),
        "not json".into(),
        "{}".into(),
        "[1,2]".into(),
        "[null,null,\"sync:v1\",\"phx_reply\",{}]".into(),
        "[\"1\",null,\"sync:v1\",\"sync:whatever\",{}]".into(),
        "[\"1\",null,\"sync:v1\",\"sync:update_batch\",{\"updates\":\"nope\"}]".into(),
        json!(["1", null, "sync:v1", "sync:update_batch", {"updates": [
            {"topic": A, "doc_key": "k", "doc_version": 1, "payload": 1, "payload_hash": "zzz", "watermark": 11}]}])
        .to_string(),
        json!(["1", null, "sync:v1", "sync:update_batch", {"updates": [
            {"topic": A, "doc_key": "k", "doc_version": 1, "payload": 1, "watermark": -1}]}])
        .to_string(),
        json!(["1", null, "sync:v1", "sync:error", {"message": "no code"}]).to_string(),
        "[".repeat(10_000),
        format!("[\"1\",null,\"sync:v1\",\"sync:heartbeat\",{{\"pad\":\"{}\"}}]", "x".repeat(70_000)),
        "[\"1\",null,\"sync:v1\",\"sync:update_batch\",{\"updates\":[],\"x\":\"\u{fffd}\\ud800\"}]".into(),
    ];
    let n = junk.len() as u64;
    for text in junk {
        let acts = s.handle(Event::Frame(C1, text));
        assert_eq!(kinds(&acts), Vec::<String>::new());
    }
    // The last one (lone surrogate escape) may or may not decode; all others must not.
    assert!(
        s.m().decode_errors - before >= n - 1,
        "{}",
        s.m().decode_errors - before
    );
    assert!(matches!(
        s.e.status().last_error,
        Some(SyncError::Protocol(_))
    ));
    assert_eq!(s.state(), ConnectionState::Connected);
    assert_eq!(s.phase(A), TopicPhase::Live);
    assert_eq!(
        kinds(&s.batch(C1, A, vec![upd(A, "k", 1, 11, json!(1))], 11)),
        ["Apply A 10→11"]
    );
}

#[test]
fn frames_from_an_old_connection_are_ignored() {
    let mut s = Sim::live(&[(A, 10)]);
    s.handle(Event::Disconnected(C1, "reset".into()));
    assert_eq!(kinds(&s.handle(Event::NetworkChanged)), ["Connect#2"]);
    let sub = subscribe_in(&s.join(C2));
    let frames = s.m().frames_received;
    let stale_sub = Sent {
        conn: C1,
        ..sub.clone()
    };
    let mut acts = s.batch(C1, A, vec![upd(A, "k", 1, 11, json!(1))], 11);
    acts.extend(s.push(C1, "sync:error", stale_for(A)));
    acts.extend(s.reply(
        C1,
        &stale_sub,
        true,
        json!({"current_watermarks": [{"topic": A, "watermark": 1}]}),
    ));
    acts.extend(s.push(C1, "phx_close", json!({})));
    acts.extend(s.handle(Event::Disconnected(C1, "late".into())));
    acts.extend(s.handle(Event::Connected(C1)));
    assert_eq!(kinds(&acts), Vec::<String>::new());
    assert_eq!(s.m().frames_received, frames);
    assert_eq!(s.phase(A), TopicPhase::Subscribing);
    // A late `Disconnected` for the old socket leaves the current one alone.
    assert_eq!(s.state(), ConnectionState::Connected);
    assert!(s.e.poll_timeout().is_some());
    s.sub_ok(C2, &sub, &[(A, 10)]);
    assert_eq!(s.phase(A), TopicPhase::Live);
}

#[test]
fn legacy_sync_frame_is_ignored() {
    let mut s = Sim::live(&[(A, 10)]);
    let batch = json!({"updates": [upd(A, "k", 1, 11, json!(1))], "replay_complete": true,
                       "head_watermarks": [{"topic": A, "watermark": 11}]});
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.encode(batch.to_string());
    let acts = s.push(
        C1,
        "sync:frame",
        json!({"topic": A, "seq": 11, "kind": "KHALA_FRAME_KIND_UPDATE_BATCH",
               "payload_bytes": bytes, "schema_version": 1}),
    );
    assert_eq!(kinds(&acts), Vec::<String>::new());
    assert_eq!(s.m().decode_errors, 0);
    assert_eq!(s.wm(A), 10);
    // The real batch (sent alongside) is applied exactly once.
    assert_eq!(
        kinds(&s.push(C1, "sync:update_batch", batch)),
        ["Apply A 10→11"]
    );
}

#[test]
fn shutdown_leaves_closes_and_then_nothing() {
    let mut s = Sim::live(&[(A, 10)]);
    let acts = s.handle(Event::Shutdown);
    assert_eq!(kinds(&acts), ["leave#1", "Close#1"]);
    assert_eq!(s.state(), ConnectionState::Stopped);
    assert_eq!(s.e.poll_timeout(), None);
    let mut after = Vec::new();
    after.extend(s.batch(C1, A, vec![upd(A, "k", 1, 11, json!(1))], 11));
    after.extend(s.push(C1, "sync:error", stale_for(A)));
    for ev in [
        Event::Timer,
        Event::NetworkChanged,
        Event::Resume,
        Event::Start,
        Event::Pause,
        Event::Shutdown,
        Event::Connected(C1),
        Event::Disconnected(C1, "x".into()),
        Event::TokenFetched(Ok(grant(300, None))),
        Event::SnapshotBegun(topic(A), Ok(SnapshotGen(9))),
    ] {
        after.extend(s.handle(ev));
    }
    after.extend(s.advance(3_600_000));
    assert!(after.is_empty(), "{after:?}");
}

/// A scripted session touching every randomised path (reconnect jitter, slow-consumer
/// jitter, stale-loop backoff); returns every action with its time.
fn scripted_session(seed: u64) -> Vec<String> {
    let mut c = cfg(&[A, B]);
    c.seed = seed;
    let mut s = Sim::with_cfg(c);
    s.answer_heartbeats = true;
    s.start_with(&[(B, 20)]);
    fail_connects(&mut s, 1, 4);
    s.join(ConnId(5));
    s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(1))));
    let page = snapshot_page(A, 50, vec![snap_doc("k", 1, json!(1))], None);
    s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Ok(page),
    ));
    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    let sub = subscribe_in(&acts);
    s.reply(ConnId(5), &sub, false, stale_for(A));
    s.advance(1_000);
    s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(2))));
    let page = snapshot_page(A, 60, vec![], None);
    s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Ok(page),
    ));
    s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    let acts = s.batch(ConnId(5), A, vec![upd(A, "k", 2, 61, json!(2))], 61);
    s.apply_ok(&acts);
    s.push(
        ConnId(5),
        "sync:error",
        json!({"code": "slow_consumer", "action": "disconnect", "reconnect_after_ms": 1500}),
    );
    s.advance(5_000);
    s.advance(100_000);
    s.log.clone()
}

#[test]
fn same_seed_and_script_give_identical_actions() {
    let a = scripted_session(42);
    let b = scripted_session(42);
    assert!(a.len() > 30, "{}", a.len());
    assert_eq!(a, b);
    // The seed really drives the jitter.
    assert_ne!(a, scripted_session(43));
    assert!(
        !a.iter().any(|l| l.contains("header.claims.sig")),
        "token never printed"
    );
}

#[test]
fn gap_inside_the_replay_is_healed_after_the_subscribe_reply() {
    let mut s = Sim::new(&[A]);
    s.start_with(&[(A, 10)]);
    let sub = subscribe_in(&s.join(C1));
    // The first replay page arrives garbled and is dropped…
    let acts = s.handle(Event::Frame(
        C1,
        "[\"1\",null,\"sync:v1\",\"sync:update_batch\",{\"updates\":[".into(),
    ));
    assert_eq!(kinds(&acts), Vec::<String>::new());
    assert_eq!(s.m().decode_errors, 1);
    // …so the next page starts with a gap: no resubscribe while the subscribe is pending.
    let page2 = vec![upd(A, "k", 3, 13, json!(3)), upd(A, "k", 4, 14, json!(4))];
    assert_eq!(kinds(&s.batch(C1, A, page2, 14)), Vec::<String>::new());
    // The reply says head 14 but we hold 10: heal with one resubscribe from committed.
    let acts = s.sub_ok(C1, &sub, &[(A, 14)]);
    assert_eq!(kinds(&acts), ["subscribe#1[A@10]"]);
    let sub2 = subscribe_in(&acts);
    assert_eq!(s.m().gaps, 1);
    let replay: Vec<Value> = (11..=14)
        .map(|w| upd(A, "k", w - 10, w, json!(w)))
        .collect();
    let acts = s.batch(C1, A, replay, 14);
    assert_eq!(kinds(&acts), ["Apply A 10→14"]);
    s.apply_ok(&acts);
    assert_eq!(
        kinds(&s.sub_ok(C1, &sub2, &[(A, 14)])),
        Vec::<String>::new()
    );
    assert_eq!(s.phase(A), TopicPhase::Live);
    assert_eq!(s.wm(A), 14);
    assert_eq!(s.m().gaps, 1);
}

/// Largest share of `times` (ms) inside any 100 ms window.
fn max_share_in_100ms(times: &mut [u64]) -> f64 {
    times.sort_unstable();
    let mut best = 0usize;
    let mut lo = 0usize;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= 100 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as f64 / times.len().max(1) as f64
}

/// Reconnect storm on a simulated clock: 1,000 engines (each with its own seed, as every
/// device has its own RNG) hold a stable connection when the server restarts and stays
/// unreachable for 2 s. Their reconnect attempts must not come back in lock-step, and each
/// engine's backoff resets once its new connection is stable.
#[test]
fn figures_reconnect_storm_1000_engines_spread_by_jitter() {
    const ENGINES: u64 = 1_000;
    const DOWN_MS: u64 = 2_000;
    let mut attempts = Vec::new();
    let mut reconnects = Vec::new();
    for n in 0..ENGINES {
        let mut c = cfg(&[A]);
        c.seed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5eed;
        let mut s = Sim::with_cfg(c);
        s.start_with(&[(A, 10)]);
        s.join(ConnId(1));
        s.advance(15_000);
        assert_eq!(s.e.reconnect_backoff.attempt(), 0);
        let t0 = s.now.0;
        let acts = s.handle(Event::Disconnected(ConnId(1), "server restart".into()));
        assert_eq!(kinds(&acts), ["Close#1"]);
        let mut id = 2;
        loop {
            let wait = s.due_in().unwrap();
            let acts = s.advance(wait);
            assert_eq!(kinds(&acts), [format!("Connect#{id}")]);
            let at = s.now.0 - t0;
            attempts.push(at);
            if at < DOWN_MS {
                s.handle(Event::ConnectFailed(
                    ConnId(id),
                    HttpFailure::Transport("connection refused".into()),
                ));
                id += 1;
                continue;
            }
            reconnects.push(at);
            s.join(ConnId(id));
            break;
        }
        assert!(s.e.reconnect_backoff.attempt() > 0);
        s.advance(10_000);
        assert_eq!(
            s.e.reconnect_backoff.attempt(),
            0,
            "backoff resets after a stable connection"
        );
    }
    let span = reconnects.iter().max().unwrap() - reconnects.iter().min().unwrap();
    let share_attempts = max_share_in_100ms(&mut attempts);
    let share_reconnects = max_share_in_100ms(&mut reconnects);
    eprintln!(
        "storm-sim engines={ENGINES} server_down_ms={DOWN_MS} attempts={} max_share_of_attempts_in_100ms={:.2}% reconnects={} max_share_of_reconnects_in_100ms={:.2}% reconnect_span_ms={span} backoff_reset_after_stable=yes",
        attempts.len(),
        share_attempts * 100.0,
        reconnects.len(),
        share_reconnects * 100.0
    );
    assert_eq!(reconnects.len() as u64, ENGINES);
    assert!(share_reconnects < 0.05, "{share_reconnects}");
    assert!(share_attempts < 0.05, "{share_attempts}");
}

/// Regression (found by tests/suite/tests/security.rs against the dev server's
/// `tamper_tokens` fault): a first run whose snapshot route kept answering 401 minted a new
/// token and refetched the page at once, ~600 times a second.
#[test]
fn snapshot_401_with_fresh_tokens_backs_off_instead_of_minting_in_a_loop() {
    let mut s = Sim::new(&[A]);
    let mut pending: Vec<Action> = s.start_with(&[]);
    let mut fetches = 0u32;
    let mut pages = 0u32;
    let mut gen = 0u64;
    for _ in 0..2_000 {
        for a in std::mem::take(&mut pending) {
            let more = match a {
                Action::FetchToken => {
                    fetches += 1;
                    s.token(grant(300, None))
                }
                Action::BeginSnapshot(t) => {
                    gen += 1;
                    s.handle(Event::SnapshotBegun(t, Ok(SnapshotGen(gen))))
                }
                Action::FetchSnapshotPage {
                    topic: t,
                    generation,
                    ..
                } => {
                    pages += 1;
                    s.handle(Event::SnapshotPageFetched(
                        t,
                        generation,
                        Err(http_status(401, "unauthorized", None)),
                    ))
                }
                Action::Connect { conn, .. } => s.handle(Event::ConnectFailed(
                    conn,
                    HttpFailure::Transport("refused".into()),
                )),
                _ => Vec::new(),
            };
            pending.extend(more);
        }
        if pending.is_empty() {
            match s.due_in() {
                Some(d) if s.now.0 + d <= 11_000 => pending = s.advance(d),
                _ => break,
            }
        }
    }
    // 10 s of engine time with a 250 ms .. 30 s backoff: a handful, not thousands.
    assert!(fetches <= 8, "token fetches {fetches}, pages {pages}");
    assert!(pages <= 8, "token fetches {fetches}, pages {pages}");
    let statuses: Vec<&String> = s.log.iter().filter(|l| l.contains("Status")).collect();
    assert!(
        statuses.iter().any(|l| l.contains("refused the token")),
        "the refusal is surfaced as a typed auth error ({fetches} fetches, {pages} pages): {:?}",
        s.log.iter().rev().take(8).collect::<Vec<_>>()
    );
}

/// A page fetched ahead that arrives before the previous page is stored waits: pages are
/// stored in order and the finishing (swapping) page strictly last.
#[test]
fn snapshot_page_fetched_ahead_waits_for_the_previous_store() {
    let mut s = Sim::new(&[A]);
    s.start_with(&[]);
    s.join(C1);
    s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(1))));
    let p1 = snapshot_page(A, 50, vec![snap_doc("a", 1, json!(1))], Some("c1"));
    let acts = s.handle(Event::SnapshotPageFetched(topic(A), s.snap_gen(A), Ok(p1)));
    assert_eq!(
        kinds(&acts),
        [
            "FetchSnapshotPage A cursor=c1",
            "StoreSnapshotPage A docs=1 finish=-"
        ]
    );
    // The last page arrives while page 1 is still being written: nothing happens yet.
    let p2 = snapshot_page(A, 50, vec![snap_doc("b", 1, json!(2))], None);
    assert_eq!(
        kinds(&s.handle(Event::SnapshotPageFetched(topic(A), s.snap_gen(A), Ok(p2)))),
        Vec::<String>::new()
    );
    // Page 1 stored → page 2 (the finishing one) is stored now.
    assert_eq!(
        kinds(&s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())))),
        ["StoreSnapshotPage A docs=1 finish=50"]
    );
    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@50]"]);
    assert_eq!(s.wm(A), 50);
}

/// Fetching runs ahead of a slow store by up to `SNAPSHOT_PAGES_AHEAD` verified pages (so the
/// store never waits for the network or the hash checks), and no further.
#[test]
fn snapshot_fetches_up_to_two_pages_ahead_of_a_slow_store() {
    let mut s = Sim::new(&[A]);
    s.start_with(&[]);
    s.join(C1);
    s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(1))));
    let page = |n: u32, next: Option<&str>| {
        snapshot_page(A, 70, vec![snap_doc(&format!("k{n}"), 1, json!(n))], next)
    };
    let acts = s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Ok(page(1, Some("c1"))),
    ));
    assert_eq!(
        kinds(&acts),
        [
            "FetchSnapshotPage A cursor=c1",
            "StoreSnapshotPage A docs=1 finish=-"
        ]
    );
    // Page 1 is still being written: pages 2 and 3 are fetched (and verified) meanwhile…
    let acts = s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Ok(page(2, Some("c2"))),
    ));
    assert_eq!(kinds(&acts), ["FetchSnapshotPage A cursor=c2"]);
    let acts = s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Ok(page(3, Some("c3"))),
    ));
    // …but not a fourth while two wait.
    assert_eq!(kinds(&acts), Vec::<String>::new());
    // Three received, none staged yet: progress shows what the store has.
    assert_eq!(s.topic_status(A).snapshot_docs, 0);
    // Each store hands over the next page, in order, and frees room to fetch.
    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    assert_eq!(
        kinds(&acts),
        [
            "FetchSnapshotPage A cursor=c3",
            "StoreSnapshotPage A docs=1 finish=-"
        ]
    );
    assert_eq!(store_pages(&acts)[0].0[0].doc_key.as_str(), "k2");
    assert_eq!(s.topic_status(A).snapshot_docs, 1);
    let acts = s.handle(Event::SnapshotPageFetched(
        topic(A),
        s.snap_gen(A),
        Ok(page(4, None)),
    ));
    assert_eq!(kinds(&acts), Vec::<String>::new());
    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    assert_eq!(kinds(&acts), ["StoreSnapshotPage A docs=1 finish=-"]);
    assert_eq!(store_pages(&acts)[0].0[0].doc_key.as_str(), "k3");
    // The finishing page is stored last, and only then is the snapshot committed.
    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    assert_eq!(kinds(&acts), ["StoreSnapshotPage A docs=1 finish=70"]);
    assert_eq!(s.wm(A), 0);
    let acts = s.handle(Event::SnapshotPageStored(topic(A), s.snap_gen(A), Ok(())));
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@70]"]);
    assert_eq!(s.wm(A), 70);
}

/// A snapshot page over the body limit (large documents) is asked for again with half as many
/// documents, at once and from the same cursor, down to one document per page.
#[test]
fn snapshot_page_too_large_is_fetched_again_with_half_the_limit() {
    let mut s = Sim::new(&[A]);
    s.start_with(&[]);
    s.join(C1);
    s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(1))));
    let p1 = snapshot_page(A, 30, vec![snap_doc("k1", 1, json!(1))], Some("c1"));
    s.handle(Event::SnapshotPageFetched(topic(A), SnapshotGen(1), Ok(p1)));
    let too_large = || {
        Err(HttpFailure::Decode(
            crate::protocol::ProtocolError::TooLarge {
                context: "snapshot page",
                size: 20 << 20,
                limit: 16 << 20,
            },
        ))
    };
    let limit_of = |acts: &[Action]| {
        acts.iter().find_map(|a| match a {
            Action::FetchSnapshotPage { limit, cursor, .. } => Some((*limit, cursor.clone())),
            _ => None,
        })
    };
    let mut limits = Vec::new();
    for _ in 0..20 {
        let acts = s.handle(Event::SnapshotPageFetched(
            topic(A),
            SnapshotGen(1),
            too_large(),
        ));
        match limit_of(&acts) {
            Some((l, cursor)) => {
                assert_eq!(cursor.as_deref(), Some("c1"), "the same page again");
                limits.push(l);
            }
            None => break,
        }
    }
    assert_eq!(limits, [1000, 500, 250, 125, 62, 31, 15, 7, 3, 1]);
    // At one document per page there is nothing left to halve: a failure with backoff.
    assert!(s.topic_status(A).error.is_some());
    assert!(s.e.topics[0].snapshot.is_none());
}

/// Answers that belong to an abandoned snapshot generation (a page fetch or a page store still
/// running when the snapshot restarted) are ignored, not taken for the new generation's.
#[test]
fn late_answers_for_an_abandoned_snapshot_generation_are_ignored() {
    let mut s = Sim::new(&[A]);
    s.start_with(&[]);
    s.join(C1);
    s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(1))));
    let p1 = snapshot_page(A, 100, vec![snap_doc("k1", 1, json!(1))], Some("c1"));
    s.handle(Event::SnapshotPageFetched(topic(A), SnapshotGen(1), Ok(p1)));
    // Page 2 disagrees about the watermark while page 1 is still being stored: restart at
    // once, with page 1's store in flight.
    let p2 = snapshot_page(A, 120, vec![snap_doc("k2", 1, json!(2))], None);
    assert_eq!(
        kinds(&s.handle(Event::SnapshotPageFetched(topic(A), SnapshotGen(1), Ok(p2)))),
        ["BeginSnapshot A"]
    );
    let acts = s.handle(Event::SnapshotBegun(topic(A), Ok(SnapshotGen(2))));
    assert_eq!(kinds(&acts), ["FetchSnapshotPage A cursor=-"]);
    // Generation 1's answers, late: page 1's store result and a page. Both are ignored.
    assert_eq!(
        kinds(&s.handle(Event::SnapshotPageStored(topic(A), SnapshotGen(1), Ok(())))),
        Vec::<String>::new()
    );
    let late = snapshot_page(A, 100, vec![snap_doc("old", 1, json!(0))], None);
    assert_eq!(
        kinds(&s.handle(Event::SnapshotPageFetched(
            topic(A),
            SnapshotGen(1),
            Ok(late)
        ))),
        Vec::<String>::new()
    );
    // Generation 2 goes on normally.
    let p = snapshot_page(
        A,
        120,
        vec![snap_doc("k1", 1, json!(1)), snap_doc("k2", 1, json!(2))],
        None,
    );
    let acts = s.handle(Event::SnapshotPageFetched(topic(A), SnapshotGen(2), Ok(p)));
    assert_eq!(kinds(&acts), ["StoreSnapshotPage A docs=2 finish=120"]);
    // A stored answer nobody asked for (no store in flight) is ignored too.
    let acts = s.handle(Event::SnapshotPageStored(topic(A), SnapshotGen(2), Ok(())));
    assert_eq!(kinds(&acts), ["Changes(1)", "subscribe#1[A@120]"]);
    assert_eq!(
        kinds(&s.handle(Event::SnapshotPageStored(topic(A), SnapshotGen(2), Ok(())))),
        Vec::<String>::new()
    );
    assert_eq!(s.wm(A), 120);
    assert_eq!(s.m().snapshots, 2);
}

#[test]
fn without_change_listeners_commits_notify_nothing_but_count() {
    let mut s = Sim::live(&[(A, 10)]);
    s.e.set_change_listeners(false);
    let acts = s.batch(
        C1,
        A,
        vec![upd(A, "k1", 1, 11, json!(1)), upd(A, "k2", 1, 12, json!(2))],
        12,
    );
    assert_eq!(kinds(&acts), ["Apply A 10→12"]);
    assert_eq!(kinds(&s.apply_ok(&acts)), Vec::<String>::new());
    assert_eq!(s.wm(A), 12);
    assert_eq!(s.m().updates_applied, 2);
    // A listener attaches: the next commit is notified again.
    s.e.set_change_listeners(true);
    let acts = s.batch(C1, A, vec![upd(A, "k1", 2, 13, json!(3))], 13);
    assert_eq!(kinds(&s.apply_ok(&acts)), ["Changes(1)"]);
}

// ----- dialect F (PROTOCOL.md §6) ----------------------------------------------------------

const R: &str = "run:r1:events";

fn fcfg(transport: FanoutTransport) -> EngineConfig {
    fcfg_topics(&[R], transport)
}

fn fcfg_topics(topics: &[&str], transport: FanoutTransport) -> EngineConfig {
    let mut c = cfg(topics);
    c.dialect = Dialect::Fanout;
    c.fanout_transport = transport;
    c
}

fn fmsg(seq: u64) -> Value {
    json!({"topic": R, "sequence": seq, "kind": "run.step", "payload": {"step": seq},
           "published_at": "2026-11-23T00:00:00Z"})
}

fn fframe(seq: u64) -> String {
    json!({"type": "message", "message": fmsg(seq)}).to_string()
}

fn page(seqs: std::ops::RangeInclusive<u64>, head: u64, oldest: u64) -> PollPage {
    let msgs: Vec<Value> = seqs.clone().map(fmsg).collect();
    let next = if msgs.is_empty() { 0 } else { *seqs.end() };
    let body = json!({"topic": R, "messages": msgs, "oldest_available_cursor": oldest,
        "head_cursor": head, "next_cursor": next, "replay_complete": next >= head,
        "limit_applied": 200});
    crate::protocol::fanout::decode_poll(200, &body.to_string(), None, &DecodeLimits::default())
        .unwrap()
}

fn poll_err(status: u16, body: Value) -> PollFailure {
    crate::protocol::fanout::decode_poll(status, &body.to_string(), None, &DecodeLimits::default())
        .unwrap_err()
}

fn polled(r: Result<PollPage, PollFailure>) -> Event {
    Event::Polled(topic(R), r)
}

/// Every topic socket the engine asked for, in order.
fn connect_topics(acts: &[Action]) -> Vec<ConnId> {
    acts.iter()
        .filter_map(|a| match a {
            Action::ConnectTopic { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}

fn connect_topic(acts: &[Action]) -> Option<(ConnId, u64)> {
    acts.iter().rev().find_map(|a| match a {
        Action::ConnectTopic {
            conn, after_seq, ..
        } => Some((*conn, after_seq.get())),
        _ => None,
    })
}

fn polls(acts: &[Action]) -> Vec<(u64, u32)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Poll {
                after_seq, limit, ..
            } => Some((after_seq.get(), *limit)),
            _ => None,
        })
        .collect()
}

use crate::protocol::fanout::{PollFailure, PollPage};

/// Commits every Apply (and what its commit releases) until nothing is left.
fn commit_all(sim: &mut Sim, mut acts: Vec<Action>) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..1000 {
        if applies(&acts).is_empty() {
            all.extend(acts);
            return all;
        }
        let next = sim.apply_ok(&acts);
        all.extend(acts);
        acts = next;
    }
    panic!("apply loop")
}

#[test]
fn fanout_first_sync_over_websocket_learns_head_by_probe_and_goes_live() {
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::Auto));
    let acts = sim.start_with(&[]);
    // No snapshot for event logs: a socket from 0 plus a one-message probe for the head.
    assert_eq!(
        kinds(&acts),
        [
            "ConnectTopic#1 run:r1:events@0",
            "Poll run:r1:events@0 limit=1"
        ]
    );
    let (c, _) = connect_topic(&acts).unwrap();
    sim.handle(Event::Connected(c));
    sim.handle(Event::Frame(c, r#"{"type":"hello","topic":"run:r1:events","after_seq":0,"limit":200,"recommended_reconnect_backoff_ms":500}"#.into()));
    let mut acts = sim.handle(Event::Frame(c, fframe(1)));
    acts.extend(sim.handle(polled(Ok(page(1..=1, 3, 0)))));
    for s in 2..=3 {
        acts.extend(sim.handle(Event::Frame(c, fframe(s))));
    }
    // The first message commits at once; the rest (and the probe's duplicate) form a group.
    let all = commit_all(&mut sim, acts);
    let a: Vec<String> = kinds(&all)
        .into_iter()
        .filter(|k| k.starts_with("Apply"))
        .collect();
    assert_eq!(a, ["Apply run:r1:events 0→1", "Apply run:r1:events 1→3"]);
    let ch = changes(&all);
    assert_eq!(ch.len(), 3, "every message once: {ch:?}");
    match &ch[1] {
        Change::Upsert {
            doc_key,
            doc_version,
            payload,
            ..
        } => {
            assert_eq!((doc_key.as_str(), *doc_version), ("2", 2));
            assert!(payload.contains(r#""kind":"run.step""#), "{payload}");
        }
        other => panic!("{other:?}"),
    }
    let st = sim.e.status();
    assert_eq!(st.topics[0].phase, TopicPhase::Live);
    assert_eq!(st.transport, "websocket");
    assert_eq!(st.state, ConnectionState::Connected);
    assert_eq!(sim.e.metrics().duplicates_skipped, 1);
}

/// Liveness of a topic socket (the protocol has no client messages; the runtime answers
/// WebSocket pings): silence → a ping per heartbeat interval; a pong or a frame restarts the
/// clock; `dead_after` of silence → the socket is closed and resumed after what was received.
#[test]
fn fanout_silent_socket_is_pinged_then_closed_and_resumed() {
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::WebSocket));
    let hb = u64::try_from(sim.e.cfg.heartbeat_interval.as_millis()).unwrap();
    let dead = u64::try_from(sim.e.cfg.dead_after.as_millis()).unwrap();
    assert!(
        hb * 2 < dead,
        "the test assumes two pings fit before dead_after"
    );
    let acts = sim.start_with(&[(R, 3)]);
    let (c, _) = connect_topic(&acts).unwrap();
    sim.handle(Event::Connected(c));
    let acts = sim.handle(Event::Frame(c, fframe(4)));
    commit_all(&mut sim, acts);
    // Quiet but answering: a ping each interval, answered, and the socket stays.
    for _ in 0..4 {
        let acts = sim.advance(hb);
        assert_eq!(kinds(&acts), [format!("Ping#{}", c.0)]);
        assert_eq!(kinds(&sim.handle(Event::Pong(c))), Vec::<String>::new());
    }
    // A frame counts as a sign of life too: no ping until an interval after it.
    sim.advance(hb / 2);
    let acts = sim.handle(Event::Frame(c, fframe(5)));
    commit_all(&mut sim, acts);
    assert!(kinds(&sim.advance(hb - 1)).is_empty());
    // Now silence: pings go unanswered until dead_after, then close and resume after 5.
    let mut acts = Vec::new();
    // Silent since the frame, `hb - 1` ms ago.
    let mut waited = hb - 1;
    while connect_topics(&acts).is_empty() && waited < dead * 2 {
        acts.extend(sim.advance(100));
        waited += 100;
    }
    let k = kinds(&acts);
    let pings = k.iter().filter(|a| a.starts_with("Ping")).count();
    assert_eq!(pings, usize::try_from((dead - 1) / hb).unwrap(), "{k:?}");
    assert!(k.contains(&format!("Close#{}", c.0)), "{k:?}");
    let (c2, after) = connect_topic(&acts).unwrap();
    assert_ne!(c2, c);
    assert_eq!(after, 5, "resumes after everything received");
    assert!(
        waited >= dead && waited < dead + 1_000,
        "closed after {waited} ms of silence (dead_after {dead} ms, plus the reconnect delay)"
    );
    // A late pong of the dead socket changes nothing.
    assert!(kinds(&sim.handle(Event::Pong(c))).is_empty());
}

#[test]
fn fanout_eviction_resumes_at_once_from_the_received_position() {
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::WebSocket));
    let acts = sim.start_with(&[(R, 10)]);
    let (c, after) = connect_topic(&acts).unwrap();
    assert_eq!(after, 10, "resume after the committed sequence");
    sim.handle(Event::Connected(c));
    let mut acts = sim.handle(polled(Ok(page(11..=11, 900, 0))));
    for s in 11..=210 {
        acts.extend(sim.handle(Event::Frame(c, fframe(s))));
    }
    // Only the first message is committed so far; 12..=210 are queued behind it.
    assert_eq!(applies(&acts).len(), 1);
    sim.handle(Event::Frame(
        c,
        r#"{"type":"error","code":"slow_consumer_evicted","message":"lagging"}"#.into(),
    ));
    let acts = sim.handle(Event::Disconnected(c, "reset".into()));
    let acts2 = sim.advance(0);
    let all: Vec<Action> = acts.into_iter().chain(acts2).collect();
    let (c2, after) = connect_topic(&all).expect("reconnects at once");
    assert_ne!(c2, c);
    assert_eq!(after, 210, "asks for what comes after everything received");
    assert!(polls(&all).is_empty(), "head already known: no probe");
    assert_eq!(sim.e.metrics().slow_consumer, 1);
}

#[test]
fn fanout_stale_cursor_reports_a_truncation_and_continues() {
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::WebSocket));
    let acts = sim.start_with(&[(R, 3)]);
    let (c, _) = connect_topic(&acts).unwrap();
    sim.handle(Event::Connected(c));
    let acts = sim.handle(Event::Frame(
        c,
        json!({"type":"stale_cursor","topic":R,"requested_cursor":3,
        "oldest_available_cursor":18,"head_cursor":21,"reason_codes":["retention_floor_breach"],
        "replay_lag":18,"replay_budget_events":20000,"qos_tier":"warm"})
        .to_string(),
    ));
    let b = applies(&acts);
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].expected_watermark, b[0].new_watermark),
        (Watermark(3), Watermark(18))
    );
    assert!(
        b[0].writes.is_empty(),
        "nothing invented for the evicted range"
    );
    assert!(kinds(&acts).contains(&format!("Close#{}", c.0)));
    let acts = sim.apply_ok(&acts);
    assert_eq!(
        changes(&acts),
        [Change::Truncated {
            topic: topic(R),
            from: Watermark(4),
            to: Watermark(18)
        }]
    );
    // The socket drop that follows a stale frame changes nothing; the new socket resumes at 18.
    sim.handle(Event::Disconnected(c, "1006".into()));
    let (_, after) = connect_topic(&acts).expect("reconnects after the truncation commits");
    assert_eq!(after, 18);
    assert_eq!(sim.e.metrics().truncated_messages, 15);
}

#[test]
fn fanout_poll_transport_keeps_the_servers_interval_and_honours_429() {
    let mut c = fcfg(FanoutTransport::Poll);
    c.poll_min_interval = Duration::from_millis(300);
    c.poll_interval = Duration::from_millis(1000);
    let mut sim = Sim::with_cfg(c);
    let acts = sim.start_with(&[]);
    assert_eq!(polls(&acts), [(0, 200)]);
    let t0 = sim.now;
    // A full page: the next poll comes after the minimum interval, not before.
    let acts = sim.handle(polled(Ok(page(1..=200, 500, 0))));
    let acts = commit_all(&mut sim, acts);
    assert!(polls(&acts).is_empty());
    assert!(polls(&sim.advance(299)).is_empty());
    let acts = sim.advance(1);
    assert_eq!(polls(&acts), [(200, 200)]);
    assert_eq!(sim.now.0 - t0.0, 300);
    // 429: wait the whole retry_after_ms from the refusal.
    let acts = sim.handle(polled(Err(poll_err(
        429,
        json!({"error":"rate_limited","retry_after_ms": 740}),
    ))));
    assert!(polls(&acts).is_empty());
    assert!(polls(&sim.advance(739)).is_empty());
    assert_eq!(polls(&sim.advance(1)), [(200, 200)]);
    assert_eq!(sim.e.metrics().rate_limited, 1);
    // Caught up: poll at the live period, and the topic is live over "poll".
    let acts = sim.handle(polled(Ok(page(201..=500, 500, 0))));
    commit_all(&mut sim, acts);
    assert_eq!(sim.e.status().topics[0].phase, TopicPhase::Live);
    assert_eq!(sim.e.status().transport, "poll");
    assert!(polls(&sim.advance(999)).is_empty());
    assert_eq!(polls(&sim.advance(1)), [(500, 200)]);
}

#[test]
fn fanout_poll_eviction_and_budget_stale_never_move_backwards_or_loop() {
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::Poll));
    sim.start_with(&[(R, 50)]);
    let acts = sim.handle(polled(Err(poll_err(409, json!({"error":"slow_consumer_evicted",
        "details":{"topic":R,"lag":900,"lag_threshold":300,"strikes":3,"max_strikes":3,"suggested_after_seq":0}})))));
    assert!(polls(&acts).is_empty());
    assert_eq!(
        polls(&sim.advance(300)),
        [(50, 200)],
        "suggested 0 is not a reason to go back"
    );
    // Stale by budget only: resuming at the oldest cursor would be stale again.
    let acts = sim.handle(polled(Err(poll_err(
        410,
        json!({"error":"stale_cursor","details":{"topic":R,
        "requested_cursor":50,"oldest_available_cursor":40,"head_cursor":5000,
        "reason_codes":["replay_budget_exceeded"],"replay_lag":4950,"replay_budget_events":3000}}),
    ))));
    let b = applies(&acts);
    assert_eq!(b[0].new_watermark, Watermark(2000));
    let acts = sim.apply_ok(&acts);
    assert_eq!(changes(&acts).len(), 1);
    let acts = sim.advance(300);
    assert_eq!(polls(&acts), [(2000, 200)]);
}

#[test]
fn fanout_expired_token_is_refreshed_once_then_paced() {
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::Poll));
    sim.start_with(&[]);
    let expired = || {
        polled(Err(poll_err(
            401,
            json!({"error":"unauthorized","reason_code":"token_expired"}),
        )))
    };
    let acts = sim.handle(expired());
    assert_eq!(kinds(&acts), ["FetchToken"]);
    let acts = sim.token(grant(300, None));
    assert!(
        polls(&acts).is_empty(),
        "not closer than the minimum interval"
    );
    assert_eq!(
        polls(&sim.advance(300)),
        [(0, 200)],
        "retried with the new token"
    );
    // The fresh token is refused too: no immediate mint loop.
    let acts = sim.handle(expired());
    assert!(
        kinds(&acts).iter().all(|k| k != "FetchToken"),
        "{:?}",
        kinds(&acts)
    );
    let later = sim.advance(60_000);
    let mints = kinds(&later).iter().filter(|k| *k == "FetchToken").count();
    assert!((1..=4).contains(&mints), "paced mints in 60 s: {mints}");
}

#[test]
fn fanout_blocked_websocket_falls_back_to_polling() {
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::Auto));
    let acts = sim.start_with(&[]);
    let (c, _) = connect_topic(&acts).unwrap();
    let proxy = || http_status(502, "bad_gateway", None);
    sim.handle(Event::ConnectFailed(c, proxy()));
    // The probe poll (sent with the first socket) works: HTTP gets through.
    let acts = sim.handle(polled(Ok(page(1..=1, 5, 0))));
    commit_all(&mut sim, acts);
    let acts = sim.advance(60_000);
    let (c2, _) = connect_topic(&acts).expect("one more WebSocket try");
    sim.handle(Event::ConnectFailed(c2, proxy()));
    // The second socket's probe is still answered.
    let acts = sim.handle(polled(Ok(page(2..=2, 5, 0))));
    let mut acts: Vec<Action> = acts.into_iter().chain(sim.advance(1_000)).collect();
    assert!(!polls(&acts).is_empty(), "polls after two blocked upgrades");
    assert_eq!(sim.e.status().transport, "poll");
    acts = commit_all(&mut sim, acts);
    let _ = acts;
    let acts = sim.handle(polled(Ok(page(2..=5, 5, 0))));
    commit_all(&mut sim, acts);
    assert_eq!(sim.e.status().topics[0].phase, TopicPhase::Live);
    assert_eq!(sim.e.watermark(&topic(R)), Some(Watermark(5)));
}

#[test]
fn auto_dialect_switches_to_fanout_when_the_phoenix_route_is_missing() {
    let mut c = cfg(&[R]);
    c.dialect = Dialect::Auto;
    let mut sim = Sim::with_cfg(c);
    let acts = sim.start_with(&[(R, 7)]);
    let conn = acts
        .iter()
        .find_map(|a| match a {
            Action::Connect { conn, .. } => Some(*conn),
            _ => None,
        })
        .expect("tries Phoenix first");
    let acts = sim.handle(Event::ConnectFailed(
        conn,
        http_status(404, "not_found", None),
    ));
    let (_, after) = connect_topic(&acts).expect("dialect F socket");
    assert_eq!(after, 7);
    assert!(!kinds(&acts).iter().any(|k| k.starts_with("BeginSnapshot")));
}

#[test]
fn fanout_gap_restarts_the_topic_from_the_committed_position() {
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::WebSocket));
    let acts = sim.start_with(&[]);
    let (c, _) = connect_topic(&acts).unwrap();
    sim.handle(Event::Connected(c));
    let acts = sim.handle(Event::Frame(c, fframe(1)));
    let acts = commit_all(&mut sim, acts);
    assert_eq!(applies(&acts).len(), 1);
    let acts = sim.handle(Event::Frame(c, fframe(3)));
    assert!(
        kinds(&acts).contains(&format!("Close#{}", c.0)),
        "{:?}",
        kinds(&acts)
    );
    let (_, after) = connect_topic(&acts).expect("reconnect from the committed position");
    assert_eq!(after, 1);
    assert_eq!(sim.e.metrics().gaps, 1);
}

#[test]
fn fanout_forbidden_topic_fails_only_that_topic() {
    let mut sim = Sim::with_cfg(fcfg_topics(
        &[R, "run:r2:events"],
        FanoutTransport::WebSocket,
    ));
    let acts = sim.start_with(&[]);
    let conns = connect_topics(&acts);
    assert_eq!(conns.len(), 2, "one socket per topic");
    sim.handle(Event::ConnectFailed(
        conns[0],
        http_status(403, "forbidden_topic", None),
    ));
    let st = sim.e.status();
    assert_eq!(st.topics[0].phase, TopicPhase::Failed);
    assert_eq!(
        st.topics[0].error.as_ref().map(SyncError::code),
        Some("topic_forbidden")
    );
    assert_ne!(st.topics[1].phase, TopicPhase::Failed);
    // No retry of a forbidden topic.
    let later = sim.advance(120_000);
    assert!(
        !kinds(&later).iter().any(|k| k.contains(&format!("{R}@"))),
        "{:?}",
        kinds(&later)
    );
}

#[test]
fn fanout_one_refused_token_counts_once_across_topics() {
    let mut sim = Sim::with_cfg(fcfg_topics(
        &[R, "run:r2:events", "run:r3:events"],
        FanoutTransport::WebSocket,
    ));
    let acts = sim.start_with(&[]);
    let conns = connect_topics(&acts);
    assert_eq!(conns.len(), 3);
    let mut acts = Vec::new();
    for c in conns {
        acts.extend(sim.handle(Event::ConnectFailed(
            c,
            http_status(401, "token_expired", None),
        )));
    }
    assert_eq!(
        kinds(&acts).iter().filter(|k| *k == "FetchToken").count(),
        1
    );
    let acts = sim.token(grant(300, None));
    let reconnects = acts
        .iter()
        .filter(|a| matches!(a, Action::ConnectTopic { .. }))
        .count();
    assert_eq!(
        reconnects,
        3,
        "every topic comes back with the fresh token: {:?}",
        kinds(&acts)
    );
    assert_eq!(sim.e.auth_refusals, 1);
}

#[test]
fn fanout_poll_retry_after_a_lost_answer_keeps_the_minimum_interval() {
    // Found by the dialect-F chaos run: the server counted a poll whose answer was lost; a
    // retry drawn from the backoff (50 ms here) must still wait the minimum interval.
    let mut c = fcfg(FanoutTransport::Poll);
    c.backoff_base = Duration::from_millis(50);
    c.backoff_cap = Duration::from_millis(100);
    let mut sim = Sim::with_cfg(c);
    let acts = sim.start_with(&[]);
    assert_eq!(polls(&acts), [(0, 200)]);
    let sent = sim.now;
    sim.advance(20);
    sim.handle(polled(Err(PollFailure::Transport(
        "connection reset".into(),
    ))));
    let mut first_retry = None;
    for _ in 0..400 {
        let acts = sim.advance(1);
        if !polls(&acts).is_empty() {
            first_retry = Some(sim.now);
            break;
        }
    }
    let at = first_retry.expect("retried");
    assert!(
        at.0 - sent.0 >= 300,
        "retry {} ms after the lost poll",
        at.0 - sent.0
    );
}

#[test]
fn fanout_head_probe_retries_after_a_transient_failure_and_gives_up_only_without_a_route() {
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::WebSocket));
    let acts = sim.start_with(&[(R, 5)]);
    let (c, _) = connect_topic(&acts).unwrap();
    assert_eq!(polls(&acts), [(5, 1)], "probe");
    sim.handle(Event::Connected(c));
    // A 503 on the probe: not live yet (the head is unknown), probed again later.
    sim.handle(polled(Err(PollFailure::Status {
        status: 503,
        code: None,
    })));
    assert_ne!(sim.e.status().topics[0].phase, TopicPhase::Live);
    // (The socket stays up meanwhile: its liveness pings are answered.)
    sim.answer_heartbeats = true;
    let acts = sim.advance(60_000);
    assert_eq!(polls(&acts), [(5, 1)], "probed again");
    // The poll route does not exist on this server: live once the socket is open.
    sim.handle(polled(Err(PollFailure::Status {
        status: 404,
        code: None,
    })));
    assert_eq!(sim.e.status().topics[0].phase, TopicPhase::Live);
    assert!(polls(&sim.advance(60_000)).is_empty(), "no more probes");
}

#[test]
fn fanout_the_same_refused_token_offered_again_stops_with_an_auth_error() {
    // A fixed app-supplied token that the server no longer accepts: one retry, then stop
    // (AuthFailed, typed) instead of minting/pacing forever.
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::Poll));
    sim.start_with(&[]);
    let refused = || {
        polled(Err(poll_err(
            401,
            json!({"error":"unauthorized","reason_code":"token_too_old"}),
        )))
    };
    assert_eq!(kinds(&sim.handle(refused())), ["FetchToken"]);
    sim.token(grant(300, None));
    sim.advance(300);
    sim.handle(refused());
    let acts = sim.advance(60_000);
    assert!(
        kinds(&acts).contains(&"FetchToken".to_owned()),
        "{:?}",
        kinds(&acts)
    );
    sim.token(grant(300, None)); // the same token string again
    let st = sim.e.status();
    assert_eq!(st.state, ConnectionState::AuthFailed);
    assert_eq!(
        st.last_error.as_ref().map(SyncError::code),
        Some("auth_failed")
    );
    assert!(polls(&sim.advance(120_000)).is_empty(), "no more requests");
}

#[test]
fn fanout_a_late_refusal_of_an_older_token_does_not_fetch_another() {
    // The socket's 401 and the head probe's 401 for one token arrive on either side of the
    // refresh: the late one must not fetch a third token (that ping-pong never counted a
    // refusal and looped hundreds of times a second against the real server).
    let mut sim = Sim::with_cfg(fcfg(FanoutTransport::WebSocket));
    let acts = sim.start_with(&[]);
    let (c1, _) = connect_topic(&acts).unwrap();
    let refused = |status| http_status(status, "invalid_token", None);
    assert_eq!(
        kinds(&sim.handle(Event::ConnectFailed(c1, refused(401)))),
        ["FetchToken"]
    );
    let acts = sim.token(grant(300, None));
    let (c2, _) = connect_topic(&acts).expect("reconnects with the new token");
    // The first token's probe is refused only now.
    let late = sim.handle(polled(Err(poll_err(401, json!({"error": "unauthorized"})))));
    assert!(
        !kinds(&late).contains(&"FetchToken".to_owned()),
        "{:?}",
        kinds(&late)
    );
    // The new token is refused too: counted, paced, and the same token again stops sync.
    sim.handle(Event::ConnectFailed(c2, refused(401)));
    let acts = sim.advance(60_000);
    let mints = kinds(&acts).iter().filter(|k| *k == "FetchToken").count();
    assert!(mints <= 1, "{:?}", kinds(&acts));
    if mints == 1 {
        sim.token(grant(300, None));
        assert_eq!(sim.e.status().state, ConnectionState::AuthFailed);
    }
}
