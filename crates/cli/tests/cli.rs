//! The CLI end to end: `gen` makes traffic, `send` stores it (and a resend is all duplicates),
//! `tail` streams it back, `config check` and `log verify` report.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};

use common::{BIN, Server, create_key};

#[test]
fn gen_send_and_tail_move_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = create_key(dir.path(), "ingest");
    let read = create_key(dir.path(), "read");
    let server = Server::start(dir.path(), &[]);
    let file = dir.path().join("traffic.ndjson");
    let out = Command::new(BIN)
        .args(["gen", "-n", "3000", "--seed", "9"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&file, &out.stdout).unwrap();
    let again = Command::new(BIN)
        .args(["gen", "-n", "3000", "--seed", "9"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, again.stdout, "gen is deterministic for a seed");
    let ids: HashSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 3000);

    let send = |expect: &str| {
        let out = Command::new(BIN)
            .args([
                "send",
                "--url",
                &server.url,
                "--key",
                &ingest,
                "--batch",
                "700",
            ])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains(expect), "expected '{expect}' in: {err}");
    };
    send("3000 stored, 0 duplicates");
    send("0 stored, 3000 duplicates");

    let tail = Command::new(BIN)
        .args([
            "tail",
            "--url",
            &server.url,
            "--key",
            &read,
            "--from",
            "earliest",
            "--limit",
            "3000",
        ])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let tailed: HashSet<String> = String::from_utf8(tail.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(tailed, ids);

    // Straight to the server.
    let out = Command::new(BIN)
        .args([
            "gen",
            "-n",
            "500",
            "--seed",
            "10",
            "--to",
            &server.url,
            "--key",
            &ingest,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = Command::new(BIN)
        .args(["log", "verify", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("every batch checksum is valid"));
}

#[test]
fn config_check_reports_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"nowhere\"\n[ingest]\ndedup_window = \"1h\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listen") && err.contains("ingest.dedup_window"),
        "{err}"
    );
    std::fs::write(&bad, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));
    let out = Command::new(BIN)
        .args(["config", "default"])
        .output()
        .unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &out.stdout).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
