//! The `[auth]` section: who may publish and who may play, per application.
//!
//! Every key has a default (`#[serde(default)]` on every struct), so `[auth]` may be absent or
//! name only what differs; unknown keys are refused. `README-config.toml` beside this crate's
//! manifest documents each key and is checked to parse into [`AuthConfig::default`].
//! [`AuthConfig::validate`] checks what parses but cannot work, without reading files; the
//! files (`signing_key_file`, `key_file`, `es256_public_key_file`) are read by
//! [`crate::Policy::load`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Shortest secret accepted for signing keys, the grant secret and the JWT HS256 secret.
pub const MIN_SECRET_BYTES: usize = 16;

/// Longest key id (`kid`).
pub const MAX_KEY_ID_BYTES: usize = 64;

/// The `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Signed URLs and JWTs are still accepted this long past their expiry (and this long
    /// before a JWT's `nbf`), for clocks that disagree. Default 30000.
    pub clock_skew_ms: u64,
    /// Signing keys for `check = "signed"`: key id -> secret (UTF-8, at least 16 bytes).
    /// Several at once allow rotation. Default: none.
    pub signing_keys: BTreeMap<String, String>,
    /// "" or a file of lines `ID SECRET` (`#` comments and blank lines allowed), read at
    /// load and on every reload; its keys replace `signing_keys` entries of the same id.
    /// Default "".
    pub signing_key_file: String,
    /// Secret of the HLS grants (the tokens in HLS URLs that let a player that passed the
    /// play check fetch the playlist's parts). "" = random per process: a grant is then valid
    /// on this node only, until it restarts. Default "".
    pub grant_secret: String,
    /// Lifetime of an HLS grant. Default 21600000 (6 h).
    pub grant_ttl_ms: u64,
    /// JSON Web Tokens for `check = "jwt"`.
    pub jwt: JwtConfig,
    /// Webhooks (`hook`, `done_hook` of a rule).
    pub webhook: WebhookConfig,
    /// Rules of applications without their own entry in `apps`. Default: open / open.
    pub default: AppRules,
    /// Rules per application (`[auth.apps.NAME]`).
    pub apps: BTreeMap<String, AppRules>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            clock_skew_ms: 30_000,
            signing_keys: BTreeMap::new(),
            signing_key_file: String::new(),
            grant_secret: String::new(),
            grant_ttl_ms: 21_600_000,
            jwt: JwtConfig::default(),
            webhook: WebhookConfig::default(),
            default: AppRules::default(),
            apps: BTreeMap::new(),
        }
    }
}

/// Publish and play rules of one application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppRules {
    /// Who may publish. Default: open.
    pub publish: Rule,
    /// Who may play (RTMP, HTTP-FLV, HLS). Default: open.
    pub play: Rule,
}

/// One rule: the check, then optionally a webhook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// What the client must show. Default "open".
    pub check: Check,
    /// Stream keys for `check = "key"` (`?key=...`). Default: none.
    pub keys: Vec<String>,
    /// "" or a file of stream keys, one a line (`#` comments and blank lines allowed), read
    /// at load and on every reload, added to `keys`. Default "".
    pub key_file: String,
    /// `signed` and `jwt` only: the credential must name the client's address (`ip`) and it
    /// must match; HLS grants are then bound to the address too. Default false.
    pub bind_address: bool,
    /// "" or an http:// URL asked after `check` allowed; its answer decides. Default "".
    pub hook: String,
    /// "" or an http:// URL told when the session ends (`on_publish_done`, `on_play_done`).
    /// Default "".
    pub done_hook: String,
}

/// What a rule checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Anyone.
    #[default]
    Open,
    /// A static stream key: `?key=K`.
    Key,
    /// A signed URL: `?exp=..&kid=..&sig=..[&ip=..]` (see [`crate::sign`]).
    Signed,
    /// A JSON Web Token: `?token=JWT`.
    Jwt,
    /// No one.
    Deny,
}

impl Check {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Open => "open",
            Check::Key => "key",
            Check::Signed => "signed",
            Check::Jwt => "jwt",
            Check::Deny => "deny",
        }
    }
}

/// Webhook settings (the HTTP calls are made by the front ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Deadline of one hook call. Default 2000.
    pub timeout_ms: u64,
    /// Hook calls in flight at once; more wait (up to `timeout_ms`). Default 64.
    pub max_concurrent: usize,
    /// How long an allow or deny answer is reused for the same (hook, action, app, stream,
    /// client, query). 0 = never. Default 5000.
    pub cache_ms: u64,
    /// What a timeout, an unreachable hook or another failure to get an answer means.
    /// Default "deny".
    pub on_failure: OnFailure,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 2000,
            max_concurrent: 64,
            cache_ms: 5000,
            on_failure: OnFailure::Deny,
        }
    }
}

impl WebhookConfig {
    /// Deadline of one hook call.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    /// How long an answer is reused.
    pub fn cache(&self) -> Duration {
        Duration::from_millis(self.cache_ms)
    }
}

/// What a hook that gave no answer means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Refuse the client.
    #[default]
    Deny,
    /// Let the client in.
    Allow,
}

/// JSON Web Token verification keys; both "" = `check = "jwt"` cannot be used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// "" or the HS256 secret (UTF-8, at least 16 bytes). Default "".
    pub hs256_secret: String,
    /// "" or a PEM file with the ES256 public key (SubjectPublicKeyInfo, P-256). Default "".
    pub es256_public_key_file: String,
}

impl JwtConfig {
    /// Whether any JWT key is configured.
    pub fn is_configured(&self) -> bool {
        !self.hs256_secret.is_empty() || !self.es256_public_key_file.is_empty()
    }
}

/// Whether `id` may name a signing key: 1..=64 of `A-Z a-z 0-9 - _ .` (it travels in URLs
/// and in the key file's `ID SECRET` lines as it is).
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl AuthConfig {
    /// The rules of `app`: its own entry, else `default`.
    pub fn rules(&self, app: &str) -> &AppRules {
        self.apps.get(app).unwrap_or(&self.default)
    }

    /// Checks values that parse but cannot work. Reads no file: what the files hold is
    /// checked by [`crate::Policy::load`]. Messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.clock_skew_ms > 86_400_000 {
            return Err("auth.clock_skew_ms must be at most 86400000 (one day)".to_owned());
        }
        for (id, secret) in &self.signing_keys {
            if !valid_key_id(id) {
                return Err(format!(
                    "auth.signing_keys: key id {id:?} must be 1 to {MAX_KEY_ID_BYTES} of \
                     A-Z a-z 0-9 - _ ."
                ));
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "auth.signing_keys.{id}: the secret must be at least {MIN_SECRET_BYTES} bytes"
                ));
            }
        }
        if !self.grant_secret.is_empty() && self.grant_secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "auth.grant_secret must be \"\" (random per process) or at least \
                 {MIN_SECRET_BYTES} bytes"
            ));
        }
        if self.grant_ttl_ms == 0 {
            return Err("auth.grant_ttl_ms must be positive".to_owned());
        }
        if !self.jwt.hs256_secret.is_empty() && self.jwt.hs256_secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "auth.jwt.hs256_secret must be \"\" or at least {MIN_SECRET_BYTES} bytes"
            ));
        }
        if self.webhook.timeout_ms == 0 {
            return Err("auth.webhook.timeout_ms must be positive".to_owned());
        }
        if self.webhook.max_concurrent == 0 {
            return Err("auth.webhook.max_concurrent must be at least 1".to_owned());
        }
        self.validate_rules("auth.default", &self.default)?;
        for (app, rules) in &self.apps {
            if app.is_empty() || app.contains('/') {
                return Err(format!(
                    "auth.apps: application name {app:?} must be non-empty and hold no `/`"
                ));
            }
            self.validate_rules(&format!("auth.apps.{app}"), rules)?;
        }
        Ok(())
    }

    fn validate_rules(&self, at: &str, rules: &AppRules) -> Result<(), String> {
        self.validate_rule(&format!("{at}.publish"), &rules.publish)?;
        self.validate_rule(&format!("{at}.play"), &rules.play)
    }

    fn validate_rule(&self, at: &str, rule: &Rule) -> Result<(), String> {
        let check = rule.check.as_str();
        match rule.check {
            Check::Key => {
                if rule.keys.is_empty() && rule.key_file.is_empty() {
                    return Err(format!(
                        "{at}: check = \"key\" needs {at}.keys or {at}.key_file"
                    ));
                }
                if rule.keys.iter().any(String::is_empty) {
                    return Err(format!("{at}.keys: a key may not be empty"));
                }
            }
            Check::Signed => {
                if self.signing_keys.is_empty() && self.signing_key_file.is_empty() {
                    return Err(format!(
                        "{at}: check = \"signed\" needs auth.signing_keys or auth.signing_key_file"
                    ));
                }
            }
            Check::Jwt => {
                if !self.jwt.is_configured() {
                    return Err(format!(
                        "{at}: check = \"jwt\" needs auth.jwt.hs256_secret or \
                         auth.jwt.es256_public_key_file"
                    ));
                }
            }
            Check::Open | Check::Deny => {}
        }
        if rule.bind_address && !matches!(rule.check, Check::Signed | Check::Jwt) {
            return Err(format!(
                "{at}: bind_address needs check = \"signed\" or \"jwt\" (check = \"{check}\" \
                 carries no address)"
            ));
        }
        for (key, url) in [("hook", &rule.hook), ("done_hook", &rule.done_hook)] {
            // Hook services are internal: plain http (https is not spoken by the client).
            if !url.is_empty() {
                crate::HookUrl::parse(url).map_err(|why| format!("{at}.{key}: {why}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = include_str!("../README-config.toml");

    /// The README's `[auth]` section, as the orchestrator pastes it into `config/sluice.toml`.
    fn readme_auth() -> AuthConfig {
        let table: toml::Table = toml::from_str(README).expect("README-config.toml is TOML");
        let auth = table.get("auth").expect("an [auth] table").clone();
        auth.try_into().expect("README-config.toml's [auth] parses")
    }

    #[test]
    fn the_documented_example_is_the_default() {
        assert_eq!(readme_auth(), AuthConfig::default());
        assert_eq!(AuthConfig::default().validate(), Ok(()));
        let d = AuthConfig::default();
        assert_eq!(d.clock_skew_ms, 30_000);
        assert_eq!(d.grant_ttl_ms, 21_600_000);
        assert_eq!(d.webhook.timeout(), Duration::from_secs(2));
        assert_eq!(d.webhook.max_concurrent, 64);
        assert_eq!(d.webhook.cache_ms, 5000);
        assert_eq!(d.webhook.on_failure, OnFailure::Deny);
        assert_eq!(d.default.publish.check, Check::Open);
        assert_eq!(d.default.play.check, Check::Open);
    }

    #[test]
    fn every_key_of_the_readme_is_documented_and_commented_examples_parse() {
        // The commented-out example lines, uncommented, are a valid config too.
        let uncommented: String = README
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(example) if looks_like_toml(example) => example,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let table: toml::Table = toml::from_str(&uncommented).expect("the examples are TOML");
        let example: AuthConfig = table["auth"].clone().try_into().expect("examples parse");
        assert_eq!(example.apps["live"].publish.check, Check::Key);
        assert_eq!(example.apps["live"].play.check, Check::Signed);
        assert!(example.apps["live"].play.bind_address);
        assert_eq!(example.apps["closed"].publish.check, Check::Deny);
        assert_eq!(example.validate(), Ok(()));
        for key in [
            "clock_skew_ms",
            "signing_key_file",
            "grant_secret",
            "grant_ttl_ms",
            "hs256_secret",
            "es256_public_key_file",
            "timeout_ms",
            "max_concurrent",
            "cache_ms",
            "on_failure",
            "check",
            "keys",
            "key_file",
            "bind_address",
            "hook",
            "done_hook",
        ] {
            assert!(
                README.contains(&format!("{key} =")),
                "README documents {key}"
            );
        }
        for table in [
            "signing_keys",
            "jwt",
            "webhook",
            "default.publish",
            "default.play",
            "apps",
        ] {
            assert!(
                README.contains(&format!("[auth.{table}]")),
                "README has [auth.{table}]"
            );
        }
    }

    /// An example line of the README: a table header or `key = value` (not prose).
    fn looks_like_toml(line: &str) -> bool {
        line.starts_with("[auth")
            || line
                .split_once(" = ")
                .is_some_and(|(k, _)| !k.contains(' '))
    }

    /// `config/sluice.toml` (the binary's embedded default) carries this README's `[auth]`,
    /// so every key can be overridden from the environment and the defaults cannot drift.
    #[test]
    fn the_workspace_default_config_carries_the_readme_section() {
        let workspace: toml::Table =
            toml::from_str(include_str!("../../../config/sluice.toml")).expect("sluice.toml");
        let readme: toml::Table = toml::from_str(README).expect("README-config.toml");
        assert_eq!(workspace.get("auth"), readme.get("auth"));
    }

    #[test]
    fn toml_roundtrips() {
        let mut c = AuthConfig::default();
        c.signing_keys
            .insert("k1".into(), "0123456789abcdef0123".into());
        c.apps.insert(
            "live".into(),
            AppRules {
                publish: Rule {
                    check: Check::Key,
                    keys: vec!["a".into(), "b c".into()],
                    key_file: "/etc/keys".into(),
                    hook: "http://127.0.0.1:9/on_publish".into(),
                    ..Rule::default()
                },
                play: Rule {
                    check: Check::Signed,
                    bind_address: true,
                    done_hook: "http://x/done".into(),
                    ..Rule::default()
                },
            },
        );
        c.webhook.on_failure = OnFailure::Allow;
        c.jwt.hs256_secret = "s".repeat(32);
        let text = toml::to_string_pretty(&c).unwrap();
        let back: AuthConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.validate(), Ok(()));
        // And the default.
        let text = toml::to_string_pretty(&AuthConfig::default()).unwrap();
        assert_eq!(
            toml::from_str::<AuthConfig>(&text).unwrap(),
            AuthConfig::default()
        );
    }

    #[test]
    fn hook_urls_the_client_cannot_call_are_config_errors() {
        for (url, why) in [
            ("https://hooks.internal/on_play", "https is not supported"),
            ("http://host:port/x", "the port"),
            ("http://user@host/x", "user:password"),
            ("http://host/x y", "spaces"),
        ] {
            let text = format!("[apps.live.play]\nhook = {url:?}\n");
            let c: AuthConfig = toml::from_str(&text).unwrap();
            let e = c.validate().unwrap_err();
            assert!(
                e.contains("apps.live.play.hook") && e.contains(why),
                "{url}: {e}"
            );
        }
        let ok: AuthConfig =
            toml::from_str("[apps.live.play]\ndone_hook = \"http://[::1]:9/done\"\n").unwrap();
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn sparse_sections_take_defaults_and_unknown_keys_are_refused() {
        let c: AuthConfig = toml::from_str("[apps.live.play]\ncheck = \"deny\"\n").unwrap();
        assert_eq!(c.apps["live"].play.check, Check::Deny);
        assert_eq!(c.apps["live"].publish, Rule::default());
        assert_eq!(c.clock_skew_ms, 30_000);
        assert_eq!(c.rules("live").play.check, Check::Deny);
        assert_eq!(c.rules("other"), &AppRules::default());
        for bad in [
            "nope = 1",
            "[apps.live]\nread = {}",
            "[apps.live.play]\ncheck = \"maybe\"",
            "[apps.live.play]\nchek = \"open\"",
            "[webhook]\non_failure = \"retry\"",
            "[jwt]\nrs256 = \"\"",
        ] {
            assert!(toml::from_str::<AuthConfig>(bad).is_err(), "{bad}");
        }
    }

    fn invalid(text: &str) -> String {
        let c: AuthConfig = toml::from_str(text).unwrap();
        c.validate().expect_err(text)
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_key() {
        assert_eq!(
            invalid("[apps.live.play]\ncheck = \"signed\""),
            "auth.apps.live.play: check = \"signed\" needs auth.signing_keys or auth.signing_key_file"
        );
        assert_eq!(
            invalid("[default.publish]\ncheck = \"key\""),
            "auth.default.publish: check = \"key\" needs auth.default.publish.keys or \
             auth.default.publish.key_file"
        );
        assert!(invalid("[apps.x.play]\ncheck = \"jwt\"").starts_with("auth.apps.x.play: "));
        assert!(invalid("[signing_keys]\nk1 = \"short\"").contains("auth.signing_keys.k1"));
        assert!(
            invalid("[signing_keys]\n\"a b\" = \"0123456789abcdef\"").contains("key id \"a b\"")
        );
        assert!(invalid("grant_secret = \"short\"").contains("auth.grant_secret"));
        assert!(invalid("grant_ttl_ms = 0").contains("auth.grant_ttl_ms"));
        assert!(invalid("[jwt]\nhs256_secret = \"x\"").contains("auth.jwt.hs256_secret"));
        assert!(invalid("[webhook]\ntimeout_ms = 0").contains("auth.webhook.timeout_ms"));
        assert!(invalid("[webhook]\nmax_concurrent = 0").contains("auth.webhook.max_concurrent"));
        assert!(invalid("clock_skew_ms = 100000000").contains("auth.clock_skew_ms"));
        assert!(
            invalid("[apps.live.play]\nbind_address = true")
                .starts_with("auth.apps.live.play: bind_address")
        );
        assert!(
            invalid("[apps.live.play]\nhook = \"ftp://x\"").starts_with("auth.apps.live.play.hook")
        );
        assert!(
            invalid("[apps.live.publish]\ncheck = \"key\"\nkeys = [\"\"]")
                .starts_with("auth.apps.live.publish.keys")
        );
        assert!(invalid("[apps.\"a/b\"]").contains("application name"));
        // Key files satisfy the checks without being read here.
        let ok: AuthConfig = toml::from_str(
            "signing_key_file = \"/nonexistent\"\n[apps.a.play]\ncheck = \"signed\"\n\
             [apps.a.publish]\ncheck = \"key\"\nkey_file = \"/nonexistent\"",
        )
        .unwrap();
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn key_ids_are_url_and_line_safe() {
        for good in ["k1", "2025-01", "a.b_c", &"x".repeat(64)] {
            assert!(valid_key_id(good), "{good}");
        }
        for bad in ["", "a b", "a=b", "a&b", "ü", &"x".repeat(65)] {
            assert!(!valid_key_id(bad), "{bad}");
        }
    }
}
