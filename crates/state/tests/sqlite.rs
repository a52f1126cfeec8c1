//! The SQLite backend against the conformance suite, plus what only a file can show: data and
//! offsets survive closing and reopening.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use storeline_state::conformance::{self, Harness};
use storeline_state::{SqliteStore, StateStore, digest};

/// Fresh stores: one file each in a temporary directory removed at the end.
struct Sqlite {
    dir: tempfile::TempDir,
    n: AtomicUsize,
}

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
            n: AtomicUsize::new(0),
        }
    }
}

impl Harness for Sqlite {
    type Store = SqliteStore;
    async fn store(&self) -> SqliteStore {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        SqliteStore::open(&self.dir.path().join(format!("state-{n}.sqlite")))
            .await
            .unwrap()
    }
    async fn finish(self) {}
}

mod conformance_suite {
    storeline_state::conformance_tests!(super::Sqlite::new());
}

#[tokio::test]
async fn reopen_after_close_keeps_rows_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let s = SqliteStore::open(&path).await.unwrap();
    let commits = conformance::sample_commits();
    for c in &commits {
        s.commit(c.clone()).await.unwrap();
    }
    let before = digest(&s).await.unwrap();
    let offsets = s.offsets().await.unwrap();
    s.close().await;
    assert!(matches!(
        s.get("cust", "shared").await,
        Err(storeline_state::Error::Closed)
    ));
    drop(s);

    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(digest(&s).await.unwrap(), before);
    assert_eq!(s.offsets().await.unwrap(), offsets);
    assert_eq!(
        conformance::dump_all(&s, 1000).await,
        conformance::model(&commits)
    );
    // The reopened store fences on the offsets it found.
    let replay = commits.last().unwrap().clone();
    assert!(matches!(
        s.commit(replay).await,
        Err(storeline_state::Error::Fenced { .. })
    ));
    s.close().await;
}

#[tokio::test]
async fn two_stores_on_one_file_share_commits_and_fencing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    let c = conformance::commit(1, 0, 1, vec![conformance::put("n", "k", "v")]);
    a.commit(c.clone()).await.unwrap();
    assert_eq!(b.get("n", "k").await.unwrap().len(), 1);
    assert!(matches!(
        b.commit(c).await,
        Err(storeline_state::Error::Fenced { stored: 1, .. })
    ));
}

#[tokio::test]
async fn a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/state.sqlite");
    let err = SqliteStore::open(&path).await.err().unwrap();
    assert!(err.to_string().contains("state.sqlite"), "{err}");
}
