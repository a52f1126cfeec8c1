//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): the receiver recomputes
//! `base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"))` and compares it with one
//! of the space-separated `v1,<signature>` entries of `webhook-signature`. During a secret
//! rotation the header carries one signature per secret, so receivers on either secret accept.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing key: the bytes behind `whsec_<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// `whsec_` followed by base64 of 24 to 64 bytes (the prefix is optional).
    pub fn parse(s: &str) -> Result<Secret, String> {
        let b64 = s.strip_prefix("whsec_").unwrap_or(s);
        let key = STANDARD.decode(b64).map_err(|_| {
            "expected a Standard Webhooks secret: \"whsec_\" followed by base64 \
             (for example from `openssl rand -base64 32`)"
                .to_owned()
        })?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the secret holds {} bytes; use 24 to 64 random bytes",
                key.len()
            ));
        }
        Ok(Secret(key))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            // HMAC takes keys of any length; this arm cannot be reached.
            Err(_) => return String::new(),
        };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header for `secrets` (the current one first).
pub fn header(secrets: &[&Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_spec_example() {
        // The example of the Standard Webhooks specification.
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let sig = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_both() {
        let a = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("a");
        let b = Secret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).expect("b");
        let h = header(&[&a, &b], "id", 1, b"{}");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], a.sign("id", 1, b"{}"));
        assert_ne!(parts[0], parts[1]);
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err());
        assert!(Secret::parse("not base64!").is_err());
    }
}
