//! The PostgreSQL backend against the conformance suite, what only a shared database can show
//! (two stores on one schema), and SQLite and PostgreSQL agreeing on the digest.
//!
//! Needs the PostgreSQL server at `STORELINE_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`). These tests fail, never skip, when it cannot be
//! reached. Each store gets its own schema `t_<pid>_<n>_<nanos>`, dropped at the end.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use storeline_state::conformance::{self, Harness, commit, put};
use storeline_state::{Error, PostgresConfig, PostgresStore, SqliteStore, StateStore, digest};

fn url() -> String {
    std::env::var("STORELINE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn unique_schema() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("t_{}_{n}_{nanos}", std::process::id())
}

async fn connect(schema: &str) -> PostgresStore {
    let config = PostgresConfig {
        url: url(),
        schema: schema.to_owned(),
    };
    match PostgresStore::connect(&config).await {
        Ok(s) => s,
        Err(e) => panic!(
            "cannot use PostgreSQL at {} (set STORELINE_TEST_PG to a reachable server; these \
             tests do not skip): {e}",
            url()
        ),
    }
}

/// Fresh stores: one new schema each, all dropped by `finish`.
struct Postgres {
    made: Mutex<Vec<PostgresStore>>,
}

impl Postgres {
    fn new() -> Postgres {
        Postgres {
            made: Mutex::new(Vec::new()),
        }
    }
}

impl Harness for Postgres {
    type Store = PostgresStore;
    async fn store(&self) -> PostgresStore {
        let s = connect(&unique_schema()).await;
        self.made.lock().push(s.clone());
        s
    }
    async fn finish(self) {
        for s in self.made.into_inner() {
            s.drop_schema().await.unwrap();
            s.close().await;
        }
    }
}

mod conformance_suite {
    storeline_state::conformance_tests!(super::Postgres::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_schema_see_commits_and_fence_each_other() {
    let schema = unique_schema();
    let a = connect(&schema).await;
    let b = connect(&schema).await;
    a.commit(commit(1, 0, 3, vec![put("n", "k", "from a")]))
        .await
        .unwrap();
    assert_eq!(b.get("n", "k").await.unwrap()[0].1, "from a");
    assert_eq!(b.offsets().await.unwrap()[&1], 3);
    b.commit(commit(2, 0, 1, vec![put("n", "k", "from b")]))
        .await
        .unwrap();
    assert_eq!(a.get("n", "k").await.unwrap().len(), 2);
    // A replay by the other store is fenced.
    let r = b
        .commit(commit(1, 0, 3, vec![put("n", "k", "again")]))
        .await;
    assert!(
        matches!(
            r,
            Err(Error::Fenced {
                partition: 1,
                expected: 0,
                stored: 3
            })
        ),
        "{r:?}"
    );
    // Both stores racing with the same batch: exactly one wins, rounds after rounds.
    for from in 3..13u64 {
        let c = commit(1, from, from + 1, vec![put("n", "race", from.to_string())]);
        let (ra, rb) = tokio::join!(a.commit(c.clone()), b.commit(c));
        assert!(ra.is_ok() != rb.is_ok(), "exactly one wins: {ra:?} {rb:?}");
        let lost = if ra.is_ok() { rb } else { ra };
        assert!(
            matches!(lost, Err(Error::Fenced { stored, .. }) if stored == from + 1),
            "{lost:?}"
        );
    }
    // Racing first commits of a partition that has no offset row yet.
    let c = commit(9, 0, 1, vec![put("n", "first", "x")]);
    let (ra, rb) = tokio::join!(a.commit(c.clone()), b.commit(c));
    assert!(
        ra.is_ok() != rb.is_ok(),
        "exactly one first commit wins: {ra:?} {rb:?}"
    );
    assert_eq!(digest(&a).await.unwrap(), digest(&b).await.unwrap());
    a.drop_schema().await.unwrap();
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_and_postgres_agree_on_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let lite = SqliteStore::open(&dir.path().join("state.sqlite"))
        .await
        .unwrap();
    let pg = connect(&unique_schema()).await;
    let commits = conformance::sample_commits();
    // Plus every order-sensitive key in one namespace, and a value of every byte.
    let extra = conformance::KEYS
        .iter()
        .map(|k| put("keys", k, (0..=255u8).collect::<Vec<_>>()));
    let extra = commit(3, 0, 1, extra.collect());
    for c in commits.iter().chain([&extra]) {
        lite.commit(c.clone()).await.unwrap();
        pg.commit(c.clone()).await.unwrap();
    }
    let (dl, dp) = (digest(&lite).await.unwrap(), digest(&pg).await.unwrap());
    assert_eq!(dl, dp, "sqlite {dl} vs postgres {dp}");
    assert_eq!(
        conformance::dump_all(&lite, 1000).await,
        conformance::dump_all(&pg, 1000).await
    );
    pg.drop_schema().await.unwrap();
    pg.close().await;
    lite.close().await;
}

#[tokio::test]
async fn bad_configuration_is_refused_with_what_to_fix() {
    for schema in [
        "",
        "1abc",
        "has-dash",
        "with space",
        "quo\"te",
        &"x".repeat(64),
    ] {
        let config = PostgresConfig {
            url: url(),
            schema: schema.to_owned(),
        };
        let err = PostgresStore::connect(&config).await.err().unwrap();
        assert!(
            matches!(err, Error::Config(_)) && err.to_string().contains("letters"),
            "{err}"
        );
    }
    let config = PostgresConfig {
        url: "postgres://u:secret@host:notaport/db".to_owned(),
        schema: "ok".to_owned(),
    };
    let err = PostgresStore::connect(&config).await.err().unwrap();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(
        !err.to_string().contains("secret"),
        "the password leaked: {err}"
    );
    assert!(!format!("{config:?}").contains("secret"));
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_error() {
    let config = PostgresConfig {
        url: "postgres://postgres@127.0.0.1:1/test".to_owned(),
        schema: "storeline".to_owned(),
    };
    let err = PostgresStore::connect(&config).await.err().unwrap();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn a_closed_store_says_so() {
    let s = connect(&unique_schema()).await;
    s.drop_schema().await.unwrap();
    s.close().await;
    assert!(matches!(s.offsets().await, Err(Error::Closed)));
    let r = s.commit(commit(1, 0, 1, vec![])).await;
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

/// Runs SQL on its own connection, around the store.
async fn admin(sql: &str) {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_costs_one_retryable_error() {
    let schema = unique_schema();
    let app = format!("storeline_{schema}");
    let sep = if url().contains('?') { '&' } else { '?' };
    let config = PostgresConfig {
        url: format!("{}{sep}application_name={app}", url()),
        schema: schema.clone(),
    };
    let s = PostgresStore::connect(&config).await.unwrap();
    s.commit(commit(1, 0, 1, vec![put("n", "k", "v")]))
        .await
        .unwrap();
    assert_eq!(s.get("n", "k").await.unwrap().len(), 1);
    // Kill every connection of this store, as a server restart would.
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}'"
    ))
    .await;
    for attempt in 0.. {
        match s.commit(commit(1, 1, 2, vec![put("n", "k", "w")])).await {
            Ok(()) => break,
            Err(e) if e.is_retryable() && attempt == 0 => eprintln!("attempt {attempt}: {e}"),
            Err(e) => panic!("attempt {attempt}: {e}"),
        }
    }
    let mut got = s.get("n", "k").await;
    if got.is_err() {
        got = s.get("n", "k").await; // the read pool may hold one dead connection too
    }
    assert_eq!(got.unwrap()[0].1, "w");
    assert_eq!(s.offsets().await.unwrap()[&1], 2);
    s.drop_schema().await.unwrap();
}

#[tokio::test]
async fn tables_that_do_not_order_bytewise_are_refused() {
    let schema = unique_schema();
    admin(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.rows (ns text NOT NULL, \
         key text COLLATE \"en-x-icu\" NOT NULL, owner int4 NOT NULL, value bytea NOT NULL, \
         PRIMARY KEY (ns, key, owner));"
    ))
    .await;
    let config = PostgresConfig {
        url: url(),
        schema: schema.clone(),
    };
    let err = PostgresStore::connect(&config).await.err();
    admin(&format!("DROP SCHEMA {schema} CASCADE")).await;
    let err = err.expect("a table with a locale collation must be refused");
    assert!(
        matches!(err, Error::Config(_)) && err.to_string().contains("COLLATE"),
        "{err}"
    );
}
