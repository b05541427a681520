//! The durable store: SQLite (rusqlite, bundled), WAL, versioned migrations.
//!
//! # Schema (version 1)
//!
//! ```sql
//! khala_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)
//!     -- schema_version, identity_server, identity_subject, identity_org, last_snapshot_gen
//! khala_topics(topic TEXT PRIMARY KEY,
//!              watermark INTEGER NOT NULL,     -- last applied seq (0 = nothing yet)
//!              snapshot_gen INTEGER NOT NULL,  -- generation readers see (0 = never snapshotted)
//!              staged_gen INTEGER,             -- snapshot being loaded, if any
//!              snapshot_watermark INTEGER,     -- watermark of the last finished snapshot
//!              updated_at INTEGER)             -- unix seconds of the last commit
//! khala_docs(topic TEXT NOT NULL, snapshot_gen INTEGER NOT NULL, doc_key TEXT NOT NULL,
//!            doc_version INTEGER NOT NULL, payload TEXT NOT NULL,
//!            payload_hash TEXT,                -- wire form (base64), NULL = none sent
//!            watermark INTEGER NOT NULL,       -- update that last wrote the doc
//!            verified INTEGER NOT NULL,        -- 0 = hash mismatch kept after a resync
//!            PRIMARY KEY(topic, snapshot_gen, doc_key)) WITHOUT ROWID
//! ```
//!
//! The version is in `PRAGMA user_version` and in the `khala_meta` row `schema_version`; a
//! newer one is refused ([`StoreError::SchemaTooNew`]), a SQLite file with tables but no
//! `khala_meta` is another application's ([`StoreError::Foreign`]) and is left untouched.
//!
//! # Snapshot generations
//!
//! `snapshot_gen` is part of the documents' key (DESIGN.md had it as a plain column): a
//! snapshot writes each row once, under `staged_gen`, which readers and `apply` ignore — they
//! join on the topic's committed `snapshot_gen`. `finish_snapshot` deletes every other
//! generation of the topic and sets `watermark`, `snapshot_gen` and `snapshot_watermark` in
//! one transaction. So the old data stays readable until the swap, and no visible document is
//! ever newer than its topic's visible watermark, even if the process dies mid-snapshot.
//! `begin_snapshot` drops an unfinished generation first. Generation numbers come from the
//! `last_snapshot_gen` meta counter, which an identity wipe keeps, so a stale
//! [`SnapshotGen`] is never mistaken for a new one.
//!
//! # Apply
//!
//! One `BEGIN IMMEDIATE` transaction: compare-and-set on the watermark (a topic without a row
//! has watermark 0), upserts guarded by `WHERE excluded.doc_version > doc_version` (a skipped
//! upsert changes no row, which is how `kept_local` is detected), tombstones that delete only
//! when their version is `>=` the stored one, then the new watermark. Any error drops the
//! transaction, which rolls it back: committed data is never touched by a failed batch.
//!
//! # Identity
//!
//! `bind_identity` records server, subject and org in `khala_meta`. Another identity **wipes**
//! every document and topic in the same transaction that records the new owner and reports
//! [`IdentityCheck::Replaced`]: the store is a cache of server data, so refusing would only
//! force every app to write the delete-and-retry path itself.
//!
//! Versions and watermarks are `u64` in Rust and `INTEGER` (i64) in SQLite; values above
//! `i64::MAX` (never produced by a JSON server) are stored as `i64::MAX`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{
    ApplyBatch, ApplyOutcome, DocWrite, Identity, IdentityCheck, SnapshotGen, Store, StoreError,
    StoreFuture, StoredDoc,
};
use crate::protocol::{DocKey, PayloadHash, Topic, Watermark};

mod schema;
mod worker;

pub use schema::SCHEMA_VERSION;
use worker::Worker;

/// `PRAGMA synchronous` for the store (SQLite's durability/speed trade-off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSynchronous {
    /// `NORMAL`: with WAL this never corrupts the file; a power loss may lose the last
    /// commits, which the server replays on the next start (the watermark went with them).
    #[default]
    Normal,
    /// `FULL`: every commit is on disk before `apply` returns (slower on mobile flash).
    Full,
}

/// Options of [`SqliteStore::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Open read-only (inspection tools): nothing is created or migrated, and every write
    /// fails with [`StoreError::ReadOnly`].
    pub read_only: bool,
    /// Durability of each commit.
    pub synchronous: SqliteSynchronous,
    /// `PRAGMA wal_autocheckpoint` in pages (SQLite's default is 1000, about 4 MB).
    pub wal_autocheckpoint: u32,
    /// How long to wait for another process's lock before failing with
    /// [`StoreError::Busy`].
    pub busy_timeout: Duration,
    /// SQLite page cache, KiB (`PRAGMA cache_size = -N`). SQLite's default is 2 MiB; 8 MiB
    /// holds the working set of a typical topic so catch-up does not re-read pages it just
    /// wrote (see docs/PERFORMANCE.md).
    pub cache_size_kib: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            read_only: false,
            synchronous: SqliteSynchronous::Normal,
            wal_autocheckpoint: 10_000,
            busy_timeout: Duration::from_secs(5),
            cache_size_kib: 8 * 1024,
        }
    }
}

/// SQLite-backed [`Store`]. Cheap to clone (clones share one connection).
#[derive(Clone)]
pub struct SqliteStore {
    worker: Arc<Worker>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Maps a SQLite failure to the typed error the app can act on.
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
        // A stored value that does not decode: the file was damaged or written by someone else.
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and migrates it to [`SCHEMA_VERSION`].
    ///
    /// Errors: [`StoreError::Corrupt`] (not a database, or damaged), [`StoreError::Foreign`]
    /// (another application's SQLite file; left untouched), [`StoreError::SchemaTooNew`],
    /// [`StoreError::ReadOnly`] (read-only and not yet created/migrated), [`StoreError::Busy`].
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

    /// A private, empty in-memory SQLite database (tests, benchmarks).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(map_err)?;
        Self::init(conn, &SqliteOptions::default(), None)
    }

    fn init(
        mut conn: Connection,
        options: &SqliteOptions,
        path: Option<PathBuf>,
    ) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(options.busy_timeout).map_err(map_err)?;
        // Room for every statement the store uses (about 16), so none is ever re-prepared.
        conn.set_prepared_statement_cache_capacity(32);
        let version = schema::check(&conn)?;
        if options.read_only {
            if version < SCHEMA_VERSION {
                return Err(StoreError::ReadOnly);
            }
        } else {
            // Before any transaction: the journal mode cannot change inside one.
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
                Ok(mode) if !mode.eq_ignore_ascii_case("wal") && path.is_some() => {
                    tracing::warn!(mode, "SQLite refused WAL journal mode");
                }
                Ok(_) => {}
                // A write-protected file stays readable; writes report `ReadOnly` later.
                Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == ErrorCode::ReadOnly => {}
                Err(e) => return Err(map_err(e)),
            }
            if version < SCHEMA_VERSION {
                schema::migrate(&mut conn)?;
            }
        }
        let synchronous = match options.synchronous {
            SqliteSynchronous::Normal => "NORMAL",
            SqliteSynchronous::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(map_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", options.wal_autocheckpoint)
            .map_err(map_err)?;
        conn.pragma_update(None, "cache_size", -i64::from(options.cache_size_kib))
            .map_err(map_err)?;
        Ok(SqliteStore {
            worker: Arc::new(Worker::spawn(conn)?),
            path,
        })
    }

    fn run<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        Box::pin(self.worker.run(f))
    }

    /// Waits for queued operations, then closes the database (for every clone). Later calls
    /// fail with [`StoreError::Closed`]. Dropping the last clone does the same.
    pub fn close(&self) {
        self.worker.close();
    }

    /// Runs `PRAGMA integrity_check`; true when SQLite answers `ok`.
    pub fn integrity_check(&self) -> StoreFuture<'_, bool> {
        self.run(|c| {
            let r: String = c
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .map_err(map_err)?;
            Ok(r == "ok")
        })
    }

    /// Runs a one-value query or pragma on the connection (tests: `PRAGMA max_page_count`).
    #[cfg(test)]
    pub(crate) fn query_for_test<T>(&self, sql: impl Into<String>) -> StoreFuture<'_, T>
    where
        T: rusqlite::types::FromSql + Send + 'static,
    {
        let sql = sql.into();
        self.run(move |c| c.query_row(&sql, [], |r| r.get(0)).map_err(map_err))
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64_of(d.as_secs()))
}

/// A topic's row: `(watermark, committed snapshot_gen, staged_gen)`.
struct TopicRow {
    watermark: u64,
    generation: i64,
    staged: Option<i64>,
}

fn topic_row(c: &Connection, topic: &Topic) -> Result<Option<TopicRow>, StoreError> {
    c.prepare_cached(
        "SELECT watermark, snapshot_gen, staged_gen FROM khala_topics WHERE topic = ?1",
    )
    .map_err(map_err)?
    .query_row([topic.as_str()], |r| {
        Ok(TopicRow {
            watermark: u64_of(r.get(0)?),
            generation: r.get(1)?,
            staged: r.get(2)?,
        })
    })
    .optional()
    .map_err(map_err)
}

/// Fails with `StaleSnapshot` unless `generation` is the topic's staged generation.
fn require_staged(
    c: &Connection,
    topic: &Topic,
    generation: SnapshotGen,
) -> Result<i64, StoreError> {
    let g = i64_of(generation.0);
    match topic_row(c, topic)? {
        Some(row) if row.staged == Some(g) => Ok(g),
        _ => Err(StoreError::StaleSnapshot(topic.clone())),
    }
}

fn conversion_error(e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

fn read_doc(topic: &Topic, r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredDoc> {
    let hash = r
        .get::<_, Option<String>>(3)?
        .map(|h| PayloadHash::parse(&h))
        .transpose()
        .map_err(conversion_error)?;
    Ok(StoredDoc {
        topic: topic.clone(),
        doc_key: DocKey::new(r.get::<_, String>(0)?).map_err(conversion_error)?,
        doc_version: u64_of(r.get(1)?),
        payload: r.get(2)?,
        payload_hash: hash,
        watermark: Watermark(u64_of(r.get(4)?)),
        verified: r.get::<_, i64>(5)? != 0,
    })
}

fn meta_get(c: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    c.prepare_cached("SELECT value FROM khala_meta WHERE key = ?1")
        .map_err(map_err)?
        .query_row([key], |r| r.get(0))
        .optional()
        .map_err(map_err)
}

fn meta_put(c: &Connection, key: &str, value: Option<&str>) -> Result<(), StoreError> {
    match value {
        Some(v) => c
            .prepare_cached(
                "INSERT INTO khala_meta(key, value) VALUES(?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )
            .map_err(map_err)?
            .execute([key, v]),
        None => c
            .prepare_cached("DELETE FROM khala_meta WHERE key = ?1")
            .map_err(map_err)?
            .execute([key]),
    }
    .map(drop)
    .map_err(map_err)
}

/// The upsert statement: one text per comparator (`>` for updates: strictly newer wins;
/// `>=` within a snapshot: a later page wins unless older).
fn upsert_sql(strictly_newer: bool) -> &'static str {
    macro_rules! upsert_sql {
        ($cmp:literal) => {
            concat!(
                "INSERT INTO khala_docs(topic, snapshot_gen, doc_key, doc_version, payload, payload_hash,
                                        watermark, verified)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(topic, snapshot_gen, doc_key) DO UPDATE SET
                     doc_version = excluded.doc_version, payload = excluded.payload,
                     payload_hash = excluded.payload_hash, watermark = excluded.watermark,
                     verified = excluded.verified
                 WHERE excluded.doc_version ",
                $cmp,
                " khala_docs.doc_version"
            )
        };
    }
    if strictly_newer {
        upsert_sql!(">")
    } else {
        upsert_sql!(">=")
    }
}

/// Upserts one document into generation `g` with the prepared [`upsert_sql`] statement;
/// returns false when the stored version won and the row was kept.
fn upsert_doc(
    st: &mut rusqlite::CachedStatement<'_>,
    topic: &Topic,
    g: i64,
    w: &DocWrite,
    payload: &str,
) -> Result<bool, StoreError> {
    let mut buf = [0u8; 44];
    let hash = w.payload_hash.as_ref().map(|h| h.base64_into(&mut buf));
    let changed = st
        .execute(params![
            topic.as_str(),
            g,
            w.doc_key.as_str(),
            i64_of(w.doc_version),
            payload,
            hash,
            i64_of(w.watermark.get()),
            i64::from(w.verified),
        ])
        .map_err(map_err)?;
    Ok(changed > 0)
}

/// Writes `docs` of generation `g` in key order (B-tree locality: the pages a group touches
/// are visited once, in order) and returns the indices whose stored version won. Writes of the
/// same key keep their relative order (stable sort), so the newest still lands last.
fn write_docs(
    c: &Connection,
    topic: &Topic,
    g: i64,
    docs: &[DocWrite],
    strictly_newer: bool,
) -> Result<Vec<usize>, StoreError> {
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by(|&a, &b| docs[a].doc_key.cmp(&docs[b].doc_key));
    let mut st = c
        .prepare_cached(upsert_sql(strictly_newer))
        .map_err(map_err)?;
    let mut kept = Vec::new();
    for i in order {
        let w = &docs[i];
        let written = match &w.payload {
            Some(p) => upsert_doc(&mut st, topic, g, w, p)?,
            None => delete_doc(c, topic, g, w)?,
        };
        if !written {
            kept.push(i);
        }
    }
    kept.sort_unstable();
    Ok(kept)
}

/// Deletes every generation of `topic`'s documents except `keep`, as two key-range deletes
/// (a `snapshot_gen <> ?` filter would visit every row of the topic, including the 100k just
/// written by a snapshot, only to keep them).
fn delete_other_generations(c: &Connection, topic: &Topic, keep: i64) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM khala_docs WHERE topic = ?1 AND snapshot_gen < ?2",
        "DELETE FROM khala_docs WHERE topic = ?1 AND snapshot_gen > ?2",
    ] {
        c.prepare_cached(sql)
            .map_err(map_err)?
            .execute(params![topic.as_str(), keep])
            .map_err(map_err)?;
    }
    Ok(())
}

/// Deletes a document of generation `g` if `version >=` the stored one. Returns false when a
/// newer document was kept (an absent document is not "kept").
fn delete_doc(c: &Connection, topic: &Topic, g: i64, w: &DocWrite) -> Result<bool, StoreError> {
    let deleted = c
        .prepare_cached(
            "DELETE FROM khala_docs
             WHERE topic = ?1 AND snapshot_gen = ?2 AND doc_key = ?3 AND doc_version <= ?4",
        )
        .map_err(map_err)?
        .execute(params![
            topic.as_str(),
            g,
            w.doc_key.as_str(),
            i64_of(w.doc_version)
        ])
        .map_err(map_err)?;
    if deleted > 0 {
        return Ok(true);
    }
    let exists = c
        .prepare_cached(
            "SELECT 1 FROM khala_docs WHERE topic = ?1 AND snapshot_gen = ?2 AND doc_key = ?3",
        )
        .map_err(map_err)?
        .exists(params![topic.as_str(), g, w.doc_key.as_str()])
        .map_err(map_err)?;
    Ok(!exists)
}

fn read_identity(c: &Connection) -> Result<Option<Identity>, StoreError> {
    let Some(server) = meta_get(c, "identity_server")? else {
        return Ok(None);
    };
    Ok(Some(Identity {
        server,
        subject: meta_get(c, "identity_subject")?,
        org: meta_get(c, "identity_org")?,
    }))
}

impl Store for SqliteStore {
    fn bind_identity(&self, identity: Identity) -> StoreFuture<'_, IdentityCheck> {
        self.run(move |c| {
            // The common case (same owner) only reads, so it also works on a read-only store.
            if read_identity(c)?.as_ref() == Some(&identity) {
                return Ok(IdentityCheck::Same);
            }
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let check = match read_identity(&tx)? {
                Some(current) if current == identity => return Ok(IdentityCheck::Same),
                Some(_) => {
                    // Wipe, not refuse: see the module docs.
                    tx.execute_batch("DELETE FROM khala_docs; DELETE FROM khala_topics;")
                        .map_err(map_err)?;
                    IdentityCheck::Replaced
                }
                None => IdentityCheck::Fresh,
            };
            meta_put(&tx, "identity_server", Some(&identity.server))?;
            meta_put(&tx, "identity_subject", identity.subject.as_deref())?;
            meta_put(&tx, "identity_org", identity.org.as_deref())?;
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
                .query_map([], |r| {
                    let topic = Topic::new(r.get::<_, String>(0)?).map_err(conversion_error)?;
                    Ok((topic, Watermark(u64_of(r.get(1)?))))
                })
                .map_err(map_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(map_err)
        })
    }

    fn apply(&self, batch: ApplyBatch) -> StoreFuture<'_, ApplyOutcome> {
        self.run(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let topic = &batch.topic;
            let (stored, g) =
                topic_row(&tx, topic)?.map_or((0, 0), |r| (r.watermark, r.generation));
            if stored != batch.expected_watermark.get() {
                return Err(StoreError::WatermarkConflict {
                    topic: topic.clone(),
                    expected: batch.expected_watermark,
                    found: Watermark(stored),
                });
            }
            let kept_local = write_docs(&tx, topic, g, &batch.writes, true)?;
            tx.prepare_cached(
                "INSERT INTO khala_topics(topic, watermark, snapshot_gen, updated_at)
                 VALUES(?1, ?2, 0, ?3)
                 ON CONFLICT(topic) DO UPDATE SET
                     watermark = excluded.watermark, updated_at = excluded.updated_at",
            )
            .map_err(map_err)?
            .execute(params![
                topic.as_str(),
                i64_of(batch.new_watermark.get()),
                now_secs()
            ])
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
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let row = topic_row(&tx, &topic)?;
            let committed = row.as_ref().map_or(0, |r| r.generation);
            let last = meta_get(&tx, "last_snapshot_gen")?
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            let next = last
                .max(committed)
                .max(row.as_ref().and_then(|r| r.staged).unwrap_or(0))
                + 1;
            meta_put(&tx, "last_snapshot_gen", Some(&next.to_string()))?;
            // Leftovers of an unfinished snapshot (crash, restart, stale_cursor again).
            delete_other_generations(&tx, &topic, committed)?;
            tx.prepare_cached(
                "INSERT INTO khala_topics(topic, watermark, snapshot_gen, staged_gen)
                 VALUES(?1, 0, 0, ?2)
                 ON CONFLICT(topic) DO UPDATE SET staged_gen = excluded.staged_gen",
            )
            .map_err(map_err)?
            .execute(params![topic.as_str(), next])
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
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let g = require_staged(&tx, &topic, generation)?;
            // Within a snapshot a later page wins unless it carries an older version.
            write_docs(&tx, &topic, g, &docs, false)?;
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
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let g = require_staged(&tx, &topic, generation)?;
            delete_other_generations(&tx, &topic, g)?;
            tx.prepare_cached(
                "UPDATE khala_topics SET watermark = ?2, snapshot_gen = ?3, staged_gen = NULL,
                     snapshot_watermark = ?2, updated_at = ?4
                 WHERE topic = ?1",
            )
            .map_err(map_err)?
            .execute(params![
                topic.as_str(),
                i64_of(snapshot_watermark.get()),
                g,
                now_secs()
            ])
            .map_err(map_err)?;
            tx.commit().map_err(map_err)
        })
    }

    fn get(&self, topic: Topic, doc_key: DocKey) -> StoreFuture<'_, Option<StoredDoc>> {
        self.run(move |c| {
            c.prepare_cached(
                "SELECT d.doc_key, d.doc_version, d.payload, d.payload_hash, d.watermark,
                        d.verified
                 FROM khala_topics t JOIN khala_docs d
                   ON d.topic = t.topic AND d.snapshot_gen = t.snapshot_gen
                 WHERE t.topic = ?1 AND d.doc_key = ?2",
            )
            .map_err(map_err)?
            .query_row(params![topic.as_str(), doc_key.as_str()], |r| {
                read_doc(&topic, r)
            })
            .optional()
            .map_err(map_err)
        })
    }

    fn list(&self, topic: Topic) -> StoreFuture<'_, Vec<StoredDoc>> {
        self.run(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT d.doc_key, d.doc_version, d.payload, d.payload_hash, d.watermark,
                            d.verified
                     FROM khala_topics t JOIN khala_docs d
                       ON d.topic = t.topic AND d.snapshot_gen = t.snapshot_gen
                     WHERE t.topic = ?1
                     ORDER BY d.doc_key",
                )
                .map_err(map_err)?;
            let rows = st
                .query_map([topic.as_str()], |r| read_doc(&topic, r))
                .map_err(map_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(map_err)
        })
    }
}
