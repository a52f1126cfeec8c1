//! The CLI end to end: `gen` makes traffic, `send` stores it (and a resend is all duplicates),
//! `tail` streams it back, `config check` and `log verify` report.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{serve, storeline, succeeds};

/// The `id` of each NDJSON line of `stdout`.
fn ids_of(stdout: Vec<u8>) -> HashSet<String> {
    String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn gen_send_and_tail_move_the_same_events() {
    let (dir, server, [ingest, read]) = serve(["ingest", "read"], &[]);
    let file = dir.path().join("traffic.ndjson");
    let gen_args = ["gen", "-n", "3000", "--seed", "9"];
    let out = storeline(&gen_args).output().unwrap();
    assert!(out.status.success());
    std::fs::write(&file, &out.stdout).unwrap();
    let again = storeline(&gen_args).output().unwrap();
    assert_eq!(out.stdout, again.stdout, "gen is deterministic for a seed");
    let ids = ids_of(out.stdout);
    assert_eq!(ids.len(), 3000);

    let send = |expect: &str| {
        let args = [
            "send",
            "--url",
            &server.url,
            "--key",
            &ingest,
            "--batch",
            "700",
        ];
        let out = storeline(&args).arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains(expect), "expected '{expect}' in: {err}");
    };
    send("3000 stored, 0 duplicates");
    send("0 stored, 3000 duplicates");

    let tail = succeeds(&mut storeline(&[
        "tail",
        "--url",
        &server.url,
        "--key",
        &read,
        "--from",
        "earliest",
        "--limit",
        "3000",
    ]));
    assert_eq!(ids_of(tail.stdout), ids);

    // Straight to the server.
    succeeds(&mut storeline(&[
        "gen",
        "-n",
        "500",
        "--seed",
        "10",
        "--to",
        &server.url,
        "--key",
        &ingest,
    ]));
    let verify = storeline(&["log", "verify", "--data"])
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
    let check =
        |file: &std::path::Path| storeline(&["config", "check"]).arg(file).output().unwrap();
    let out = check(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listen") && err.contains("ingest.dedup_window"),
        "{err}"
    );
    std::fs::write(&bad, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = check(&bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));
    let out = storeline(&["config", "default"]).output().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &out.stdout).unwrap();
    succeeds(storeline(&["config", "check"]).arg(&good));
}
