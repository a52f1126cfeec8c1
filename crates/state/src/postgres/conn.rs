//! PostgreSQL connections: opening them, setting up the schema, preparing the statements, and
//! the small pools that lend them out.
//!
//! Connections are opened lazily, each with every statement prepared on it (one round trip), and
//! one found closed is dropped and replaced on the next call: a restarted server costs the
//! callers one retryable error, not a restart of Storeline.

use parking_lot::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, NoTls, Statement};

use super::Inner;
use crate::{Error, Result};

const SCHEMA_VERSION: i64 = 1;
/// Connections committing at once (partitions commit concurrently; PostgreSQL groups their
/// WAL flushes).
pub(super) const COMMIT_CONNECTIONS: usize = 2;
/// Connections reading at once.
pub(super) const READ_CONNECTIONS: usize = 4;

pub(super) struct Pool {
    pub(super) idle: Mutex<Vec<Conn>>,
    /// One permit per connection that may exist; closed by [`close`](crate::StateStore::close).
    pub(super) permits: Semaphore,
}

/// A connection with every statement prepared on it.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) st: Statements,
}

pub(super) struct Statements {
    pub(super) offsets: Statement,
    pub(super) fence_first: Statement,
    pub(super) fence_next: Statement,
    pub(super) stored: Statement,
    pub(super) upsert: Statement,
    pub(super) delete: Statement,
    pub(super) get: Statement,
    pub(super) get_owned: Statement,
    pub(super) scan: Statement,
    pub(super) scan_upto: Statement,
    pub(super) dump: Statement,
}

/// A pooled connection. It goes back to the pool on drop only if the call marked it
/// [`done`](Lease::done): after any error it is dropped, since it may be dead (a restarted server
/// is noticed by the client only later) or mid-transaction, and the next call opens a new one.
pub(super) struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    clean: bool,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    pub(super) fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    /// The call finished cleanly: the connection may be reused.
    pub(super) fn done(&mut self) {
        self.clean = true;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && self.clean
            && !c.client.is_closed()
            && !self.pool.permits.is_closed()
        {
            self.pool.idle.lock().push(c);
        }
    }
}

impl Pool {
    pub(super) fn new(size: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size),
        }
    }
}

impl Inner {
    pub(super) async fn open_client(&self) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(self.err("connecting"))?;
        let target = self.target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(target = %target, error = %e, "postgresql state store connection lost");
            }
        });
        Ok(client)
    }

    /// Creates what is missing, under an advisory lock so nodes starting together do not race.
    pub(super) async fn migrate(&self, client: &mut Client, schema: &str) -> Result<()> {
        let e = self.err("creating the schema");
        let s = &self.schema;
        let enc: String = client
            .query_one("SHOW server_encoding", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(&e)?;
        if enc != "UTF8" {
            return Err(Error::Config(format!(
                "{}: the database's encoding is {enc}; the state store needs a UTF8 database",
                self.target
            )));
        }
        let tx = client.transaction().await.map_err(&e)?;
        // An arbitrary key, Storeline's own: serializes schema setup across nodes until commit.
        tx.execute("SELECT pg_advisory_xact_lock(7380417202615318121)", &[])
            .await
            .map_err(&e)?;
        let present: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = $1 \
                 AND tablename IN ('meta', 'rows', 'offsets')",
                &[&schema],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(&e)?;
        // Only when something is missing: CREATE ... IF NOT EXISTS needs the CREATE privilege
        // even when nothing would be created.
        if present < 3 {
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.meta (name text PRIMARY KEY, value int8 NOT NULL);
                 CREATE TABLE IF NOT EXISTS {s}.rows (
                     ns    text COLLATE \"C\" NOT NULL,
                     key   text COLLATE \"C\" NOT NULL,
                     owner int4 NOT NULL,
                     value bytea NOT NULL,
                     PRIMARY KEY (ns, key, owner));
                 CREATE TABLE IF NOT EXISTS {s}.offsets (partition int4 PRIMARY KEY, next int8 NOT NULL);
                 INSERT INTO {s}.meta VALUES ('schema_version', {SCHEMA_VERSION}) ON CONFLICT DO NOTHING;"
            ))
            .await
            .map_err(&e)?;
        }
        let version: i64 = tx
            .query_one(
                &format!("SELECT value FROM {s}.meta WHERE name = 'schema_version'"),
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(&e)?;
        if version > SCHEMA_VERSION {
            return Err(Error::Config(format!(
                "{}: schema version {version} was written by a newer Storeline (this one knows \
                 {SCHEMA_VERSION}); upgrade Storeline",
                self.target
            )));
        }
        // Tables made by hand with the database's default collation would order keys
        // differently from SQLite: refuse them rather than return a different order.
        let not_c: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation \
                 WHERE a.attrelid = to_regclass($1) AND a.attname IN ('ns', 'key') \
                 AND c.collname <> 'C'",
                &[&format!("{s}.rows")],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(&e)?;
        if not_c > 0 {
            return Err(Error::Config(format!(
                "{}: columns rows.ns and rows.key must be declared text COLLATE \"C\" (bytewise \
                 order); recreate the table",
                self.target
            )));
        }
        tx.commit().await.map_err(&e)
    }

    pub(super) async fn prepare(&self, c: &Client) -> Result<Statements> {
        let s = &self.schema;
        let sql = [
            format!("SELECT partition, next FROM {s}.offsets"),
            // The fence and the offset move are one statement, so two writers racing for a
            // partition serialize on the offsets row and exactly one moves it: with a
            // `SELECT ... FOR UPDATE` of a row that does not exist yet, both would pass.
            format!(
                "INSERT INTO {s}.offsets (partition, next) VALUES ($1, $2) ON CONFLICT (partition) \
                 DO UPDATE SET next = excluded.next WHERE {s}.offsets.next = 0"
            ),
            format!("UPDATE {s}.offsets SET next = $3 WHERE partition = $1 AND next = $2"),
            format!("SELECT next FROM {s}.offsets WHERE partition = $1"),
            format!(
                "INSERT INTO {s}.rows (ns, key, owner, value) \
                 SELECT n, k, $3::int4, v FROM unnest($1::text[], $2::text[], $4::bytea[]) AS t(n, k, v) \
                 ON CONFLICT (ns, key, owner) DO UPDATE SET value = excluded.value"
            ),
            format!(
                "DELETE FROM {s}.rows WHERE owner = $1 \
                 AND (ns, key) IN (SELECT * FROM unnest($2::text[], $3::text[]))"
            ),
            format!("SELECT owner, value FROM {s}.rows WHERE ns = $1 AND key = $2 ORDER BY owner"),
            format!(
                "SELECT key, value FROM {s}.rows WHERE ns = $1 AND owner = $2 AND key = ANY($3::text[])"
            ),
            format!(
                "SELECT key, owner, value FROM {s}.rows WHERE ns = $1 AND (key, owner) > ($2, $3) \
                 ORDER BY key, owner LIMIT $4"
            ),
            format!(
                "SELECT key, owner, value FROM {s}.rows WHERE ns = $1 AND (key, owner) > ($2, $3) \
                 AND key < $5 ORDER BY key, owner LIMIT $4"
            ),
            format!(
                "SELECT ns, key, owner, value FROM {s}.rows WHERE (ns, key, owner) > ($1, $2, $3) \
                 ORDER BY ns, key, owner LIMIT $4"
            ),
        ];
        // Sent together: one round trip for all of them.
        let st = futures::future::try_join_all(sql.iter().map(|q| c.prepare(q)))
            .await
            .map_err(self.err("preparing statements"))?;
        let [
            offsets,
            fence_first,
            fence_next,
            stored,
            upsert,
            delete,
            get,
            get_owned,
            scan,
            scan_upto,
            dump,
        ] = <[Statement; 11]>::try_from(st).expect("one statement per query");
        Ok(Statements {
            offsets,
            fence_first,
            fence_next,
            stored,
            upsert,
            delete,
            get,
            get_owned,
            scan,
            scan_upto,
            dump,
        })
    }

    pub(super) async fn lease<'a>(&'a self, pool: &'a Pool) -> Result<Lease<'a>> {
        let permit = pool.permits.acquire().await.map_err(|_| Error::Closed)?;
        let idle = {
            let mut idle = pool.idle.lock();
            idle.retain(|c| !c.client.is_closed());
            idle.pop()
        };
        let conn = match idle {
            Some(c) => c,
            None => {
                let client = self.open_client().await?;
                let st = self.prepare(&client).await?;
                Conn { client, st }
            }
        };
        Ok(Lease {
            pool,
            conn: Some(conn),
            clean: false,
            _permit: permit,
        })
    }
}
