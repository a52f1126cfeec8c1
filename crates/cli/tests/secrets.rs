//! Connector secrets through the real server: a read key finds none of them anywhere (events,
//! the stream, triggers, connectors, deliveries, metrics), the data directory's files hold none
//! after a `PUT /v1/triggers`, `{ env = … }` references sign deliveries a real Standard Webhooks
//! receiver verifies, sealing is stable over restarts (no reinstall, the key is read back), what
//! cannot be resolved is a 422 naming the key, and a trigger file stored in plain text before
//! sealing existed still configures its connectors (and is redacted for read keys).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::receiver::{
    FAST, OLD_SECRET, Receiver, SECRET, accepted, signup, signup_trigger, webhook,
};
use common::{Node, Server, create_key, http, post_events, put_triggers, storeline, wait_for};
use serde_json::Value;

const HEADER_TOKEN: &str = "hdr-token-7Qx2";
const SMTP_PASSWORD: &str = "smtp-pass-9Zk4";
const FAILOVER_PASSWORD: &str = "failover-pass-3Wm8";
const KAFKA_PASSWORD: &str = "kafka-pass-6Tn1";
const URL_PASSWORD: &str = "url-pass-5Rt7";
const QUERY_TOKEN: &str = "query-token-8Yp3";

/// Every secret of [`leaky_file`], and the part of each webhook secret that signs.
fn all_secrets() -> Vec<&'static str> {
    vec![
        SECRET,
        SECRET.trim_start_matches("whsec_"),
        OLD_SECRET,
        OLD_SECRET.trim_start_matches("whsec_"),
        HEADER_TOKEN,
        SMTP_PASSWORD,
        FAILOVER_PASSWORD,
        KAFKA_PASSWORD,
        URL_PASSWORD,
        QUERY_TOKEN,
    ]
}

/// A file with a secret in every place the docs show: a webhook's secret, previous secret and
/// header; an SMTP password and its failover's; a Kafka password property; and a URL with a
/// password and a token (from the environment, `DOWN_URL`).
fn leaky_file(rx: &str) -> String {
    format!(
        r#"
[[connector]]
name = "erp"
type = "webhook"
url = "{rx}/erp"
secret = "{SECRET}"
previous_secret = "{OLD_SECRET}"   # being rotated out
allow_private_network = true
headers = {{ Authorization = "Bearer {HEADER_TOKEN}" }}
{FAST}

[[connector]]
name = "down"
type = "webhook"
url = {{ env = "DOWN_URL" }}
allow_private_network = true
retry_schedule = ["0s", "1h"]

[[connector]]
name = "mail"
type = "smtp"
host = "127.0.0.1"
port = 2525
tls = "none"
username = "shop"
password = "{SMTP_PASSWORD}"
from = "shop@example.com"
failover = {{ host = "127.0.0.1", port = 2526, tls = "none", username = "shop", password = "{FAILOVER_PASSWORD}" }}

[[connector]]
name = "topic"
type = "kafka"
brokers = "127.0.0.1:1"
topic = "deliveries"
properties = {{ "sasl.password" = "{KAFKA_PASSWORD}" }}

{}"#,
        signup_trigger(&["erp", "down"])
    )
}

/// The secrets found in `text`.
fn leaked(text: &str) -> Vec<&'static str> {
    all_secrets()
        .into_iter()
        .filter(|s| text.contains(s))
        .collect()
}

async fn get_text(url: &str, path: &str, key: Option<&str>) -> String {
    let mut req = http().get(format!("{url}{path}"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// The first `want` events of `GET /v1/stream` from the earliest, as text (whatever arrived
/// within 10 s).
async fn stream_text(url: &str, query: &str, key: &str, want: usize) -> String {
    let mut r = http()
        .get(format!("{url}/v1/stream?from=earliest&{query}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while text.lines().filter(|l| l.starts_with("data:")).count() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, r.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    text
}

/// Every file under `dir` that holds one of the secrets, with which.
fn files_with_secrets(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_with_secrets(&path));
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for s in all_secrets() {
            if memchr::memmem::find(&bytes, s.as_bytes()).is_some() {
                out.push(format!("{} holds {s}", path.display()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_a_read_key_or_the_disk() {
    let rx = Receiver::start(&[]);
    let down_url = format!("http://hooks:{URL_PASSWORD}@127.0.0.1:9/in?token={QUERY_TOKEN}");
    let node = Node::start_with(
        "[[connector]]\nname = \"dev\"\ntype = \"log\"\n",
        &[("DOWN_URL", down_url.as_str())],
    );
    node.put_triggers(&leaky_file(&rx.url)).await;
    node.send(
        &(0..3)
            .map(|i| signup(i, &format!("cus-{i}")))
            .collect::<Vec<_>>(),
    )
    .await;

    // The sealed secrets were opened to sign and to send the header: the receiver verifies.
    let recs = wait_for("3 verified deliveries", Duration::from_secs(20), || async {
        let r = rx.received().await;
        let ok = accepted(&r);
        if ok.len() == 3 {
            Ok(r)
        } else {
            Err(format!("{} accepted", ok.len()))
        }
    })
    .await;
    for r in &recs {
        assert_eq!(r["authorization"], format!("Bearer {HEADER_TOKEN}"), "{r}");
    }
    // The unreachable URL's attempts failed and say so (without the URL's secrets).
    wait_for("the failed attempts", Duration::from_secs(20), || async {
        let d = node.deliveries("connector=down").await;
        if d.len() == 3 && d.iter().all(|d| d["last_error"].is_string()) {
            Ok(())
        } else {
            Err(format!("{d:?}"))
        }
    })
    .await;

    // Everything a read key can read.
    let read = node.read_key.as_str();
    let events = get_text(
        &node.url,
        "/v1/events?type=storeline.triggers&limit=1000",
        Some(read),
    )
    .await;
    let page: Value = serde_json::from_str(&events).unwrap();
    let installs = page["count"].as_u64().unwrap() as usize;
    assert!(installs >= 2, "the configured file and the PUT one: {page}");
    assert!(events.contains("(redacted)"), "{events}");
    let stream = stream_text(&node.url, "type=storeline.triggers", read, installs).await;
    assert_eq!(
        stream.lines().filter(|l| l.starts_with("data:")).count(),
        installs,
        "{stream}"
    );
    let mut seen = vec![
        ("GET /v1/events?type=storeline.triggers", events),
        ("GET /v1/stream", stream),
        (
            "GET /v1/events",
            get_text(&node.url, "/v1/events?limit=1000", Some(read)).await,
        ),
        (
            "GET /v1/triggers",
            get_text(&node.url, "/v1/triggers", Some(read)).await,
        ),
        (
            "GET /v1/connectors",
            get_text(&node.url, "/v1/connectors", Some(read)).await,
        ),
        (
            "GET /v1/deliveries",
            get_text(&node.url, "/v1/deliveries?limit=1000", Some(read)).await,
        ),
        ("GET /metrics", get_text(&node.url, "/metrics", None).await),
    ];
    for d in node.deliveries("").await {
        let path = format!("/v1/deliveries/{}", d["id"].as_str().unwrap());
        let text = get_text(&node.url, &path, Some(read)).await;
        seen.push(("GET /v1/deliveries/{id}", text));
    }
    for (what, text) in &seen {
        assert!(
            leaked(text).is_empty(),
            "{what} shows a read key {:?}:\n{text}",
            leaked(text)
        );
    }
    let triggers: Value = serde_json::from_str(&seen[3].1).unwrap();
    assert_eq!(triggers["secrets_redacted"], true);
    assert!(
        triggers["source"].as_str().unwrap().contains("DOWN_URL"),
        "references name a place, not a secret: {triggers}"
    );

    // An admin key reads the file as stored: sealed values and references, no plain text.
    let admin = node.get("/v1/triggers").await;
    let stored = admin["source"].as_str().unwrap();
    assert!(leaked(stored).is_empty(), "{stored}");
    assert!(stored.contains("secret = \"enc:v1:"), "{stored}");
    assert!(
        stored.contains("\"   # being rotated out"),
        "comments stay: {stored}"
    );
    assert_eq!(admin["secrets_redacted"], false);

    // Nor are they on disk: not in the log segments, the state store, the delivery store.
    assert!(node.data.join("log").is_dir());
    let found = files_with_secrets(&node.data);
    assert!(found.is_empty(), "{found:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn env_references_sign_and_sealing_survives_restarts() {
    let rx = Receiver::start(&[]);
    let file = format!(
        "[[connector]]\nname = \"from_env\"\ntype = \"webhook\"\nurl = \"{rx}/env\"\n\
         secret = {{ env = \"ERP_SECRET\" }}\nallow_private_network = true\n{FAST}\n\n\
         [[connector]]\nname = \"sealed\"\ntype = \"webhook\"\nurl = \"{rx}/sealed\"\n\
         secret = \"{SECRET}\"\nallow_private_network = true\n{FAST}\n\n{}",
        signup_trigger(&["from_env", "sealed"]),
        rx = rx.url
    );
    let mut node = Node::start_with(&file, &[("ERP_SECRET", SECRET)]);
    let key_file = node.data.join("secrets.key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is the owner's alone");
    }
    let admin = node.get("/v1/triggers").await;
    let version = admin["version"].as_str().unwrap().to_owned();
    let stored = admin["source"].as_str().unwrap();
    assert!(
        stored.contains("secret = { env = \"ERP_SECRET\" }"),
        "{stored}"
    );
    assert!(!stored.contains(SECRET), "{stored}");
    let installs = |node: &Node| {
        let url = node.url.clone();
        let key = node.key.clone();
        async move {
            let t = get_text(
                &url,
                "/v1/events?type=storeline.triggers&limit=1000",
                Some(&key),
            )
            .await;
            serde_json::from_str::<Value>(&t).unwrap()["count"]
                .as_u64()
                .unwrap()
        }
    };
    let installed = installs(&node).await;
    for round in 0..3usize {
        if round > 0 {
            assert_eq!(node.server.terminate(), Some(0), "a clean stop");
            node.restart();
            let t = node.get("/v1/triggers").await;
            assert_eq!(
                t["version"],
                version.as_str(),
                "round {round}: same stored text"
            );
            assert_eq!(
                installs(&node).await,
                installed,
                "round {round}: the configured file was not installed again"
            );
        }
        node.send(&[signup(round, &format!("cus-{round}"))]).await;
        let want = 2 * (round + 1);
        let recs = wait_for("verified deliveries", Duration::from_secs(20), || async {
            let r = rx.received().await;
            let ok = accepted(&r);
            if ok.len() == want {
                Ok(r)
            } else {
                Err(format!("{} of {want}: {r:?}", ok.len()))
            }
        })
        .await;
        for path in ["/env", "/sealed"] {
            assert!(
                recs.iter().any(|r| r["path"] == path
                    && r["verified"] == true
                    && r["body"]["data"]["n"] == round),
                "round {round}: {path} did not verify: {recs:?}"
            );
        }
    }
}

/// The 422's first problem is at the `erp` connector's secret and its message says `why`.
#[track_caller]
fn assert_erp_secret_problem(body: &Value, why: &str) {
    let problem = &body["error"]["details"]["problems"][0];
    assert_eq!(problem["at"], "connector[0] \"erp\".secret", "{body}");
    assert!(problem["message"].as_str().unwrap().contains(why), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_resolved_or_opened_is_a_422_naming_the_key() {
    let node = Node::start("[[connector]]\nname = \"dev\"\ntype = \"log\"\n");
    let put = async |src: String| {
        let r = put_triggers(&node.url, &node.key, src).await;
        (r.status, r.body)
    };
    let missing = "[[connector]]\nname = \"erp\"\ntype = \"webhook\"\nurl = \"https://erp.example.com/h\"\n\
                   secret = { env = \"STORELINE_TEST_SURELY_UNSET\" }\n";
    let (status, body) = put(missing.into()).await;
    assert_eq!(status, 422, "{body}");
    assert_erp_secret_problem(&body, "STORELINE_TEST_SURELY_UNSET is not set");
    // `storeline triggers check` says the same.
    let file = node.dir.path().join("missing.toml");
    std::fs::write(&file, missing).unwrap();
    let out = storeline(&["triggers", "check"])
        .arg(&file)
        .env_remove("STORELINE_TEST_SURELY_UNSET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connector[0] \"erp\".secret: the environment variable STORELINE_TEST_SURELY_UNSET is not set"),
        "{err}"
    );

    // A stored file read back and sent again is taken as it is: same text, same version.
    let plain = format!(
        "[[connector]]\nname = \"erp\"\ntype = \"webhook\"\nurl = \"https://erp.example.com/h\"\n\
         secret = \"{SECRET}\"\n"
    );
    let (status, first) = put(plain.clone()).await;
    assert_eq!(status, 200, "{first}");
    // `storeline triggers check --data` knows the version the server gave it.
    let plain_file = node.dir.path().join("plain.toml");
    std::fs::write(&plain_file, &plain).unwrap();
    let out = storeline(&["triggers", "check", "--json", "--data"])
        .arg(&node.data)
        .arg(&plain_file)
        .output()
        .unwrap();
    let checked: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(checked["version"], first["version"], "{checked}");
    let stored = node.get("/v1/triggers").await["source"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(stored.contains("enc:v1:"), "{stored}");
    let (status, again) = put(stored.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["version"], first["version"]);
    // It checks with this data directory's key, and not without it.
    let sealed = node.dir.path().join("sealed.toml");
    std::fs::write(&sealed, &stored).unwrap();
    let check = |data: Option<&Path>| {
        let mut cmd = storeline(&["triggers", "check"]);
        cmd.arg(&sealed);
        if let Some(d) = data {
            cmd.arg("--data").arg(d);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check(Some(&node.data));
    assert!(ok, "{err}");
    let (ok, err) = check(None);
    assert!(
        !ok && err.contains("\"erp\".secret") && err.contains("--data"),
        "{err}"
    );
    let other = tempfile::tempdir().unwrap();
    let (ok, err) = check(Some(other.path()));
    assert!(!ok && err.contains("there is no key"), "{err}");

    // A sealed value that does not open (another key's, or changed) is refused.
    let start = stored.find("enc:v1:").unwrap() + "enc:v1:".len();
    let mut changed = stored.clone();
    let c = if &changed[start..start + 1] == "A" {
        "B"
    } else {
        "A"
    };
    changed.replace_range(start..start + 1, c);
    let (status, body) = put(changed).await;
    assert_eq!(status, 422, "{body}");
    assert_erp_secret_problem(&body, "does not open with this data directory's key");
    // Nothing was installed by the refused files.
    let t = node.get("/v1/triggers").await;
    assert_eq!(t["version"], first["version"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_secret_stored_before_sealing_still_delivers_and_is_redacted() {
    let rx = Receiver::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The records an older Storeline appended when this file was installed: the trigger file
    // in plain text, one record per partition.
    let old = format!(
        "{}{}",
        webhook("old", &format!("{}/old", rx.url), FAST),
        signup_trigger(&["old"])
    );
    let version = write_old_install(&data, &old).await;
    let key = create_key(&data, "admin");
    let read_key = create_key(&data, "read");
    let mut server = Server::start(&data, &[]);
    // Once the engine applied it, a restart builds the connectors from the stored text.
    wait_for(
        "the old file to be applied",
        Duration::from_secs(20),
        || async {
            let t: Value =
                serde_json::from_str(&get_text(&server.url, "/v1/triggers", Some(&key)).await)
                    .unwrap();
            if t["version"] == version.as_str() {
                Ok(())
            } else {
                Err(t.to_string())
            }
        },
    )
    .await;
    server.terminate();
    let server = Server::start(&data, &[]);
    let body = signup(1, "cus-1").to_string();
    let (status, _) = post_events(&server.url, &key, "application/json", body).await;
    assert_eq!(status, 200);
    wait_for(
        "the delivery to verify",
        Duration::from_secs(20),
        || async {
            let r = rx.received().await;
            if accepted(&r).len() == 1 {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    // The old records hold the secret in plain text; a read key does not see it.
    for path in ["/v1/events?type=storeline.triggers", "/v1/triggers"] {
        let text = get_text(&server.url, path, Some(&read_key)).await;
        assert!(leaked(&text).is_empty(), "{path}: {text}");
        assert!(text.contains("(redacted)"), "{path}: {text}");
    }
    let stream = stream_text(&server.url, "type=storeline.triggers", &read_key, 1).await;
    assert!(stream.contains("data:"), "{stream}");
    assert!(leaked(&stream).is_empty(), "{stream}");
    // …while an admin key reads the records as stored.
    let text = get_text(
        &server.url,
        "/v1/events?type=storeline.triggers",
        Some(&key),
    )
    .await;
    assert!(text.contains(SECRET), "{text}");
}

/// Appends the install records of `source` to a fresh data directory's log, as the server
/// did before secrets were sealed; returns the file's version.
async fn write_old_install(data: &Path, source: &str) -> String {
    use storeline_log::{EventLog, FileLog, Record};
    let mut config = storeline_server::Config::load(None).unwrap();
    config.data_dir = data.to_owned();
    let log = FileLog::open(config.log_dir(), config.log.file()).unwrap();
    let set = storeline_engine::triggers::TriggerSet::parse(source).unwrap();
    let now = chrono::Utc::now();
    for p in 0..log.partitions() {
        let ev = storeline_engine::triggers::install_event(&set);
        let record = Record {
            timestamp: now.timestamp_millis(),
            key: bytes::Bytes::copy_from_slice(ev.route_key().as_bytes()),
            value: bytes::Bytes::from(ev.to_stored_json_at(&storeline_event::format_time(&now))),
        };
        log.append(p, vec![record]).await.unwrap();
    }
    log.close().await.unwrap();
    set.version
}
