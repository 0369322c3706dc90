//! Signed URLs: `?exp=UNIX_SECONDS&kid=ID&sig=SIG[&ip=ADDR]`.
//!
//! `SIG` is base64url (no padding) of HMAC-SHA256, with the signing key `ID`, over exactly
//! `"sluice-v1\n{action}\n{app}/{stream}\n{exp}\n{ip or empty}"`, where `exp` and `ip` are the
//! query's texts as they are (after percent-decoding). The action is signed, so a play URL
//! never publishes; several keys are valid at once, so keys rotate without a flag day.
//!
//! Order of the checks: the signature first (an expired forgery is `Invalid`, never
//! `Expired`), then the address, then the expiry. An `ip` in the URL is always checked
//! against the client, `bind_address` makes it required.
//!
//! The message joins app and stream with `/`, so it cannot tell app `a` stream `b/c` from
//! app `a/b` stream `c`; HTTP paths and `sluice sign` never put `/` in either, and an
//! `[auth.apps]` name cannot hold one. App and stream names with control characters are
//! refused outright (a newline could spell another message's fields).

use std::net::IpAddr;

use crate::keys::SigningKeys;
use crate::mac::{self, mac_matches};
use crate::policy::{Access, Action, Refusal};
use crate::query::{param, percent_encode};

/// Longest `exp` accepted, in digits (u64 has 20).
const MAX_EXP_DIGITS: usize = 20;

/// The query to append to a URL that lets it `action` on `app/stream` until
/// `expires_unix_s` (plus the verifier's clock skew): `exp=..&kid=..&sig=..[&ip=..]`, the
/// values percent-encoded. With `client`, only that address may use it (IPv4-mapped IPv6
/// and IPv4 are the same address).
pub fn sign(
    key_id: &str,
    secret: &[u8],
    action: Action,
    app: &str,
    stream: &str,
    expires_unix_s: u64,
    client: Option<IpAddr>,
) -> String {
    let exp = expires_unix_s.to_string();
    let ip = client.map(|c| c.to_string()).unwrap_or_default();
    let tag = mac::mac(&mac::key(secret), &message(action, app, stream, &exp, &ip));
    let mut query = format!(
        "exp={exp}&kid={}&sig={}",
        percent_encode(key_id),
        mac::b64(tag.as_ref())
    );
    if !ip.is_empty() {
        query.push_str("&ip=");
        query.push_str(&percent_encode(&ip));
    }
    query
}

/// What the signature covers.
pub(crate) fn message(action: Action, app: &str, stream: &str, exp: &str, ip: &str) -> Vec<u8> {
    format!(
        "sluice-v1\n{}\n{app}/{stream}\n{exp}\n{ip}",
        action.as_str()
    )
    .into_bytes()
}

/// Checks the signed-URL credential of `access`.
pub(crate) fn verify(
    keys: &SigningKeys,
    access: &Access<'_>,
    bind_address: bool,
    clock_skew_ms: u64,
) -> Result<(), Refusal> {
    let query = access.query;
    let sig = param(query, "sig").filter(|s| !s.is_empty());
    let Some(sig) = sig else {
        return Err(Refusal::Missing);
    };
    let key = param(query, "kid")
        .and_then(|kid| keys.get(&kid))
        .ok_or(Refusal::Invalid)?;
    let exp_text = param(query, "exp").ok_or(Refusal::Invalid)?;
    let exp = parse_decimal(&exp_text).ok_or(Refusal::Invalid)?;
    let ip_text = param(query, "ip").unwrap_or_default();
    // A 32-byte MAC is 43 characters; anything much longer is refused before decoding.
    let tag = mac::unb64(&sig, 64).ok_or(Refusal::Invalid)?;
    if !plain_name(access.app) || !plain_name(access.stream) {
        return Err(Refusal::Invalid);
    }
    let signed = message(
        access.action,
        access.app,
        access.stream,
        &exp_text,
        &ip_text,
    );
    if !mac_matches(key, &signed, &tag) {
        return Err(Refusal::Invalid);
    }
    check_address(&ip_text, access.client, bind_address)?;
    if access.now_unix_ms > exp.saturating_mul(1000).saturating_add(clock_skew_ms) {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// Checks a credential's address claim (`""` = none) against the client's: a claim must
/// match, and `bind_address` requires one.
pub(crate) fn check_address(
    claim: &str,
    client: IpAddr,
    bind_address: bool,
) -> Result<(), Refusal> {
    if claim.is_empty() {
        return if bind_address {
            Err(Refusal::Invalid)
        } else {
            Ok(())
        };
    }
    match claim.parse::<IpAddr>() {
        Ok(ip) if ip.to_canonical() == client.to_canonical() => Ok(()),
        _ => Err(Refusal::Invalid),
    }
}

/// Plain decimal digits, at most 20, within u64.
pub(crate) fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > MAX_EXP_DIGITS || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether an app or stream name can go into a signed message without being mistaken for
/// its separators: no control characters (a newline would let one message spell another's
/// fields).
pub(crate) fn plain_name(name: &str) -> bool {
    !name.chars().any(char::is_control)
}
