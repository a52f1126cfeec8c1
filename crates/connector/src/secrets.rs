//! Connector secrets: which settings are secret, the places a secret may live instead of the
//! trigger file (`{ env = "NAME" }`, `{ file = "/path" }`), resolving them when connectors are
//! built ([`reveal`]), sealing plain-text secrets before a file is stored ([`seal`], `enc:v1:…`),
//! and the read view that hides them ([`redact`]).
//!
//! A trigger file is stored in the log and in the state store, and read back by replay,
//! backtest and `GET /v1/triggers`; none of them needs a secret. So the stored text holds
//! references and sealed values, and only the delivery worker sees a secret, when it builds the
//! connector.
//!
//! Secret-bearing values, at any depth of a `[[connector]]` table: keys ending in `password`,
//! `secret` or `token` (`secret`, `previous_secret`, `password`, `failover.password`,
//! `auth_token`, Kafka's `sasl.password`, `ssl.key.password`), `api_key`, Kafka's `ssl.key.pem`
//! and `sasl.oauthbearer.config`, and every value of a `headers` table. A `url` takes
//! references too (a URL can carry a token) but is not sealed; read views show only its scheme
//! and host.

mod seal;

use std::path::Path;

pub use seal::{ENC_PREFIX, SealKey, seal};

use crate::config::Problem;

/// What a key's value is to this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sealed when stored, resolved when built, hidden from read keys.
    Secret,
    /// Resolved when built (references only); read keys see its scheme and host.
    Url,
    Other,
}

/// The role of `key`; `in_headers`: it sits directly in a `headers` table.
pub fn role(key: &str, in_headers: bool) -> Role {
    if in_headers || is_secret_key(key) {
        Role::Secret
    } else if key == "url" {
        Role::Url
    } else {
        Role::Other
    }
}

/// Whether a setting named `key` holds a secret (see the module docs for the list).
pub fn is_secret_key(key: &str) -> bool {
    const NAMES: [&str; 3] = ["api_key", "ssl.key.pem", "sasl.oauthbearer.config"];
    let k = key.to_ascii_lowercase();
    k.ends_with("password") || k.ends_with("secret") || k.ends_with("token") || NAMES.contains(&&*k)
}

/// Where a secret lives instead of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// An environment variable of the server process.
    Env(String),
    /// A file the server reads (a Docker or Kubernetes secret); one trailing newline is dropped.
    File(String),
}

/// The reference a table is, or why it is none. `None`: the table has neither `env` nor `file`.
pub fn reference(t: &toml::Table) -> Option<Result<Reference, String>> {
    let (kind, v) = t.iter().find(|(k, _)| *k == "env" || *k == "file")?;
    if t.len() != 1 {
        return Some(Err(
            "a reference is { env = \"NAME\" } or { file = \"/path\" }, with nothing else".into(),
        ));
    }
    Some(match (kind.as_str(), v.as_str()) {
        (_, None | Some("")) => Err(format!("`{kind}` must be a non-empty string")),
        ("env", Some(name)) => Ok(Reference::Env(name.to_owned())),
        (_, Some(path)) => Ok(Reference::File(path.to_owned())),
    })
}

/// The largest secret file read.
const MAX_FILE: u64 = 64 * 1024;

/// Where references are looked up: [`Process`], or a test's own.
pub trait Lookup {
    fn env(&self, name: &str) -> Result<String, String>;
    fn file(&self, path: &Path) -> Result<String, String>;
}

/// The process environment and file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct Process;

impl Lookup for Process {
    fn env(&self, name: &str) -> Result<String, String> {
        match std::env::var(name) {
            Ok(v) if v.is_empty() => Err(format!("the environment variable {name} is empty")),
            Ok(v) => Ok(v),
            Err(std::env::VarError::NotPresent) => {
                Err(format!("the environment variable {name} is not set"))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("the environment variable {name} is not UTF-8"))
            }
        }
    }

    fn file(&self, path: &Path) -> Result<String, String> {
        let shown = path.display();
        let len = std::fs::metadata(path)
            .map_err(|e| format!("cannot read {shown}: {e}"))?
            .len();
        if len > MAX_FILE {
            return Err(format!(
                "{shown} holds {len} bytes; a secret file holds at most {MAX_FILE}"
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        // `echo secret > file` leaves a newline that is not part of the secret.
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if text.is_empty() {
            return Err(format!("{shown} is empty"));
        }
        Ok(text.to_owned())
    }
}

/// A connector table with every reference resolved and every `enc:v1:` value opened, ready for
/// [`crate::config::parse`]. Plain strings pass through (files stored before sealing existed).
/// `at` names the table in problems (`connector[0]`); `key` gives the data directory's key and
/// is only called when a sealed value is met. No problem text holds a secret.
pub fn reveal(
    table: &toml::Table,
    at: &str,
    key: &dyn Fn() -> Result<SealKey, String>,
    lookup: &dyn Lookup,
) -> Result<toml::Table, Vec<Problem>> {
    let mut ctx = Reveal {
        key,
        cached: None,
        lookup,
        problems: Vec::new(),
    };
    let mut out = table.clone();
    ctx.walk(&mut out, &crate::config::place(table, at), false);
    if ctx.problems.is_empty() {
        Ok(out)
    } else {
        Err(ctx.problems)
    }
}

/// [`reveal`] of every connector table (named `connector[i]`); every problem is reported.
pub fn reveal_all(
    tables: &[toml::Table],
    key: &dyn Fn() -> Result<SealKey, String>,
    lookup: &dyn Lookup,
) -> Result<Vec<toml::Table>, Vec<Problem>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        match reveal(t, &format!("connector[{i}]"), key, lookup) {
            Ok(t) => out.push(t),
            Err(mut p) => problems.append(&mut p),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

struct Reveal<'a> {
    key: &'a dyn Fn() -> Result<SealKey, String>,
    /// The key is read once per call, and only if a sealed value needs it.
    cached: Option<Result<SealKey, String>>,
    lookup: &'a dyn Lookup,
    problems: Vec<Problem>,
}

impl Reveal<'_> {
    fn walk(&mut self, t: &mut toml::Table, at: &str, in_headers: bool) {
        for (k, v) in t.iter_mut() {
            let here = format!("{at}.{k}");
            let role = role(k, in_headers);
            match (role, &mut *v) {
                (Role::Other, toml::Value::Table(sub)) => self.walk(sub, &here, k == "headers"),
                (Role::Other, _) => {}
                (_, toml::Value::String(s)) if s.starts_with(ENC_PREFIX) => {
                    let key = self.cached.get_or_insert_with(|| (self.key)());
                    match key.as_ref().map_err(Clone::clone).and_then(|k| k.open(s)) {
                        Ok(plain) => *s = plain,
                        Err(e) => self.problem(&here, e),
                    }
                }
                (_, toml::Value::Table(r)) => match reference(r) {
                    Some(Ok(r)) => {
                        let found = match &r {
                            Reference::Env(name) => self.lookup.env(name),
                            Reference::File(path) => self.lookup.file(Path::new(path)),
                        };
                        match found {
                            Ok(secret) => *v = toml::Value::String(secret),
                            Err(e) => self.problem(&here, e),
                        }
                    }
                    Some(Err(e)) => self.problem(&here, e),
                    // A `url` that is a table: the connector's own check says what is wrong.
                    None if role == Role::Url => {}
                    None => self.problem(
                        &here,
                        "expected text, { env = \"NAME\" } or { file = \"/path\" }".into(),
                    ),
                },
                _ => {}
            }
        }
    }

    fn problem(&mut self, at: &str, message: String) {
        self.problems.push(Problem {
            at: at.to_owned(),
            message,
        });
    }
}

/// What a key that is not admin sees of a trigger file: every secret-bearing value anywhere in
/// the file (not only in connectors) is `"(redacted)"`, references stay (they name a place, not
/// a secret), and each `url` shows only its scheme and host. The text is re-serialised: comments
/// are dropped (they may quote a secret) and so is the layout. A file that does not parse gives
/// an empty text.
pub fn redact(source: &str) -> String {
    match toml::from_str::<toml::Table>(source) {
        Ok(mut t) => {
            redact_table(&mut t, false);
            toml::to_string(&t).unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}

const REDACTED: &str = "(redacted)";

fn redact_table(t: &mut toml::Table, in_headers: bool) {
    for (k, v) in t.iter_mut() {
        match role(k, in_headers) {
            Role::Secret => hide(v),
            Role::Url => {
                if let toml::Value::String(s) = v {
                    *s = redact_url(s);
                }
            }
            Role::Other => match v {
                toml::Value::Table(sub) => redact_table(sub, k == "headers"),
                toml::Value::Array(a) => {
                    for x in a {
                        if let toml::Value::Table(sub) = x {
                            redact_table(sub, false);
                        }
                    }
                }
                _ => {}
            },
        }
    }
}

fn hide(v: &mut toml::Value) {
    match v {
        toml::Value::Table(r) if matches!(reference(r), Some(Ok(_))) => {}
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| hide(v)),
        toml::Value::Array(a) => a.iter_mut().for_each(hide),
        other => *other = toml::Value::String(REDACTED.into()),
    }
}

/// A URL as a read key may see it: the scheme and host (and port); user and password, path
/// and query are hidden when present, since tokens travel in any of them (chat webhooks keep
/// theirs in the path).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let tail = &rest[end..];
    match tail {
        "" | "/" if host.len() == authority.len() => url.to_owned(),
        "" | "/" => format!("{scheme}://{host}{tail}"),
        _ => format!("{scheme}://{host}/{REDACTED}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Fake(HashMap<&'static str, &'static str>);

    impl Lookup for Fake {
        fn env(&self, name: &str) -> Result<String, String> {
            self.0
                .get(name)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| format!("the environment variable {name} is not set"))
        }
        fn file(&self, path: &Path) -> Result<String, String> {
            Process.file(path)
        }
    }

    fn table(src: &str) -> toml::Table {
        toml::from_str(src).unwrap()
    }

    fn no_key() -> Result<SealKey, String> {
        Err("no key here".into())
    }

    #[test]
    fn the_secret_keys_are_the_documented_ones() {
        for k in [
            "secret",
            "previous_secret",
            "password",
            "api_key",
            "auth_token",
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
        ] {
            assert_eq!(role(k, false), Role::Secret, "{k}");
        }
        for k in ["url", "username", "previous_secret_until", "host", "name"] {
            assert_ne!(role(k, false), Role::Secret, "{k}");
        }
        assert_eq!(role("x-tenant", true), Role::Secret);
    }

    #[test]
    fn plain_strings_pass_through_and_references_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("smtp");
        std::fs::write(&file, "hunter2\n").unwrap();
        let t = table(&format!(
            r#"
            name = "erp"
            type = "webhook"
            url = {{ env = "ERP_URL" }}
            secret = "whsec_plain"
            headers = {{ Authorization = {{ env = "ERP_TOKEN" }}, "x-tenant" = "shop-1" }}
            failover = {{ password = {{ file = "{}" }} }}
            properties = {{ "sasl.password" = {{ env = "ERP_TOKEN" }}, "compression.type" = "lz4" }}
            "#,
            file.display()
        ));
        let env = Fake(HashMap::from([
            ("ERP_URL", "https://erp.example.com/h?token=t"),
            ("ERP_TOKEN", "Bearer abc"),
        ]));
        let out = reveal(&t, "connector[0]", &no_key, &env).unwrap();
        assert_eq!(
            out["url"].as_str(),
            Some("https://erp.example.com/h?token=t")
        );
        assert_eq!(out["secret"].as_str(), Some("whsec_plain"));
        assert_eq!(out["headers"]["Authorization"].as_str(), Some("Bearer abc"));
        assert_eq!(out["headers"]["x-tenant"].as_str(), Some("shop-1"));
        assert_eq!(out["failover"]["password"].as_str(), Some("hunter2"));
        assert_eq!(
            out["properties"]["sasl.password"].as_str(),
            Some("Bearer abc")
        );
        assert_eq!(out["properties"]["compression.type"].as_str(), Some("lz4"));
    }

    #[test]
    fn what_cannot_be_resolved_is_named_by_its_key() {
        let t = table(
            r#"
            name = "erp"
            secret = { env = "MISSING_SECRET" }
            password = { file = "/nonexistent/storeline-test" }
            api_key = { env = "A", file = "/b" }
            auth_token = { value = "x" }
            headers = { Authorization = "enc:v1:AAAA" }
            "#,
        );
        let problems = reveal(&t, "connector[3]", &no_key, &Fake(HashMap::new())).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert_eq!(problems.len(), 5, "{all}");
        assert!(
            all.contains(
                "connector[3] \"erp\".secret: the environment variable MISSING_SECRET is not set"
            ),
            "{all}"
        );
        assert!(
            all.contains("\"erp\".password: cannot read /nonexistent/storeline-test"),
            "{all}"
        );
        assert!(all.contains("\"erp\".api_key: a reference is"), "{all}");
        assert!(all.contains("\"erp\".auth_token: expected text"), "{all}");
        assert!(
            all.contains("\"erp\".headers.Authorization: no key here"),
            "{all}"
        );
    }

    #[test]
    fn the_read_view_hides_secrets_everywhere_and_keeps_references() {
        let src = r#"
            # the old secret was whsec_commented
            [[connector]]
            name = "erp"
            type = "webhook"
            url = "https://user:pw@erp.example.com/hooks/T0/B0/XYZ?token=q"
            secret = "whsec_live"
            previous_secret = { env = "OLD" }
            headers = { Authorization = "Bearer tok", "x-tenant" = "shop-1" }

            [[connector]]
            name = "mail"
            type = "smtp"
            password = "smtp-pass"
            failover = { host = "b", password = "fail-pass" }

            [[connector]]
            name = "k"
            type = "kafka"
            properties = { "sasl.password" = "kafka-pass", "compression.type" = "lz4" }
            url = "https://plain.example.com"
        "#;
        let out = redact(src);
        for secret in [
            "whsec_commented",
            "whsec_live",
            "user",
            "pw@",
            "XYZ",
            "token=q",
            "Bearer tok",
            "shop-1",
            "smtp-pass",
            "fail-pass",
            "kafka-pass",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        let v = table(&out);
        let c = v["connector"].as_array().unwrap();
        assert_eq!(c[0]["secret"].as_str(), Some("(redacted)"));
        assert_eq!(c[0]["previous_secret"]["env"].as_str(), Some("OLD"));
        assert_eq!(
            c[0]["url"].as_str(),
            Some("https://erp.example.com/(redacted)")
        );
        assert_eq!(c[2]["url"].as_str(), Some("https://plain.example.com"));
        assert_eq!(c[2]["properties"]["compression.type"].as_str(), Some("lz4"));
        assert_eq!(redact("not [ toml"), "");
    }

    #[test]
    fn urls_keep_scheme_and_host() {
        assert_eq!(redact_url("https://h.example/"), "https://h.example/");
        assert_eq!(redact_url("https://u:p@h.example"), "https://h.example");
        assert_eq!(redact_url("http://h:8080/x?y"), "http://h:8080/(redacted)");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
