//! Every rule and refusal of [`Policy`], on hand-made configs and credentials.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::jwt::tests::{es256, es256_pair, hs256, token};
use crate::mac::tests::comparisons;
use crate::*;

const NOW: u64 = 1_700_000_000_000;
const SECRET: &str = "k1-secret-0123456789";
const SECRET2: &str = "k2-secret-abcdefghij";
const HS: &str = "jwt-secret-0123456789abcdef";

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn client() -> IpAddr {
    v4(192, 0, 2, 7)
}

fn policy(text: &str) -> Policy {
    let config: AuthConfig = toml::from_str(text).expect("test config parses");
    Policy::load(&config).expect("test policy loads")
}

fn access<'a>(action: Action, app: &'a str, stream: &'a str, query: &'a str) -> Access<'a> {
    Access {
        action,
        app,
        stream,
        query,
        client: client(),
        now_unix_ms: NOW,
    }
}

fn play<'a>(app: &'a str, stream: &'a str, query: &'a str) -> Access<'a> {
    access(Action::Play, app, stream, query)
}

fn check(p: &Policy, a: Access<'_>) -> Result<(), Refusal> {
    p.check(&a).map(|_| ())
}

fn signed_policy(bind: bool) -> Policy {
    policy(&format!(
        "[signing_keys]\nk1 = \"{SECRET}\"\nk2 = \"{SECRET2}\"\n\
         [apps.live.play]\ncheck = \"signed\"\nbind_address = {bind}\n\
         [apps.live.publish]\ncheck = \"signed\"\n"
    ))
}

/// A signed query for `action` on live/cam, valid until `NOW/1000 + secs`.
fn signed(kid: &str, secret: &str, action: Action, secs: i64, ip: Option<IpAddr>) -> String {
    let exp = (NOW / 1000).saturating_add_signed(secs);
    sign(kid, secret.as_bytes(), action, "live", "cam", exp, ip)
}

#[test]
fn refusals_have_labels_and_http_statuses() {
    let all = [
        (Refusal::Missing, "auth_missing", "401 Unauthorized", 401),
        (Refusal::Invalid, "auth_invalid", "403 Forbidden", 403),
        (Refusal::Expired, "auth_expired", "410 Gone", 410),
        (Refusal::Denied, "auth_denied", "403 Forbidden", 403),
    ];
    for (r, label, status, code) in all {
        assert_eq!(r.label(), label);
        assert_eq!(r.http_status(), status);
        assert_eq!(r.http_code(), code);
        assert_eq!(r.to_string(), label);
    }
    assert_eq!(Action::Publish.as_str(), "publish");
    assert_eq!(Action::Play.to_string(), "play");
}

#[test]
fn open_admits_anyone_and_hands_over_the_hooks() {
    let p = policy(
        "[default.play]\nhook = \"http://127.0.0.1:1/on_play\"\ndone_hook = \"http://h/done\"\n\
         [apps.quiet.play]\ncheck = \"open\"\n",
    );
    let admit = p.check(&play("any", "s", "")).unwrap();
    assert_eq!(admit.hook.as_deref(), Some("http://127.0.0.1:1/on_play"));
    assert_eq!(admit.done_hook.as_deref(), Some("http://h/done"));
    // An app with its own entry does not inherit the default's hooks.
    assert_eq!(p.check(&play("quiet", "s", "")), Ok(Admit::default()));
    assert_eq!(
        p.check(&access(Action::Publish, "any", "s", "junk=%zz")),
        Ok(Admit::default())
    );
    assert!(p.is_open("any", Action::Play));
    assert!(
        Policy::load(&AuthConfig::default())
            .unwrap()
            .is_open("x", Action::Publish)
    );
}

#[test]
fn apps_take_their_own_rules_else_the_default() {
    let p = policy(
        "[default.publish]\ncheck = \"deny\"\n[apps.live.publish]\ncheck = \"open\"\n\
         [apps.live.play]\ncheck = \"deny\"\n",
    );
    assert_eq!(p.rule("live", Action::Publish).check, Check::Open);
    assert_eq!(p.rule("live", Action::Play).check, Check::Deny);
    assert_eq!(p.rule("other", Action::Publish).check, Check::Deny);
    assert_eq!(p.rule("other", Action::Play).check, Check::Open);
    assert!(!p.is_open("other", Action::Publish));
    assert_eq!(
        check(&p, access(Action::Publish, "other", "s", "key=x")),
        Err(Refusal::Denied)
    );
    assert_eq!(check(&p, play("live", "s", "")), Err(Refusal::Denied));
    assert_eq!(check(&p, access(Action::Publish, "live", "s", "")), Ok(()));
    assert_eq!(check(&p, play("other", "s", "")), Ok(()));
}

#[test]
fn stream_keys_come_from_the_rule_and_its_file_and_are_reread_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "# keys\nfile-key-1\n\n").unwrap();
    let text = format!(
        "[apps.live.publish]\ncheck = \"key\"\nkeys = [\"static key+1\"]\nkey_file = {:?}\n\
         hook = \"http://127.0.0.1:1/p\"\n",
        file.display()
    );
    let config: AuthConfig = toml::from_str(&text).unwrap();
    let p = Policy::load(&config).unwrap();
    let publish = |p: &Policy, q: &str| check(p, access(Action::Publish, "live", "cam", q));
    assert_eq!(publish(&p, ""), Err(Refusal::Missing));
    assert_eq!(publish(&p, "key="), Err(Refusal::Missing));
    assert_eq!(publish(&p, "other=1"), Err(Refusal::Missing));
    assert_eq!(publish(&p, "key=nope"), Err(Refusal::Invalid));
    assert_eq!(publish(&p, "key=file-key"), Err(Refusal::Invalid));
    assert_eq!(publish(&p, "key=file-key-12"), Err(Refusal::Invalid));
    assert_eq!(publish(&p, "key=file-key-1"), Ok(()));
    assert_eq!(publish(&p, "key=static%20key%2B1"), Ok(()));
    assert_eq!(publish(&p, "key=static%20key+1"), Ok(()));
    // RTMP: the connect app's query and the stream name's, joined.
    assert_eq!(publish(&p, "vhost=x&key=file-key-1"), Ok(()));
    assert_eq!(
        p.check(&access(Action::Publish, "live", "cam", "key=file-key-1"))
            .unwrap()
            .hook
            .as_deref(),
        Some("http://127.0.0.1:1/p")
    );
    // Play stays open.
    assert_eq!(check(&p, play("live", "cam", "")), Ok(()));
    // Reload: the file is read again.
    std::fs::write(&file, "file-key-2\n").unwrap();
    let p = Policy::load(&config).unwrap();
    assert_eq!(publish(&p, "key=file-key-1"), Err(Refusal::Invalid));
    assert_eq!(publish(&p, "key=file-key-2"), Ok(()));
}

#[test]
fn signed_urls_pass_until_expiry_plus_skew() {
    let p = signed_policy(false);
    for (kid, secret) in [("k1", SECRET), ("k2", SECRET2)] {
        let q = signed(kid, secret, Action::Play, 60, None);
        assert!(q.starts_with(&format!("exp={}&kid={kid}&sig=", NOW / 1000 + 60)));
        assert_eq!(check(&p, play("live", "cam", &q)), Ok(()), "{kid}");
    }
    let q = signed("k1", SECRET, Action::Play, -10, None);
    assert_eq!(
        check(&p, play("live", "cam", &q)),
        Ok(()),
        "within the skew"
    );
    let q = signed("k1", SECRET, Action::Play, -31, None);
    assert_eq!(check(&p, play("live", "cam", &q)), Err(Refusal::Expired));
    // Exactly at the end of the skew still passes; a millisecond later does not.
    let q = signed("k1", SECRET, Action::Play, -30, None);
    assert_eq!(check(&p, play("live", "cam", &q)), Ok(()));
    let mut late = play("live", "cam", &q);
    late.now_unix_ms += 1;
    assert_eq!(check(&p, late), Err(Refusal::Expired));
}

#[test]
fn signed_urls_refuse_everything_else() {
    let p = signed_policy(false);
    let good = signed("k1", SECRET, Action::Play, 60, None);
    let exp = NOW / 1000 + 60;
    let sig = good.rsplit("sig=").next().unwrap();
    let cases: &[(&str, String, Refusal)] = &[
        ("no credential", String::new(), Refusal::Missing),
        ("no sig", format!("exp={exp}&kid=k1"), Refusal::Missing),
        (
            "empty sig",
            format!("exp={exp}&kid=k1&sig="),
            Refusal::Missing,
        ),
        ("no kid", format!("exp={exp}&sig={sig}"), Refusal::Invalid),
        (
            "unknown kid",
            format!("exp={exp}&kid=k3&sig={sig}"),
            Refusal::Invalid,
        ),
        (
            "other key's id",
            format!("exp={exp}&kid=k2&sig={sig}"),
            Refusal::Invalid,
        ),
        ("no exp", format!("kid=k1&sig={sig}"), Refusal::Invalid),
        (
            "exp not decimal",
            format!("exp=+{exp}&kid=k1&sig={sig}"),
            Refusal::Invalid,
        ),
        (
            "exp moved",
            format!("exp={}&kid=k1&sig={sig}", exp + 1),
            Refusal::Invalid,
        ),
        (
            "exp with zero",
            format!("exp=0{exp}&kid=k1&sig={sig}"),
            Refusal::Invalid,
        ),
        (
            "sig not base64url",
            format!("exp={exp}&kid=k1&sig=a+b/"),
            Refusal::Invalid,
        ),
        (
            "sig padded",
            format!("exp={exp}&kid=k1&sig={sig}="),
            Refusal::Invalid,
        ),
        (
            "sig huge",
            format!("exp={exp}&kid=k1&sig={}", "A".repeat(100_000)),
            Refusal::Invalid,
        ),
        ("ip added", format!("{good}&ip=192.0.2.7"), Refusal::Invalid),
    ];
    for (what, q, refusal) in cases {
        assert_eq!(check(&p, play("live", "cam", q)), Err(*refusal), "{what}");
    }
    // The signature names the action, the app and the stream.
    assert_eq!(
        check(&p, access(Action::Publish, "live", "cam", &good)),
        Err(Refusal::Invalid)
    );
    assert_eq!(
        check(&p, play("live", "cam2", &good)),
        Err(Refusal::Invalid)
    );
    assert_eq!(check(&p, play("live", "ca", &good)), Err(Refusal::Invalid));
    // The first of a repeated parameter counts: a second sig does not replace the first.
    assert_eq!(
        check(&p, play("live", "cam", &format!("{good}&sig=AAAA"))),
        Ok(())
    );
    assert_eq!(
        check(&p, play("live", "cam", &format!("sig=AAAA&{good}"))),
        Err(Refusal::Invalid)
    );
    // An expired forgery is Invalid, not Expired.
    let old = signed("k1", SECRET, Action::Play, -3600, None);
    assert_eq!(check(&p, play("live", "cam", &old)), Err(Refusal::Expired));
    let forged = signed("k1", "not-the-secret-at-all", Action::Play, -3600, None);
    assert_eq!(
        check(&p, play("live", "cam", &forged)),
        Err(Refusal::Invalid)
    );
    // Control characters cannot stand in for the message's separators.
    let q = sign(
        "k1",
        SECRET.as_bytes(),
        Action::Play,
        "live",
        "a\nb",
        exp,
        None,
    );
    assert_eq!(check(&p, play("live", "a\nb", &q)), Err(Refusal::Invalid));
}

#[test]
fn signed_urls_bind_the_client_address() {
    let p = signed_policy(true);
    let bound = signed("k1", SECRET, Action::Play, 60, Some(client()));
    assert!(bound.ends_with("&ip=192.0.2.7"));
    assert_eq!(check(&p, play("live", "cam", &bound)), Ok(()));
    let mut other = play("live", "cam", &bound);
    other.client = v4(192, 0, 2, 8);
    assert_eq!(check(&p, other), Err(Refusal::Invalid));
    // IPv4-mapped IPv6 is the same client, both ways round.
    let mut mapped = play("live", "cam", &bound);
    mapped.client = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
    assert_eq!(check(&p, mapped), Ok(()));
    let signed_mapped = signed(
        "k1",
        SECRET,
        Action::Play,
        60,
        Some(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped())),
    );
    assert_eq!(check(&p, play("live", "cam", &signed_mapped)), Ok(()));
    // IPv6, percent-encoded in the query.
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let q = signed("k1", SECRET, Action::Play, 60, Some(v6));
    assert!(q.ends_with("&ip=2001%3Adb8%3A%3A1"));
    let mut a = play("live", "cam", &q);
    a.client = v6;
    assert_eq!(check(&p, a), Ok(()));
    // bind_address: an unbound URL is refused.
    let unbound = signed("k1", SECRET, Action::Play, 60, None);
    assert_eq!(
        check(&p, play("live", "cam", &unbound)),
        Err(Refusal::Invalid)
    );
    // Without bind_address an ip in the URL is still checked.
    let p = signed_policy(false);
    let mut other = play("live", "cam", &bound);
    other.client = v4(10, 0, 0, 1);
    assert_eq!(check(&p, other), Err(Refusal::Invalid));
    assert_eq!(check(&p, play("live", "cam", &unbound)), Ok(()));
    // A signed ip that does not parse is Invalid.
    let exp = (NOW / 1000 + 60).to_string();
    let msg = crate::signed::message(Action::Play, "live", "cam", &exp, "nope");
    let tag = crate::mac::b64(crate::mac::mac(&crate::mac::key(SECRET.as_bytes()), &msg).as_ref());
    let q = format!("exp={exp}&kid=k1&sig={tag}&ip=nope");
    assert_eq!(check(&p, play("live", "cam", &q)), Err(Refusal::Invalid));
}

#[test]
fn signing_key_files_rotate_keys_and_override_config_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signing");
    std::fs::write(
        &file,
        "k1 file-secret-for-k1-000\nk9 file-secret-for-k9-000\n",
    )
    .unwrap();
    let config: AuthConfig = toml::from_str(&format!(
        "signing_key_file = {:?}\n[signing_keys]\nk1 = \"{SECRET}\"\nk2 = \"{SECRET2}\"\n\
         [default.play]\ncheck = \"signed\"\n",
        file.display()
    ))
    .unwrap();
    let merged = load_signing_keys(&config).unwrap();
    assert_eq!(
        merged.keys().map(String::as_str).collect::<Vec<_>>(),
        ["k1", "k2", "k9"]
    );
    let p = Policy::load(&config).unwrap();
    let ok = |kid: &str, secret: &str| {
        let q = signed(kid, secret, Action::Play, 60, None);
        check(&p, play("live", "cam", &q))
    };
    assert_eq!(ok("k1", "file-secret-for-k1-000"), Ok(()));
    assert_eq!(ok("k1", SECRET), Err(Refusal::Invalid));
    assert_eq!(ok("k2", SECRET2), Ok(()));
    assert_eq!(ok("k9", "file-secret-for-k9-000"), Ok(()));
    // Reload after the file dropped k9.
    std::fs::write(&file, "k1 file-secret-for-k1-000\n").unwrap();
    let p2 = Policy::load(&config).unwrap();
    let q = signed("k9", "file-secret-for-k9-000", Action::Play, 60, None);
    assert_eq!(check(&p2, play("live", "cam", &q)), Err(Refusal::Invalid));
}

#[test]
fn load_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let load = |text: String| Policy::load(&toml::from_str(&text).unwrap()).unwrap_err();
    let err = load(format!(
        "signing_key_file = {:?}\n[default.play]\ncheck = \"signed\"",
        missing.display()
    ));
    assert!(matches!(err, AuthError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("reading {}", missing.display()))
    );

    let bad = dir.path().join("bad");
    std::fs::write(&bad, "# c\nk1 0123456789abcdef\nk2 short\n").unwrap();
    let err = load(format!("signing_key_file = {:?}", bad.display()));
    assert_eq!(
        err.to_string(),
        format!(
            "{}:3: the secret of key \"k2\" must be at least 16 bytes",
            bad.display()
        )
    );

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nothing yet\n").unwrap();
    let err = load(format!(
        "signing_key_file = {:?}\n[apps.live.play]\ncheck = \"signed\"",
        empty.display()
    ));
    assert!(err.to_string().contains("hold no key"), "{err}");
    let err = load(format!(
        "[apps.live.publish]\ncheck = \"key\"\nkey_file = {:?}",
        empty.display()
    ));
    assert!(
        err.to_string()
            .contains("auth.apps.live.publish: check = \"key\" but"),
        "{err}"
    );
    let err = load(format!(
        "[apps.live.publish]\ncheck = \"key\"\nkey_file = {:?}",
        missing.display()
    ));
    assert!(matches!(err, AuthError::Read { .. }));
    let err = load(format!(
        "[jwt]\nes256_public_key_file = {:?}",
        empty.display()
    ));
    assert!(matches!(err, AuthError::PublicKey { .. }), "{err}");
    let err = load("[apps.live.play]\ncheck = \"signed\"".to_owned());
    assert!(matches!(err, AuthError::Invalid(_)));
    assert!(err.to_string().contains("auth.apps.live.play"));
}

fn jwt_policy(bind: bool, es256_pem: Option<&str>) -> (Policy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("[jwt]\n");
    if let Some(pem) = es256_pem {
        let path = dir.path().join("es256.pem");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(pem.as_bytes())
            .unwrap();
        text.push_str(&format!("es256_public_key_file = {:?}\n", path.display()));
    } else {
        text.push_str(&format!("hs256_secret = \"{HS}\"\n"));
    }
    text.push_str(&format!(
        "[apps.live.play]\ncheck = \"jwt\"\nbind_address = {bind}\n\
         [apps.live.publish]\ncheck = \"jwt\"\n"
    ));
    (policy(&text), dir)
}

fn claims(act: &str, stream: &str, exp_secs: i64, extra: &str) -> String {
    let exp = (NOW / 1000).saturating_add_signed(exp_secs);
    format!(r#"{{"act":"{act}","stream":"{stream}","exp":{exp}{extra}}}"#)
}

#[test]
fn hs256_tokens_name_action_stream_and_expiry() {
    let (p, _dir) = jwt_policy(false, None);
    let q = |t: String| format!("token={t}");
    let ok = q(hs256(HS, &claims("play", "live/cam", 60, "")));
    assert_eq!(check(&p, play("live", "cam", &ok)), Ok(()));
    let wildcard = q(hs256(HS, &claims("play", "live/*", 60, "")));
    assert_eq!(check(&p, play("live", "any", &wildcard)), Ok(()));
    let publish = q(hs256(HS, &claims("publish", "live/cam", 60, "")));
    assert_eq!(
        check(&p, access(Action::Publish, "live", "cam", &publish)),
        Ok(())
    );
    assert_eq!(
        check(&p, access(Action::Publish, "live", "cam", &ok)),
        Err(Refusal::Invalid),
        "a play token never publishes"
    );
    let refused: &[(&str, String, Refusal)] = &[
        ("none", String::new(), Refusal::Missing),
        ("empty", "token=".into(), Refusal::Missing),
        ("garbage", "token=a.b.c".into(), Refusal::Invalid),
        ("two parts", "token=a.b".into(), Refusal::Invalid),
        ("four parts", format!("{ok}.x"), Refusal::Invalid),
        (
            "other secret",
            q(hs256(
                "another-secret-0123456789",
                &claims("play", "live/cam", 60, ""),
            )),
            Refusal::Invalid,
        ),
        (
            "expired forgery",
            q(hs256(
                "another-secret-0123456789",
                &claims("play", "live/cam", -3600, ""),
            )),
            Refusal::Invalid,
        ),
        (
            "expired",
            q(hs256(HS, &claims("play", "live/cam", -31, ""))),
            Refusal::Expired,
        ),
        (
            "other stream",
            q(hs256(HS, &claims("play", "live/cam2", 60, ""))),
            Refusal::Invalid,
        ),
        (
            "other app",
            q(hs256(HS, &claims("play", "other/cam", 60, ""))),
            Refusal::Invalid,
        ),
        (
            "other app wildcard",
            q(hs256(HS, &claims("play", "liv/*", 60, ""))),
            Refusal::Invalid,
        ),
        (
            "prefix app",
            q(hs256(HS, &claims("play", "livex/cam", 60, ""))),
            Refusal::Invalid,
        ),
        (
            "no act",
            q(hs256(HS, r#"{"stream":"live/cam","exp":9999999999}"#)),
            Refusal::Invalid,
        ),
        (
            "no stream",
            q(hs256(HS, r#"{"act":"play","exp":9999999999}"#)),
            Refusal::Invalid,
        ),
        (
            "no exp",
            q(hs256(HS, r#"{"act":"play","stream":"live/cam"}"#)),
            Refusal::Invalid,
        ),
        (
            "exp a string",
            q(hs256(
                HS,
                r#"{"act":"play","stream":"live/cam","exp":"9999999999"}"#,
            )),
            Refusal::Invalid,
        ),
        (
            "nbf ahead",
            q(hs256(
                HS,
                &claims(
                    "play",
                    "live/cam",
                    600,
                    &format!(",\"nbf\":{}", NOW / 1000 + 60),
                ),
            )),
            Refusal::Invalid,
        ),
        (
            "payload not json",
            q(hs256(HS, "not json")),
            Refusal::Invalid,
        ),
        (
            "alg none",
            q(token(
                r#"{"alg":"none"}"#,
                &claims("play", "live/cam", 60, ""),
                |_| Vec::new(),
            )),
            Refusal::Invalid,
        ),
        (
            "alg HS512",
            q(token(
                r#"{"alg":"HS512"}"#,
                &claims("play", "live/cam", 60, ""),
                |i| {
                    crate::mac::mac(&crate::mac::key(HS.as_bytes()), i)
                        .as_ref()
                        .to_vec()
                },
            )),
            Refusal::Invalid,
        ),
        (
            "alg ES256 unconfigured",
            q(token(
                r#"{"alg":"ES256"}"#,
                &claims("play", "live/cam", 60, ""),
                |_| vec![0; 64],
            )),
            Refusal::Invalid,
        ),
        (
            "crit",
            q(token(
                r#"{"alg":"HS256","crit":["x"]}"#,
                &claims("play", "live/cam", 60, ""),
                |i| {
                    crate::mac::mac(&crate::mac::key(HS.as_bytes()), i)
                        .as_ref()
                        .to_vec()
                },
            )),
            Refusal::Invalid,
        ),
        (
            "huge",
            format!("token={}", "a".repeat(20_000)),
            Refusal::Invalid,
        ),
    ];
    for (what, query, refusal) in refused {
        assert_eq!(
            check(&p, play("live", "cam", query)),
            Err(*refusal),
            "{what}"
        );
    }
    // nbf within the skew, fractional dates.
    let nbf = q(hs256(
        HS,
        &claims(
            "play",
            "live/cam",
            60,
            &format!(",\"nbf\":{}", NOW / 1000 + 10),
        ),
    ));
    assert_eq!(check(&p, play("live", "cam", &nbf)), Ok(()));
    let frac = q(hs256(
        HS,
        &format!(
            r#"{{"act":"play","stream":"live/cam","exp":{}.5}}"#,
            NOW / 1000
        ),
    ));
    assert_eq!(check(&p, play("live", "cam", &frac)), Ok(()));
}

#[test]
fn jwt_bind_address_needs_a_matching_ip_claim() {
    let (p, _dir) = jwt_policy(true, None);
    let q = |extra: &str| {
        format!(
            "token={}",
            hs256(HS, &claims("play", "live/cam", 60, extra))
        )
    };
    assert_eq!(
        check(&p, play("live", "cam", &q(""))),
        Err(Refusal::Invalid)
    );
    assert_eq!(
        check(&p, play("live", "cam", &q(r#","ip":"192.0.2.7""#))),
        Ok(())
    );
    assert_eq!(
        check(&p, play("live", "cam", &q(r#","ip":"::ffff:192.0.2.7""#))),
        Ok(())
    );
    assert_eq!(
        check(&p, play("live", "cam", &q(r#","ip":"192.0.2.8""#))),
        Err(Refusal::Invalid)
    );
    // Publish has no bind_address, but a present ip is still checked.
    let pq = |extra: &str| {
        format!(
            "token={}",
            hs256(HS, &claims("publish", "live/cam", 60, extra))
        )
    };
    assert_eq!(
        check(&p, access(Action::Publish, "live", "cam", &pq(""))),
        Ok(())
    );
    assert_eq!(
        check(
            &p,
            access(Action::Publish, "live", "cam", &pq(r#","ip":"10.0.0.1""#))
        ),
        Err(Refusal::Invalid)
    );
}

#[test]
fn es256_tokens_verify_with_the_public_key_only() {
    let (pair, pem) = es256_pair();
    let (p, _dir) = jwt_policy(false, Some(&pem));
    let ok = format!(
        "token={}",
        es256(&pair, &claims("play", "live/cam", 60, ""))
    );
    assert_eq!(check(&p, play("live", "cam", &ok)), Ok(()));
    let (other, _) = es256_pair();
    let forged = format!(
        "token={}",
        es256(&other, &claims("play", "live/cam", 60, ""))
    );
    assert_eq!(
        check(&p, play("live", "cam", &forged)),
        Err(Refusal::Invalid)
    );
    let expired = format!(
        "token={}",
        es256(&pair, &claims("play", "live/cam", -60, ""))
    );
    assert_eq!(
        check(&p, play("live", "cam", &expired)),
        Err(Refusal::Expired)
    );
    // Algorithm confusion: HS256 "signed" with the public key's PEM as the secret is refused
    // because HS256 is not configured.
    let confused = format!("token={}", hs256(&pem, &claims("play", "live/cam", 60, "")));
    assert_eq!(
        check(&p, play("live", "cam", &confused)),
        Err(Refusal::Invalid)
    );
    // A signature of the wrong length.
    let mut short = ok.clone();
    short.truncate(short.len() - 4);
    assert_eq!(
        check(&p, play("live", "cam", &short)),
        Err(Refusal::Invalid)
    );
}

#[test]
fn grants_name_one_stream_and_expire() {
    let p = policy("grant_ttl_ms = 60000\n");
    let g = p.mint_grant("live", "cam", Some(client()), NOW);
    assert!(g.starts_with(&format!("g.{}.-.", NOW + 60_000)), "{g}");
    assert!(
        g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    );
    let v =
        |t: &str, stream: &str, ip: IpAddr, now: u64| p.verify_grant(t, "live", stream, ip, now);
    assert_eq!(v(&g, "cam", client(), NOW), Ok(()));
    // Not bound (the play rule has no bind_address): any address.
    assert_eq!(v(&g, "cam", v4(10, 0, 0, 1), NOW + 60_000), Ok(()));
    assert_eq!(v(&g, "cam", client(), NOW + 60_001), Err(Refusal::Expired));
    assert_eq!(v(&g, "cam2", client(), NOW), Err(Refusal::Invalid));
    assert_eq!(
        p.verify_grant(&g, "live2", "cam", client(), NOW),
        Err(Refusal::Invalid)
    );
    assert_eq!(v("", "cam", client(), NOW), Err(Refusal::Missing));
    for bad in [
        "g",
        "g.",
        "x.1.-.AAAA",
        "g.1.-",
        "g.1.-.AAAA.x",
        "g.-1.-.AAAA",
        "g.1.b.AAAA",
        &g.replacen(".-.", ".a.", 1),
        &g.replacen(&(NOW + 60_000).to_string(), &(NOW + 60_001).to_string(), 1),
        &format!("{g}A"),
        &"g.1.-.".repeat(100),
    ] {
        assert_eq!(v(bad, "cam", client(), NOW), Err(Refusal::Invalid), "{bad}");
    }
    // An expired forgery is Invalid.
    let forged = g.replacen(&(NOW + 60_000).to_string(), "1", 1);
    assert_eq!(v(&forged, "cam", client(), NOW), Err(Refusal::Invalid));
}

#[test]
fn a_reload_to_deny_ends_grants_and_a_new_grant_secret_voids_them() {
    let secret = "grant-secret-0123456789";
    let before = policy(&format!("grant_secret = \"{secret}\"\n"));
    let g = before.mint_grant("live", "cam", Some(client()), NOW);
    let denied = policy(&format!(
        "grant_secret = \"{secret}\"\n[apps.live.play]\ncheck = \"deny\"\n"
    ));
    assert_eq!(
        denied.verify_grant(&g, "live", "cam", client(), NOW),
        Err(Refusal::Denied)
    );
    let same = policy(&format!("grant_secret = \"{secret}\"\n"));
    assert_eq!(same.verify_grant(&g, "live", "cam", client(), NOW), Ok(()));
    let rotated = policy("grant_secret = \"another-secret-0123456789\"\n");
    assert_eq!(
        rotated.verify_grant(&g, "live", "cam", client(), NOW),
        Err(Refusal::Invalid)
    );
}

#[test]
fn grants_bind_the_address_when_play_binds() {
    let p = policy(&format!(
        "[signing_keys]\nk1 = \"{SECRET}\"\n[apps.live.play]\ncheck = \"signed\"\nbind_address = true\n"
    ));
    let g = p.mint_grant("live", "cam", Some(client()), NOW);
    assert!(g.contains(".a."), "{g}");
    assert_eq!(p.verify_grant(&g, "live", "cam", client(), NOW), Ok(()));
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
    assert_eq!(p.verify_grant(&g, "live", "cam", mapped, NOW), Ok(()));
    assert_eq!(
        p.verify_grant(&g, "live", "cam", v4(192, 0, 2, 8), NOW),
        Err(Refusal::Invalid)
    );
    // Minted without a client: unbound, so refused while the rule binds.
    let unbound = p.mint_grant("live", "cam", None, NOW);
    assert!(unbound.contains(".-."));
    assert_eq!(
        p.verify_grant(&unbound, "live", "cam", client(), NOW),
        Err(Refusal::Invalid)
    );
    // Other apps do not bind.
    let other = p.mint_grant("vod", "cam", Some(client()), NOW);
    assert!(other.contains(".-."));
    assert_eq!(
        p.verify_grant(&other, "vod", "cam", v4(10, 0, 0, 1), NOW),
        Ok(())
    );
    assert_eq!(
        p.mint_grant("live", "cam", Some(client()), NOW),
        g,
        "deterministic"
    );
}

#[test]
fn grant_secrets_are_shared_by_config_or_by_process() {
    // Random per process: a reload (a new Policy) keeps grants valid.
    let a = policy("");
    let b = policy("[apps.x.play]\ncheck = \"deny\"\n");
    let g = a.mint_grant("live", "cam", None, NOW);
    assert_eq!(b.verify_grant(&g, "live", "cam", client(), NOW), Ok(()));
    // A configured secret: valid on every node with it, nowhere else.
    let c = policy("grant_secret = \"shared-grant-secret-0123\"\n");
    let d = policy("grant_secret = \"shared-grant-secret-0123\"\n");
    let e = policy("grant_secret = \"other-grant-secret-01234\"\n");
    let g = c.mint_grant("live", "cam", None, NOW);
    assert_eq!(d.verify_grant(&g, "live", "cam", client(), NOW), Ok(()));
    assert_eq!(
        e.verify_grant(&g, "live", "cam", client(), NOW),
        Err(Refusal::Invalid)
    );
    assert_eq!(
        a.verify_grant(&g, "live", "cam", client(), NOW),
        Err(Refusal::Invalid)
    );
}

/// Proof by construction that refusing a signature is constant-time: every check of a
/// presented MAC, however wrong (first byte, last byte, all bytes, wrong length, expired),
/// makes exactly one comparison, and that comparison is `mac::mac_matches`, i.e.
/// `ring::hmac::verify`. There is no other path from a decoded signature to a decision.
#[test]
fn every_mac_decision_goes_through_the_constant_time_comparison() {
    let p = signed_policy(false);
    let good = signed("k1", SECRET, Action::Play, 60, None);
    let (head, sig) = good.rsplit_once("sig=").unwrap();
    let tag = crate::mac::unb64(sig, 64).unwrap();
    let variant = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut t = tag.clone();
        f(&mut t);
        format!("{head}sig={}", crate::mac::b64(&t))
    };
    let queries = [
        good.clone(),
        variant(&|t| t[0] ^= 1),
        variant(&|t| t[31] ^= 0x80),
        variant(&|t| t.iter_mut().for_each(|b| *b = !*b)),
        variant(&|t| t.truncate(31)),
        variant(&|t| t.push(0)),
        variant(&|t| t.clear()),
        signed("k1", SECRET, Action::Play, -3600, None),
    ];
    for q in &queries {
        let (result, n) = comparisons(|| check(&p, play("live", "cam", q)));
        if q.ends_with(&format!("sig={sig}")) {
            assert_eq!(result, Ok(()));
        } else {
            assert!(result.is_err());
        }
        // An empty sig= is Missing before any comparison; every other reaches it once.
        let expected = u64::from(!q.ends_with("sig="));
        assert_eq!(n, expected, "{q}");
    }
    // JWT HS256 and grants too.
    let (jp, _dir) = jwt_policy(false, None);
    let t = format!(
        "token={}",
        hs256(
            "not-the-secret-0123456789",
            &claims("play", "live/cam", 60, "")
        )
    );
    let (r, n) = comparisons(|| check(&jp, play("live", "cam", &t)));
    assert_eq!((r, n), (Err(Refusal::Invalid), 1));
    let g = p.mint_grant("live", "cam", None, NOW);
    let mut wrong = g.clone();
    let last = wrong.pop().unwrap();
    // 'A' and 'E' differ in a data bit of the last character (its two low bits are spare).
    wrong.push(if last == 'A' { 'E' } else { 'A' });
    for token in [&g, &wrong] {
        let (_, n) = comparisons(|| p.verify_grant(token, "live", "cam", client(), NOW));
        assert_eq!(n, 1, "{token}");
    }
}
