//! The thread that owns the SQLite connection.
//!
//! Why a dedicated thread rather than `tokio::task::spawn_blocking` over an
//! `Arc<Mutex<Connection>>`: the store's futures must work under any executor.
//! `SyncClient::get`/`list` are awaited from uniffi's foreign executor in the Swift binding and
//! from `futures::executor::block_on` in tests, where `spawn_blocking` panics for lack of a
//! tokio runtime. One thread owning the connection also runs jobs in FIFO order (SQLite has
//! one writer anyway), never parks blocking-pool threads on a mutex, never blocks the async
//! executor on disk, and closes the connection deterministically when the store is dropped.

use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

use futures::channel::oneshot;
use rusqlite::Connection;

use crate::store::StoreError;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Owns the connection on its own thread; jobs are closures sent over a channel.
pub(super) struct Worker {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Moves `conn` onto a new thread.
    pub(super) fn spawn(conn: Connection) -> Result<Worker, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("khala-sqlite".into())
            .spawn(move || {
                let mut conn = conn;
                for job in rx {
                    job(&mut conn);
                }
                // Closing the last connection checkpoints the WAL and removes it.
                if let Err((_, e)) = conn.close() {
                    tracing::warn!(error = %e, "closing the SQLite store failed");
                }
            })
            .map_err(|e| StoreError::Other(format!("cannot start the store thread: {e}")))?;
        Ok(Worker {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `f` on the connection thread. Like any Rust future, nothing happens until it is
    /// first polled; from then on the job runs to completion (commit or rollback) even if the
    /// future is dropped, and the caller only loses the result.
    pub(super) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // A panicking job must not take the connection (and every later call) down; an
            // open transaction is rolled back by its `Drop` during unwinding.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(StoreError::Other("store operation panicked".into())));
            let _ = tx.send(result);
        });
        let queued = match self.jobs.lock() {
            Ok(jobs) => jobs.as_ref().is_some_and(|s| s.send(job).is_ok()),
            Err(_) => false,
        };
        if !queued {
            return Err(StoreError::Closed);
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Lets queued jobs finish, closes the connection and joins the thread. Later calls
    /// fail with [`StoreError::Closed`]. Idempotent.
    pub(super) fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() && handle.join().is_err() {
                tracing::warn!("the store thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.close();
    }
}
