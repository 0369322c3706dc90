//! The one place a secret-derived value is compared with what a client sent.
//!
//! Every check of a credential (stream key, signed URL, JWT HS256, grant) ends in
//! [`mac_matches`], which is `ring::hmac::verify`: it recomputes the MAC and compares it with
//! the candidate in constant time, so the time to refuse does not depend on how many leading
//! bytes of a guess were right. Nothing else in this crate compares a MAC or a key with `==`.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Whether `tag` is the HMAC of `data` under `key`, in constant time (ring's
/// `hmac::verify`: the MAC is recomputed and compared without an early exit).
pub(crate) fn mac_matches(key: &hmac::Key, data: &[u8], tag: &[u8]) -> bool {
    #[cfg(test)]
    tests::COMPARISONS.with(|c| c.set(c.get() + 1));
    hmac::verify(key, data, tag).is_ok()
}

/// HMAC-SHA256 of `data` under `key`.
pub(crate) fn mac(key: &hmac::Key, data: &[u8]) -> hmac::Tag {
    hmac::sign(key, data)
}

/// An HMAC-SHA256 key from a secret.
pub(crate) fn key(secret: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

/// 64 random bytes drawn once per process; [`process_grant_secret`] and
/// [`fingerprint_key`] each use one half, so neither purpose's MACs can stand in for the
/// other's.
fn process_random() -> &'static [u8; 64] {
    static RANDOM: OnceLock<[u8; 64]> = OnceLock::new();
    RANDOM.get_or_init(|| {
        let mut bytes = [0u8; 64];
        // The system RNG failing leaves no safe fallback: a predictable grant secret would
        // let anyone mint grants.
        #[allow(clippy::expect_used)]
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system random number generator works");
        bytes
    })
}

/// The grant secret when none is configured: random, the same for the whole process, so a
/// reload keeps grants valid.
pub(crate) fn process_grant_secret() -> &'static [u8] {
    &process_random()[..32]
}

/// The key stream keys are fingerprinted with (see `keys::StreamKeys`).
pub(crate) fn fingerprint_key() -> &'static hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| key(&process_random()[32..]))
}

/// base64url without padding.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `None` for anything else, including a non-canonical
/// last character (so one MAC has exactly one spelling). `max` bounds the input length.
pub(crate) fn unb64(text: &str, max: usize) -> Option<Vec<u8>> {
    if text.len() > max {
        return None;
    }
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// Calls of [`mac_matches`] on this thread: tests show every refusal of a credential
        /// went through the constant-time comparison.
        pub(crate) static COMPARISONS: Cell<u64> = const { Cell::new(0) };
    }

    /// How many constant-time comparisons `f` made.
    pub(crate) fn comparisons<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let before = COMPARISONS.with(Cell::get);
        let out = f();
        (out, COMPARISONS.with(Cell::get) - before)
    }

    #[test]
    fn base64url_is_canonical_and_bounded() {
        let tag = [0xffu8; 32];
        let text = b64(&tag);
        assert_eq!(text.len(), 43);
        assert!(!text.contains('='));
        assert_eq!(unb64(&text, 64).as_deref(), Some(&tag[..]));
        // 32 bytes leave 2 spare bits in the last character: 0xff.. ends in '8' (0b111100);
        // '9', '-' and '_' carry the same data bits and must not be accepted as well.
        assert!(text.ends_with('8'));
        for alias in ['9', '-', '_'] {
            let spelled = format!("{}{alias}", &text[..42]);
            assert_eq!(unb64(&spelled, 64), None, "{spelled}");
        }
        assert!(unb64(&format!("{text}="), 64).is_none());
        assert!(unb64(&text, 42).is_none());
        assert!(unb64("a+b/", 64).is_none());
    }

    #[test]
    fn the_process_secrets_are_stable_and_distinct() {
        assert_eq!(process_grant_secret(), process_grant_secret());
        assert_ne!(process_grant_secret(), &[0u8; 32]);
        assert_ne!(process_grant_secret(), &process_random()[32..]);
    }
}
