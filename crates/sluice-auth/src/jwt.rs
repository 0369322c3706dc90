//! JSON Web Tokens for `check = "jwt"`: `?token=JWT`, compact form, HS256 or ES256.
//!
//! Only the algorithms with a configured key are accepted; `none` and every other `alg` are
//! refused, as is a header with `crit`. Claims: `exp` (required), `nbf` (optional), `act`
//! (`"publish"` or `"play"`, required), `stream` (`"APP/NAME"` or `"APP/*"`, required),
//! `ip` (required with `bind_address`, checked whenever present). The signature is checked
//! before any claim, so a forged token is `Invalid` whatever it claims.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde::Deserialize;

use crate::keys::AuthError;
use crate::mac::{self, mac_matches};
use crate::policy::{Access, Refusal};
use crate::signed::check_address;

/// Longest token looked at.
pub(crate) const MAX_TOKEN: usize = 8192;

/// The DER prefix of a P-256 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { id-ecPublicKey,
/// prime256v1 }, BIT STRING (0 unused bits) }, followed by the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The configured verification keys.
pub(crate) struct JwtKeys {
    hs256: Option<hmac::Key>,
    es256: Option<UnparsedPublicKey<Vec<u8>>>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("hs256", &self.hs256.is_some())
            .field("es256", &self.es256.is_some())
            .finish()
    }
}

impl JwtKeys {
    /// Keys from the `[auth.jwt]` values; reads the ES256 public key file.
    pub(crate) fn load(hs256_secret: &str, es256_file: &str) -> Result<Self, AuthError> {
        let hs256 = (!hs256_secret.is_empty()).then(|| mac::key(hs256_secret.as_bytes()));
        let es256 = if es256_file.is_empty() {
            None
        } else {
            let pem = crate::keys::read(es256_file)?;
            let point = p256_point_of_pem(&pem).map_err(|reason| AuthError::PublicKey {
                path: es256_file.into(),
                reason: reason.to_owned(),
            })?;
            Some(UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point))
        };
        Ok(Self { hs256, es256 })
    }
}

/// The uncompressed P-256 point of a `-----BEGIN PUBLIC KEY-----` PEM (SubjectPublicKeyInfo).
pub(crate) fn p256_point_of_pem(pem: &str) -> Result<Vec<u8>, &'static str> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let start = pem
        .find(BEGIN)
        .ok_or("no -----BEGIN PUBLIC KEY----- block")?
        + BEGIN.len();
    let len = pem[start..]
        .find(END)
        .ok_or("no -----END PUBLIC KEY----- line")?;
    let body: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(body)
        .map_err(|_| "the PUBLIC KEY block is not base64")?;
    match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err("not a P-256 (prime256v1) public key in SubjectPublicKeyInfo form"),
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    exp: Option<serde_json::Number>,
    #[serde(default)]
    nbf: Option<serde_json::Number>,
    #[serde(default)]
    act: Option<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    ip: Option<String>,
}

/// A NumericDate (seconds, possibly fractional) in milliseconds; `None` if negative or not
/// finite.
fn millis(n: &serde_json::Number) -> Option<u64> {
    if let Some(s) = n.as_u64() {
        return Some(s.saturating_mul(1000));
    }
    let f = n.as_f64()?;
    // `as` saturates at u64::MAX for large finite values.
    (f.is_finite() && f >= 0.0).then_some((f * 1000.0) as u64)
}

/// Checks the `token` credential of `access`.
pub(crate) fn verify(
    keys: &JwtKeys,
    access: &Access<'_>,
    bind_address: bool,
    clock_skew_ms: u64,
) -> Result<(), Refusal> {
    let token = crate::query::param(access.query, "token").unwrap_or_default();
    if token.is_empty() {
        return Err(Refusal::Missing);
    }
    if token.len() > MAX_TOKEN {
        return Err(Refusal::Invalid);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Invalid);
    };
    // The signing input: `header.payload` as sent.
    let signed = &token.as_bytes()[..header.len() + 1 + payload.len()];
    let header: Header = mac::unb64(header, MAX_TOKEN)
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(Refusal::Invalid)?;
    if header.crit.is_some() {
        return Err(Refusal::Invalid);
    }
    let signature = mac::unb64(signature, MAX_TOKEN).ok_or(Refusal::Invalid)?;
    let valid = match (header.alg.as_str(), &keys.hs256, &keys.es256) {
        ("HS256", Some(key), _) => mac_matches(key, signed, &signature),
        ("ES256", _, Some(key)) => key.verify(signed, &signature).is_ok(),
        _ => false,
    };
    if !valid {
        return Err(Refusal::Invalid);
    }
    let claims: Claims = mac::unb64(payload, MAX_TOKEN)
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(Refusal::Invalid)?;
    if claims.act.as_deref() != Some(access.action.as_str()) {
        return Err(Refusal::Invalid);
    }
    let stream_ok = claims.stream.as_deref().is_some_and(|claim| {
        claim
            .strip_prefix(access.app)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|name| name == "*" || name == access.stream)
    });
    if !stream_ok {
        return Err(Refusal::Invalid);
    }
    check_address(
        claims.ip.as_deref().unwrap_or_default(),
        access.client,
        bind_address,
    )?;
    if let Some(nbf) = &claims.nbf {
        let nbf = millis(nbf).ok_or(Refusal::Invalid)?;
        if access.now_unix_ms.saturating_add(clock_skew_ms) < nbf {
            return Err(Refusal::Invalid);
        }
    }
    let exp = claims
        .exp
        .as_ref()
        .and_then(millis)
        .ok_or(Refusal::Invalid)?;
    if access.now_unix_ms > exp.saturating_add(clock_skew_ms) {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// Test helpers: tokens made here, signed with the keys the tests configure.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

    /// A compact JWS of `header` and `claims` (JSON), signed by `sign`.
    pub(crate) fn token(header: &str, claims: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!(
            "{}.{}",
            mac::b64(header.as_bytes()),
            mac::b64(claims.as_bytes())
        );
        let sig = sign(input.as_bytes());
        format!("{input}.{}", mac::b64(&sig))
    }

    /// HS256 with `secret`.
    pub(crate) fn hs256(secret: &str, claims: &str) -> String {
        token(r#"{"alg":"HS256","typ":"JWT"}"#, claims, |input| {
            mac::mac(&mac::key(secret.as_bytes()), input)
                .as_ref()
                .to_vec()
        })
    }

    /// A fresh P-256 key pair: the signer and the public key as PEM.
    pub(crate) fn es256_pair() -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(pair.public_key().as_ref());
        let body = STANDARD.encode(der);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
            &body[..64],
            &body[64..]
        );
        (pair, pem)
    }

    /// ES256 with `pair`.
    pub(crate) fn es256(pair: &EcdsaKeyPair, claims: &str) -> String {
        token(r#"{"alg":"ES256"}"#, claims, |input| {
            pair.sign(&SystemRandom::new(), input)
                .unwrap()
                .as_ref()
                .to_vec()
        })
    }

    #[test]
    fn public_keys_are_read_from_spki_pem_only() {
        let (pair, pem) = es256_pair();
        assert_eq!(p256_point_of_pem(&pem).unwrap(), pair.public_key().as_ref());
        assert!(p256_point_of_pem("").is_err());
        assert!(
            p256_point_of_pem("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----").is_err()
        );
        // An RSA-looking or truncated key is not taken for a P-256 one.
        let truncated = pem.replace(&pem[27..40], "");
        assert!(p256_point_of_pem(&truncated).is_err());
        let other = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
            STANDARD.encode([0x30u8; 91])
        );
        assert!(p256_point_of_pem(&other).is_err());
    }
}
