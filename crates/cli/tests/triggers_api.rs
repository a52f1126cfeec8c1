//! Triggers through the real server: the file over `GET/PUT /v1/triggers` (every problem with
//! its location; runs in flight keep their version), a customer's journeys with reasons,
//! aggregates over the API, `storeline triggers check`, and a backtest of the starter set over
//! `gen` traffic that counts exactly what the live engine counted.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{get_json as get, put_triggers, send_ndjson as send, serve, storeline, succeeds};
use serde_json::{Value, json};

fn starter_set() -> String {
    format!("{}/../../config/triggers.toml", env!("CARGO_MANIFEST_DIR"))
}

/// Waits until every partition has applied its log (and what that caused), twice in a row.
async fn settle(url: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut calm = 0;
    while calm < 3 {
        assert!(Instant::now() < deadline, "the engine did not catch up");
        let e = get(url, key, "/v1/engine").await;
        calm = if e["lag"] == 0 { calm + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

const V1: &str = r#"
[[connector]]
name = "email"
type = "smtp"
host = "127.0.0.1"
port = 1
tls = "none"
from = "shop@example.com"

[[aggregate]]
name = "adds"
on = "cart.item_added"
key = "event.customer"
window = "10m"

[[trigger]]
name = "nudge"
on = "cart.item_added"
when = "event.data.quantity >= 2"
wait = { for = "checkout.started", within = "1h" }
on_timeout = [ { deliver = "email", template = "nudge_v1" } ]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn triggers_are_replaced_over_the_api_and_journeys_explain_each_decision() {
    let (dir, server, [key]) = serve(["admin"], &[]);
    let url = server.url.clone();

    // A broken file: every problem, each with its location; nothing changes.
    let broken = "[[trigger]]\nname = \"x\"\non = \"Cart Added\"\nwhen = \"event.data.\"\nwait = { for = \"order.placed\", within = \"soon\" }\n";
    let r = put_triggers(&url, &key, broken).await;
    assert_eq!(r.status, 422);
    let body = r.body;
    assert_eq!(body["error"]["code"], "invalid_triggers");
    let at: Vec<&str> = body["error"]["details"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["at"].as_str().unwrap())
        .collect();
    assert!(at.contains(&"trigger[0] \"x\".on (line 3)"), "{at:?}");
    assert!(at.contains(&"trigger[0] \"x\".when (line 4)"), "{at:?}");
    assert!(
        at.contains(&"trigger[0] \"x\".wait.within (line 5)"),
        "{at:?}"
    );
    let body = put_triggers(&url, &key, "[[trigger]\nname=").await.body;
    assert!(
        body["error"]["details"]["problems"][0]["at"]
            .as_str()
            .unwrap()
            .starts_with("line 1"),
        "{body}"
    );
    let read_key = common::create_key(dir.path(), "read");
    let denied = put_triggers(&url, &read_key, V1).await;
    assert_eq!(denied.status, 403);

    // Version 1, and a run waiting on it.
    let r = put_triggers(&url, &key, V1).await;
    assert_eq!(r.status, 200);
    let v1 = r.body;
    assert_eq!(v1["added"], json!(["nudge"]));
    let ev = |id: &str, ty: &str, who: &str, data: Value| json!({ "specversion": "1.0", "id": id, "source": "t", "type": ty, "subject": who, "data": data });
    send(
        &url,
        &key,
        &[
            ev(
                "a1",
                "cart.item_added",
                "cus-1",
                json!({ "sku": "S", "quantity": 3 }),
            ),
            ev(
                "a2",
                "cart.item_added",
                "cus-2",
                json!({ "sku": "S", "quantity": 1 }),
            ),
        ],
    )
    .await;
    settle(&url, &key).await;

    // Version 2 of the trigger: the waiting run is reported and stays on version 1.
    let v2_src = V1.replace("nudge_v1", "nudge_v2");
    let v2 = put_triggers(&url, &key, v2_src.clone()).await.body;
    assert_eq!(v2["replaced"][0]["name"], "nudge", "{v2}");
    assert_eq!(v2["replaced"][0]["runs_on_old_version"], 1, "{v2}");
    assert_eq!(v2["applied"], true);
    let t = get(&url, &key, "/v1/triggers").await;
    assert_eq!(t["source"], v2_src.as_str());
    assert_eq!(
        t["triggers"][0]["older_versions_running"][0]["active_runs"], 1,
        "{t}"
    );
    send(
        &url,
        &key,
        &[ev(
            "a3",
            "cart.item_added",
            "cus-3",
            json!({ "sku": "S", "quantity": 5 }),
        )],
    )
    .await;
    settle(&url, &key).await;

    let j1 = get(&url, &key, "/v1/customers/cus-1/journeys").await;
    let run = &j1["runs"][0];
    assert_eq!(run["trigger"], "nudge");
    assert_eq!(
        run["version"], v2["replaced"][0]["old_version"],
        "the run in flight keeps its version"
    );
    assert_eq!(run["status"], "active");
    assert_eq!(run["phase"], "wait");
    let whats: Vec<&str> = run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["what"].as_str().unwrap())
        .collect();
    assert_eq!(whats, ["started", "waiting"]);
    assert!(
        run["history"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("checkout.started")
    );
    let j3 = get(&url, &key, "/v1/customers/cus-3/journeys").await;
    assert_ne!(
        j3["runs"][0]["version"], run["version"],
        "a new run starts on the new version"
    );
    // The condition that did not hold is recorded with the event that was judged.
    let j2 = get(&url, &key, "/v1/customers/cus-2/journeys").await;
    assert_eq!(j2["runs"], json!([]));
    assert_eq!(j2["decisions"][0]["what"], "condition_false");
    assert_eq!(j2["decisions"][0]["event_id"], "a2");

    // Aggregates over the API.
    let a = get(&url, &key, "/v1/aggregates/adds?key=cus-1").await;
    assert_eq!(a["value"], 1);
    let all = get(&url, &key, "/v1/aggregates/adds").await;
    assert_eq!(all["values"].as_object().unwrap().len(), 3, "{all}");
    let missing = common::get(&url, &key, "/v1/aggregates/nope").await;
    assert_eq!(missing.status, 404);
}

#[test]
fn triggers_check_reports_every_problem_and_accepts_the_starter_set() {
    succeeds(storeline(&["triggers", "check"]).arg(starter_set()));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[trigger]]\nname = \"a\"\non = \"x.y\"\nthen = [ { deliver = \"email\", emit = \"z\" } ]\ndebounce = \"often\"\n").unwrap();
    let out = storeline(&["triggers", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("trigger[0] \"a\".then[0] (line 4): an action is exactly one of"),
        "{err}"
    );
    assert!(
        err.contains("trigger[0] \"a\".debounce (line 5): 'often' is not a duration"),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
}

/// A trigger file whose `when` nests 20,000 parentheses (which overflowed the stack of the
/// request's worker and aborted the server), in its second trigger on line 26.
fn deep_file() -> String {
    let deep = format!("{}true{}", "(".repeat(20_000), ")".repeat(20_000));
    format!(
        "{V1}\n[[trigger]]\nname = \"deep\"\non = \"cart.item_added\"\nwhen = \"{deep}\"\nthen = [ {{ emit = \"x.y\" }} ]\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_when_twenty_thousand_deep_is_refused_with_its_trigger_and_line_and_the_server_stays_up()
{
    let (_dir, server, [key]) = serve(["admin"], &[]);
    let url = server.url.clone();
    assert_eq!(put_triggers(&url, &key, V1).await.status, 200);
    let before = get(&url, &key, "/v1/triggers").await["version"].clone();

    let r = put_triggers(&url, &key, deep_file()).await;
    assert_eq!(r.status, 422);
    let body = r.body;
    assert_eq!(body["error"]["code"], "invalid_triggers", "{body}");
    let problems = body["error"]["details"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{body}");
    assert_eq!(problems[0]["at"], "trigger[1] \"deep\".when (line 26)");
    let message = problems[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("CEL is over its limits: ")
            && message.contains("nest 20000 deep from character 33 (at most 32)"),
        "{message}"
    );

    // The server is still up, and the file in force is the one before.
    assert_eq!(common::status_of(&url, "/healthz").await, 200);
    assert_eq!(get(&url, &key, "/v1/triggers").await["version"], before);
}

#[test]
fn triggers_check_and_config_check_name_an_expression_over_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deep.toml");
    std::fs::write(&file, deep_file()).unwrap();
    let config = dir.path().join("storeline.toml");
    std::fs::write(
        &config,
        format!("[triggers]\nfile = {:?}\n", file.to_str().unwrap()),
    )
    .unwrap();
    for args in [["triggers", "check"], ["config", "check"]] {
        let target = if args[0] == "triggers" {
            &file
        } else {
            &config
        };
        let out = storeline(&args).arg(target).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("trigger[1] \"deep\".when (line 26): CEL is over its limits: it is 40004 bytes long (at most 4096)"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backtest_of_the_starter_set_counts_what_the_live_engine_counted() {
    let file = starter_set();
    let env = [("STORELINE_TRIGGERS__FILE", file.as_str())];
    let (dir, mut server, [key]) = serve(["admin"], &env);
    let url = server.url.clone();
    let gen_args = [
        "gen",
        "--events",
        "20000",
        "--customers",
        "400",
        "--seed",
        "7",
    ];
    let out = storeline(&gen_args).output().unwrap();
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for chunk in lines.chunks(500) {
        send(&url, &key, chunk).await;
    }
    settle(&url, &key).await;
    let live = get(&url, &key, "/v1/triggers").await;
    let live = common::comparable(&live["stats"]);
    assert!(
        live.values()
            .map(|c| c.get("started").copied().unwrap_or(0))
            .sum::<u64>()
            > 100,
        "gen traffic starts runs: {live:?}"
    );
    assert_eq!(server.terminate(), Some(0));

    let report = common::backtest(dir.path(), std::path::Path::new(&file));
    let backtest: BTreeMap<String, BTreeMap<String, u64>> =
        serde_json::from_value(report["counts"].clone()).unwrap();
    eprintln!("live counts: {live:?}");
    assert_eq!(
        backtest, live,
        "the backtest counts what the live engine counted"
    );
    assert!(!report["samples"].as_array().unwrap().is_empty());
}
