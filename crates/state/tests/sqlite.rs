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

/// Commits are copied back from the WAL into the database file by the checkpoint thread, not
/// by the commit that crosses SQLite's threshold (the writer's threshold is far above what this
/// test writes), and closing leaves no WAL behind.
#[tokio::test]
async fn the_checkpoint_thread_copies_commits_back_and_close_removes_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let wal = dir.path().join("state.sqlite-wal");
    let s = SqliteStore::open(&path).await.unwrap();
    let empty = std::fs::metadata(&path).unwrap().len();
    let value = bytes::Bytes::from(vec![b'x'; 2000]);
    for i in 0..50u64 {
        let writes = (0..20)
            .map(|k| storeline_state::Write::Put {
                ns: "cust".into(),
                key: format!("c-{i}-{k}"),
                value: value.clone(),
            })
            .collect();
        s.commit(storeline_state::Commit {
            partition: 0,
            from_offset: i,
            to_offset: i + 1,
            writes,
        })
        .await
        .unwrap();
    }
    // ~2 MB of rows: the database file grows only when a checkpoint copies them back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&path).unwrap().len() < empty + 1_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within 10 s: the database file is {} bytes, the WAL {} bytes",
            std::fs::metadata(&path).unwrap().len(),
            std::fs::metadata(&wal).map_or(0, |m| m.len())
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(wal.exists(), "the store is open: its WAL is in use");
    s.close().await;
    assert!(!wal.exists(), "close left {} behind", wal.display());
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.offsets().await.unwrap().get(&0), Some(&50));
}
