//! HLS grants: the token an HLS player that passed the play check carries in the URLs of
//! the playlists, segments and parts it fetches next, so those need no other credential.
//!
//! A grant is `g.{exp}.{bind}.{mac}`: `exp` the expiry in unix milliseconds, `bind` `a` when
//! the grant is bound to the client's address and `-` when not, `mac` base64url (no padding)
//! of HMAC-SHA256 with the grant secret over `"sluice-grant\n{app}/{stream}\n{exp}\n{ip}"`,
//! where `ip` is the bound address (IPv4-mapped IPv6 as IPv4) or empty. The address itself
//! is not in the token: the verifier takes it from the connection, so the token stays
//! path-safe (`[A-Za-z0-9_.-]`) and shows nothing the client did not know.
//!
//! Grants expire exactly at `exp` (no clock skew: the node that mints one normally checks
//! it). When the app's play rule binds addresses, an unbound grant is refused.

use std::net::IpAddr;

use ring::hmac;

use crate::mac::{self, mac_matches};
use crate::policy::Refusal;
use crate::signed::{parse_decimal, plain_name};

/// Longest token looked at: `g.` + 20 digits + `.a.` + 43 characters fit with room.
const MAX_TOKEN: usize = 128;

/// What the grant's MAC covers.
fn message(app: &str, stream: &str, exp: &str, ip: Option<IpAddr>) -> Vec<u8> {
    let ip = ip
        .map(|ip| ip.to_canonical().to_string())
        .unwrap_or_default();
    format!("sluice-grant\n{app}/{stream}\n{exp}\n{ip}").into_bytes()
}

/// A grant for `app/stream` until `exp_unix_ms`, bound to `client` when given.
pub(crate) fn mint(
    key: &hmac::Key,
    app: &str,
    stream: &str,
    client: Option<IpAddr>,
    exp_unix_ms: u64,
) -> String {
    let exp = exp_unix_ms.to_string();
    let tag = mac::mac(key, &message(app, stream, &exp, client));
    let bind = if client.is_some() { "a" } else { "-" };
    format!("g.{exp}.{bind}.{}", mac::b64(tag.as_ref()))
}

/// Checks a grant presented by `client` for `app/stream` at `now_unix_ms`.
pub(crate) fn verify(
    key: &hmac::Key,
    token: &str,
    app: &str,
    stream: &str,
    client: IpAddr,
    now_unix_ms: u64,
    must_bind: bool,
) -> Result<(), Refusal> {
    if token.is_empty() {
        return Err(Refusal::Missing);
    }
    if token.len() > MAX_TOKEN || !plain_name(app) || !plain_name(stream) {
        return Err(Refusal::Invalid);
    }
    let mut parts = token.split('.');
    let (Some("g"), Some(exp_text), Some(bind), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Refusal::Invalid);
    };
    let exp = parse_decimal(exp_text).ok_or(Refusal::Invalid)?;
    let bound = match bind {
        "a" => Some(client),
        "-" => None,
        _ => return Err(Refusal::Invalid),
    };
    let tag = mac::unb64(tag, 64).ok_or(Refusal::Invalid)?;
    if !mac_matches(key, &message(app, stream, exp_text, bound), &tag) {
        return Err(Refusal::Invalid);
    }
    if must_bind && bound.is_none() {
        return Err(Refusal::Invalid);
    }
    if now_unix_ms > exp {
        return Err(Refusal::Expired);
    }
    Ok(())
}
