//! In-process producers under supervision: a producer that returns, fails or panics is
//! logged, counted (`ringcast_producer_failures_total`) and started again after a backoff;
//! subscribers are unaffected. Producers stop when the hub shuts down.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::hub::Hub;

/// First pause before a restart; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A producer that ran this long before failing starts again from [`FIRST_BACKOFF`].
const GOOD_RUN: Duration = Duration::from_secs(60);

/// Spawns `make(hub)` on the hub's runtime under supervision (module docs). The error type
/// is anything printable (`anyhow::Error` prints its causes with `{:#}`).
pub fn spawn<F, Fut, E>(hub: &Hub, name: &'static str, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Hub) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let hub = hub.clone();
    hub.runtime().clone().spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            let run = tokio::spawn(make(hub.clone()));
            let abort = run.abort_handle();
            let outcome = tokio::select! {
                outcome = run => outcome,
                () = hub.shut_down() => {
                    abort.abort();
                    return;
                }
            };
            hub.metrics().producer_failures.inc();
            match outcome {
                Ok(Ok(())) => tracing::warn!(producer = name, "producer returned; restarting it"),
                Ok(Err(error)) => {
                    tracing::warn!(producer = name, error = %format!("{error:#}"), "producer failed; restarting it");
                }
                Err(error) if error.is_panic() => tracing::warn!(producer = name, "producer panicked; restarting it"),
                Err(_) => return, // cancelled: the runtime is shutting down
            }
            if started.elapsed() > GOOD_RUN {
                backoff = FIRST_BACKOFF;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = hub.shut_down() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}
