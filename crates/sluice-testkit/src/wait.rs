//! Waiting for state a test cannot be told about: polling a condition, bounded.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] checks.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` every 20 ms until it holds, for at most `limit`; whether it held.
///
/// On tokio's clock, so it also serves tests on paused time.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test]
    async fn holds_once_the_condition_does_and_gives_up_at_the_limit() {
        let calls = Cell::new(0);
        let held = eventually(Duration::from_secs(10), || {
            calls.set(calls.get() + 1);
            std::future::ready(calls.get() == 3)
        })
        .await;
        assert!(held);
        assert_eq!(calls.get(), 3);

        let started = Instant::now();
        let limit = Duration::from_millis(100);
        assert!(!eventually(limit, || std::future::ready(false)).await);
        assert!(started.elapsed() >= limit);
    }
}
