//! The access decision: a [`Policy`] built from `[auth]` (key files read once per load)
//! answers, for one publish or play attempt, whether the credential passes and which hooks
//! to ask next; and it mints and checks HLS grants. No I/O after [`Policy::load`]; time is
//! passed in.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ring::hmac;

use crate::config::{AppRules, AuthConfig, Check, Rule};
use crate::grant;
use crate::jwt::{self, JwtKeys};
use crate::keys::{self, AuthError, SigningKeys, StreamKeys};
use crate::mac;
use crate::query::param;
use crate::signed;

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send a stream.
    Publish,
    /// Receive a stream (RTMP, HTTP-FLV, HLS).
    Play,
}

impl Action {
    /// `"publish"` or `"play"`: the spelling in signed URLs, JWT `act` claims and hooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Play => "play",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One publish or play attempt, as the front end saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access<'a> {
    /// Publish or play.
    pub action: Action,
    /// The application.
    pub app: &'a str,
    /// The stream name, without its query.
    pub stream: &'a str,
    /// The raw query without `?`, possibly "" (RTMP: what followed `?` in the connect app
    /// and in the stream name, joined with `&`).
    pub query: &'a str,
    /// The client's address.
    pub client: IpAddr,
    /// The time of the attempt.
    pub now_unix_ms: u64,
}

/// Why an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No credential was given (HTTP 401).
    Missing,
    /// A wrong key, signature, token or address (HTTP 403).
    Invalid,
    /// A valid credential past its expiry (HTTP 410).
    Expired,
    /// The rule is `check = "deny"` (HTTP 403).
    Denied,
}

impl Refusal {
    /// Metric and log label: `auth_missing`, `auth_invalid`, `auth_expired`, `auth_denied`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "auth_missing",
            Refusal::Invalid => "auth_invalid",
            Refusal::Expired => "auth_expired",
            Refusal::Denied => "auth_denied",
        }
    }

    /// The HTTP status line's code and reason, e.g. `"401 Unauthorized"`.
    pub fn http_status(self) -> &'static str {
        match self {
            Refusal::Missing => "401 Unauthorized",
            Refusal::Invalid | Refusal::Denied => "403 Forbidden",
            Refusal::Expired => "410 Gone",
        }
    }

    /// The HTTP status code alone.
    pub fn http_code(self) -> u16 {
        match self {
            Refusal::Missing => 401,
            Refusal::Invalid | Refusal::Denied => 403,
            Refusal::Expired => 410,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for Refusal {}

/// An attempt the check let through, and what the front end does next (the I/O).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admit {
    /// A webhook to ask before admitting; its answer decides.
    pub hook: Option<Arc<str>>,
    /// A webhook to tell when the session ends.
    pub done_hook: Option<Arc<str>>,
}

/// One rule, ready to check.
#[derive(Debug)]
struct Compiled {
    rule: Rule,
    /// The stream keys when `check = "key"`.
    keys: Option<StreamKeys>,
    hook: Option<Arc<str>>,
    done_hook: Option<Arc<str>>,
}

#[derive(Debug)]
struct CompiledApp {
    publish: Compiled,
    play: Compiled,
}

impl CompiledApp {
    fn new(at: &str, rules: &AppRules) -> Result<Self, AuthError> {
        Ok(Self {
            publish: Compiled::new(&format!("{at}.publish"), &rules.publish)?,
            play: Compiled::new(&format!("{at}.play"), &rules.play)?,
        })
    }

    fn get(&self, action: Action) -> &Compiled {
        match action {
            Action::Publish => &self.publish,
            Action::Play => &self.play,
        }
    }
}

impl Compiled {
    fn new(at: &str, rule: &Rule) -> Result<Self, AuthError> {
        let keys = if rule.check == Check::Key {
            let file = if rule.key_file.is_empty() {
                String::new()
            } else {
                keys::read(&rule.key_file)?
            };
            let keys = StreamKeys::new(
                rule.keys
                    .iter()
                    .map(String::as_str)
                    .chain(keys::parse_stream_key_file(&file)),
            );
            if keys.len() == 0 {
                return Err(AuthError::Invalid(format!(
                    "{at}: check = \"key\" but {at}.keys is empty and {} holds no key",
                    rule.key_file
                )));
            }
            Some(keys)
        } else {
            None
        };
        let url = |u: &str| (!u.is_empty()).then(|| Arc::from(u));
        Ok(Self {
            rule: rule.clone(),
            keys,
            hook: url(&rule.hook),
            done_hook: url(&rule.done_hook),
        })
    }
}

/// The access rules of `[auth]`, with their key material loaded.
///
/// Build one per config load and reload ([`Policy::load`] reads the key files); share it
/// behind an `Arc` and swap it on reload.
#[derive(Debug)]
pub struct Policy {
    config: AuthConfig,
    default: CompiledApp,
    apps: HashMap<String, CompiledApp>,
    signing: SigningKeys,
    jwt: JwtKeys,
    grant_key: hmac::Key,
}

/// The signing keys of `config`: `signing_keys` with the lines of `signing_key_file` (read
/// now) merged over them. What `sluice sign` signs with.
pub fn load_signing_keys(
    config: &AuthConfig,
) -> Result<std::collections::BTreeMap<String, String>, AuthError> {
    let mut merged = config.signing_keys.clone();
    if !config.signing_key_file.is_empty() {
        let text = keys::read(&config.signing_key_file)?;
        merged.extend(keys::parse_signing_key_file(
            &config.signing_key_file,
            &text,
        )?);
    }
    Ok(merged)
}

impl Policy {
    /// Validates `config` and reads its key files. Errors name the key or the file and line.
    pub fn load(config: &AuthConfig) -> Result<Policy, AuthError> {
        config.validate().map_err(AuthError::Invalid)?;
        let secrets = load_signing_keys(config)?;
        let signing = SigningKeys::new(&secrets);
        let uses = |check: Check| {
            std::iter::once(&config.default)
                .chain(config.apps.values())
                .any(|r| r.publish.check == check || r.play.check == check)
        };
        if uses(Check::Signed) && signing.len() == 0 {
            return Err(AuthError::Invalid(format!(
                "check = \"signed\" is used but auth.signing_keys and auth.signing_key_file \
                 ({}) hold no key",
                config.signing_key_file
            )));
        }
        let jwt = JwtKeys::load(&config.jwt.hs256_secret, &config.jwt.es256_public_key_file)?;
        let grant_key = if config.grant_secret.is_empty() {
            mac::key(mac::process_grant_secret())
        } else {
            mac::key(config.grant_secret.as_bytes())
        };
        let apps = config
            .apps
            .iter()
            .map(|(app, rules)| {
                Ok((
                    app.clone(),
                    CompiledApp::new(&format!("auth.apps.{app}"), rules)?,
                ))
            })
            .collect::<Result<_, AuthError>>()?;
        Ok(Policy {
            config: config.clone(),
            default: CompiledApp::new("auth.default", &config.default)?,
            apps,
            signing,
            jwt,
            grant_key,
        })
    }

    /// The config this policy was loaded from.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    fn compiled(&self, app: &str, action: Action) -> &Compiled {
        self.apps.get(app).unwrap_or(&self.default).get(action)
    }

    /// The rule for `action` on `app`: its own entry, else the default.
    pub fn rule(&self, app: &str, action: Action) -> &Rule {
        &self.compiled(app, action).rule
    }

    /// Whether the rule is `check = "open"` (its hooks may still apply).
    pub fn is_open(&self, app: &str, action: Action) -> bool {
        self.rule(app, action).check == Check::Open
    }

    /// Decides one attempt: `Ok` with the hooks to ask next, or why it is refused.
    pub fn check(&self, access: &Access<'_>) -> Result<Admit, Refusal> {
        let compiled = self.compiled(access.app, access.action);
        let rule = &compiled.rule;
        let skew = self.config.clock_skew_ms;
        match rule.check {
            Check::Open => {}
            Check::Deny => return Err(Refusal::Denied),
            Check::Key => {
                let candidate = param(access.query, "key").unwrap_or_default();
                if candidate.is_empty() {
                    return Err(Refusal::Missing);
                }
                if !compiled
                    .keys
                    .as_ref()
                    .is_some_and(|k| k.contains(&candidate))
                {
                    return Err(Refusal::Invalid);
                }
            }
            Check::Signed => signed::verify(&self.signing, access, rule.bind_address, skew)?,
            Check::Jwt => jwt::verify(&self.jwt, access, rule.bind_address, skew)?,
        }
        Ok(Admit {
            hook: compiled.hook.clone(),
            done_hook: compiled.done_hook.clone(),
        })
    }

    /// An HLS grant for `app/stream`, valid `grant_ttl_ms` from `now_unix_ms`: a URL-path-safe
    /// token starting `g.` (see the `grant` module for its form). Bound to `client` when the
    /// app's play rule has `bind_address` (pass the client, or the grant will be refused).
    pub fn mint_grant(
        &self,
        app: &str,
        stream: &str,
        client: Option<IpAddr>,
        now_unix_ms: u64,
    ) -> String {
        let bind = self.rule(app, Action::Play).bind_address;
        grant::mint(
            &self.grant_key,
            app,
            stream,
            client.filter(|_| bind),
            now_unix_ms.saturating_add(self.config.grant_ttl_ms),
        )
    }

    /// Checks a grant from [`Policy::mint_grant`] presented by `client` for `app/stream`:
    /// `Missing` when empty, `Invalid` when forged, for another stream or address, or unbound
    /// while the play rule binds; `Expired` past its expiry; `Denied` once the app's play rule
    /// is `deny` (a reload to `deny` ends HLS sessions at their next request; to revoke every
    /// grant otherwise, change `auth.grant_secret`).
    pub fn verify_grant(
        &self,
        token: &str,
        app: &str,
        stream: &str,
        client: IpAddr,
        now_unix_ms: u64,
    ) -> Result<(), Refusal> {
        let rule = self.rule(app, Action::Play);
        if rule.check == Check::Deny {
            return Err(Refusal::Denied);
        }
        let bind = rule.bind_address;
        grant::verify(
            &self.grant_key,
            token,
            app,
            stream,
            client,
            now_unix_ms,
            bind,
        )
    }
}
