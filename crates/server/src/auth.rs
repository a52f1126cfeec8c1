//! API keys with scopes (`ingest`, `commands`, `read`, `admin`), stored hashed in `<data>/keys.json`.
//!
//! A key is `sl_` + 40 random base62 characters (238 bits), so a plain SHA-256 is the right
//! hash: there is nothing to brute-force that a slow hash would protect. The server keeps the
//! hashes in memory and reloads the file when it changes, so `storeline keys create|revoke`
//! works against a running server.
//!
//! Every authorized request is also charged to its key's rate limit (`[server.rate_limit]`, see
//! `rate_limit.rs`) here, where every endpoint passes, whether its key came in a header or in a
//! Segment body's `writeKey`. A request without a valid key is charged to no one: it gets 401.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use storeline_event::ids::KeyId;

use crate::config::{RateLimit, RateLimits};
use crate::error::ApiError;
use crate::rate_limit::{self, KeyBuckets};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send events: the key storefronts embed (public).
    Ingest,
    /// Read events, views, triggers (secrets redacted), deliveries.
    Read,
    /// Carry out commands (place, cancel, refund orders, adjust stock, consent): a shop's
    /// backend, never a storefront, since the ingest key is public.
    Commands,
    /// Everything.
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Result<Scope, String> {
        match s {
            "ingest" => Ok(Scope::Ingest),
            "read" => Ok(Scope::Read),
            "commands" => Ok(Scope::Commands),
            "admin" => Ok(Scope::Admin),
            _ => Err(format!(
                "unknown scope '{s}': use ingest, read, commands or admin"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Commands => "commands",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// The first characters of the key, to recognise it in listings.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    /// `admin` grants every scope.
    pub fn allows(&self, scope: Scope) -> bool {
        self.revoked_at.is_none()
            && (self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<KeyRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the key file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("no key matches '{0}' (give the key id, e.g. key_01…, or its prefix)")]
    NotFound(String),
}

/// SHA-256 of the key in lower-case hex: what `keys.json` stores. On every request's path, so
/// the hex is written into one buffer rather than formatted byte by byte.
fn hash(key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(digest.len() * 2);
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

fn new_secret() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let body: String = (0..40)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("sl_{body}")
}

fn read_file(path: &Path) -> Result<KeyFile, KeyError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| KeyError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
        Err(e) => Err(KeyError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn write_file(path: &Path, file: &KeyFile) -> Result<(), KeyError> {
    let io = |e| KeyError::Io {
        path: path.to_owned(),
        source: e,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(file).unwrap_or_default();
    std::fs::write(&tmp, body).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(())
}

/// Creates a key with these scopes in the key file; returns its record and the secret, which
/// is not stored anywhere and cannot be shown again.
pub fn create_key(
    path: &Path,
    name: &str,
    scopes: &[Scope],
) -> Result<(KeyRecord, String), KeyError> {
    let mut file = read_file(path)?;
    let secret = new_secret();
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let record = KeyRecord {
        id: KeyId::generate(),
        name: name.to_owned(),
        scopes,
        hash: hash(&secret),
        prefix: secret[..8].to_owned(),
        created_at: Utc::now(),
        revoked_at: None,
    };
    file.keys.push(record.clone());
    write_file(path, &file)?;
    Ok((record, secret))
}

pub fn list_keys(path: &Path) -> Result<Vec<KeyRecord>, KeyError> {
    Ok(read_file(path)?.keys)
}

/// Revokes the key with this id, unique prefix, or the key itself; returns it.
pub fn revoke_key(path: &Path, id_or_prefix: &str) -> Result<KeyRecord, KeyError> {
    let mut file = read_file(path)?;
    let matches: Vec<usize> = file
        .keys
        .iter()
        .enumerate()
        .filter(|(_, k)| {
            k.id.as_str() == id_or_prefix
                || k.hash == hash(id_or_prefix)
                || (id_or_prefix.len() >= 6 && k.prefix.starts_with(id_or_prefix))
        })
        .map(|(i, _)| i)
        .collect();
    let [i] = matches[..] else {
        return Err(KeyError::NotFound(id_or_prefix.to_owned()));
    };
    if file.keys[i].revoked_at.is_none() {
        file.keys[i].revoked_at = Some(Utc::now());
    }
    let record = file.keys[i].clone();
    write_file(path, &file)?;
    Ok(record)
}

/// What identifies one version of the key file: modification time, size, inode.
type FileStamp = (SystemTime, u64, u64);

/// A key as the server holds it: its record and its rate-limit buckets.
#[derive(Debug)]
struct Known {
    record: KeyRecord,
    /// Carried over by key id when the file is reloaded, so a reload does not refill them.
    buckets: Arc<KeyBuckets>,
}

/// The server's view of the key file, reloaded when the file changes.
#[derive(Debug)]
pub struct KeyStore {
    path: PathBuf,
    /// The file's identity when last read (mtime, size, inode: every write is a rename, so the
    /// inode changes even when two writes land in one mtime tick), and the keys by hash.
    state: RwLock<(Option<FileStamp>, HashMap<String, Known>)>,
    /// Request-rate limits; all off unless [`KeyStore::with_rate_limits`] sets them.
    limits: RateLimits,
}

impl KeyStore {
    /// Loads the key file. If there is none, creates an admin key and returns its secret so the
    /// caller can print it once.
    pub fn open(path: PathBuf) -> Result<(KeyStore, Option<String>), KeyError> {
        let mut bootstrap = None;
        if !path.exists() {
            let (_, secret) = create_key(&path, "bootstrap admin", &[Scope::Admin])?;
            bootstrap = Some(secret);
        }
        let store = KeyStore {
            path,
            state: RwLock::new((None, HashMap::new())),
            limits: RateLimits {
                ingest: RateLimit::OFF,
                read: RateLimit::OFF,
                admin: RateLimit::OFF,
            },
        };
        store.reload()?;
        Ok((store, bootstrap))
    }

    /// Charges every authorized request to its key's bucket under these limits.
    pub fn with_rate_limits(mut self, limits: RateLimits) -> KeyStore {
        self.limits = limits;
        self
    }

    /// Re-reads the key file if it changed (another mtime, size or inode).
    pub fn reload(&self) -> Result<(), KeyError> {
        use std::os::unix::fs::MetadataExt;
        let mtime = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())));
        if mtime.is_some() && self.state.read().0 == mtime {
            return Ok(());
        }
        let file = read_file(&self.path)?;
        let mut state = self.state.write();
        // One set of buckets per key in the file: memory stays bounded by the keys.
        let mut buckets: HashMap<KeyId, Arc<KeyBuckets>> = state
            .1
            .values()
            .map(|k| (k.record.id.clone(), Arc::clone(&k.buckets)))
            .collect();
        let map = file
            .keys
            .into_iter()
            .map(|record| {
                let buckets = buckets.remove(&record.id).unwrap_or_default();
                (record.hash.clone(), Known { record, buckets })
            })
            .collect();
        *state = (mtime, map);
        Ok(())
    }

    /// Checks the request's key against the scope. The key comes from `Authorization: Bearer`,
    /// or, for Segment compatibility, as the Basic-auth user name.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        scope: Scope,
        what: &str,
    ) -> Result<KeyRecord, ApiError> {
        self.authorize_secret(key_from_headers(headers).as_deref(), scope, what)
    }

    /// Whether the request carries a key in its headers.
    pub fn has_header_key(headers: &HeaderMap) -> bool {
        key_from_headers(headers).is_some()
    }

    /// Checks a key given any way (headers, or a Segment body's `writeKey`).
    pub fn authorize_secret(
        &self,
        secret: Option<&str>,
        scope: Scope,
        what: &str,
    ) -> Result<KeyRecord, ApiError> {
        let Some(secret) = secret else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing API key: send `Authorization: Bearer <key>` (Segment clients: the key as the write key)",
            ));
        };
        let h = hash(secret);
        let lookup = || {
            let state = self.state.read();
            let known = state.1.get(&h)?;
            Some((known.record.clone(), Arc::clone(&known.buckets)))
        };
        let found = match lookup() {
            Some(k) => Some(k),
            None => {
                let _ = self.reload();
                lookup()
            }
        };
        match found {
            Some((k, _)) if k.revoked_at.is_some() => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("API key {} was revoked", k.id),
            )),
            Some((k, buckets)) if k.allows(scope) => {
                self.charge(&k, &buckets, scope)?;
                Ok(k)
            }
            Some((k, _)) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this key lacks the '{}' scope needed for {what}",
                    scope.as_str()
                ),
            )
            .with_details(json!({
                "required_scope": scope.as_str(),
                "key_id": k.id,
                "key_scopes": k.scopes,
            }))),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown API key",
            )),
        }
    }
}

impl KeyStore {
    /// Takes a token from the key's bucket for this request, or answers 429 with how long to
    /// wait. An `admin` key is held to the admin limit whatever it does; another key to the
    /// limit of the scope the endpoint needs.
    fn charge(&self, key: &KeyRecord, buckets: &KeyBuckets, scope: Scope) -> Result<(), ApiError> {
        let kind = if key.scopes.contains(&Scope::Admin) {
            Scope::Admin
        } else {
            scope
        };
        let (limit, bucket) = match kind {
            // Commands are writes: charged like ingest.
            Scope::Ingest | Scope::Commands => (self.limits.ingest, &buckets.ingest),
            Scope::Read => (self.limits.read, &buckets.read),
            Scope::Admin => (self.limits.admin, &buckets.admin),
        };
        if !limit.is_on() {
            return Ok(());
        }
        let Err(wait) = bucket.take(rate_limit::now_nanos(), limit) else {
            return Ok(());
        };
        let secs = rate_limit::retry_after_secs(wait);
        metrics::counter!("storeline_http_rate_limited_total", "scope" => kind.as_str())
            .increment(1);
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "API key {} is over its '{}' rate limit ({} requests per second, bursts of {}); \
                 retry after {secs} s",
                key.id,
                kind.as_str(),
                limit.per_second,
                limit.burst
            ),
        )
        .with_details(json!({
            "key_id": key.id,
            "limit": kind.as_str(),
            "per_second": limit.per_second,
            "burst": limit.burst,
            "retry_after_s": secs,
        }))
        .with_retry_after(secs))
    }
}

fn key_from_headers(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    {
        return Some(token.trim().to_owned());
    }
    let basic = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next()?.to_owned();
    (!user.is_empty()).then_some(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// keys.json files written before stay readable: the hash is plain SHA-256 hex.
    #[test]
    fn the_key_hash_is_sha256_in_lower_case_hex() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_are_stored_hashed_and_checked_by_scope() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (store, admin) = KeyStore::open(path.clone()).unwrap();
        let admin = admin.expect("a fresh key file bootstraps an admin key");
        let (_, ingest) = create_key(&path, "web", &[Scope::Ingest]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&admin) && !text.contains(&ingest),
            "secrets are never stored"
        );

        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {ingest}").parse().unwrap(),
        );
        store.authorize(&h, Scope::Ingest, "x").unwrap();
        let e = store
            .authorize(&h, Scope::Read, "GET /v1/events")
            .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.message.contains("'read'"));

        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{admin}:"));
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        store.authorize(&h, Scope::Read, "x").unwrap();

        let listed = list_keys(&path).unwrap();
        let web = listed.iter().find(|k| k.name == "web").unwrap();
        revoke_key(&path, web.id.as_str()).unwrap();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {ingest}").parse().unwrap(),
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Force the reload even on filesystems with coarse mtimes.
        store.state.write().0 = None;
        store.reload().unwrap();
        assert_eq!(
            store.authorize(&h, Scope::Ingest, "x").unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            store
                .authorize(&HeaderMap::new(), Scope::Ingest, "x")
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn authorized_requests_are_charged_to_their_own_keys_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (store, admin) = KeyStore::open(path.clone()).unwrap();
        // A burst of 50, then one a second: a refill is small next to the burst, so the
        // counts below hold on a slow machine too.
        let store = store.with_rate_limits(RateLimits {
            ingest: RateLimit {
                per_second: 1,
                burst: 50,
            },
            read: RateLimit::OFF,
            admin: RateLimit::OFF,
        });
        let admin = admin.unwrap();
        let (_, web) = create_key(&path, "web", &[Scope::Ingest]).unwrap();
        let (_, app) = create_key(&path, "app", &[Scope::Ingest, Scope::Read]).unwrap();
        // How many requests pass before the first 429 (whose Retry-After is checked).
        let allowed = |key: &str, scope: Scope| {
            for n in 0..1000 {
                if let Err(e) = store.authorize_secret(Some(key), scope, "x") {
                    assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS, "{e:?}");
                    assert_eq!(e.code, "rate_limited");
                    assert_eq!(e.retry_after, Some(1));
                    return n;
                }
            }
            1000
        };

        // A wrong scope and an unknown key are refused without charging anyone.
        for _ in 0..100 {
            let wrong = store.authorize_secret(Some(&web), Scope::Read, "x");
            assert_eq!(wrong.unwrap_err().status, StatusCode::FORBIDDEN);
            let unknown = store.authorize_secret(Some("sl_nope"), Scope::Ingest, "x");
            assert_eq!(unknown.unwrap_err().status, StatusCode::UNAUTHORIZED);
        }
        let n = allowed(&web, Scope::Ingest);
        assert!((50..75).contains(&n), "{n}");

        // Each key has its own bucket; the read limit (off) is not the ingest one; admin is off.
        let n = allowed(&app, Scope::Ingest);
        assert!((50..75).contains(&n), "{n}");
        assert_eq!(allowed(&app, Scope::Read), 1000);
        assert_eq!(allowed(&admin, Scope::Ingest), 1000);

        // A reload of the key file (a key created elsewhere) does not refill the buckets.
        create_key(&path, "other", &[Scope::Read]).unwrap();
        store.state.write().0 = None;
        store.reload().unwrap();
        let n = allowed(&web, Scope::Ingest);
        assert!(n < 25, "{n}");
    }
}
