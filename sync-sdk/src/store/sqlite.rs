//! The durable store: SQLite (rusqlite, bundled), WAL, versioned migrations.
//!
//! Schema (version 1):
//! ```sql
//! khala_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)   -- schema_version, identity
//! khala_topics(topic TEXT PRIMARY KEY, watermark INTEGER NOT NULL,
//!              snapshot_gen INTEGER NOT NULL,       -- generation readers see
//!              staged_gen INTEGER,                  -- snapshot being loaded, if any
//!              snapshot_watermark INTEGER, updated_at INTEGER)
//! khala_docs(topic TEXT, snapshot_gen INTEGER, doc_key TEXT, doc_version INTEGER NOT NULL,
//!            payload TEXT NOT NULL, payload_hash TEXT, watermark INTEGER NOT NULL,
//!            verified INTEGER NOT NULL, PRIMARY KEY(topic, snapshot_gen, doc_key)) WITHOUT ROWID
//! ```
//! `snapshot_gen` is part of the documents' key (DESIGN.md had it as a column only): a snapshot
//! writes each row once, under a staged generation readers do not see, and `finish_snapshot`
//! flips the topic's generation, deletes the old rows and sets the watermark in one
//! transaction. So the old data stays readable until the swap and no visible document is ever
//! newer than its topic's visible watermark — even if the process is killed mid-snapshot.
//!
//! All SQLite work runs on tokio's blocking pool (`spawn_blocking`) over one connection
//! behind a mutex: writes are serialised by SQLite anyway, and the async executor never
//! blocks on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{
    ApplyBatch, ApplyOutcome, DocWrite, Identity, IdentityCheck, SnapshotGen, Store, StoreError,
    StoreFuture, StoredDoc,
};
use crate::protocol::{DocKey, PayloadHash, Topic, Watermark};

/// Newest schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Options of [`SqliteStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Open read-only (inspection tools; every write fails with `ReadOnly`).
    pub read_only: bool,
    /// `PRAGMA synchronous=FULL` instead of `NORMAL`. With WAL, `NORMAL` never corrupts and
    /// at worst loses the last commits on power loss (they are then replayed from the server).
    pub synchronous_full: bool,
    /// `PRAGMA wal_autocheckpoint` in pages (SQLite default 1000).
    pub wal_autocheckpoint: u32,
    /// How long to wait for another process's lock before `Busy`.
    pub busy_timeout: std::time::Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            read_only: false,
            synchronous_full: false,
            wal_autocheckpoint: 1000,
            busy_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => match f.code {
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                StoreError::Corrupt(msg.clone().unwrap_or_else(|| f.to_string()))
            }
            ErrorCode::DiskFull => StoreError::DiskFull,
            ErrorCode::ReadOnly => StoreError::ReadOnly,
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Busy,
            _ => StoreError::Other(e.to_string()),
        },
        _ => StoreError::Other(e.to_string()),
    }
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, migrating it to the current schema.
    ///
    /// Errors: `Corrupt` (not a database / damaged), `Foreign` (another application's
    /// SQLite file), `SchemaTooNew`, `ReadOnly`, `Busy`.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref();
        let flags = if options.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(path, flags).map_err(map_err)?;
        Self::init(conn, &options, Some(path.to_path_buf()))
    }

    /// A private in-memory SQLite database (tests).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(map_err)?;
        Self::init(conn, &SqliteOptions::default(), None)
    }

    fn init(conn: Connection, options: &SqliteOptions, path: Option<PathBuf>) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(options.busy_timeout).map_err(map_err)?;
        // The first real read: a non-database file fails here with NOTADB.
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(map_err)?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type='table'", [], |r| r.get(0))
            .map_err(map_err)?;
        let has_meta: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='khala_meta'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(map_err)?
            > 0;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if tables > 0 && !has_meta {
            return Err(StoreError::Foreign);
        }
        if !options.read_only {
            let journal: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(map_err)?;
            if !journal.eq_ignore_ascii_case("wal") && path.is_some() {
                tracing::warn!(journal, "SQLite refused WAL mode");
            }
            conn.execute_batch(&format!(
                "PRAGMA synchronous={}; PRAGMA wal_autocheckpoint={};",
                if options.synchronous_full { "FULL" } else { "NORMAL" },
                options.wal_autocheckpoint
            ))
            .map_err(map_err)?;
            if version < 1 {
                migrate_v1(&conn)?;
            }
        } else if version < SCHEMA_VERSION {
            return Err(StoreError::ReadOnly);
        }
        if let Some(v) = conn
            .query_row("SELECT value FROM khala_meta WHERE key='schema_version'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(map_err)?
        {
            let v: u32 = v.parse().map_err(|_| StoreError::Corrupt("bad schema_version".into()))?;
            if v > SCHEMA_VERSION {
                return Err(StoreError::SchemaTooNew {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    fn run<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut c = conn.lock().map_err(|_| StoreError::Other("connection mutex poisoned".into()))?;
                f(&mut c)
            })
            .await
            .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
        })
    }

    /// `PRAGMA integrity_check` == "ok" (crash tests).
    pub fn integrity_check(&self) -> Result<bool, StoreError> {
        let c = self.conn.lock().map_err(|_| StoreError::Closed)?;
        let r: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(map_err)?;
        Ok(r == "ok")
    }
}

fn migrate_v1(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS khala_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS khala_topics(
             topic TEXT PRIMARY KEY,
             watermark INTEGER NOT NULL,
             snapshot_gen INTEGER NOT NULL,
             staged_gen INTEGER,
             snapshot_watermark INTEGER,
             updated_at INTEGER);
         CREATE TABLE IF NOT EXISTS khala_docs(
             topic TEXT NOT NULL,
             snapshot_gen INTEGER NOT NULL,
             doc_key TEXT NOT NULL,
             doc_version INTEGER NOT NULL,
             payload TEXT NOT NULL,
             payload_hash TEXT,
             watermark INTEGER NOT NULL,
             verified INTEGER NOT NULL,
             PRIMARY KEY(topic, snapshot_gen, doc_key)) WITHOUT ROWID;
         INSERT OR REPLACE INTO khala_meta(key, value) VALUES('schema_version', '1');
         PRAGMA user_version = 1;
         COMMIT;",
    )
    .map_err(map_err)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `(watermark, snapshot_gen, staged_gen)` of a topic; creates the row if missing.
fn topic_row(tx: &rusqlite::Transaction<'_>, topic: &str) -> Result<(u64, i64, Option<i64>), StoreError> {
    let row = tx
        .query_row(
            "SELECT watermark, snapshot_gen, staged_gen FROM khala_topics WHERE topic=?1",
            [topic],
            |r| Ok((u64_of(r.get(0)?), r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?)),
        )
        .optional()
        .map_err(map_err)?;
    match row {
        Some(r) => Ok(r),
        None => {
            tx.execute(
                "INSERT INTO khala_topics(topic, watermark, snapshot_gen) VALUES(?1, 0, 0)",
                [topic],
            )
            .map_err(map_err)?;
            Ok((0, 0, None))
        }
    }
}

fn read_doc(topic: &Topic, r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredDoc> {
    let key: String = r.get(0)?;
    let hash: Option<String> = r.get(3)?;
    Ok(StoredDoc {
        topic: topic.clone(),
        doc_key: DocKey::new(key).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        doc_version: u64_of(r.get(1)?),
        payload: r.get(2)?,
        payload_hash: hash.and_then(|h| PayloadHash::parse(&h).ok()),
        watermark: Watermark(u64_of(r.get(4)?)),
        verified: r.get::<_, i64>(5)? != 0,
    })
}

const DOC_COLUMNS: &str = "d.doc_key, d.doc_version, d.payload, d.payload_hash, d.watermark, d.verified";

impl Store for SqliteStore {
    fn bind_identity(&self, identity: Identity) -> StoreFuture<'_, IdentityCheck> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let get = |k: &str| -> Result<Option<String>, StoreError> {
                tx.query_row("SELECT value FROM khala_meta WHERE key=?1", [k], |r| r.get(0))
                    .optional()
                    .map_err(map_err)
            };
            let server = get("identity_server")?;
            let current = server.map(|server| -> Result<Identity, StoreError> {
                Ok(Identity {
                    server,
                    subject: get("identity_subject")?,
                    org: get("identity_org")?,
                })
            });
            let check = match current.transpose()? {
                None => IdentityCheck::Fresh,
                Some(cur) if cur == identity => return Ok(IdentityCheck::Same),
                Some(_) => {
                    tx.execute_batch("DELETE FROM khala_docs; DELETE FROM khala_topics;")
                        .map_err(map_err)?;
                    IdentityCheck::Replaced
                }
            };
            tx.execute("DELETE FROM khala_meta WHERE key IN ('identity_subject','identity_org')", [])
                .map_err(map_err)?;
            let put = |k: &str, v: &str| -> Result<(), StoreError> {
                tx.execute("INSERT OR REPLACE INTO khala_meta(key, value) VALUES(?1, ?2)", [k, v])
                    .map(|_| ())
                    .map_err(map_err)
            };
            put("identity_server", &identity.server)?;
            if let Some(s) = &identity.subject {
                put("identity_subject", s)?;
            }
            if let Some(o) = &identity.org {
                put("identity_org", o)?;
            }
            tx.commit().map_err(map_err)?;
            Ok(check)
        })
    }

    fn watermarks(&self) -> StoreFuture<'_, Vec<(Topic, Watermark)>> {
        self.run(|c| {
            let mut st = c
                .prepare_cached("SELECT topic, watermark FROM khala_topics ORDER BY topic")
                .map_err(map_err)?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, u64_of(r.get(1)?))))
                .map_err(map_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (t, w) = row.map_err(map_err)?;
                if let Ok(t) = Topic::new(t) {
                    out.push((t, Watermark(w)));
                }
            }
            Ok(out)
        })
    }

    fn apply(&self, batch: ApplyBatch) -> StoreFuture<'_, ApplyOutcome> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let topic = batch.topic.as_str();
            let (stored, generation, _) = topic_row(&tx, topic)?;
            if stored != batch.expected_watermark.get() {
                return Err(StoreError::WatermarkConflict {
                    topic: batch.topic.clone(),
                    expected: batch.expected_watermark,
                    found: Watermark(stored),
                });
            }
            let mut kept_local = Vec::new();
            {
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT INTO khala_docs(topic, snapshot_gen, doc_key, doc_version, payload, payload_hash, watermark, verified)
                         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT(topic, snapshot_gen, doc_key) DO UPDATE SET
                           doc_version=excluded.doc_version, payload=excluded.payload,
                           payload_hash=excluded.payload_hash, watermark=excluded.watermark,
                           verified=excluded.verified
                         WHERE excluded.doc_version > khala_docs.doc_version",
                    )
                    .map_err(map_err)?;
                let mut delete = tx
                    .prepare_cached(
                        "DELETE FROM khala_docs WHERE topic=?1 AND snapshot_gen=?2 AND doc_key=?3 AND doc_version<=?4",
                    )
                    .map_err(map_err)?;
                let mut exists = tx
                    .prepare_cached(
                        "SELECT 1 FROM khala_docs WHERE topic=?1 AND snapshot_gen=?2 AND doc_key=?3",
                    )
                    .map_err(map_err)?;
                for (i, w) in batch.writes.iter().enumerate() {
                    let key = w.doc_key.as_str();
                    match &w.payload {
                        Some(p) => {
                            let n = upsert
                                .execute(params![
                                    topic,
                                    generation,
                                    key,
                                    i64_of(w.doc_version),
                                    p,
                                    w.payload_hash.map(|h| h.to_base64()),
                                    i64_of(w.watermark.get()),
                                    i64::from(w.verified),
                                ])
                                .map_err(map_err)?;
                            if n == 0 {
                                kept_local.push(i);
                            }
                        }
                        None => {
                            let n = delete
                                .execute(params![topic, generation, key, i64_of(w.doc_version)])
                                .map_err(map_err)?;
                            if n == 0 && exists.exists(params![topic, generation, key]).map_err(map_err)? {
                                kept_local.push(i);
                            }
                        }
                    }
                }
            }
            tx.execute(
                "UPDATE khala_topics SET watermark=?2, updated_at=strftime('%s','now') WHERE topic=?1",
                params![topic, i64_of(batch.new_watermark.get())],
            )
            .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(ApplyOutcome {
                watermark: batch.new_watermark,
                kept_local,
            })
        })
    }

    fn begin_snapshot(&self, topic: Topic) -> StoreFuture<'_, SnapshotGen> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let (_, current, staged) = topic_row(&tx, topic.as_str())?;
            let next = current.max(staged.unwrap_or(0)) + 1;
            // Leftovers of an unfinished snapshot (crash, restart) go first.
            tx.execute(
                "DELETE FROM khala_docs WHERE topic=?1 AND snapshot_gen<>?2",
                params![topic.as_str(), current],
            )
            .map_err(map_err)?;
            tx.execute(
                "UPDATE khala_topics SET staged_gen=?2 WHERE topic=?1",
                params![topic.as_str(), next],
            )
            .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(SnapshotGen(u64_of(next)))
        })
    }

    fn put_snapshot_page(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        docs: Vec<DocWrite>,
    ) -> StoreFuture<'_, ()> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let (_, _, staged) = topic_row(&tx, topic.as_str())?;
            let g = i64_of(generation.0);
            if staged != Some(g) {
                return Err(StoreError::StaleSnapshot(topic));
            }
            {
                let mut ins = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO khala_docs(topic, snapshot_gen, doc_key, doc_version, payload, payload_hash, watermark, verified)
                         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .map_err(map_err)?;
                for w in &docs {
                    let Some(p) = &w.payload else { continue };
                    ins.execute(params![
                        topic.as_str(),
                        g,
                        w.doc_key.as_str(),
                        i64_of(w.doc_version),
                        p,
                        w.payload_hash.map(|h| h.to_base64()),
                        i64_of(w.watermark.get()),
                        i64::from(w.verified),
                    ])
                    .map_err(map_err)?;
                }
            }
            tx.commit().map_err(map_err)
        })
    }

    fn finish_snapshot(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        snapshot_watermark: Watermark,
    ) -> StoreFuture<'_, ()> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let (_, _, staged) = topic_row(&tx, topic.as_str())?;
            let g = i64_of(generation.0);
            if staged != Some(g) {
                return Err(StoreError::StaleSnapshot(topic));
            }
            tx.execute(
                "DELETE FROM khala_docs WHERE topic=?1 AND snapshot_gen<>?2",
                params![topic.as_str(), g],
            )
            .map_err(map_err)?;
            let w = i64_of(snapshot_watermark.get());
            tx.execute(
                "UPDATE khala_topics SET watermark=?2, snapshot_gen=?3, staged_gen=NULL, snapshot_watermark=?2,
                 updated_at=strftime('%s','now') WHERE topic=?1",
                params![topic.as_str(), w, g],
            )
            .map_err(map_err)?;
            tx.commit().map_err(map_err)
        })
    }

    fn get(&self, topic: Topic, doc_key: DocKey) -> StoreFuture<'_, Option<StoredDoc>> {
        self.run(move |c| {
            let sql = format!(
                "SELECT {DOC_COLUMNS} FROM khala_docs d JOIN khala_topics t
                 ON t.topic=d.topic AND t.snapshot_gen=d.snapshot_gen
                 WHERE d.topic=?1 AND d.doc_key=?2"
            );
            let mut st = c.prepare_cached(&sql).map_err(map_err)?;
            st.query_row(params![topic.as_str(), doc_key.as_str()], |r| read_doc(&topic, r))
                .optional()
                .map_err(map_err)
        })
    }

    fn list(&self, topic: Topic) -> StoreFuture<'_, Vec<StoredDoc>> {
        self.run(move |c| {
            let sql = format!(
                "SELECT {DOC_COLUMNS} FROM khala_docs d JOIN khala_topics t
                 ON t.topic=d.topic AND t.snapshot_gen=d.snapshot_gen
                 WHERE d.topic=?1 ORDER BY d.doc_key"
            );
            let mut st = c.prepare_cached(&sql).map_err(map_err)?;
            let rows = st
                .query_map([topic.as_str()], |r| read_doc(&topic, r))
                .map_err(map_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(map_err)
        })
    }
}
