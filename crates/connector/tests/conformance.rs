//! The connector conformance suite: the contract on `Connector` (`src/lib.rs`) checked the same
//! way for every kind, each against a real receiver on this machine, with the connector built
//! from a `[[connector]]` table as the server builds it. One row per kind ([`Rig`]); every check
//! is a generic function run for each row, as its own test `<kind>::<check>`.
//!
//! ```text
//!  kind     receiver                   transient         refusal           silent
//!  webhook  receiver.py (verifies)     503               400               --hang
//!  smtp     aiosmtpd (receiver.py)     451 to RCPT       550 to RCPT       RCPT never answered
//!  sms      axum recorder, 3 presets   503               400               /hang
//!  kafka    tansu                      no such topic     schema refuses    broker SIGSTOPped
//!  log      a child's stdout pipe      reader closed     (cannot)          pipe never read
//! ```
//!
//! The checks: (1) a success is `Delivered` and exactly one message; (2) a transient failure is
//! `Retry` after exactly one request; (3) a permanent refusal is `Reject`; (4) the delivery id
//! reaches the receiver where the kind carries it (each row's `ids`); (5) a receiver that does
//! not answer gives `Retry` within the timeout (plus room for a busy machine; no lower bound);
//! (6) nothing listening gives `Retry`. A check a protocol cannot express is a `skip`: an
//! ignored test whose name and reason say why.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use storeline_connector::{Built, Connector, Delivery, Verdict};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use common::free_port;

/// Every connector's `timeout`.
const TIMEOUT: &str = "2s";
/// The most an attempt may take against a silent or absent receiver: the timeout, with room for
/// a busy 2-core machine.
const BOUND: Duration = Duration::from_secs(2 + 5);

/// How the receiver answers every attempt of a test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Accept,
    /// Fails in a way the same request may get through later.
    Transient,
    /// Refuses this message for good.
    Refuse,
    /// Takes the connection in and never answers in time.
    Silent,
    /// Nothing listens where the connector points.
    Absent,
}

/// One request, message or record the receiver got.
#[derive(Debug)]
struct Got {
    /// Whether it took it: answered 2xx or 250, kept the record, read the line.
    taken: bool,
    /// Where the delivery id travelled, as the receiver read it: (place, value).
    ids: Vec<(&'static str, String)>,
}

/// One row of the table: a kind's real receiver, and the connector aimed at it.
trait Rig: Sized {
    const KIND: &'static str;
    /// Whether the receiver keeps a trace of an attempt it did not take (an HTTP or SMTP server
    /// logs the request), or only of what it took (a Kafka topic, a stdout reader).
    const SEES_UNTAKEN: bool;
    /// Variants every check runs on (the sms presets shape their requests differently).
    const VARIANTS: &'static [&'static str] = &[""];

    /// Starts a receiver that answers as `answer` and builds the connector aimed at it.
    async fn start(variant: &'static str, answer: Answer) -> Self;
    /// The delivery to attempt, with what the kind needs (a template, a recipient).
    fn delivery(&self, id: &str) -> Delivery {
        delivery(id)
    }
    async fn attempt(&self, d: &Delivery) -> Verdict;
    /// Everything the receiver got, in arrival order.
    async fn got(&self) -> Vec<Got>;
    /// Where the receiver must find `d`'s id, and as what.
    fn ids(&self, d: &Delivery) -> Vec<(&'static str, String)>;
}

fn label<R: Rig>(variant: &str) -> String {
    if variant.is_empty() {
        R::KIND.to_owned()
    } else {
        format!("{} ({variant})", R::KIND)
    }
}

/// A delivery with what every kind may need: a customer with an email address and a phone.
fn delivery(id: &str) -> Delivery {
    Delivery {
        id: id.to_owned(),
        connector: "conformance".into(),
        channel: "conformance".into(),
        template: None,
        customer: Some("cus_ann".into()),
        trigger: "order_shipped".into(),
        event: json!({ "type": "order_shipped", "customer": "cus_ann" }),
        arrived: None,
        data: json!({ "order": "ord_7" })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        created_at: 1_764_000_000_000,
        attempt: 1,
        key: "cus_ann".into(),
        profile: Some(json!({
            "id": "cus_ann",
            "traits": {
                "first_name": "Ann", "email": "ann@example.com", "phone": "+4915100000001",
            },
        })),
    }
}

// ---- The checks ------------------------------------------------------------------------------

/// (1) One attempt at a receiver that takes it: `Delivered`, and exactly one message (the
/// connector made one attempt and did not repeat it).
async fn delivered_once<R: Rig>() {
    for &variant in R::VARIANTS {
        let at = label::<R>(variant);
        let rig = R::start(variant, Answer::Accept).await;
        let v = rig.attempt(&rig.delivery("dlv_01JCONF0000DELIVERED")).await;
        eprintln!("{at}: {v:?}");
        assert!(matches!(v, Verdict::Delivered { .. }), "{at}: {v:?}");
        let got = rig.got().await;
        assert_eq!(got.len(), 1, "{at}: one attempt, one message: {got:?}");
        assert!(got[0].taken, "{at}: {got:?}");
    }
}

/// (2) A transient failure: `Retry`, after exactly one request (where the receiver can see a
/// request it did not take; a broker or a closed pipe keeps none: then nothing was taken).
async fn transient_failure_is_retried_once<R: Rig>() {
    not_taken::<R>(Answer::Transient, "dlv_01JCONF0000TRANSIENT", |v| {
        matches!(v, Verdict::Retry { .. })
    })
    .await;
}

/// (3) A permanent refusal: `Reject`, after at most one request.
async fn permanent_refusal_is_rejected<R: Rig>() {
    not_taken::<R>(Answer::Refuse, "dlv_01JCONF0000REFUSED", |v| {
        matches!(v, Verdict::Reject { .. })
    })
    .await;
}

/// Checks (2) and (3): the receiver answers `answer`, the verdict is what `expected` says, and
/// the one request made (if the receiver can see one) was not taken.
async fn not_taken<R: Rig>(answer: Answer, id: &str, expected: fn(&Verdict) -> bool) {
    for &variant in R::VARIANTS {
        let at = label::<R>(variant);
        let rig = R::start(variant, answer).await;
        let v = rig.attempt(&rig.delivery(id)).await;
        eprintln!("{at}: {v:?}");
        assert!(expected(&v), "{at}: {v:?}");
        let got = rig.got().await;
        assert_eq!(got.len(), usize::from(R::SEES_UNTAKEN), "{at}: {got:?}");
        assert!(got.iter().all(|g| !g.taken), "{at}: {got:?}");
    }
}

/// (4) The delivery id reaches the receiver as the idempotency key, wherever the kind puts it.
async fn delivery_id_is_the_idempotency_key<R: Rig>() {
    for &variant in R::VARIANTS {
        let at = label::<R>(variant);
        let rig = R::start(variant, Answer::Accept).await;
        let d = rig.delivery("dlv_01JCONF0000IDEMPOTENT");
        let v = rig.attempt(&d).await;
        eprintln!("{at}: {v:?}");
        assert!(matches!(v, Verdict::Delivered { .. }), "{at}: {v:?}");
        let got = rig.got().await;
        assert_eq!(got.len(), 1, "{at}: {got:?}");
        let expected = rig.ids(&d);
        assert!(
            expected.iter().any(|(_, v)| v.contains(&d.id)),
            "{at}: no place carries the id"
        );
        assert_eq!(got[0].ids, expected, "{at}");
    }
}

/// (5) A receiver that takes the attempt in and never answers: `Retry` within the timeout
/// (plus room for a busy machine), after at most one request.
async fn silent_receiver_is_retried_within_the_timeout<R: Rig>() {
    for &variant in R::VARIANTS {
        let at = label::<R>(variant);
        let rig = R::start(variant, Answer::Silent).await;
        let d = rig.delivery("dlv_01JCONF0000SILENT");
        let started = Instant::now();
        let Ok(v) = tokio::time::timeout(BOUND, rig.attempt(&d)).await else {
            panic!("{at}: no verdict within {BOUND:?} (timeout {TIMEOUT})")
        };
        let took = started.elapsed();
        eprintln!("{at}: {v:?}");
        assert!(matches!(v, Verdict::Retry { .. }), "{at}: {v:?}");
        assert!(took < BOUND, "{at}: took {took:?}");
        // Kafka: a frozen broker may still write the record once it runs again (the lost ack
        // the id header exists for); never twice.
        let got = rig.got().await;
        if R::SEES_UNTAKEN {
            assert_eq!(got.len(), 1, "{at}: {got:?}");
        } else {
            assert!(got.len() <= 1, "{at}: {got:?}");
        }
    }
}

/// (6) Nothing listening (connection refused): `Retry`, within the bound, not a panic.
async fn nothing_listening_is_retried<R: Rig>() {
    for &variant in R::VARIANTS {
        let at = label::<R>(variant);
        let rig = R::start(variant, Answer::Absent).await;
        let started = Instant::now();
        let d = rig.delivery("dlv_01JCONF0000ABSENT");
        let Ok(v) = tokio::time::timeout(BOUND, rig.attempt(&d)).await else {
            panic!("{at}: no verdict within {BOUND:?}")
        };
        eprintln!("{at}: {v:?}");
        assert!(matches!(v, Verdict::Retry { .. }), "{at}: {v:?}");
        // The detail names the cause, not only the layer that saw it fail.
        let why = v.detail().to_lowercase();
        assert!(
            why.contains("refused") || why.contains("unreachable"),
            "{at}: {v:?}"
        );
        assert!(started.elapsed() < BOUND, "{at}: {:?}", started.elapsed());
    }
}

// ---- The table -------------------------------------------------------------------------------

/// Each row runs the checks it lists as `<kind>::<check>`; `skip` lists the checks its protocol
/// cannot express, as ignored tests named and explained as such.
macro_rules! conformance {
    ($(
        $kind:ident: $rig:ty { $($(#[$attr:meta])* $check:ident),* $(,)? }
        $(skip { $($skip:ident = $why:literal),* $(,)? })?;
    )*) => {$(
        mod $kind {
            use super::*;
            $(
                $(#[$attr])*
                #[tokio::test]
                async fn $check() {
                    super::$check::<$rig>().await;
                }
            )*
            $($(
                #[test]
                #[ignore = $why]
                fn $skip() {
                    eprintln!("skipped: {}", $why);
                }
            )*)?
        }
    )*};
}

conformance! {
    webhook: Webhook {
        delivered_once,
        transient_failure_is_retried_once,
        permanent_refusal_is_rejected,
        delivery_id_is_the_idempotency_key,
        silent_receiver_is_retried_within_the_timeout,
        nothing_listening_is_retried,
    };
    smtp: Smtp {
        delivered_once,
        transient_failure_is_retried_once,
        permanent_refusal_is_rejected,
        delivery_id_is_the_idempotency_key,
        silent_receiver_is_retried_within_the_timeout,
        nothing_listening_is_retried,
    };
    sms: Sms {
        delivered_once,
        transient_failure_is_retried_once,
        permanent_refusal_is_rejected,
        delivery_id_is_the_idempotency_key,
        silent_receiver_is_retried_within_the_timeout,
        nothing_listening_is_retried,
    };
    kafka: Kafka {
        delivered_once,
        transient_failure_is_retried_once,
        permanent_refusal_is_rejected,
        delivery_id_is_the_idempotency_key,
        silent_receiver_is_retried_within_the_timeout,
        nothing_listening_is_retried,
    };
    log: Log {
        delivered_once,
        transient_failure_is_retried_once,
        delivery_id_is_the_idempotency_key,
        silent_receiver_is_retried_within_the_timeout,
    } skip {
        permanent_refusal_skipped_stdout_cannot_refuse =
            "log: a stdout pipe takes a line or fails to; it cannot refuse one",
        nothing_listening_skipped_stdout_has_no_connection =
            "log: stdout is no connection; a pipe with no reader is the transient check",
    };
}

// ---- webhook: receiver.py, answering as started ----------------------------------------------

struct Webhook {
    rx: Option<common::webhook::Receiver>,
    c: Built,
}

impl Rig for Webhook {
    const KIND: &'static str = "webhook";
    const SEES_UNTAKEN: bool = true;

    async fn start(_: &'static str, answer: Answer) -> Self {
        let args: &[&str] = match answer {
            Answer::Accept => &[],
            Answer::Transient => &["--status", "503"],
            Answer::Refuse => &["--status", "400"],
            Answer::Silent => &["--hang"],
            Answer::Absent => {
                let url = format!("http://127.0.0.1:{}", free_port());
                return Webhook {
                    rx: None,
                    c: webhook(&url),
                };
            }
        };
        let rx = common::webhook::Receiver::start(args);
        let c = webhook(&rx.url);
        Webhook { rx: Some(rx), c }
    }

    async fn attempt(&self, d: &Delivery) -> Verdict {
        self.c.attempt(d).await
    }

    async fn got(&self) -> Vec<Got> {
        let Some(rx) = &self.rx else {
            return Vec::new();
        };
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        rx.received()
            .await
            .iter()
            .map(|r| Got {
                // The receiver answers 401 to a request its Standard Webhooks check fails.
                taken: r["verified"] == true
                    && r["status"]
                        .as_u64()
                        .is_some_and(|s| (200..300).contains(&s)),
                ids: vec![
                    ("webhook-id", text(&r["id"])),
                    ("idempotency-key", text(&r["idempotency_key"])),
                ],
            })
            .collect()
    }

    fn ids(&self, d: &Delivery) -> Vec<(&'static str, String)> {
        vec![
            ("webhook-id", d.id.clone()),
            ("idempotency-key", d.id.clone()),
        ]
    }
}

fn webhook(url: &str) -> Built {
    common::build(&format!(
        "name = \"hook\"\ntype = \"webhook\"\nurl = \"{url}/hooks\"\nsecret = \"{}\"\n\
         allow_private_network = true\ntimeout = \"{TIMEOUT}\"\n",
        common::webhook::SECRET
    ))
}

// ---- smtp: aiosmtpd, answering by recipient --------------------------------------------------

struct Smtp {
    rx: Option<common::smtp::Receiver>,
    c: Built,
    to: &'static str,
}

impl Rig for Smtp {
    const KIND: &'static str = "smtp";
    const SEES_UNTAKEN: bool = true;

    async fn start(_: &'static str, answer: Answer) -> Self {
        let (rx, to) = match answer {
            Answer::Absent => (None, "ann@example.com"),
            _ => {
                let to = match answer {
                    Answer::Transient => "tempfail@example.com",
                    Answer::Refuse => "reject@example.com",
                    Answer::Silent => "slow@example.com",
                    _ => "ann@example.com",
                };
                (Some(common::smtp::Receiver::start(&["--log-rcpt"])), to)
            }
        };
        let port = rx.as_ref().map_or_else(free_port, |r| r.port);
        // No failover: one relay, so one attempt is one transaction.
        let c = common::build(&format!(
            r#"
            name = "mail"
            type = "smtp"
            host = "127.0.0.1"
            port = {port}
            tls = "none"
            timeout = "{TIMEOUT}"
            from = "Shop <shop@example.com>"
            [templates.note]
            subject = "Order {{{{ data.order }}}} has shipped"
            text = "Hi {{{{ customer.traits.first_name }}}}"
            "#
        ));
        Smtp { rx, c, to }
    }

    fn delivery(&self, id: &str) -> Delivery {
        let mut d = delivery(id);
        d.template = Some("note".into());
        d.data.insert("to".into(), json!(self.to));
        d
    }

    async fn attempt(&self, d: &Delivery) -> Verdict {
        self.c.attempt(d).await
    }

    /// One entry per RCPT (one transaction each), taken when its message arrived.
    async fn got(&self) -> Vec<Got> {
        let Some(rx) = &self.rx else {
            return Vec::new();
        };
        let mut got: Vec<Got> = Vec::new();
        // What arrives late would be a second attempt the connector made on its own.
        while let Some(line) = rx.line(Duration::from_millis(500)) {
            let v: Value = serde_json::from_str(&line).expect("a JSON line");
            if v.get("rcpt").is_some() {
                got.push(Got {
                    taken: false,
                    ids: Vec::new(),
                });
                continue;
            }
            let last = got.last_mut().expect("a message after its RCPT");
            last.taken = true;
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            last.ids = vec![
                ("Message-ID", text("message_id")),
                ("X-Storeline-Delivery", text("delivery")),
            ];
        }
        got
    }

    fn ids(&self, d: &Delivery) -> Vec<(&'static str, String)> {
        vec![
            ("Message-ID", format!("<{}@storeline>", d.id)),
            ("X-Storeline-Delivery", d.id.clone()),
        ]
    }
}

// ---- sms: the axum recorder, answering by path; every preset ---------------------------------

struct Sms {
    rx: common::http::Receiver,
    c: Built,
    preset: &'static str,
}

impl Rig for Sms {
    const KIND: &'static str = "sms";
    const SEES_UNTAKEN: bool = true;
    const VARIANTS: &'static [&'static str] = &["infobip", "twilio", "custom"];

    async fn start(preset: &'static str, answer: Answer) -> Self {
        let rx = common::http::Receiver::start().await;
        let url = match answer {
            Answer::Accept => rx.url("/ok"),
            Answer::Transient => rx.url("/down"),
            Answer::Refuse => rx.url("/bad"),
            Answer::Silent => rx.url("/hang"),
            Answer::Absent => format!("http://127.0.0.1:{}", free_port()),
        };
        let shape = match preset {
            "infobip" => "api_key = \"k\"".to_owned(),
            "twilio" => "account_sid = \"AC1\"\nauth_token = \"t\"".to_owned(),
            _ => r#"body = '{"to": {{ to | tojson }}, "text": {{ text | tojson }}}'"#.to_owned(),
        };
        let c = common::build(&format!(
            "name = \"texts\"\ntype = \"sms\"\npreset = \"{preset}\"\nurl = \"{url}\"\n{shape}\n\
             from = \"Shop\"\nallow_private_network = true\ntimeout = \"{TIMEOUT}\"\n\
             [templates]\nshipped = \"Order {{{{ data.order }}}} has shipped\"\n"
        ));
        Sms { rx, c, preset }
    }

    fn delivery(&self, id: &str) -> Delivery {
        let mut d = delivery(id);
        d.template = Some("shipped".into());
        d
    }

    async fn attempt(&self, d: &Delivery) -> Verdict {
        self.c.attempt(d).await
    }

    async fn got(&self) -> Vec<Got> {
        self.rx
            .take()
            .iter()
            .map(|s| Got {
                taken: s.path.starts_with("/ok"),
                ids: match self.preset {
                    "infobip" => vec![(
                        "messageId",
                        s.json()["messages"][0]["destinations"][0]["messageId"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    )],
                    "twilio" => vec![(
                        "I-Twilio-Idempotency-Token",
                        s.header("i-twilio-idempotency-token").to_owned(),
                    )],
                    _ => vec![("Idempotency-Key", s.header("idempotency-key").to_owned())],
                },
            })
            .collect()
    }

    fn ids(&self, d: &Delivery) -> Vec<(&'static str, String)> {
        let place = match self.preset {
            "infobip" => "messageId",
            "twilio" => "I-Twilio-Idempotency-Token",
            _ => "Idempotency-Key",
        };
        vec![(place, d.id.clone())]
    }
}

// ---- kafka: tansu, with a schema that refuses; frozen to be silent ---------------------------

struct Kafka {
    c: Built,
    broker: Option<common::kafka::Broker>,
    topic: &'static str,
    answer: Answer,
    _schemas: tempfile::TempDir,
}

/// A JSON schema for topic `strict` that no record of ours matches: the broker answers
/// `INVALID_RECORD`.
const STRICT: &str = r#"{ "type": "object",
  "properties": { "value": { "type": "object", "required": ["never_sent"] } } }"#;

impl Rig for Kafka {
    const KIND: &'static str = "kafka";
    /// A broker keeps the records it took; a refused or unanswered produce leaves nothing to read.
    const SEES_UNTAKEN: bool = false;

    async fn start(_: &'static str, answer: Answer) -> Self {
        let schemas = tempfile::tempdir().expect("tempdir");
        std::fs::write(schemas.path().join("strict.json"), STRICT).expect("write a schema");
        let (broker, topic) = match answer {
            Answer::Absent => (None, "orders"),
            _ => {
                let b = common::kafka::Broker::with_schemas(schemas.path());
                let topic = match answer {
                    // Never created: the broker answers UNKNOWN_TOPIC_OR_PARTITION, and a topic
                    // may yet be created, so it is worth retrying.
                    Answer::Transient => "missing",
                    Answer::Refuse => "strict",
                    _ => "orders",
                };
                if topic != "missing" {
                    b.create_topic(topic, 1);
                }
                if answer == Answer::Silent {
                    b.pause();
                }
                (Some(b), topic)
            }
        };
        let brokers = broker
            .as_ref()
            .map_or_else(|| format!("127.0.0.1:{}", free_port()), |b| b.brokers());
        let c = common::build(&format!(
            "name = \"stream\"\ntype = \"kafka\"\ntimeout = \"{TIMEOUT}\"\n\
             brokers = \"{brokers}\"\ntopic = \"{topic}\"\n"
        ));
        Kafka {
            c,
            broker,
            topic,
            answer,
            _schemas: schemas,
        }
    }

    async fn attempt(&self, d: &Delivery) -> Verdict {
        self.c.attempt(d).await
    }

    async fn got(&self) -> Vec<Got> {
        let Some(b) = &self.broker else {
            return Vec::new();
        };
        b.resume();
        let expected = usize::from(self.answer == Answer::Accept);
        b.consume(self.topic, expected)
            .iter()
            .map(|r| Got {
                taken: true,
                ids: vec![
                    (
                        "header storeline-delivery-id",
                        r["headers"]["storeline-delivery-id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                    ("key", r["key"].as_str().unwrap_or_default().to_owned()),
                ],
            })
            .collect()
    }

    /// The id in a header; the key is the partition key (the customer), not the id.
    fn ids(&self, d: &Delivery) -> Vec<(&'static str, String)> {
        vec![
            ("header storeline-delivery-id", d.id.clone()),
            ("key", d.key.clone()),
        ]
    }
}

// ---- log: this test binary again, in a child process whose stdout is the receiver ------------

/// The environment variable that makes [`log_child`] attempt: `{"answer", "delivery"}`.
const LOG_CHILD: &str = "STORELINE_CONFORMANCE_LOG_CHILD";

struct Log {
    answer: Answer,
    lines: Mutex<Vec<Value>>,
}

impl Rig for Log {
    const KIND: &'static str = "log";
    /// A line is either in the pipe or not: there is no trace of a write that failed.
    const SEES_UNTAKEN: bool = false;

    async fn start(_: &'static str, answer: Answer) -> Self {
        assert!(
            matches!(answer, Answer::Accept | Answer::Transient | Answer::Silent),
            "log: no {answer:?} on stdout (the check is skipped)"
        );
        Log {
            answer,
            lines: Mutex::new(Vec::new()),
        }
    }

    /// Runs [`log_child`]: `Accept` reads its stdout, `Transient` closes the read end before the
    /// attempt, `Silent` never reads it. The verdict comes back on stderr.
    async fn attempt(&self, d: &Delivery) -> Verdict {
        let spec = json!({ "answer": format!("{:?}", self.answer), "delivery": d });
        let mut child = tokio::process::Command::new(std::env::current_exe().expect("this binary"))
            .args([
                "log_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--quiet",
            ])
            .args(["--test-threads", "1"])
            .env(LOG_CHILD, spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the test binary runs again");
        let mut stdout = child.stdout.take();
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut stderr = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let verdict = loop {
            let line = stderr.next_line().await.expect("read the child's stderr");
            let Some(line) = line else {
                panic!("log: the child ended without a verdict: {said:#?}")
            };
            if line == "READY" {
                // No reader any more: the connector's write meets a closed pipe.
                drop(stdout.take());
                stdin.write_all(b"go\n").await.expect("tell the child");
            } else if let Some(v) = line.strip_prefix("VERDICT ") {
                let v: Value = serde_json::from_str(v).expect("a verdict");
                let detail = v["detail"].as_str().unwrap_or_default().to_owned();
                break match v["outcome"].as_str() {
                    Some("delivered") => Verdict::Delivered { detail },
                    Some("retry") => Verdict::retry(detail),
                    _ => Verdict::Reject { detail },
                };
            } else {
                said.push(line);
            }
        };
        // The child has said what it had to (a Silent one would never exit on its own).
        let _ = child.start_kill();
        let _ = child.wait().await;
        if let (Answer::Accept, Some(mut out)) = (self.answer, stdout) {
            let mut text = String::new();
            out.read_to_string(&mut text).await.expect("read stdout");
            // The (quiet) test harness prints there too, on lines of its own.
            *self.lines.lock().expect("lock") = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v.get("connector").is_some())
                .collect();
        }
        verdict
    }

    async fn got(&self) -> Vec<Got> {
        let lines = self.lines.lock().expect("lock");
        lines
            .iter()
            .map(|l| Got {
                taken: true,
                ids: vec![(
                    "\"id\" of the line",
                    l["id"].as_str().unwrap_or_default().to_owned(),
                )],
            })
            .collect()
    }

    fn ids(&self, d: &Delivery) -> Vec<(&'static str, String)> {
        vec![("\"id\" of the line", d.id.clone())]
    }
}

/// The log rig's other half: one attempt of a `log` connector in this (child) process.
#[tokio::test]
#[ignore = "not a check: the log rows run it in a child process, whose stdout is the receiver"]
async fn log_child() {
    let Ok(spec) = std::env::var(LOG_CHILD) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).expect("a spec");
    let d: Delivery = serde_json::from_value(spec["delivery"].clone()).expect("a delivery");
    let c = common::build(&format!(
        "name = \"dev\"\ntype = \"log\"\ntimeout = \"{TIMEOUT}\"\n"
    ));
    match spec["answer"].as_str() {
        Some("Transient") => {
            // The parent closes its end of our stdout when it reads this, then says go.
            eprintln!("READY");
            let mut go = String::new();
            std::io::stdin().read_line(&mut go).expect("read stdin");
        }
        Some("Silent") => {
            // A writer that holds stdout while it blocks on the pipe nobody reads: every other
            // writer (the connector) waits behind it, as behind any full stdout. (With the lock
            // free and the pipe full, the connector's own write blocks alike; but a pipe's size
            // is not portable, a held lock is.)
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut out = std::io::stdout().lock();
                let _ = tx.send(());
                let _ = out.write_all(&[b'\n'; 1 << 20]);
            });
            rx.recv().expect("the writer holds stdout");
        }
        _ => {}
    }
    let v = c.attempt(&d).await;
    eprintln!(
        "VERDICT {}",
        json!({ "outcome": v.outcome(), "detail": v.detail() })
    );
}
