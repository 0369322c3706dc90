//! Signed URLs through the public API: `sign` then `Policy::check` passes for any stream,
//! address and future expiry, and any change to what was signed is refused; brute force
//! gets nowhere. (Timing: `constant_time.rs`.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use sluice_auth::{Access, Action, AuthConfig, Policy, Refusal, sign};

const NOW_MS: u64 = 1_700_000_000_000;
const SECRET: &str = "prop-secret-0123456789abcdef";

fn policy(bind: bool) -> Policy {
    let text = format!(
        "[signing_keys]\nk1 = \"{SECRET}\"\nold = \"older-secret-0123456789\"\n\
         [default.play]\ncheck = \"signed\"\nbind_address = {bind}\n\
         [default.publish]\ncheck = \"signed\"\nbind_address = {bind}\n"
    );
    let config: AuthConfig = toml::from_str(&text).expect("config");
    Policy::load(&config).expect("policy")
}

fn check(
    p: &Policy,
    action: Action,
    app: &str,
    stream: &str,
    query: &str,
    client: IpAddr,
) -> Result<(), Refusal> {
    p.check(&Access {
        action,
        app,
        stream,
        query,
        client,
        now_unix_ms: NOW_MS,
    })
    .map(|_| ())
}

fn other(action: Action) -> Action {
    match action {
        Action::Publish => Action::Play,
        Action::Play => Action::Publish,
    }
}

/// Names as front ends pass them: non-empty, no control characters, no `/` in the app.
fn name() -> impl Strategy<Value = String> {
    "[^/\\p{Cc}]{1,24}"
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![Just(Action::Publish), Just(Action::Play)]
}

/// Splits a signed query into its parts.
fn parts(query: &str) -> (String, String, String, Option<String>) {
    let mut exp = String::new();
    let mut kid = String::new();
    let mut sig = String::new();
    let mut ip = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').expect("k=v");
        match k {
            "exp" => exp = v.to_owned(),
            "kid" => kid = v.to_owned(),
            "sig" => sig = v.to_owned(),
            "ip" => ip = Some(v.to_owned()),
            _ => panic!("unexpected {k}"),
        }
    }
    (exp, kid, sig, ip)
}

fn join(exp: &str, kid: &str, sig: &str, ip: Option<&str>) -> String {
    let mut q = format!("exp={exp}&kid={kid}&sig={sig}");
    if let Some(ip) = ip {
        q.push_str("&ip=");
        q.push_str(ip);
    }
    q
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn signed_then_checked_passes(
        action in action(),
        app in name(),
        stream in name(),
        client in ip(),
        bind in any::<bool>(),
        ahead_s in 0u64..10 * 365 * 86_400,
    ) {
        let exp = NOW_MS / 1000 + ahead_s;
        let bound = bind.then_some(client);
        let q = sign("k1", SECRET.as_bytes(), action, &app, &stream, exp, bound);
        let p = policy(bind);
        prop_assert_eq!(check(&p, action, &app, &stream, &q, client), Ok(()));
        // The same URL, from the IPv4-mapped form of an IPv4 client.
        if let IpAddr::V4(v4) = client {
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            prop_assert_eq!(check(&p, action, &app, &stream, &q, mapped), Ok(()));
        }
        // And never the other action.
        prop_assert_eq!(
            check(&p, other(action), &app, &stream, &q, client),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn any_change_to_a_signed_url_is_refused(
        action in action(),
        app in name(),
        stream in name(),
        client in ip(),
        ahead_s in 1u64..86_400,
        bit in 0usize..256,
        exp_delta in prop_oneof![-1_000_000i64..0, 1i64..1_000_000],
        exp_digit in 0usize..10,
        suffix in "[a-z0-9]{1,4}",
        other_ip in ip(),
    ) {
        let p = policy(true);
        let exp = NOW_MS / 1000 + ahead_s;
        let q = sign("k1", SECRET.as_bytes(), action, &app, &stream, exp, Some(client));
        let (exp_text, kid, sig, ip) = parts(&q);
        let ip = ip.as_deref();
        let refused = |query: &str, action, app: &str, stream: &str, client| {
            check(&p, action, app, stream, query, client).is_err()
        };
        prop_assert!(!refused(&q, action, &app, &stream, client));

        // One bit of the signature.
        let mut tag = URL_SAFE_NO_PAD.decode(&sig).expect("base64url");
        tag[bit / 8] ^= 1 << (bit % 8);
        let flipped = join(&exp_text, &kid, &URL_SAFE_NO_PAD.encode(&tag), ip);
        prop_assert_eq!(check(&p, action, &app, &stream, &flipped, client), Err(Refusal::Invalid));

        // One character of the signature, to every other base64url character.
        let at = bit % sig.len();
        for c in b'A'..=b'z' {
            let c = char::from(c);
            if !c.is_ascii_alphanumeric() || sig[at..].starts_with(c) {
                continue;
            }
            let mut s = sig.clone();
            s.replace_range(at..=at, &c.to_string());
            prop_assert!(refused(&join(&exp_text, &kid, &s, ip), action, &app, &stream, client), "{}", s);
        }

        // The expiry, moved or with one digit changed.
        let moved = exp.saturating_add_signed(exp_delta).to_string();
        prop_assert_eq!(
            check(&p, action, &app, &stream, &join(&moved, &kid, &sig, ip), client),
            Err(Refusal::Invalid)
        );
        let at = exp_digit % exp_text.len();
        let mut digits = exp_text.clone().into_bytes();
        digits[at] = if digits[at] == b'9' { b'0' } else { digits[at] + 1 };
        let digit = String::from_utf8(digits).expect("digits");
        prop_assert_eq!(
            check(&p, action, &app, &stream, &join(&digit, &kid, &sig, ip), client),
            Err(Refusal::Invalid)
        );

        // The app, the stream, the action.
        let longer_app = format!("{app}{suffix}");
        let longer_stream = format!("{stream}{suffix}");
        prop_assert!(refused(&q, action, &longer_app, &stream, client));
        prop_assert!(refused(&q, action, &app, &longer_stream, client));
        prop_assert!(refused(&q, other(action), &app, &stream, client));
        let mut swapped = stream.clone().into_bytes();
        if let Some(first) = swapped.first_mut().filter(|b| b.is_ascii_alphanumeric()) {
            *first ^= 0x20;
            if let Ok(swapped) = String::from_utf8(swapped) && swapped != stream {
                prop_assert!(refused(&q, action, &app, &swapped, client));
            }
        }

        // The address: another client, or the URL's ip rewritten to it.
        if other_ip.to_canonical() != client.to_canonical() {
            prop_assert!(refused(&q, action, &app, &stream, other_ip));
            let rewritten = join(&exp_text, &kid, &sig, Some(&other_ip.to_string()));
            prop_assert!(refused(&rewritten, action, &app, &stream, other_ip));
        }
        // Without the ip, or with the other key's id.
        prop_assert!(refused(&join(&exp_text, &kid, &sig, None), action, &app, &stream, client));
        prop_assert!(refused(&join(&exp_text, "old", &sig, ip), action, &app, &stream, client));
    }

    #[test]
    fn arbitrary_queries_never_pass_or_panic(query in ".{0,300}", app in name(), stream in name()) {
        let p = policy(false);
        for action in [Action::Publish, Action::Play] {
            prop_assert!(check(&p, action, &app, &stream, &query, IpAddr::from([127, 0, 0, 1])).is_err());
        }
    }
}

/// A fixed signed URL and its parts.
fn fixed() -> (Policy, String, Vec<u8>, String) {
    let p = policy(false);
    let q = sign(
        "k1",
        SECRET.as_bytes(),
        Action::Play,
        "live",
        "cam",
        NOW_MS / 1000 + 600,
        None,
    );
    let (exp, kid, sig, _) = parts(&q);
    let tag = URL_SAFE_NO_PAD.decode(&sig).expect("base64url");
    (p, q, tag, join(&exp, &kid, "", None))
}

fn client() -> IpAddr {
    IpAddr::from([192, 0, 2, 1])
}

#[test]
fn brute_force_gets_nowhere() {
    let (p, q, tag, prefix) = fixed();
    assert_eq!(check(&p, Action::Play, "live", "cam", &q, client()), Ok(()));
    // Many random signatures (a fixed seed: the test is the same every run).
    let mut rng = fastrand_like(0x5eed);
    for _ in 0..20_000 {
        let mut guess = [0u8; 32];
        guess.iter_mut().for_each(|b| *b = rng());
        if guess[..] == tag[..] {
            continue;
        }
        let query = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(guess));
        assert_eq!(
            check(&p, Action::Play, "live", "cam", &query, client()),
            Err(Refusal::Invalid)
        );
    }
    // Every signature that differs only in its last byte.
    for last in 0..=255u8 {
        let mut guess = tag.clone();
        if guess[31] == last {
            continue;
        }
        guess[31] = last;
        let query = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(&guess));
        assert_eq!(
            check(&p, Action::Play, "live", "cam", &query, client()),
            Err(Refusal::Invalid),
            "last byte {last}"
        );
    }
    // Every last character of the text but the right one.
    let sig = URL_SAFE_NO_PAD.encode(&tag);
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for c in alphabet.chars().filter(|c| !sig.ends_with(*c)) {
        let query = format!("{prefix}{}{c}", &sig[..sig.len() - 1]);
        assert_eq!(
            check(&p, Action::Play, "live", "cam", &query, client()),
            Err(Refusal::Invalid),
            "{query}"
        );
    }
}

/// A small deterministic byte generator (xorshift), so the brute-force test needs no RNG crate.
fn fastrand_like(seed: u64) -> impl FnMut() -> u8 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state.to_le_bytes()[3]
    }
}
