//! Faults against the real binary: a full disk answers 507 and loses nothing acknowledged; a
//! client that disconnects mid-request does not disturb the server.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, create_key, post_events, serve, status_of};
use serde_json::{Value, json};

/// A tmpfs of a few MiB: a real filesystem that really fills up.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(dir: &Path, size: &str) -> TinyFs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill a real disk; it needs root"
        );
        TinyFs(dir.to_owned())
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn batch(tag: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"id": format!("{tag}-{i}"), "type": "page.viewed", "subject": "cus-1",
                   "data": {"url": format!("/p/{i}"), "title": "x".repeat(300)}})
            .to_string()
                + "\n"
        })
        .collect()
}

async fn send(url: &str, key: &str, body: String) -> (u16, Value) {
    post_events(url, key, "application/x-ndjson", body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_507_keeps_serving_and_recovers_when_space_returns() {
    let mnt = tempfile::tempdir().unwrap();
    let _fs = TinyFs::mount(mnt.path(), "3m");
    let data = mnt.path().join("data");
    let ingest = create_key(&data, "ingest");
    let read = create_key(&data, "read");
    let env = [
        ("STORELINE_LOG__PARTITIONS", "1"),
        ("STORELINE_LOG__SEGMENT_BYTES", "262144"),
        ("STORELINE_LOG__MAX_BATCH_BYTES", "65536"),
        // The journal is preallocated, so its writes never meet the full disk; it must fit.
        ("STORELINE_LOG__JOURNAL_BYTES", "262144"),
        ("STORELINE_INGEST__MAX_BODY_BYTES", "65536"),
        ("STORELINE_INGEST__MAX_EVENT_BYTES", "16384"),
    ];
    let server = Server::start(&data, &env);
    // Fill what is left of the filesystem.
    let ballast = mnt.path().join("ballast");
    let mut f = std::fs::File::create(&ballast).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    drop(f);

    let mut acked = 0;
    let mut refused = None;
    for round in 0..200 {
        let body = batch(&format!("r{round}"), 20);
        let (status, reply) = send(&server.url, &ingest, body.clone()).await;
        if status == 200 {
            acked += 20;
            continue;
        }
        assert_eq!(status, 507, "a full disk is 507, got {status}: {reply}");
        assert_eq!(reply["error"]["code"], "insufficient_storage");
        refused = Some(body);
        break;
    }
    let refused = refused.expect("the disk should have filled up");
    assert!(acked > 0);
    // Still serving: reads work, health is fine, every acknowledged event is there.
    assert_eq!(common::all_events(&server.url, &read).await.len(), acked);
    assert_eq!(status_of(&server.url, "/healthz").await, 200);
    assert_eq!(
        send(&server.url, &ingest, refused.clone()).await.0,
        507,
        "still full, still refused"
    );

    // Space comes back: the refused batch is accepted, once.
    std::fs::remove_file(&ballast).unwrap();
    let (status, reply) = send(&server.url, &ingest, refused).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["accepted"], 20,
        "nothing of the refused batch had been stored"
    );
    assert_eq!(
        common::all_events(&server.url, &read).await.len(),
        acked + 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_request_stores_nothing_and_disturbs_nobody() {
    let (_dir, server, [ingest, read]) = serve(["ingest", "read"], &[]);
    let addr = server.url.trim_start_matches("http://").to_owned();
    for _ in 0..20 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let partial = batch("gone", 50);
        write!(
            s,
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ingest}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            partial.len()
        )
        .unwrap();
        s.write_all(&partial.as_bytes()[..partial.len() / 2])
            .unwrap();
        drop(s);
    }
    let (status, _) = send(&server.url, &ingest, batch("ok", 3)).await;
    assert_eq!(status, 200);
    let events = common::all_events(&server.url, &read).await;
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["ok-0", "ok-1", "ok-2"]);
}
