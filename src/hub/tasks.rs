//! The hub's background tasks: the clock (one ring entry per tick, read by every stream for
//! heartbeats, timeouts and token expiry: no timer per connection) and the topic sweeper.

use std::time::Duration;

use crate::ring::{Cursor, RecvError, Ring};

/// Ticks `clock` every `period` until it is closed (shutdown).
pub(super) fn spawn_clock(runtime: &tokio::runtime::Handle, clock: Ring<()>, period: Duration) {
    runtime.spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        while !clock.is_closed() {
            interval.tick().await;
            clock.publish(());
        }
    });
}

/// Calls `sweep` every half `ttl` (10 ms to 60 s) for as long as it returns `true`.
pub(super) fn spawn_sweeper(
    runtime: &tokio::runtime::Handle,
    ttl: Duration,
    sweep: impl Fn() -> bool + Send + 'static,
) {
    let period = (ttl / 2).clamp(Duration::from_millis(10), Duration::from_secs(60));
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            if !sweep() {
                return;
            }
        }
    });
}

/// Resolves when `clock` is closed: the hub is shutting down.
///
/// # Cancel safety
/// Cancel safe: it only moves `clock` past ticks.
pub(crate) async fn closed(clock: &mut Cursor<()>) {
    std::future::poll_fn(|cx| {
        loop {
            if let Err(RecvError::Closed) = clock.skip_ready() {
                return std::task::Poll::Ready(());
            }
            if clock.poll_ready(cx).is_pending() {
                return std::task::Poll::Pending;
            }
        }
    })
    .await;
}
