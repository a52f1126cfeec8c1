//! The embedded backend: one SQLite file in WAL mode.
//!
//! SQLite calls block, so every call runs on tokio's blocking pool, never on a runtime worker.
//! There is one writer connection (behind a mutex: SQLite has one writer anyway) and a small
//! pool of read-only connections; WAL lets those read the last committed state while a commit is
//! in progress, so reads never queue behind a large commit.
//!
//! WAL checkpoints run on a thread of their own ([`Checkpointer`]) instead of inside the
//! commit that crosses SQLite's threshold: copying the WAL back into the database file was a
//! third of the writer's time under delivery load, and every partition's commit waited behind
//! it. The writer keeps a large automatic threshold as a backstop, so the WAL stays bounded even
//! if the thread falls behind.
//!
//! Strings are compared with SQLite's default `BINARY` collation (`memcmp` of the UTF-8 bytes),
//! which is the bytewise order the contract asks for.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::batch::{self, from_db, limit};
use crate::{Commit, Error, Result, Row, StateStore};

/// The schema this build writes; a file with a higher version was written by a newer build.
const SCHEMA_VERSION: i64 = 1;
/// How long a statement waits for a lock held by another connection (e.g. a second process on
/// the same file, or a checkpoint) before failing with a retryable error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle read connections kept open; more are opened when more reads run at once.
const IDLE_READERS: usize = 4;
/// WAL pages after which the writer checkpoints inside a commit (the backstop; SQLite's default
/// is 1000). 16384 pages of 4 KiB: a 64 MiB WAL.
const WRITER_CHECKPOINT_PAGES: i64 = 16384;
/// How long the checkpoint thread lets commits gather before it copies them back: pages that
/// several commits rewrite (a busy customer's row) are then copied once.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meta (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS rows (
        ns    TEXT NOT NULL,
        key   TEXT NOT NULL,
        owner INTEGER NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (ns, key, owner)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS offsets (
        partition INTEGER PRIMARY KEY,
        next      INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', 1);
";

const UPSERT: &str = "INSERT INTO rows (ns, key, owner, value) VALUES (?1, ?2, ?3, ?4) \
                      ON CONFLICT (ns, key, owner) DO UPDATE SET value = excluded.value";
const DELETE: &str = "DELETE FROM rows WHERE ns = ?1 AND key = ?2 AND owner = ?3";
const GET: &str = "SELECT owner, value FROM rows WHERE ns = ?1 AND key = ?2 ORDER BY owner";
const GET_OWNED: &str = "SELECT value FROM rows WHERE ns = ?1 AND key = ?2 AND owner = ?3";
// `(key, owner) > (?2, ?3)` is a row-value range on the primary key: SQLite seeks to it.
const SCAN: &str = "SELECT key, owner, value FROM rows WHERE ns = ?1 AND (key, owner) > (?2, ?3) \
                    ORDER BY key, owner LIMIT ?4";
const SCAN_UPTO: &str = "SELECT key, owner, value FROM rows \
                         WHERE ns = ?1 AND (key, owner) > (?2, ?3) AND key < ?5 \
                         ORDER BY key, owner LIMIT ?4";
const DUMP: &str = "SELECT ns, key, owner, value FROM rows WHERE (ns, key, owner) > (?1, ?2, ?3) \
                    ORDER BY ns, key, owner LIMIT ?4";

/// The embedded state store: a SQLite file. Cloning shares the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: String,
    closed: AtomicBool,
    /// `None` once closed.
    writer: Mutex<Option<Connection>>,
    readers: Mutex<Vec<Connection>>,
    /// Commits since the checkpoint thread last looked; it waits on `checkpoint_wake`.
    uncheckpointed: Mutex<u64>,
    checkpoint_wake: parking_lot::Condvar,
    /// Joined by `close`, so that its connection, the last one, checkpoints and removes the WAL.
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file and its tables if missing. The parent
    /// directory must exist.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let path = path.to_path_buf();
        blocking(move || {
            let inner = Inner {
                path: path.display().to_string(),
                closed: AtomicBool::new(false),
                writer: Mutex::new(None),
                readers: Mutex::new(Vec::new()),
                uncheckpointed: Mutex::new(0),
                checkpoint_wake: parking_lot::Condvar::new(),
                checkpointer: Mutex::new(None),
            };
            let writer = inner.open_writer(&path)?;
            *inner.writer.lock() = Some(writer);
            let inner = Arc::new(inner);
            Checkpointer::start(&inner)?;
            Ok(SqliteStore { inner })
        })
        .await
    }

    /// The file this store was opened on.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// Runs `f` with a read connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || inner.with_reader(f)).await
    }
}

impl Inner {
    fn err(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        |source| Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn open_writer(&self, path: &Path) -> Result<Connection> {
        let e = self.err();
        // Plain paths: no URI interpretation of a name starting with "file:".
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let c = Connection::open_with_flags(path, flags).map_err(&e)?;
        c.busy_timeout(BUSY_TIMEOUT).map_err(&e)?;
        let mode: String = c
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(&e)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %self.path, mode, "sqlite state store is not in WAL mode; reads will wait for commits");
        }
        // NORMAL skips the fsync at each commit (WAL is still synced at checkpoints), so a
        // power loss may drop the last commits; a process crash does not. That is safe here:
        // the log is the source of truth and each commit carries its partition's offset in the
        // same transaction, so a lost commit loses its offset too and is simply re-applied from
        // the log on restart.
        c.pragma_update(None, "synchronous", "NORMAL").map_err(&e)?;
        // 32 MiB page cache (negative = KiB): large commits touch many B-tree pages.
        c.pragma_update(None, "cache_size", -32768).map_err(&e)?;
        c.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            .map_err(&e)?;
        c.execute_batch(SCHEMA).map_err(&e)?;
        let version: i64 = c
            .query_row(
                "SELECT value FROM meta WHERE name = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .map_err(&e)?;
        if version > SCHEMA_VERSION {
            return Err(Error::Config(format!(
                "sqlite state store at {}: schema version {version} was written by a newer \
                 Storeline (this one knows {SCHEMA_VERSION}); upgrade Storeline",
                self.path
            )));
        }
        Ok(c)
    }

    fn open_reader(&self) -> Result<Connection> {
        let e = self.err();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let c = Connection::open_with_flags(&self.path, flags).map_err(&e)?;
        c.busy_timeout(BUSY_TIMEOUT).map_err(&e)?;
        Ok(c)
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let pooled = self.readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => self.open_reader()?,
        };
        // Each statement outside an explicit transaction reads the latest committed snapshot,
        // and cached statements are reset when returned, so a pooled reader never sees stale
        // data.
        let out = f(&conn);
        if !self.closed.load(Ordering::Acquire) {
            let mut idle = self.readers.lock();
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
        }
        out
    }

    fn commit(&self, c: &Commit) -> Result<()> {
        batch::validate(c)?;
        let e = self.err();
        let mut guard = self.writer.lock();
        let conn = guard.as_mut().ok_or(Error::Closed)?;
        // IMMEDIATE takes the write lock up front, so the fence read below cannot be overtaken
        // by another connection on the same file before our writes.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&e)?;
        let partition = i64::from(c.partition);
        // Cached statements: compiling SQL at each commit showed in profiles of small batches.
        let stored: Option<i64> = tx
            .prepare_cached("SELECT next FROM offsets WHERE partition = ?1")
            .and_then(|mut st| st.query_row([partition], |r| r.get(0)).optional())
            .map_err(&e)?;
        let stored: u64 = from_db(stored.unwrap_or(0), "offset")?;
        if stored != c.from_offset {
            // Dropping `tx` rolls back; nothing was written.
            return Err(Error::Fenced {
                partition: c.partition,
                expected: c.from_offset,
                stored,
            });
        }
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(&e)?;
            let mut delete = tx.prepare_cached(DELETE).map_err(&e)?;
            for ((ns, key), value) in batch::last_writes(&c.writes) {
                match value {
                    Some(v) => upsert.execute(params![ns, key, partition, v]),
                    None => delete.execute(params![ns, key, partition]),
                }
                .map_err(&e)?;
            }
        }
        // `validate` checked the offset fits in i64.
        let next = i64::try_from(c.to_offset).unwrap_or(i64::MAX);
        tx.prepare_cached(
            "INSERT INTO offsets (partition, next) VALUES (?1, ?2) \
             ON CONFLICT (partition) DO UPDATE SET next = excluded.next",
        )
        .and_then(|mut st| st.execute([partition, next]))
        .map_err(&e)?;
        tx.commit().map_err(&e)?;
        drop(guard);
        *self.uncheckpointed.lock() += 1;
        self.checkpoint_wake.notify_one();
        Ok(())
    }
}

/// The thread that copies committed WAL pages back into the database file (a PASSIVE
/// checkpoint: it never blocks the writer or a reader, and copies what no reader still needs).
/// It ends when the store closes or is dropped.
struct Checkpointer {
    inner: std::sync::Weak<Inner>,
    conn: Connection,
}

impl Checkpointer {
    fn start(inner: &Arc<Inner>) -> Result<()> {
        let e = inner.err();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&inner.path, flags).map_err(&e)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(&e)?;
        // Its own commits (none) never checkpoint; it checkpoints when told to.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(&e)?;
        let me = Checkpointer {
            inner: Arc::downgrade(inner),
            conn,
        };
        let handle = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || me.run())
            .map_err(|source| {
                Error::Config(format!("cannot start the checkpoint thread: {source}"))
            })?;
        *inner.checkpointer.lock() = Some(handle);
        Ok(())
    }

    fn run(self) {
        loop {
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            {
                let mut n = inner.uncheckpointed.lock();
                // Wait for a commit (a dropped store ends the thread: this is the last owner).
                while *n == 0 && !inner.closed.load(Ordering::Acquire) {
                    inner
                        .checkpoint_wake
                        .wait_for(&mut n, Duration::from_secs(1));
                    if Arc::strong_count(&inner) == 1 {
                        return;
                    }
                }
                // Then let more gather; a close cuts this short.
                let until = std::time::Instant::now() + CHECKPOINT_EVERY;
                while !inner.closed.load(Ordering::Acquire) {
                    if inner.checkpoint_wake.wait_until(&mut n, until).timed_out() {
                        break;
                    }
                }
                *n = 0;
            }
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            let started = std::time::Instant::now();
            let result = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
            match result {
                Ok((wal, copied)) => {
                    metrics::histogram!("storeline_state_checkpoint_seconds")
                        .record(started.elapsed().as_secs_f64());
                    tracing::trace!(path = %inner.path, wal, copied, "checkpoint");
                }
                Err(error) => {
                    tracing::warn!(path = %inner.path, %error, "sqlite checkpoint failed; the writer's own checkpoints still bound the WAL");
                }
            }
        }
    }
}

/// Runs blocking SQLite work off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => Err(Error::Closed),
    }
}

fn sql(e: rusqlite::Error, path: &str) -> Error {
    Error::Sqlite {
        path: path.to_owned(),
        source: e,
    }
}

fn bytes_col(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Bytes> {
    r.get::<_, Vec<u8>>(i).map(Bytes::from)
}

impl StateStore for SqliteStore {
    async fn offsets(&self) -> Result<BTreeMap<u32, u64>> {
        let path = self.inner.path.clone();
        self.read(move |c| {
            let mut st = c
                .prepare_cached("SELECT partition, next FROM offsets ORDER BY partition")
                .map_err(|e| sql(e, &path))?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .map_err(|e| sql(e, &path))?;
            let mut out = BTreeMap::new();
            for row in rows {
                let (p, n) = row.map_err(|e| sql(e, &path))?;
                out.insert(from_db(p, "partition")?, from_db(n, "offset")?);
            }
            Ok(out)
        })
        .await
    }

    async fn commit(&self, commit: Commit) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || inner.commit(&commit)).await
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Vec<(u32, Bytes)>> {
        let (ns, key, path) = (ns.to_owned(), key.to_owned(), self.inner.path.clone());
        self.read(move |c| {
            let mut st = c.prepare_cached(GET).map_err(|e| sql(e, &path))?;
            let rows = st
                .query_map(params![ns, key], |r| {
                    Ok((r.get::<_, i64>(0)?, bytes_col(r, 1)?))
                })
                .map_err(|e| sql(e, &path))?;
            let mut out = Vec::new();
            for row in rows {
                let (o, v) = row.map_err(|e| sql(e, &path))?;
                out.push((from_db(o, "owner")?, v));
            }
            Ok(out)
        })
        .await
    }

    async fn get_owned(&self, ns: &str, owner: u32, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let (ns, keys, path) = (ns.to_owned(), keys.to_vec(), self.inner.path.clone());
        self.read(move |c| {
            let mut st = c.prepare_cached(GET_OWNED).map_err(|e| sql(e, &path))?;
            keys.iter()
                .map(|k| {
                    st.query_row(params![ns, k, i64::from(owner)], |r| bytes_col(r, 0))
                        .optional()
                        .map_err(|e| sql(e, &path))
                })
                .collect()
        })
        .await
    }

    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<(&str, u32)>,
        limit_: usize,
    ) -> Result<Vec<Row>> {
        if let Some((k, _)) = after {
            batch::check_position(&[k])?;
        }
        let (lower_key, lower_owner) = batch::scan_lower(prefix, after);
        let upper = batch::prefix_upper_bound(prefix);
        let (ns, path) = (ns.to_owned(), self.inner.path.clone());
        self.read(move |c| {
            let mut st = c
                .prepare_cached(if upper.is_some() { SCAN_UPTO } else { SCAN })
                .map_err(|e| sql(e, &path))?;
            let n = limit(limit_);
            let map = |r: &rusqlite::Row<'_>| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    bytes_col(r, 2)?,
                ))
            };
            let rows = match &upper {
                Some(u) => st.query_map(params![ns, lower_key, lower_owner, n, u], map),
                None => st.query_map(params![ns, lower_key, lower_owner, n], map),
            }
            .map_err(|e| sql(e, &path))?;
            let mut out = Vec::new();
            for row in rows {
                let (key, owner, value) = row.map_err(|e| sql(e, &path))?;
                out.push(Row {
                    ns: ns.clone(),
                    key,
                    owner: from_db(owner, "owner")?,
                    value,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn dump(&self, after: Option<(&str, &str, u32)>, limit_: usize) -> Result<Vec<Row>> {
        // Owner -1 sorts before every row, so `None` starts at the very beginning.
        let (ns, key, owner) = match after {
            Some((n, k, o)) => {
                batch::check_position(&[n, k])?;
                (n.to_owned(), k.to_owned(), i64::from(o))
            }
            None => (String::new(), String::new(), -1),
        };
        let path = self.inner.path.clone();
        self.read(move |c| {
            let mut st = c.prepare_cached(DUMP).map_err(|e| sql(e, &path))?;
            let rows = st
                .query_map(params![ns, key, owner, limit(limit_)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?, bytes_col(r, 3)?))
                })
                .map_err(|e| sql(e, &path))?;
            let mut out = Vec::new();
            for row in rows {
                let (ns, key, owner, value) = row.map_err(|e| sql(e, &path))?;
                out.push(Row {
                    ns,
                    key,
                    owner: from_db(owner, "owner")?,
                    value,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn close(&self) {
        let inner = self.inner.clone();
        inner.closed.store(true, Ordering::Release);
        inner.checkpoint_wake.notify_all();
        // Closing the last connection checkpoints the WAL and removes it, but only if no other
        // connection holds its shared lock at that moment: two connections closing at once on
        // different threads both fail to get the exclusive lock and leave the WAL behind. So the
        // checkpoint thread ends first, then the readers, then the writer (after a running
        // commit), one after another.
        let _ = blocking(move || {
            let checkpointer = inner.checkpointer.lock().take();
            if let Some(t) = checkpointer {
                let _ = t.join();
            }
            inner.readers.lock().clear();
            if let Some(c) = inner.writer.lock().take()
                && let Err((_, e)) = c.close()
            {
                tracing::warn!(path = %inner.path, error = %e, "closing the sqlite state store");
            }
            Ok(())
        })
        .await;
    }
}
