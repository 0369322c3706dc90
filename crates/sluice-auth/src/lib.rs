//! Sluice access control, sans I/O: who may publish and who may play.
//!
//! This crate owns the `[auth]` configuration ([`AuthConfig`]) and every check that needs no
//! network: static stream keys, signed URLs ([`sign`]), JSON Web Tokens (HS256, ES256) and
//! the HLS grants that carry a passed play check into the URLs a player fetches next. A
//! [`Policy`] is built per config load (the only I/O here: reading key files) and answers
//! [`Policy::check`] with either a [`Refusal`] or an [`Admit`] naming the webhooks the front
//! end asks next; the front ends own the sockets, the webhook calls and the clock.
//!
//! Secrets are compared in constant time only (see the `mac` module): a refusal takes as
//! long whatever part of a guess was right.

mod config;
mod grant;
mod hook_url;
mod jwt;
mod keys;
mod mac;
mod policy;
mod query;
mod signed;

pub use config::{
    AppRules, AuthConfig, Check, JwtConfig, MAX_KEY_ID_BYTES, MIN_SECRET_BYTES, OnFailure, Rule,
    WebhookConfig, valid_key_id,
};
pub use hook_url::HookUrl;
pub use keys::AuthError;
pub use policy::{Access, Action, Admit, Policy, Refusal, load_signing_keys};
pub use query::{
    MAX_PARAMS, MAX_QUERY, param, percent_decode, percent_decode_exact, percent_encode,
    query_params, stream_of_url_path,
};
pub use signed::sign;

#[cfg(test)]
mod tests;
