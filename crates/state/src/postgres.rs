//! The cluster backend: tables in one PostgreSQL schema, shared by every Storeline node.
//!
//! Commits and reads use separate small connection pools (`conn.rs`), so a read never waits
//! behind a large commit; a lost connection costs the callers one retryable [`Error::Postgres`].
//!
//! `ns` and `key` are declared `text COLLATE "C"`: comparisons and `ORDER BY` are then bytewise
//! on UTF-8, the same order SQLite's `BINARY` collation gives, whatever the database's locale.
//! A commit is one transaction of a few statements whatever its size: the rows travel as arrays
//! and are upserted/deleted by one `unnest` statement each.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

mod conn;

use conn::{COMMIT_CONNECTIONS, Conn, Pool, READ_CONNECTIONS, Statements};

use crate::batch::{self, from_db, has_nul, limit};
use crate::{Commit, Error, Result, Row, StateStore};

/// `[state.postgres]`: where the cluster's state lives.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq-style URL or key/value string, e.g. `postgres://storeline@db:5432/storeline`.
    pub url: String,
    /// The schema holding the tables, created if missing: letters, digits and underscores.
    pub schema: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://postgres@127.0.0.1:5432/test".to_owned(),
            schema: "storeline".to_owned(),
        }
    }
}

// By hand, so a password in the URL never reaches a log.
impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .finish()
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((auth, host)) = rest.rsplit_once('@')
        && let Some((user, _)) = auth.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=***",
            _ => kv,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_schema_name(s: &str) -> Result<()> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "state.postgres.schema = {s:?}: use 1 to 63 ASCII letters, digits and underscores, \
             not starting with a digit (e.g. \"storeline\")"
        )))
    }
}

/// The cluster state store: a PostgreSQL schema. Cloning shares the connection pools.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    /// `url` (redacted) and schema, for error messages.
    target: String,
    /// The quoted schema name (validated, so quoting is only for case).
    schema: String,
    commits: Pool,
    reads: Pool,
}

impl PostgresStore {
    /// Connects, creating the schema and its tables if missing (so the first node to start sets
    /// the database up), and checks that existing tables are ones this build can use.
    pub async fn connect(config: &PostgresConfig) -> Result<PostgresStore> {
        check_schema_name(&config.schema)?;
        let mut pg: tokio_postgres::Config = config.url.parse().map_err(|e| {
            Error::Config(format!(
                "state.postgres.url {:?} is not a PostgreSQL URL ({e}); expected e.g. \
                 postgres://user@host:5432/database",
                redact(&config.url)
            ))
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("storeline");
        }
        let inner = Inner {
            config: pg,
            target: format!("{}, schema {}", redact(&config.url), config.schema),
            schema: format!("\"{}\"", config.schema),
            commits: Pool::new(COMMIT_CONNECTIONS),
            reads: Pool::new(READ_CONNECTIONS),
        };
        let mut client = inner.open_client().await?;
        inner.migrate(&mut client, &config.schema).await?;
        let st = inner.prepare(&client).await?;
        inner.commits.idle.lock().push(Conn { client, st });
        Ok(PostgresStore {
            inner: Arc::new(inner),
        })
    }

    /// Drops the schema and everything in it (tests clean up with this). The store is unusable
    /// afterwards.
    pub async fn drop_schema(&self) -> Result<()> {
        let mut lease = self.inner.lease(&self.inner.commits).await?;
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.inner.schema);
        let r = lease.conn().client.batch_execute(&sql).await;
        r.map_err(self.inner.err("dropping the schema"))?;
        lease.done();
        Ok(())
    }
}

impl Inner {
    /// Maps a driver error to [`Error::Postgres`], with what was being done, where, and what
    /// the server said (the driver's own message is only "db error").
    fn err(&self, what: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
        let context = format!("{what}; {}", self.target);
        move |source| {
            let context = match source.as_db_error() {
                Some(db) => format!("{context}; server: {} [{}]", db.message(), db.code().code()),
                None => context.clone(),
            };
            Error::Postgres { context, source }
        }
    }

    /// Runs one prepared read on a pooled read connection.
    async fn query(
        &self,
        what: &str,
        statement: fn(&Statements) -> &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let mut lease = self.lease(&self.reads).await?;
        let c = lease.conn();
        let rows = c.client.query(statement(&c.st), params).await;
        let rows = rows.map_err(self.err(what))?;
        lease.done();
        Ok(rows)
    }

    async fn commit(&self, c: &Commit) -> Result<()> {
        batch::validate(c)?;
        // `validate` bounds these.
        let owner = i32::try_from(c.partition).unwrap_or(i32::MAX);
        let from = i64::try_from(c.from_offset).unwrap_or(i64::MAX);
        let to = i64::try_from(c.to_offset).unwrap_or(i64::MAX);
        let (mut put_ns, mut put_key, mut put_val) = (Vec::new(), Vec::new(), Vec::new());
        let (mut del_ns, mut del_key) = (Vec::new(), Vec::new());
        for ((ns, key), value) in batch::last_writes(&c.writes) {
            match value {
                Some(v) => {
                    put_ns.push(ns);
                    put_key.push(key);
                    put_val.push(v);
                }
                None => {
                    del_ns.push(ns);
                    del_key.push(key);
                }
            }
        }
        let e = self.err(&format!("commit of partition {}", c.partition));
        let mut lease = self.lease(&self.commits).await?;
        let Conn { client, st } = lease.conn();
        let tx = client.transaction().await.map_err(&e)?;
        let moved = if from == 0 {
            tx.execute(&st.fence_first, &[&owner, &to]).await
        } else {
            tx.execute(&st.fence_next, &[&owner, &from, &to]).await
        }
        .map_err(&e)?;
        if moved != 1 {
            let stored = match tx.query_opt(&st.stored, &[&owner]).await.map_err(&e)? {
                Some(r) => from_db(r.try_get::<_, i64>(0).map_err(&e)?, "offset")?,
                None => 0,
            };
            // Nothing was written yet. A failed rollback leaves the connection unusable, so it
            // is not reused; the server rolls back when it closes.
            if tx.rollback().await.is_ok() {
                lease.done();
            }
            return Err(Error::Fenced {
                partition: c.partition,
                expected: c.from_offset,
                stored,
            });
        }
        if !del_ns.is_empty() {
            tx.execute(&st.delete, &[&owner, &del_ns, &del_key])
                .await
                .map_err(&e)?;
        }
        if !put_ns.is_empty() {
            tx.execute(&st.upsert, &[&put_ns, &put_key, &owner, &put_val])
                .await
                .map_err(&e)?;
        }
        // If the connection is lost during COMMIT the outcome is unknown; the caller's retry
        // is then either applied or fenced, never applied twice.
        tx.commit().await.map_err(&e)?;
        lease.done();
        Ok(())
    }
}

/// Owners above `i32::MAX` are never stored, so a page position past them is the same as one
/// at `i32::MAX` (and `-1` means "before every owner").
fn owner_bound(o: i64) -> i32 {
    i32::try_from(o).unwrap_or(i32::MAX)
}

fn row_bytes(r: &tokio_postgres::Row, i: usize) -> Result<Bytes, tokio_postgres::Error> {
    r.try_get::<_, Vec<u8>>(i).map(Bytes::from)
}

impl StateStore for PostgresStore {
    async fn offsets(&self) -> Result<BTreeMap<u32, u64>> {
        let e = self.inner.err("reading offsets");
        let rows = self.inner.query("reading offsets", |s| &s.offsets, &[]);
        let rows = rows.await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let p: i32 = r.try_get(0).map_err(&e)?;
            let n: i64 = r.try_get(1).map_err(&e)?;
            out.insert(from_db(p.into(), "partition")?, from_db(n, "offset")?);
        }
        Ok(out)
    }

    async fn commit(&self, commit: Commit) -> Result<()> {
        self.inner.commit(&commit).await
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Vec<(u32, Bytes)>> {
        // PostgreSQL rejects NUL in text; no stored row holds one.
        if has_nul(ns) || has_nul(key) {
            return Ok(Vec::new());
        }
        let e = self.inner.err("reading a row");
        let params: [&(dyn ToSql + Sync); 2] = [&ns, &key];
        let rows = self.inner.query("reading a row", |s| &s.get, &params);
        let rows = rows.await?;
        rows.iter()
            .map(|r| {
                let o: i32 = r.try_get(0).map_err(&e)?;
                Ok((from_db(o.into(), "owner")?, row_bytes(r, 1).map_err(&e)?))
            })
            .collect()
    }

    async fn get_owned(&self, ns: &str, owner: u32, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let Ok(owner) = i32::try_from(owner) else {
            return Ok(vec![None; keys.len()]);
        };
        if has_nul(ns) {
            return Ok(vec![None; keys.len()]);
        }
        let wanted: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|k| !has_nul(k))
            .collect();
        let e = self.inner.err("reading rows");
        let params: [&(dyn ToSql + Sync); 3] = [&ns, &owner, &wanted];
        let rows = self.inner.query("reading rows", |s| &s.get_owned, &params);
        let rows = rows.await?;
        let mut found = HashMap::with_capacity(rows.len());
        for r in &rows {
            let k: String = r.try_get(0).map_err(&e)?;
            found.insert(k, row_bytes(r, 1).map_err(&e)?);
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
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
        if has_nul(ns) || has_nul(prefix) {
            return Ok(Vec::new());
        }
        let (lower_key, lower_owner) = batch::scan_lower(prefix, after);
        let lower_owner = owner_bound(lower_owner);
        let upper = batch::prefix_upper_bound(prefix);
        let n = limit(limit_);
        let e = self.inner.err("scanning rows");
        let rows = match &upper {
            Some(u) => {
                let params: [&(dyn ToSql + Sync); 5] = [&ns, &lower_key, &lower_owner, &n, u];
                self.inner
                    .query("scanning rows", |s| &s.scan_upto, &params)
                    .await?
            }
            None => {
                let params: [&(dyn ToSql + Sync); 4] = [&ns, &lower_key, &lower_owner, &n];
                self.inner
                    .query("scanning rows", |s| &s.scan, &params)
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                let o: i32 = r.try_get(1).map_err(&e)?;
                Ok(Row {
                    ns: ns.to_owned(),
                    key: r.try_get(0).map_err(&e)?,
                    owner: from_db(o.into(), "owner")?,
                    value: row_bytes(r, 2).map_err(&e)?,
                })
            })
            .collect()
    }

    async fn dump(&self, after: Option<(&str, &str, u32)>, limit_: usize) -> Result<Vec<Row>> {
        // ("", "", -1) sorts before every row.
        let (ns, key, owner) = match after {
            Some((n, k, o)) => {
                batch::check_position(&[n, k])?;
                (n, k, owner_bound(o.into()))
            }
            None => ("", "", -1),
        };
        let n = limit(limit_);
        let e = self.inner.err("dumping rows");
        let params: [&(dyn ToSql + Sync); 4] = [&ns, &key, &owner, &n];
        let rows = self.inner.query("dumping rows", |s| &s.dump, &params);
        let rows = rows.await?;
        rows.iter()
            .map(|r| {
                let o: i32 = r.try_get(2).map_err(&e)?;
                Ok(Row {
                    ns: r.try_get(0).map_err(&e)?,
                    key: r.try_get(1).map_err(&e)?,
                    owner: from_db(o.into(), "owner")?,
                    value: row_bytes(r, 3).map_err(&e)?,
                })
            })
            .collect()
    }

    async fn close(&self) {
        for pool in [&self.inner.commits, &self.inner.reads] {
            // Waiting calls fail with `Closed`; leased connections are dropped when returned.
            pool.permits.close();
            pool.idle.lock().clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_refuses_unknown_keys() {
        let c: PostgresConfig = toml::from_str("url = \"postgres://db/x\"").unwrap();
        assert_eq!(
            (c.url.as_str(), c.schema.as_str()),
            ("postgres://db/x", "storeline")
        );
        assert_eq!(
            toml::from_str::<PostgresConfig>("").unwrap(),
            PostgresConfig::default()
        );
        let err = toml::from_str::<PostgresConfig>("shema = \"x\"").unwrap_err();
        assert!(err.to_string().contains("shema"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact("postgres://u:p@s:s@h/d"), "postgres://u:***@h/d");
        assert_eq!(
            redact("host=h password=pw user=u"),
            "host=h password=*** user=u"
        );
    }

    #[test]
    fn schema_names() {
        for ok in ["storeline", "_x", "T_1", &"a".repeat(63)] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "a\"b", "é", &"a".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }
}
