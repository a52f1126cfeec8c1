//! The EventLog conformance suite on every backend in this crate.

#![allow(clippy::unwrap_used)]

use storeline_log::{FileLog, FileLogConfig, MemoryLog, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_log_keeps_the_contract() {
    conformance::run_all(|| async { MemoryLog::new(4) }).await;
}

/// Runs the suite on file logs with the given journal size (0: each partition syncs its own).
async fn file_log_suite(journal_bytes: u64) {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        // Small segments so that trim, rolls and cross-segment reads are exercised; a small
        // journal so that checkpoints are too.
        let config = FileLogConfig {
            partitions: 4,
            segment_bytes: 64 * 1024,
            max_batch_bytes: 32 * 1024,
            fsync: true,
            journal_bytes,
        };
        let log = FileLog::open(dir.path(), config).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { log }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_log_keeps_the_contract() {
    file_log_suite(64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_log_without_the_journal_keeps_the_contract() {
    file_log_suite(0).await;
}
