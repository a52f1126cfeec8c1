//! `[[connector]]` tables: the settings every connector shares (retries, limits, circuit
//! breaker, auto-disable, FIFO) and each kind's own. Checking is pure: no file is read and no
//! address resolved here (that happens in [`crate::Built::build`] and at attempt time), so
//! `storeline config check` and `PUT /v1/triggers` can run it anywhere.
//!
//! ```toml
//! [[connector]]
//! name = "erp"
//! type = "webhook"                  # webhook | smtp | sms | kafka | log
//! url = "https://erp.example.com/hooks"
//! secret = "whsec_…"
//! retry_schedule = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]   # the default
//! concurrency = 32                  # attempts in flight at once
//! rate_limit = 100                  # attempts per second (none by default)
//! timeout = "10s"                   # one attempt
//! circuit_failures = 5              # consecutive failures that open the circuit (0: never)
//! circuit_cooldown = "30s"          # how long it stays open before one trial attempt
//! disable_after = "5d"              # failing without a success this long disables it
//! fifo = false                      # strict order per key (customer) when true
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One problem in the connector tables, with where it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// The default retry schedule: the delay before each attempt (the first is immediate).
pub const DEFAULT_SCHEDULE: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// A checked connector definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorDef {
    pub name: String,
    pub kind: Kind,
    /// The delay before attempt n+1 (so `len()` attempts in all).
    pub retry_schedule: Vec<Duration>,
    /// Each delay is spread by ± this fraction, so retries of many deliveries do not arrive
    /// together.
    pub jitter: f64,
    pub concurrency: usize,
    pub rate_limit: Option<f64>,
    pub timeout: Duration,
    pub circuit_failures: u32,
    pub circuit_cooldown: Duration,
    pub disable_after: Option<Duration>,
    pub fifo: bool,
}

/// What each kind needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Webhook(WebhookConfig),
    Smtp(SmtpConfig),
    Sms(SmsConfig),
    Kafka(KafkaConfig),
    Log(LogConfig),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Webhook(_) => "webhook",
            Kind::Smtp(_) => "smtp",
            Kind::Sms(_) => "sms",
            Kind::Kafka(_) => "kafka",
            Kind::Log(_) => "log",
        }
    }
    /// Whether attempts need the customer's view (templates address and greet the customer).
    pub fn needs_profile(&self) -> bool {
        matches!(self, Kind::Smtp(_) | Kind::Sms(_))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// A Standard Webhooks secret (`whsec_` + base64). Without one, requests are unsigned.
    #[serde(default)]
    pub secret: Option<String>,
    /// The secret being rotated out: requests carry both signatures until
    /// `previous_secret_until` (RFC 3339; without it, for as long as it is set).
    #[serde(default)]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub previous_secret_until: Option<String>,
    /// Loopback, private, link-local and other non-public targets are refused unless true.
    #[serde(default)]
    pub allow_private_network: bool,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (local relays and tests only).
    None,
    /// Upgrade with STARTTLS, and refuse a server that cannot.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// One SMTP server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpServer {
    pub host: String,
    /// Defaults: 25 without TLS, 587 with STARTTLS, 465 with TLS.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// A PEM file of root certificates to trust besides the public roots (a private relay's
    /// self-signed certificate); read when the connector is built.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// An email template: minijinja source for the subject and the two parts. In scope: `customer`
/// (the customer's view), `data` (the action's data), `event`, `trigger`, `delivery`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailTemplate {
    pub subject: String,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    #[serde(flatten)]
    pub primary: SmtpServer,
    pub from: String,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Tried when the primary fails with a transient error.
    #[serde(default)]
    pub failover: Option<SmtpServer>,
    /// Templates by name, inline.
    #[serde(default)]
    pub templates: BTreeMap<String, EmailTemplate>,
    /// A folder of `{name}.toml` files, each an [`EmailTemplate`]; read when the connector is
    /// built.
    #[serde(default)]
    pub templates_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsPreset {
    /// `POST {url}/sms/2/text/advanced`, `Authorization: App {api_key}`, JSON.
    Infobip,
    /// `POST {url}/2010-04-01/Accounts/{account_sid}/Messages.json`, basic auth, form.
    Twilio,
    /// `POST {url}` with `body` rendered as the JSON request.
    Custom,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    pub preset: SmsPreset,
    /// The provider's base URL (Infobip's is per account; Twilio's defaults to
    /// `https://api.twilio.com`); the full URL for `custom`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub auth_token: Option<String>,
    pub from: String,
    /// Template for the recipient. When unset or blank: the action's `data.to`, else the
    /// customer's `traits.phone`; with none of them the delivery is rejected.
    #[serde(default)]
    pub to: Option<String>,
    /// Message texts by template name (minijinja).
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// `custom`: the JSON request body, a minijinja template (with `to`, `text` in scope too).
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub allow_private_network: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    /// Further librdkafka producer settings (`"compression.type" = "lz4"`, …).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Also print the trigger event (long).
    #[serde(default)]
    pub with_event: bool,
}

/// Keys every connector takes; the rest belongs to its kind.
const COMMON: &[&str] = &[
    "name",
    "type",
    "channel",
    "retry_schedule",
    "jitter",
    "concurrency",
    "rate_limit",
    "timeout",
    "circuit_failures",
    "circuit_cooldown",
    "disable_after",
    "fifo",
];

/// Checks every `[[connector]]` table; all problems are reported, each with its key path.
pub fn parse_all(tables: &[toml::Table]) -> Result<Vec<ConnectorDef>, Vec<Problem>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        match parse(t, &format!("connector[{i}]")) {
            Ok(d) => {
                if out.iter().any(|o: &ConnectorDef| o.name == d.name) {
                    problems.push(Problem {
                        at: format!("connector[{i}].name"),
                        message: format!("connector '{}' is defined twice", d.name),
                    });
                }
                out.push(d)
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Checks one table; `at` names it in problems.
pub fn parse(t: &toml::Table, at: &str) -> Result<ConnectorDef, Vec<Problem>> {
    let mut p = Vec::new();
    let name = name_of(t).unwrap_or("").to_owned();
    let at = place(t, at);
    let mut add = |key: &str, message: String| {
        p.push(Problem {
            at: if key.is_empty() {
                at.clone()
            } else {
                format!("{at}.{key}")
            },
            message,
        })
    };
    if name.is_empty() {
        add("name", "a connector needs a `name` (text)".into());
    }
    let rest: toml::Table = t
        .iter()
        .filter(|(k, _)| !COMMON.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let kind_name = t.get("type").and_then(|v| v.as_str()).unwrap_or("");
    let kind = match kind_name {
        "webhook" => typed(&rest, &mut add).map(Kind::Webhook),
        "smtp" => typed(&rest, &mut add).map(Kind::Smtp),
        "sms" => typed(&rest, &mut add).map(Kind::Sms),
        "kafka" => typed(&rest, &mut add).map(Kind::Kafka),
        "log" => typed(&rest, &mut add).map(Kind::Log),
        other => {
            add(
                "type",
                format!(
                    "unknown connector type {other:?}; expected webhook, smtp, sms, kafka or log"
                ),
            );
            None
        }
    };
    if let Some(k) = &kind {
        check_kind(k, &mut add);
    }
    let duration = |key: &str, default: Duration, add: &mut dyn FnMut(&str, String)| -> Duration {
        match t.get(key) {
            None => default,
            Some(v) => match v.as_str().map(humantime::parse_duration) {
                Some(Ok(d)) => d,
                _ => {
                    add(
                        key,
                        format!("expected a duration such as \"30s\" or \"5m\", got {v}"),
                    );
                    default
                }
            },
        }
    };
    let retry_schedule = match t.get("retry_schedule") {
        None => DEFAULT_SCHEDULE.to_vec(),
        Some(toml::Value::Array(a)) if !a.is_empty() => a
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match v.as_str().map(humantime::parse_duration) {
                Some(Ok(d)) => Some(d),
                _ => {
                    add(
                        &format!("retry_schedule[{i}]"),
                        format!("expected a duration such as \"5s\", got {v}"),
                    );
                    None
                }
            })
            .collect(),
        Some(v) => {
            add(
                "retry_schedule",
                format!(
                    "expected a non-empty list of delays such as [\"0s\", \"5s\", \"5m\"], got {v}"
                ),
            );
            DEFAULT_SCHEDULE.to_vec()
        }
    };
    let timeout = duration("timeout", Duration::from_secs(10), &mut add);
    let circuit_cooldown = duration("circuit_cooldown", Duration::from_secs(30), &mut add);
    let disable_after = match t.get("disable_after") {
        Some(toml::Value::Boolean(false)) => None,
        _ => Some(duration(
            "disable_after",
            Duration::from_secs(5 * 24 * 3600),
            &mut add,
        )),
    };
    let int = |key: &str, default: i64, min: i64, add: &mut dyn FnMut(&str, String)| -> i64 {
        match t.get(key) {
            None => default,
            Some(toml::Value::Integer(n)) if *n >= min => *n,
            Some(v) => {
                add(key, format!("expected a whole number ≥ {min}, got {v}"));
                default
            }
        }
    };
    let concurrency = int("concurrency", 32, 1, &mut add) as usize;
    let circuit_failures = int("circuit_failures", 5, 0, &mut add).min(i64::from(u32::MAX)) as u32;
    let rate_limit = match t.get("rate_limit") {
        None => None,
        Some(toml::Value::Integer(n)) if *n > 0 => Some(*n as f64),
        Some(toml::Value::Float(f)) if *f > 0.0 => Some(*f),
        Some(v) => {
            add(
                "rate_limit",
                format!("expected attempts per second (> 0), got {v}"),
            );
            None
        }
    };
    let jitter = match t.get("jitter") {
        None => 0.2,
        Some(toml::Value::Float(f)) if (0.0..=1.0).contains(f) => *f,
        Some(toml::Value::Integer(0)) => 0.0,
        Some(v) => {
            add(
                "jitter",
                format!("expected a fraction from 0 to 1, got {v}"),
            );
            0.2
        }
    };
    let fifo = match t.get("fifo") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(v) => {
            add("fifo", format!("expected true or false, got {v}"));
            false
        }
    };
    if let Some(v) = t.get("channel")
        && !v.is_str()
    {
        add("channel", format!("expected text, got {v}"));
    }
    match kind {
        Some(kind) if p.is_empty() => Ok(ConnectorDef {
            name,
            kind,
            retry_schedule,
            jitter,
            concurrency,
            rate_limit,
            timeout,
            circuit_failures,
            circuit_cooldown,
            disable_after,
            fifo,
        }),
        _ => Err(p),
    }
}

fn name_of(t: &toml::Table) -> Option<&str> {
    t.get("name")
        .and_then(|v| v.as_str())
        .filter(|n| !n.is_empty())
}

/// How problems name a connector table: `connector[0] "erp"` (without the name if it has none).
pub(crate) fn place(t: &toml::Table, at: &str) -> String {
    match name_of(t) {
        Some(name) => format!("{at} \"{name}\""),
        None => at.to_owned(),
    }
}

fn typed<T: for<'de> Deserialize<'de>>(
    rest: &toml::Table,
    add: &mut dyn FnMut(&str, String),
) -> Option<T> {
    match T::deserialize(toml::Value::Table(rest.clone())) {
        Ok(v) => Some(v),
        Err(e) => {
            add("", e.message().trim().to_owned());
            None
        }
    }
}

/// What serde cannot say about a kind's settings.
fn check_kind(k: &Kind, add: &mut dyn FnMut(&str, String)) {
    match k {
        Kind::Webhook(w) => {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                add(
                    "url",
                    format!("expected an http:// or https:// URL, got {:?}", w.url),
                );
            }
            for (key, s) in [
                ("secret", &w.secret),
                ("previous_secret", &w.previous_secret),
            ] {
                if let Some(s) = s
                    && let Err(e) = crate::signature::Secret::parse(s)
                {
                    add(key, e);
                }
            }
            if let Some(u) = &w.previous_secret_until
                && chrono::DateTime::parse_from_rfc3339(u).is_err()
            {
                add(
                    "previous_secret_until",
                    format!("expected an RFC 3339 time such as 2026-12-01T00:00:00Z, got {u:?}"),
                );
            }
        }
        Kind::Smtp(s) => {
            let servers = std::iter::once(("", &s.primary));
            for (at, srv) in servers.chain(s.failover.iter().map(|f| ("failover.", f))) {
                if srv.host.trim().is_empty() {
                    add(&format!("{at}host"), "expected a host name".into());
                }
                if srv.ca_file.is_some() && srv.tls == SmtpTls::None {
                    add(
                        &format!("{at}ca_file"),
                        "is only used with tls = \"starttls\" or \"tls\"".into(),
                    );
                }
                if srv.username.is_some() != srv.password.is_some() {
                    add(
                        at.trim_end_matches('.'),
                        "`username` and `password` go together".into(),
                    );
                }
            }
            if !s.from.contains('@') {
                add(
                    "from",
                    format!(
                        "expected an address such as \"Shop <shop@example.com>\", got {:?}",
                        s.from
                    ),
                );
            }
            for (name, t) in &s.templates {
                for (part, src) in [
                    ("subject", Some(&t.subject)),
                    ("html", t.html.as_ref()),
                    ("text", t.text.as_ref()),
                ] {
                    if let Some(src) = src
                        && let Err(e) = crate::template::check(src)
                    {
                        add(&format!("templates.{name}.{part}"), e);
                    }
                }
                if t.html.is_none() && t.text.is_none() {
                    add(
                        &format!("templates.{name}"),
                        "a template needs `html`, `text` or both".into(),
                    );
                }
            }
        }
        Kind::Sms(s) => {
            match s.preset {
                SmsPreset::Infobip => {
                    if s.url.is_none() || s.api_key.is_none() {
                        add(
                            "",
                            "the infobip preset needs `url` (your account's base URL) and `api_key`"
                                .into(),
                        );
                    }
                }
                SmsPreset::Twilio => {
                    if s.account_sid.is_none() || s.auth_token.is_none() {
                        add(
                            "",
                            "the twilio preset needs `account_sid` and `auth_token`".into(),
                        );
                    }
                }
                SmsPreset::Custom => {
                    if s.url.is_none() || s.body.is_none() {
                        add(
                            "",
                            "the custom preset needs `url` and `body` (a JSON template)".into(),
                        );
                    }
                }
            }
            if let Some(u) = &s.url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                add(
                    "url",
                    format!("expected an http:// or https:// URL, got {u:?}"),
                );
            }
            for (name, src) in s
                .templates
                .iter()
                .map(|(n, s)| (format!("templates.{n}"), s))
                .chain(s.to.iter().map(|t| ("to".to_owned(), t)))
                .chain(s.body.iter().map(|t| ("body".to_owned(), t)))
            {
                if let Err(e) = crate::template::check(src) {
                    add(&name, e);
                }
            }
        }
        Kind::Kafka(k) => {
            if k.brokers.trim().is_empty() {
                add("brokers", "expected host:port[,host:port…]".into());
            }
            if k.topic.trim().is_empty() {
                add("topic", "expected a topic name".into());
            }
        }
        Kind::Log(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(src: &str) -> Vec<toml::Table> {
        #[derive(Deserialize)]
        struct F {
            connector: Vec<toml::Table>,
        }
        toml::from_str::<F>(src)
            .map(|f| f.connector)
            .unwrap_or_default()
    }

    #[test]
    fn defaults_and_overrides() {
        let defs = parse_all(&tables(
            r#"
            [[connector]]
            name = "erp"
            type = "webhook"
            url = "http://127.0.0.1:9000/h"
            allow_private_network = true
            retry_schedule = ["0s", "1s", "2s"]
            rate_limit = 50
            fifo = true

            [[connector]]
            name = "dev"
            type = "log"
            "#,
        ))
        .expect("valid");
        assert_eq!(
            defs[0].retry_schedule,
            vec![
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2)
            ]
        );
        assert_eq!(defs[0].rate_limit, Some(50.0));
        assert!(defs[0].fifo);
        assert_eq!(defs[1].retry_schedule, DEFAULT_SCHEDULE.to_vec());
        assert_eq!(defs[1].concurrency, 32);
        assert_eq!(defs[1].disable_after, Some(Duration::from_secs(432_000)));
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let err = parse_all(&tables(
            r#"
            [[connector]]
            name = "a"
            type = "webhook"
            url = "ftp://x"
            retry_schedule = ["0s", "soon"]
            concurrency = 0
            colour = "blue"

            [[connector]]
            name = "b"
            type = "carrier-pigeon"
            "#,
        ))
        .expect_err("invalid");
        let text: Vec<String> = err.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(
            all.contains("connector[0] \"a\": unknown field `colour`"),
            "{all}"
        );
        assert!(all.contains("retry_schedule[1]"), "{all}");
        assert!(all.contains("concurrency"), "{all}");
        assert!(all.contains("connector[1] \"b\".type"), "{all}");
    }
}
