//! Connector secrets in the server: the data directory's sealing key (`<data>/secrets.key`),
//! sealing a trigger file before it is stored, and what a key that is not admin reads of stored
//! trigger files (`GET /v1/triggers`, and the `data.source` of `storeline.triggers` records in
//! `GET /v1/events` and `GET /v1/stream`, old plain-text ones included).
//!
//! Which values are secret, how they are sealed, resolved and redacted is
//! [`storeline_connector::secrets`]; this module adds the file system and the records.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use storeline_connector::secrets::SealKey;

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "secrets.key";

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// The data directory's key; the error says where it looked.
pub fn read_key(data_dir: &Path) -> Result<SealKey, String> {
    let path = key_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => SealKey::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "this enc:v1: value cannot be opened: there is no key at {} (a value opens only with \
             the key of the data directory that sealed it)",
            path.display()
        )),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// How [`storeline_connector::secrets::reveal`] gets the key: from `data_dir`, or, without
/// one (`storeline triggers check` given no `--data`), an error saying what to add.
pub fn key_reader(data_dir: Option<&Path>) -> impl Fn() -> Result<SealKey, String> + '_ {
    move || match data_dir {
        Some(d) => read_key(d),
        None => Err(
            "this enc:v1: value opens only with its data directory's key: give --data \
                     (or --config) to check it"
                .into(),
        ),
    }
}

/// The key, created on first need: 32 random bytes, base64, mode 0600. It is written aside and
/// then hard-linked into place, so no reader sees half a key and, of two creators, the first
/// link wins and the other reads it.
fn read_or_create_key(data_dir: &Path) -> Result<SealKey, String> {
    let path = key_path(data_dir);
    if path.exists() {
        return read_key(data_dir);
    }
    let (key, text) = SealKey::generate();
    let tmp = data_dir.join(format!(
        "{KEY_FILE}.{}.tmp",
        ulid::Ulid::new().to_string().to_lowercase()
    ));
    let fail = |e: std::io::Error| format!("cannot create the key file {}: {e}", path.display());
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            std::fs::File::open(data_dir)
                .and_then(|d| d.sync_all())
                .map_err(fail)?;
            tracing::info!(path = %path.display(), "created the key that seals connector secrets; back it up with the data directory");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(data_dir),
        Err(e) => Err(fail(e)),
    }
}

/// The trigger file as it is stored: its connectors' plain-text secrets sealed with the data
/// directory's key (created if this is the first). The error is the server's (no key), not the
/// file's.
pub(crate) fn seal(data_dir: &Path, source: &str) -> Result<String, String> {
    storeline_connector::secrets::seal(source, &|| read_or_create_key(data_dir))
}

/// The text a server on `data_dir` would store for `source` (its plain-text secrets sealed with
/// that directory's key), without creating a key: `None` when a key is needed and there is none.
pub fn stored_text(source: &str, data_dir: Option<&Path>) -> Option<String> {
    storeline_connector::secrets::seal(source, &key_reader(data_dir)).ok()
}

/// A trigger file as a key that is not admin sees it.
pub(crate) fn redact_source(source: &str) -> String {
    storeline_connector::secrets::redact(source)
}

/// The type of the records that install a trigger file.
const TRIGGERS: &str = storeline_engine::triggers::TRIGGERS;

static TRIGGERS_FINDER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(TRIGGERS.as_bytes()));

/// A stored record as a key that is not admin reads it: a `storeline.triggers` record with its
/// `data.source` redacted (every other byte as stored), any other record as it is. Records of
/// other types pay one substring search.
pub(crate) fn read_view(stored: &[u8]) -> Cow<'_, [u8]> {
    if TRIGGERS_FINDER.find(stored).is_none() {
        return Cow::Borrowed(stored);
    }
    match redact_record(stored) {
        Ok(Some(out)) => Cow::Owned(out),
        Ok(None) => Cow::Borrowed(stored),
        // A record of this type that does not parse shows nothing of its data.
        Err(()) => Cow::Owned(format!(r#"{{"type":"{TRIGGERS}","data":null}}"#).into_bytes()),
    }
}

/// The record with `data.source` redacted; `None` if it is not a `storeline.triggers` record.
fn redact_record(stored: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    let Ok(Fields(mut fields)) = serde_json::from_slice::<Fields<'_>>(stored) else {
        // Not an object: not an event of any type.
        return Ok(None);
    };
    let ty = fields
        .iter()
        .find(|(k, _)| k == "type")
        .and_then(|(_, v)| serde_json::from_str::<Cow<'_, str>>(v.get()).ok());
    if ty.as_deref() != Some(TRIGGERS) {
        return Ok(None);
    }
    for (k, v) in &mut fields {
        if k != "data" {
            continue;
        }
        let Fields(mut data) = serde_json::from_str::<Fields<'_>>(v.get()).map_err(|_| ())?;
        for (dk, dv) in &mut data {
            if dk == "source" {
                let source: String = serde_json::from_str(dv.get()).map_err(|_| ())?;
                let redacted = serde_json::to_string(&redact_source(&source)).map_err(|_| ())?;
                *dv = Cow::Owned(RawValue::from_string(redacted).map_err(|_| ())?);
            }
        }
        *v = Cow::Owned(RawValue::from_string(Fields(data).to_json()).map_err(|_| ())?);
    }
    Ok(Some(Fields(fields).to_json().into_bytes()))
}

/// A JSON object's members in their stored order, values untouched.
struct Fields<'a>(Vec<(String, Cow<'a, RawValue>)>);

impl Fields<'_> {
    fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        out
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Fields<'a>, M::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, &'de RawValue>()? {
                    out.push((k, Cow::Borrowed(v)));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_source_of_a_triggers_record_changes() {
        let source = "[[connector]]\nname = \"erp\"\ntype = \"webhook\"\nurl = \"https://h.example/\"\nsecret = \"whsec_plain\"\n";
        let stored = format!(
            r#"{{"specversion":"1.0","id":"trigs_1","source":"storeline/engine","type":"storeline.triggers","time":"2026-01-01T00:00:00Z","data":{{"version":"abc","source":{}}}}}"#,
            serde_json::to_string(source).unwrap()
        );
        let view = read_view(stored.as_bytes());
        let text = std::str::from_utf8(&view).unwrap();
        assert!(!text.contains("whsec_plain"), "{text}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["data"]["version"], "abc");
        assert!(
            v["data"]["source"].as_str().unwrap().contains("(redacted)"),
            "{text}"
        );
        // Every other byte is as stored, in the stored order.
        let prefix = r#"{"specversion":"1.0","id":"trigs_1","source":"storeline/engine","type":"storeline.triggers","time":"2026-01-01T00:00:00Z","data":{"version":"abc","source":"#;
        assert!(text.starts_with(prefix), "{text}");

        // Other types, even ones that mention the type, are untouched (borrowed, not copied).
        let other = br#"{"type":"order.placed","data":{"note":"storeline.triggers whsec_x"}}"#;
        assert!(matches!(read_view(other), Cow::Borrowed(_)));
        let plain = br#"{"type":"order.placed","data":{}}"#;
        assert!(matches!(read_view(plain), Cow::Borrowed(_)));
        // A triggers record whose data does not parse shows no data at all.
        let odd = br#"{"type":"storeline.triggers","data":{"source":42}}"#;
        assert_eq!(
            &*read_view(odd),
            br#"{"type":"storeline.triggers","data":null}"#
        );
    }

    #[test]
    fn the_key_is_created_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_key(dir.path())
                .unwrap_err()
                .contains("there is no key")
        );
        let src = "[[connector]]\nname = \"m\"\ntype = \"smtp\"\npassword = \"pw\"\n";
        let sealed = seal(dir.path(), src).unwrap();
        assert!(!sealed.contains("\"pw\""), "{sealed}");
        let meta = std::fs::metadata(key_path(dir.path())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // The same key is read back: the same text again, and nothing left aside.
        assert_eq!(seal(dir.path(), src).unwrap(), sealed);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
