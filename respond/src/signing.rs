//! Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`).
//!
//! Receivers verify that a request came from us and was not replayed; the signed content is
//! `"{id}.{timestamp}.{body}"` under HMAC-SHA256 with the key in the `whsec_<base64>` secret.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("webhook signing secret is not valid base64 (expected whsec_<base64>)")]
    BadSecret,
    #[error("webhook signing secret is empty")]
    EmptySecret,
}

/// The decoded HMAC key; `Debug` hides it like [`crate::Secret`].
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Accepts `whsec_<base64>` (the spec's form) or bare base64.
    pub fn from_secret(secret: &str) -> Result<Self, SigningError> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = B64
            .decode(b64.trim())
            .map_err(|_| SigningError::BadSecret)?;
        if key.is_empty() {
            return Err(SigningError::EmptySecret);
        }
        Ok(SigningKey(key))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            B64.encode(self.mac(msg_id, timestamp, body).finalize().into_bytes())
        )
    }

    /// True when any `v1,` signature in the (space-separated) header matches; compared in constant time.
    /// Receivers must also reject stale timestamps: see [`verify_fresh`].
    pub fn verify(&self, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split_whitespace().any(|sig| {
            let Some(b64) = sig.strip_prefix("v1,") else {
                return false;
            };
            let Ok(bytes) = B64.decode(b64) else {
                return false;
            };
            self.mac(msg_id, timestamp, body)
                .verify_slice(&bytes)
                .is_ok()
        })
    }

    /// [`SigningKey::verify`] plus the spec's replay window (`tolerance_s`, 5 minutes in the reference libraries).
    pub fn verify_fresh(
        &self,
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
        header: &str,
        now_s: i64,
        tolerance_s: i64,
    ) -> bool {
        (now_s - timestamp).abs() <= tolerance_s && self.verify(msg_id, timestamp, body, header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

    #[test]
    fn published_test_vector() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        assert_eq!(
            key.sign(ID, TS, BODY),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn verify_accepts_own_and_rejects_tampering() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        let sig = key.sign(ID, TS, BODY);
        assert!(key.verify(ID, TS, BODY, &format!("v1,bm90IGl0 {sig}")));
        assert!(!key.verify(ID, TS + 1, BODY, &sig));
        assert!(!key.verify("msg_other", TS, BODY, &sig));
        assert!(!key.verify(ID, TS, b"{}", &sig));
        assert!(!key.verify_fresh(ID, TS, BODY, &sig, TS + 301, 300));
        assert!(key.verify_fresh(ID, TS, BODY, &sig, TS + 299, 300));
    }

    #[test]
    fn bad_secret_is_an_error_without_the_secret() {
        let err = SigningKey::from_secret("whsec_!!!not-base64").unwrap_err();
        assert!(!err.to_string().contains("not-base64"));
        assert!(!format!("{:?}", SigningKey::from_secret(SECRET).unwrap()).contains("C2FV"));
    }
}
