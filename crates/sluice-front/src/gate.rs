//! Who may publish and watch: every front end asks the [`Gate`] before a publisher or a
//! viewer starts.
//!
//! The gate runs the application's rule (`[auth]`, [`sluice_auth::Policy`], sans-IO: keys,
//! signed URLs, JWTs) and then, when the rule names one, its webhook ([`Webhooks`]). A
//! pass carries the stream name to use (a webhook may rename it) and the "done" hook, sent
//! when the pass is dropped, however the session ends. The policy is rebuilt on reload (key
//! files are read again); a reload whose key files cannot be read keeps the old policy.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use sluice_auth::{Access, Action, AuthError, Policy, Refusal};
use sluice_runtime::Context;
use sluice_runtime::limits::Limits;

use crate::webhook::{HookAnswer, HookEvent, Webhooks};

/// A request to publish or play.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Publish or play.
    pub action: Action,
    /// Application.
    pub app: &'a str,
    /// Stream name, without its query.
    pub stream: &'a str,
    /// The request's query (credentials), without `?`.
    pub query: &'a str,
    /// The client's address.
    pub client: IpAddr,
    /// The protocol label (`rtmp`, `http_flv`, `hls`), as metrics count it.
    pub protocol: &'static str,
    /// Whether the client came over TLS (RTMPS, HTTPS).
    pub secure: bool,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The application's rule refused it.
    Rule(Refusal),
    /// The webhook answered with a refusal (its HTTP status).
    Hook(u16),
    /// The webhook did not answer usably and `auth.webhook.on_failure` is `deny`.
    HookFailed(&'static str),
    /// The node drains (see [`Context::draining`]): it takes no new viewer or publisher.
    Draining,
}

/// Seconds a client refused by a draining node is told to wait (`Retry-After`) before it
/// asks again: by then the load balancer in front has seen `/readyz` fail and sends it to
/// another node.
pub const DRAIN_RETRY_AFTER_S: u32 = 2;

impl Denied {
    /// The `reason` label of `sluice_connections_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Denied::Rule(refusal) => refusal.label(),
            Denied::Hook(_) => "hook_denied",
            Denied::HookFailed(_) => "hook_failed",
            Denied::Draining => "draining",
        }
    }

    /// The HTTP status a playback request gets.
    pub fn http_status(self) -> &'static str {
        match self {
            Denied::Rule(refusal) => refusal.http_status(),
            Denied::Hook(_) => "403 Forbidden",
            Denied::HookFailed(_) | Denied::Draining => "503 Service Unavailable",
        }
    }

    /// The `Retry-After` seconds of the HTTP answer, where waiting helps.
    pub fn retry_after(self) -> Option<u32> {
        (self == Denied::Draining).then_some(DRAIN_RETRY_AFTER_S)
    }

    /// What the client is told.
    pub fn describe(self) -> &'static str {
        match self {
            Denied::Rule(Refusal::Missing) => "credentials required",
            Denied::Rule(Refusal::Invalid) => "invalid credentials",
            Denied::Rule(Refusal::Expired) => "credentials expired",
            Denied::Rule(Refusal::Denied) => "not allowed",
            Denied::Hook(_) => "refused by the authorization service",
            Denied::HookFailed(_) => "the authorization service did not answer",
            Denied::Draining => "node draining",
        }
    }
}

/// An admitted publisher or viewer.
#[derive(Debug)]
pub struct Pass {
    /// The stream to publish or play (a webhook may have renamed it).
    pub stream: String,
    /// Sent when the pass is dropped.
    done: Option<DoneHook>,
}

/// The "done" webhook of a pass, sent (never awaited) when it is dropped.
#[derive(Debug)]
struct DoneHook {
    hooks: Arc<Webhooks>,
    url: Arc<str>,
    /// Taken when sent.
    event: Option<HookEvent>,
}

impl Drop for DoneHook {
    fn drop(&mut self) {
        if let Some(event) = self.event.take() {
            self.hooks.notify(&self.url, event);
        }
    }
}

/// The node's access control; one per node, shared by every front end.
#[derive(Debug)]
pub struct Gate {
    ctx: Arc<Context>,
    policy: ArcSwap<Policy>,
    hooks: Arc<Webhooks>,
}

/// Unix time now, in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Gate {
    /// The gate of `ctx`'s config; fails when a key file cannot be read.
    pub fn new(ctx: Arc<Context>) -> Result<Arc<Self>, AuthError> {
        let config = ctx.config.load();
        let policy = Policy::load(&config.auth)?;
        let hooks = Webhooks::new(
            config.auth.webhook.clone(),
            &ctx.metrics,
            ctx.tracker.clone(),
        );
        Ok(Arc::new(Gate {
            ctx: ctx.clone(),
            policy: ArcSwap::from_pointee(policy),
            hooks,
        }))
    }

    /// Puts `policy` (built from the config now in force, after a reload) and the config's
    /// webhook settings in force.
    pub fn install(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
        self.hooks
            .reconfigure(self.ctx.config.load().auth.webhook.clone());
    }

    /// The policy in force.
    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// Whether playing `app` needs a check at all (a rule or a webhook): HLS then binds its
    /// segment URLs to a grant.
    pub fn play_is_guarded(&self, app: &str) -> bool {
        let policy = self.policy.load();
        !policy.is_open(app, Action::Play) || !policy.rule(app, Action::Play).hook.is_empty()
    }

    /// Decides `ask`: refused while the node drains, else the rule, then its webhook. A
    /// refusal is counted (and logged once per address and interval).
    pub async fn admit(&self, ask: Ask<'_>) -> Result<Pass, Denied> {
        // Boxed: the decision's future (a webhook call's connect, request and answer buffers
        // among it) would otherwise be reserved inside every connection task that may ask the
        // gate, 1.3 KiB of it, hook or not, for the connection's whole life.
        let result = Box::pin(self.decide(ask)).await;
        if let Err(denied) = &result {
            Limits::refuse(&self.ctx, ask.protocol, denied.label(), ask.client);
        }
        result
    }

    async fn decide(&self, ask: Ask<'_>) -> Result<Pass, Denied> {
        if self.ctx.is_draining() {
            return Err(Denied::Draining);
        }
        let admit = self
            .policy
            .load()
            .check(&Access {
                action: ask.action,
                app: ask.app,
                stream: ask.stream,
                query: ask.query,
                client: ask.client,
                now_unix_ms: unix_ms(),
            })
            .map_err(Denied::Rule)?;
        let mut stream = ask.stream.to_owned();
        if let Some(url) = &admit.hook {
            let event = self.event(&ask, ask.action.as_str(), &stream);
            // Boxed: a webhook call's future (its connect, request and answer buffers) would
            // otherwise be reserved inside every connection task that may ask the gate,
            // hook or not; measured as ~0.6 KiB more RSS per viewer at 1,000 viewers.
            match self.hooks.ask(url, &event).await {
                HookAnswer::Allow => {}
                HookAnswer::Rename(name) => stream = name,
                HookAnswer::Deny { status } => return Err(Denied::Hook(status)),
                HookAnswer::Failed(why) => {
                    let on_failure = self.ctx.config.load().auth.webhook.on_failure;
                    if !HookAnswer::Failed(why).allowed(on_failure) {
                        return Err(Denied::HookFailed(why));
                    }
                }
            }
        }
        if admit.hook.is_some() && self.ctx.is_draining() {
            // The drain began while the webhook was asked.
            return Err(Denied::Draining);
        }
        let done = admit.done_hook.map(|url| {
            let action = match ask.action {
                Action::Publish => "publish_done",
                Action::Play => "play_done",
            };
            DoneHook {
                hooks: self.hooks.clone(),
                event: Some(self.event(&ask, action, &stream)),
                url,
            }
        });
        Ok(Pass { stream, done })
    }

    fn event(&self, ask: &Ask<'_>, action: &'static str, stream: &str) -> HookEvent {
        HookEvent {
            action,
            app: ask.app.to_owned(),
            stream: stream.to_owned(),
            client: ask.client,
            protocol: ask.protocol,
            tls: ask.secure,
            query: ask.query.to_owned(),
            node: self.ctx.config.load().cluster.node_id().clone(),
        }
    }
}

impl Pass {
    /// Whether this pass sends a "done" hook when dropped.
    pub fn has_done_hook(&self) -> bool {
        self.done.is_some()
    }
}

#[cfg(test)]
mod tests {
    /// Every RTMP and HTTP connection task embeds the future of its `admit` call; the decision
    /// behind it (webhook buffers and all) is boxed, so the task carries little for it.
    #[test]
    fn asking_the_gate_adds_little_to_a_connection_task() {
        let ctx = sluice_runtime::Context::new(sluice_core::Config::default());
        let gate = super::Gate::new(ctx).expect("the default policy");
        let ask = super::Ask {
            action: sluice_auth::Action::Play,
            app: "live",
            stream: "x",
            query: "",
            client: "127.0.0.1".parse().expect("an address"),
            protocol: "rtmp",
            secure: false,
        };
        let size = std::mem::size_of_val(&gate.admit(ask));
        assert!(size <= 256, "the admit future is {size} bytes");
    }
}
