//! Sealing secrets at rest: a plain-text secret of a trigger file becomes `enc:v1:<base64url>`
//! (AES-256-GCM-SIV, RFC 8452) before the file is stored, under a 256-bit key of the data
//! directory; only [`super::reveal`] opens it, when the connectors are built.
//!
//! Sealing is deterministic: the nonce is an HMAC of the value's place (`erp.secret`) and of
//! the plain text, under a key of its own. The same file sealed twice is the same text, so its
//! version (a hash of the stored text) stays the same across restarts and the configured file
//! is not installed again. What that reveals (that two installs hold the same secret at the
//! same place) is what the unchanged version reveals anyway; GCM-SIV stays safe when a nonce
//! repeats with the same message, which is exactly this case.
//!
//! ```text
//! enc:v1:base64url( nonce (12) ‖ ciphertext ‖ tag (16) )     aad = "storeline enc:v1"
//! aead key  = HMAC-SHA256(master, "storeline secrets v1 aead")
//! nonce key = HMAC-SHA256(master, "storeline secrets v1 nonce")
//! nonce     = HMAC-SHA256(nonce key, place ‖ 0x00 ‖ plain)[..12]
//! ```

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use toml_edit::{DocumentMut, Item, TableLike, Value};

use super::{Role, role};

/// What a sealed value starts with.
pub const ENC_PREFIX: &str = "enc:v1:";
const AAD: &[u8] = b"storeline enc:v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The data directory's key, with its two derived keys. Its `Debug` shows nothing.
#[derive(Clone)]
pub struct SealKey {
    aead: Aes256GcmSiv,
    nonce: Hmac<Sha256>,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(…)")
    }
}

fn derive(master: &[u8; 32], label: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master)
        .unwrap_or_else(|_| unreachable!("HMAC accepts 32-byte keys"));
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl SealKey {
    pub fn from_bytes(master: &[u8; 32]) -> SealKey {
        let aead = derive(master, b"storeline secrets v1 aead");
        let nonce = derive(master, b"storeline secrets v1 nonce");
        SealKey {
            aead: Aes256GcmSiv::new(&aead.into()),
            nonce: <Hmac<Sha256> as Mac>::new_from_slice(&nonce)
                .unwrap_or_else(|_| unreachable!("HMAC accepts 32-byte keys")),
        }
    }

    /// A new random key and the text of its key file (one line of base64).
    pub fn generate() -> (SealKey, String) {
        let mut master = [0u8; 32];
        rand::rng().fill_bytes(&mut master);
        (
            SealKey::from_bytes(&master),
            format!("{}\n", STANDARD.encode(master)),
        )
    }

    /// The key in a key file's text.
    pub fn parse(text: &str) -> Result<SealKey, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| "the key file is not base64".to_owned())?;
        let master: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("the key file holds {} bytes, not 32", b.len()))?;
        Ok(SealKey::from_bytes(&master))
    }

    /// `plain` sealed; `place` (such as `erp.headers.Authorization`) only varies the nonce, so
    /// equal secrets at two places do not show as equal.
    pub fn seal(&self, place: &str, plain: &str) -> Result<String, String> {
        let mut mac = self.nonce.clone();
        mac.update(place.as_bytes());
        mac.update(&[0]);
        mac.update(plain.as_bytes());
        let tag = mac.finalize().into_bytes();
        let nonce = Nonce::from_slice(&tag[..NONCE_LEN]);
        let sealed = self
            .aead
            .encrypt(
                nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: AAD,
                },
            )
            .map_err(|_| format!("cannot seal the value of {place}"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{ENC_PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// The plain text of a sealed value; an error if it was not sealed with this key.
    pub fn open(&self, sealed: &str) -> Result<String, String> {
        let bad = || {
            "this enc:v1: value does not open with this data directory's key (it was sealed by \
             another one, or changed): give the secret in plain text or as a reference"
                .to_owned()
        };
        let bytes = sealed
            .strip_prefix(ENC_PREFIX)
            .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
            .filter(|b| b.len() >= NONCE_LEN + TAG_LEN)
            .ok_or_else(bad)?;
        let (nonce, msg) = bytes.split_at(NONCE_LEN);
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), Payload { msg, aad: AAD })
            .map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

/// The trigger file with every plain-text secret of its connectors sealed, and nothing else
/// changed: layout and comments stay, references and `enc:v1:` values are kept as they are
/// (they are checked when the file is revealed). A file without plain-text secrets is returned
/// as it is, and `key` (which may create the key) is only called when one is met. A file that
/// does not parse is returned as it is, for the parser to report.
pub fn seal(source: &str, key: &dyn Fn() -> Result<SealKey, String>) -> Result<String, String> {
    let Ok(mut doc) = source.parse::<DocumentMut>() else {
        return Ok(source.to_owned());
    };
    let mut ctx = Sealer {
        key,
        cached: None,
        changed: false,
    };
    match doc.get_mut("connector") {
        Some(Item::ArrayOfTables(list)) => {
            for (i, t) in list.iter_mut().enumerate() {
                let place = connector_place(t, i);
                ctx.walk(t, &place, false)?;
            }
        }
        Some(Item::Value(Value::Array(list))) => {
            for (i, v) in list.iter_mut().enumerate() {
                if let Some(t) = v.as_inline_table_mut() {
                    let place = connector_place(t, i);
                    ctx.walk(t, &place, false)?;
                }
            }
        }
        _ => {}
    }
    Ok(if ctx.changed {
        doc.to_string()
    } else {
        source.to_owned()
    })
}

/// A connector's name for the nonce (so reordering connectors changes nothing), else its index.
fn connector_place(t: &dyn TableLike, i: usize) -> String {
    t.get("name")
        .and_then(Item::as_str)
        .map_or_else(|| format!("#{i}"), str::to_owned)
}

struct Sealer<'a> {
    key: &'a dyn Fn() -> Result<SealKey, String>,
    cached: Option<SealKey>,
    changed: bool,
}

impl Sealer<'_> {
    fn walk(&mut self, t: &mut dyn TableLike, place: &str, in_headers: bool) -> Result<(), String> {
        for (k, item) in t.iter_mut() {
            let k = k.get().to_owned();
            let here = format!("{place}.{k}");
            match role(&k, in_headers) {
                Role::Secret => {
                    let Some(v) = item.as_value_mut() else {
                        continue;
                    };
                    let Some(plain) = v.as_str().filter(|s| !s.starts_with(ENC_PREFIX)) else {
                        continue;
                    };
                    let key = match &self.cached {
                        Some(key) => key,
                        None => self.cached.insert((self.key)()?),
                    };
                    let sealed = key.seal(&here, plain)?;
                    // The new value keeps the old one's surroundings (spaces, a trailing comment).
                    let decor = v.decor().clone();
                    *v = Value::from(sealed);
                    *v.decor_mut() = decor;
                    self.changed = true;
                }
                Role::Url => {}
                Role::Other => {
                    if let Some(sub) = item.as_table_like_mut() {
                        self.walk(sub, &here, k == "headers")?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::{Process, reveal_all};

    fn key() -> SealKey {
        SealKey::from_bytes(&[7; 32])
    }

    const FILE: &str = r#"# Connectors
[[connector]]
name = "erp"
type = "webhook"
url = "https://erp.example.com/hooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"   # Standard Webhooks secret
previous_secret = { env = "ERP_OLD_SECRET" }
headers = { Authorization = "Bearer header-token", "x-tenant" = "shop-1" }

[[connector]]
name = "mail"
type = "smtp"
host = "smtp.example.com"
username = "shop"
password = "smtp-password"
from = "Shop <shop@example.com>"
failover = { host = "backup.example.com", username = "shop", password = "failover-password" }

[connector.templates.welcome]
subject = "Welcome"   # not a secret
text = "Hello"

[[trigger]]
name = "signup"
on = "customer.signed_up"
then = [ { deliver = "erp" } ]
"#;

    fn tables(src: &str) -> Vec<toml::Table> {
        let t: toml::Table = toml::from_str(src).unwrap();
        t["connector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_table().unwrap().clone())
            .collect()
    }

    #[test]
    fn sealing_changes_only_the_secrets_and_reveal_gives_them_back() {
        let sealed = seal(FILE, &|| Ok(key())).unwrap();
        for plain in [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "header-token",
            "shop-1",
            "smtp-password",
            "failover-password",
        ] {
            assert!(!sealed.contains(plain), "{plain} in\n{sealed}");
        }
        // Every other line is as it was: layout and comments stay.
        let before: Vec<&str> = FILE.lines().collect();
        let after: Vec<&str> = sealed.lines().collect();
        assert_eq!(before.len(), after.len(), "{sealed}");
        let changed: Vec<usize> = (0..before.len())
            .filter(|i| before[*i] != after[*i])
            .collect();
        assert_eq!(changed, vec![5, 7, 14, 16], "{sealed}");
        assert!(after[5].starts_with("secret = \"enc:v1:"), "{}", after[5]);
        assert!(
            after[5].ends_with("\"   # Standard Webhooks secret"),
            "{}",
            after[5]
        );
        assert_eq!(after[6], "previous_secret = { env = \"ERP_OLD_SECRET\" }");
        assert!(sealed.ends_with("then = [ { deliver = \"erp\" } ]\n"));

        // Deterministic: the same file seals to the same text, and sealed text seals to itself.
        assert_eq!(seal(FILE, &|| Ok(key())).unwrap(), sealed);
        assert_eq!(seal(&sealed, &|| Err("not needed".into())).unwrap(), sealed);

        let mut revealed = tables(&sealed);
        // The reference is left to the environment; here it is dropped to reveal the rest.
        revealed[0].remove("previous_secret");
        let revealed = reveal_all(&revealed, &|| Ok(key()), &Process).unwrap();
        assert_eq!(
            revealed[0]["secret"].as_str(),
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        );
        assert_eq!(
            revealed[0]["headers"]["Authorization"].as_str(),
            Some("Bearer header-token")
        );
        assert_eq!(revealed[1]["password"].as_str(), Some("smtp-password"));
        assert_eq!(
            revealed[1]["failover"]["password"].as_str(),
            Some("failover-password")
        );
    }

    #[test]
    fn a_file_without_plain_secrets_needs_no_key_and_stays_byte_for_byte() {
        let src = "[[connector]]\nname = \"dev\"\ntype = \"log\"\n\n[[connector]]\nname = \"x\"\ntype = \"webhook\"\nurl = \"http://h\"\nsecret = { env = \"S\" }\n";
        assert_eq!(seal(src, &|| Err("no key".into())).unwrap(), src);
        assert_eq!(
            seal("not [ toml", &|| Err("no key".into())).unwrap(),
            "not [ toml"
        );
        // Inline connector lists are sealed too.
        let inline =
            "connector = [ { name = \"a\", type = \"smtp\", password = \"pw-inline\" } ]\n";
        let sealed = seal(inline, &|| Ok(key())).unwrap();
        assert!(
            !sealed.contains("pw-inline") && sealed.contains("enc:v1:"),
            "{sealed}"
        );
        // Without a key where one is needed, nothing is stored.
        assert_eq!(
            seal(inline, &|| Err("cannot create".into())),
            Err("cannot create".into())
        );
    }

    #[test]
    fn only_the_right_key_opens_a_value() {
        let k = key();
        let v = k.seal("erp.secret", "s3cret").unwrap();
        assert!(v.starts_with(ENC_PREFIX));
        assert_eq!(k.open(&v).unwrap(), "s3cret");
        // Another place, another text; both open.
        let w = k.seal("mail.password", "s3cret").unwrap();
        assert_ne!(v, w);
        assert_eq!(k.open(&w).unwrap(), "s3cret");
        let other = SealKey::from_bytes(&[8; 32]);
        assert!(other.open(&v).unwrap_err().contains("another one"));
        let mut tampered = v.clone();
        tampered.pop();
        tampered.push(if v.ends_with('A') { 'B' } else { 'A' });
        assert!(k.open(&tampered).is_err());
        assert!(k.open("enc:v1:short").is_err());
    }

    #[test]
    fn key_files_round_trip() {
        let (k, text) = SealKey::generate();
        let again = SealKey::parse(&text).unwrap();
        let v = k.seal("p", "x").unwrap();
        assert_eq!(again.open(&v).unwrap(), "x");
        assert_eq!(format!("{k:?}"), "SealKey(…)");
        assert!(SealKey::parse("not base64!").is_err());
        assert!(SealKey::parse("AAAA").unwrap_err().contains("3 bytes"));
    }
}
