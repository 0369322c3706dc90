//! Access checks on what a client controls: the query, the app and stream names and the HLS
//! grant token, under every check mode (with and without bind_address). Nothing may panic,
//! and nothing a fuzzer makes up may pass a check that needs a credential, except the
//! credentials this target signs itself.
//!
//! Input: a flag byte, then `query \0 app \0 stream \0 token` (lossy UTF-8). Flag bit 0
//! prefixes the query with a valid signed query and a valid JWT, bit 1 the token with a
//! valid grant, so mutations reach the checks after the signature too.

#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice_auth::{Access, Action, AuthConfig, Check, Policy};

const NOW: u64 = 1_700_000_000_000;
const SECRET: &str = "fuzz-signing-secret-0123";
const HS: &str = "fuzz-jwt-secret-0123456789";

/// One policy per check mode and bind_address, the same rule for publish and play.
fn policies() -> &'static [(Check, bool, Policy)] {
    static POLICIES: OnceLock<Vec<(Check, bool, Policy)>> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let mut out = Vec::new();
        for check in [
            Check::Open,
            Check::Key,
            Check::Signed,
            Check::Jwt,
            Check::Deny,
        ] {
            for bind in [false, true] {
                if bind && !matches!(check, Check::Signed | Check::Jwt) {
                    continue;
                }
                let rule = format!(
                    "check = \"{}\"\nkeys = [\"stream-key\"]\nbind_address = {bind}\n",
                    check.as_str()
                );
                let text = format!(
                    "grant_secret = \"fuzz-grant-secret-01234\"\n\
                     [signing_keys]\nk1 = \"{SECRET}\"\n[jwt]\nhs256_secret = \"{HS}\"\n\
                     [default.publish]\n{rule}[default.play]\n{rule}"
                );
                let config: AuthConfig = toml::from_str(&text).expect("fuzz config");
                out.push((check, bind, Policy::load(&config).expect("fuzz policy")));
            }
        }
        out
    })
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A valid HS256 token for `action` on `app/stream`.
fn jwt(action: Action, app: &str, stream: &str) -> String {
    let header = b64(br#"{"alg":"HS256"}"#);
    let claims = serde_json::json!({
        "act": action.as_str(), "stream": format!("{app}/{stream}"), "exp": NOW / 1000 + 60,
        "ip": "127.0.0.1",
    });
    let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, HS.as_bytes());
    format!(
        "{input}.{}",
        b64(ring::hmac::sign(&key, input.as_bytes()).as_ref())
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.splitn(4, |&b| b == 0).map(String::from_utf8_lossy);
    let query = fields.next().unwrap_or_default();
    let app = fields.next().unwrap_or_default();
    let stream = fields.next().unwrap_or_default();
    let token = fields.next().unwrap_or_default();
    let client = IpAddr::from([127, 0, 0, 1]);

    let _ = sluice_auth::query_params(&query).count();
    let _ = sluice_auth::stream_of_url_path(&app);

    for &(check, bind, ref policy) in policies() {
        for action in [Action::Publish, Action::Play] {
            let query = if flags & 1 == 1 {
                let ip = bind.then_some(client);
                let signed = sluice_auth::sign(
                    "k1",
                    SECRET.as_bytes(),
                    action,
                    &app,
                    &stream,
                    NOW / 1000 + 60,
                    ip,
                );
                format!("{signed}&token={}&{query}", jwt(action, &app, &stream))
            } else {
                query.to_string()
            };
            let result = policy.check(&Access {
                action,
                app: &app,
                stream: &stream,
                query: &query,
                client,
                now_unix_ms: NOW,
            });
            // Without the credentials made above, only open rules and a guessed stream key
            // can pass.
            if flags & 1 == 0 && result.is_ok() {
                assert!(
                    check == Check::Open
                        || (check == Check::Key
                            && sluice_auth::param(&query, "key").as_deref() == Some("stream-key")),
                    "{check:?} passed {query:?}"
                );
            }
            if check == Check::Deny {
                assert!(result.is_err());
            }
        }
        let token = if flags & 2 == 2 {
            format!(
                "{}{token}",
                policy.mint_grant(&app, &stream, Some(client), NOW)
            )
        } else {
            token.to_string()
        };
        let verdict = policy.verify_grant(&token, &app, &stream, client, NOW);
        if flags & 2 == 0 {
            assert!(verdict.is_err(), "a made-up grant passed: {token:?}");
        }
    }
});
