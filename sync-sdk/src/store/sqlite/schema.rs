//! Schema checks and versioned migrations.
//!
//! The version lives in two places: `PRAGMA user_version` (cheap to read, standard) and the
//! `khala_meta` row `schema_version` (survives tools that reset `user_version`). A file is
//! refused with [`StoreError::SchemaTooNew`] if either is newer than [`SCHEMA_VERSION`].
//! `khala_meta` is the marker of a khala-sync database in every version: a SQLite file with
//! tables but no `khala_meta` belongs to another application and is never modified.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::map_err;
use crate::store::StoreError;

/// Newest schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. Never edit a shipped entry;
/// append a new one and bump [`SCHEMA_VERSION`].
const MIGRATIONS: &[&str] = &[
    // v1: see the module docs of `store::sqlite` for the meaning of every column.
    "CREATE TABLE IF NOT EXISTS khala_meta(
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS khala_topics(
         topic              TEXT PRIMARY KEY,
         watermark          INTEGER NOT NULL,
         snapshot_gen       INTEGER NOT NULL,
         staged_gen         INTEGER,
         snapshot_watermark INTEGER,
         updated_at         INTEGER);
     CREATE TABLE IF NOT EXISTS khala_docs(
         topic        TEXT NOT NULL,
         snapshot_gen INTEGER NOT NULL,
         doc_key      TEXT NOT NULL,
         doc_version  INTEGER NOT NULL,
         payload      TEXT NOT NULL,
         payload_hash TEXT,
         watermark    INTEGER NOT NULL,
         verified     INTEGER NOT NULL,
         PRIMARY KEY(topic, snapshot_gen, doc_key)) WITHOUT ROWID;",
];

/// Schema version recorded in the file: the larger of `user_version` and the meta row.
fn stored_version(conn: &Connection, has_meta: bool) -> Result<u32, StoreError> {
    let user_version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(map_err)?;
    let meta_version = if has_meta {
        conn.query_row(
            "SELECT value FROM khala_meta WHERE key='schema_version'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(map_err)?
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| StoreError::Corrupt(format!("bad schema_version {v:?} in khala_meta")))
        })
        .transpose()?
        .unwrap_or(0)
    } else {
        0
    };
    Ok(user_version.max(meta_version))
}

/// `(user tables, has khala_meta)`.
fn tables(conn: &Connection) -> Result<(i64, bool), StoreError> {
    conn.query_row(
        "SELECT count(*), coalesce(sum(name = 'khala_meta'), 0) FROM sqlite_master
         WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        [],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? > 0)),
    )
    .map_err(map_err)
}

/// Refuses foreign and too-new files. Returns the file's schema version.
///
/// This is also the first real read of the file, so a file that is not a database fails
/// here with `Corrupt` (SQLite reports `NOTADB` on first access, not on open).
pub(super) fn check(conn: &Connection) -> Result<u32, StoreError> {
    let (count, has_meta) = tables(conn)?;
    if count > 0 && !has_meta {
        return Err(StoreError::Foreign);
    }
    let found = stored_version(conn, has_meta)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Brings the schema to [`SCHEMA_VERSION`], one transaction per step. Re-checks inside an
/// `IMMEDIATE` transaction so two processes opening a new file at once migrate it once.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        let version = check(&tx)?;
        let Some(step) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            return Ok(());
        };
        let next = version + 1;
        tx.execute_batch(step).map_err(map_err)?;
        tx.execute(
            "INSERT INTO khala_meta(key, value) VALUES('schema_version', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [next.to_string()],
        )
        .map_err(map_err)?;
        tx.pragma_update(None, "user_version", next)
            .map_err(map_err)?;
        tx.commit().map_err(map_err)?;
        tracing::debug!(version = next, "store schema migrated");
    }
}
