//! GitHub's delivery signatures: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>` and, only when
//! that header is absent, the legacy `X-Hub-Signature: sha1=<hex HMAC-SHA1>` Cockpit checks.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// Why a delivery's signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// Neither signature header was sent.
    Missing,
    /// A signature was sent, but it is malformed or not the body's HMAC under our secret.
    Mismatch,
}

/// Checks a delivery body against the signature headers' values, in constant time.
pub fn verify(secret: &[u8], sha256: Option<&[u8]>, sha1: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
    match (sha256, sha1) {
        (Some(header), _) => check::<Hmac<Sha256>>(secret, header, b"sha256=", body),
        (None, Some(header)) => check::<Hmac<Sha1>>(secret, header, b"sha1=", body),
        (None, None) => Err(SignatureError::Missing),
    }
}

/// The `X-Hub-Signature-256` value GitHub would send for `body`.
pub fn sign_sha256(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn check<M: Mac + hmac::digest::KeyInit>(
    secret: &[u8],
    header: &[u8],
    prefix: &[u8],
    body: &[u8],
) -> Result<(), SignatureError> {
    let hex_digest = header.strip_prefix(prefix).ok_or(SignatureError::Mismatch)?;
    let digest = hex::decode(hex_digest).map_err(|_| SignatureError::Mismatch)?;
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&digest).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!".
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const GITHUB_SHA256: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn signs_like_github() {
        assert_eq!(sign_sha256(SECRET, BODY), GITHUB_SHA256);
    }

    #[test]
    fn accepts_githubs_signatures() {
        assert_eq!(verify(SECRET, Some(GITHUB_SHA256.as_bytes()), None, BODY), Ok(()));
        let sha1 = {
            let mut mac = Hmac::<Sha1>::new_from_slice(SECRET).unwrap();
            mac.update(BODY);
            format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
        };
        assert_eq!(verify(SECRET, None, Some(sha1.as_bytes()), BODY), Ok(()));
    }

    #[test]
    fn refuses_everything_else() {
        let mismatch = Err(SignatureError::Mismatch);
        assert_eq!(verify(SECRET, None, None, BODY), Err(SignatureError::Missing));
        assert_eq!(verify(b"another secret", Some(GITHUB_SHA256.as_bytes()), None, BODY), mismatch);
        assert_eq!(verify(SECRET, Some(GITHUB_SHA256.as_bytes()), None, b"Hello, World?"), mismatch);
        let sha1_prefix = GITHUB_SHA256.replacen("sha256=", "sha1=", 1);
        assert_eq!(verify(SECRET, Some(sha1_prefix.as_bytes()), None, BODY), mismatch);
        assert_eq!(verify(SECRET, Some(b"sha256=zz"), None, BODY), mismatch);
        assert_eq!(verify(SECRET, Some(&GITHUB_SHA256.as_bytes()[..70]), None, BODY), mismatch);
    }

    #[test]
    fn a_bad_sha256_is_not_rescued_by_a_good_sha1() {
        let mut mac = Hmac::<Sha1>::new_from_slice(SECRET).unwrap();
        mac.update(BODY);
        let sha1 = format!("sha1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(verify(SECRET, Some(b"sha256=00"), Some(sha1.as_bytes()), BODY), Err(SignatureError::Mismatch));
    }
}
