//! When a viewer writes, under its application's [`Schedule`]: the batching window
//! (`merge_write_ms` / `merge_write_bytes`) and the socket options that keep what the kernel
//! holds for a viewer small.
//!
//! Fan-out cost is set by writes per viewer-second, almost all of it kernel time; the window
//! turns one write per frame into one per window. A window opens when frames arrive for an
//! idle viewer and again after each write, and ends on a grid shared by all viewers; while
//! it is open the viewer does not wait on the stream's change signal at all (unless a byte
//! trigger needs it to count), so it is woken once per window instead of once per frame.
//! This applies to viewers in their own tasks; caught-up viewers are batched by their
//! stream's shared writer (`fanout`), on the same grid.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice_core::{Config, Schedule, Stream};
use tokio::time::Instant;
use tracing::debug;

/// A viewer's schedule, looked up again only when the running config changed (the lookup
/// compares application names; the check compares pointers). It holds the config it was
/// taken from, so a new config can never reuse that address unnoticed.
#[derive(Debug, Default)]
pub(crate) struct ScheduleCache {
    config: Option<Arc<Config>>,
    schedule: Schedule,
}

impl ScheduleCache {
    /// The schedule of `app` (the default one for `None`) under `config`.
    pub(crate) fn get(&mut self, config: &Arc<Config>, app: Option<&str>) -> Schedule {
        if !self.config.as_ref().is_some_and(|c| Arc::ptr_eq(c, config)) {
            self.schedule = match app {
                Some(app) => *config.schedule.for_app(app),
                None => *config.schedule.default_schedule(),
            };
            self.config = Some(config.clone());
        }
        self.schedule
    }

    /// The batching window of the schedule last looked up.
    pub(crate) fn merge_write(&self) -> Duration {
        self.schedule.merge_write
    }
}

/// A viewer's batching window.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Open until then.
    until: Option<Instant>,
    /// The stream's ingested byte count when the window opened (for the byte trigger).
    bytes_at_open: u64,
}

/// What to wait for before the next read.
pub(crate) enum Hold {
    /// Read now.
    No,
    /// The window is open until this instant; also wake on stream changes if `count_bytes`.
    Until { at: Instant, count_bytes: bool },
}

impl Window {
    /// New frames were signalled, or a batch was just written: opens a window if the
    /// schedule batches.
    pub(crate) fn on_change(&mut self, now: Instant, schedule: &Schedule, stream: &Stream) {
        if self.until.is_none() && !schedule.merge_write.is_zero() {
            self.until = Some(on_grid(now + schedule.merge_write, schedule.merge_write));
            self.bytes_at_open = stream.stats.bytes_in.load(Ordering::Relaxed);
        }
    }

    /// Whether to hold off reading; closes the window once it is due.
    pub(crate) fn hold(&mut self, now: Instant, schedule: &Schedule, stream: &Stream) -> Hold {
        let Some(at) = self.until else {
            return Hold::No;
        };
        let count_bytes = schedule.merge_write_bytes > 0;
        let filled = count_bytes
            && stream
                .stats
                .bytes_in
                .load(Ordering::Relaxed)
                .saturating_sub(self.bytes_at_open)
                >= schedule.merge_write_bytes as u64;
        // A reload that shortened or removed the window applies at once.
        let due = now >= at || at > on_grid(now + schedule.merge_write, schedule.merge_write);
        if filled || due {
            self.until = None;
            return Hold::No;
        }
        Hold::Until { at, count_bytes }
    }
}

/// Rounds a window's end up to a process-wide grid (a tenth of the window, at most 10 ms),
/// so that viewers' windows end together: the runtime then wakes once per grid step for
/// many viewers instead of once per millisecond for a few, and the thread sleeps in
/// between. Measured at 1,000 viewers with 100 ms windows, unaligned windows kept the
/// server waking every millisecond. Adds at most one grid step to the window.
pub(crate) fn on_grid(at: Instant, window: Duration) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let grid = (window / 10).clamp(Duration::from_millis(1), Duration::from_millis(10));
    let since = at.saturating_duration_since(epoch).as_nanos();
    let step = grid.as_nanos();
    let rounded = since.div_ceil(step) * step;
    epoch + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

/// Sets a viewer socket's options from its schedule. Failures are logged, not fatal: the
/// viewer is served either way.
pub(crate) fn apply_socket_options(socket: socket2::SockRef<'_>, schedule: &Schedule) {
    let results = [
        ("TCP_NODELAY", socket.set_tcp_nodelay(schedule.tcp_nodelay)),
        (
            "SO_SNDBUF",
            if schedule.send_buffer_bytes > 0 {
                socket.set_send_buffer_size(schedule.send_buffer_bytes)
            } else {
                Ok(())
            },
        ),
        (
            "TCP_NOTSENT_LOWAT",
            if schedule.notsent_lowat_bytes > 0 {
                socket.set_tcp_notsent_lowat(schedule.notsent_lowat_bytes)
            } else {
                Ok(())
            },
        ),
    ];
    for (option, result) in results {
        if let Err(error) = result {
            debug!(option, %error, "socket option not applied");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::schedule::ScheduleSettings;
    use sluice_core::{CacheSettings, Registry, StreamKey};

    fn schedule(merge_ms: u64) -> Schedule {
        ScheduleSettings {
            merge_write_ms: merge_ms,
            ..ScheduleSettings::default()
        }
        .resolve()
    }

    #[test]
    fn a_window_holds_reads_until_its_end_on_the_grid() {
        let reg = Registry::new();
        let cache = CacheSettings {
            gop_cache: true,
            gops: 1,
            max_bytes: 1 << 20,
        };
        let publisher = reg
            .publish(
                &StreamKey::new("live", "w"),
                cache,
                false,
                tokio::time::Instant::now(),
            )
            .expect("publish");
        let stream = publisher.stream();
        let batching = schedule(100);
        let mut w = Window::default();
        let t0 = Instant::now();
        assert!(
            matches!(w.hold(t0, &batching, stream), Hold::No),
            "no window yet"
        );
        w.on_change(t0, &batching, stream);
        let Hold::Until { at, count_bytes } = w.hold(t0, &batching, stream) else {
            panic!("a window is open");
        };
        assert!(!count_bytes);
        // Ends 100 ms on, rounded up to the 10 ms grid, shared by every viewer.
        assert!(at >= t0 + Duration::from_millis(100) && at <= t0 + Duration::from_millis(110));
        assert_eq!(at, on_grid(at, batching.merge_write), "on the grid");
        assert!(
            matches!(w.hold(at, &batching, stream), Hold::No),
            "due at its end"
        );
        // Opened again, then a reload removes batching: reads resume at once.
        w.on_change(at, &batching, stream);
        assert!(matches!(w.hold(at, &schedule(0), stream), Hold::No));
        // Without batching no window opens.
        w.on_change(at, &schedule(0), stream);
        assert!(matches!(w.hold(at, &schedule(0), stream), Hold::No));
    }
}
