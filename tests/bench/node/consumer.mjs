// The old Khala client stack: the `phoenix` npm client over `ws`, `better-sqlite3`, one
// transaction per `sync:update_batch` frame. A benchmark baseline only.
//   node consumer.mjs <ws-endpoint> <token> <db> <topic> <resume_after> <until_watermark>
import { Socket } from "phoenix";
import WebSocket from "ws";
import Database from "better-sqlite3";
import { readFileSync } from "node:fs";

const [endpoint, token, dbPath, topic, resumeAfter, until] = process.argv.slice(2);
const target = Number(until);
const db = new Database(dbPath);
db.pragma("journal_mode = WAL");
db.pragma("synchronous = NORMAL");
db.exec(`CREATE TABLE IF NOT EXISTS docs(topic TEXT, doc_key TEXT, doc_version INTEGER,
  payload TEXT, watermark INTEGER, PRIMARY KEY(topic, doc_key)) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS marks(topic TEXT PRIMARY KEY, watermark INTEGER)`);
const upsert = db.prepare(`INSERT INTO docs VALUES (?, ?, ?, ?, ?)
  ON CONFLICT(topic, doc_key) DO UPDATE SET doc_version = excluded.doc_version,
  payload = excluded.payload, watermark = excluded.watermark
  WHERE excluded.doc_version >= docs.doc_version`);
const mark = db.prepare("INSERT OR REPLACE INTO marks VALUES (?, ?)");
let last = Number(resumeAfter);
const applyBatch = db.transaction((updates) => {
  for (const u of updates) {
    if (u.watermark <= last) continue;
    upsert.run(u.topic, u.doc_key, u.doc_version, JSON.stringify(u.payload), u.watermark);
    last = u.watermark;
  }
  mark.run(topic, last);
});

const started = process.hrtime.bigint();
const socket = new Socket(endpoint, {
  transport: WebSocket,
  params: { token, client: "old-stack", client_build_id: "2026.02.0", protocol_version: "khala.ws.v1", schema_version: "1" },
  heartbeatIntervalMs: 20000,
});
socket.connect();
const channel = socket.channel("sync:v1", {});
channel.on("sync:update_batch", (p) => {
  applyBatch(p.updates);
  if (last >= target) {
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    const hwm = /VmHWM:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"));
    console.log(JSON.stringify({ elapsed_ms: ms, watermark: last, peak_rss_kib: hwm ? Number(hwm[1]) : 0 }));
    db.close();
    process.exit(0);
  }
});
channel.join().receive("ok", () => {
  channel.push("sync:subscribe", { topics: [topic], resume_after: { [topic]: Number(resumeAfter) }, replay_batch_size: 200 }, 600000);
}).receive("error", (e) => { console.error("join failed", e); process.exit(2); });
