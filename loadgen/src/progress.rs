//! The live progress bar (indicatif, on stderr): phase, clients connected, deliveries and
//! their rate, events published, and the p99 latency of the last refresh interval.
//! Off unless the plan asks for it (the binary turns it off when stdout is not a terminal).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::stats::{Phase, Shared, latency_histogram, to_f64};

/// Time between refreshes.
const REFRESH: Duration = Duration::from_millis(250);

/// A running progress bar; dropping it without [`Progress::finish`] leaves the last line.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts refreshing from `shared`, if `enabled`.
    pub(crate) fn start(enabled: bool, shared: &Arc<Shared>, clients: usize) -> Option<Self> {
        if !enabled {
            return None;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("a valid template"));
        let task = tokio::spawn(refresh(bar.clone(), Arc::clone(shared), clients));
        Some(Self { bar, task })
    }

    /// Stops refreshing and clears the bar.
    pub(crate) fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

async fn refresh(bar: ProgressBar, shared: Arc<Shared>, clients: usize) {
    let mut interval = tokio::time::interval(REFRESH);
    let mut live = latency_histogram();
    let mut last = (Instant::now(), 0u64);
    loop {
        interval.tick().await;
        // Relaxed: display only.
        let deliveries = shared.deliveries.load(Relaxed);
        let now = Instant::now();
        let rate = to_f64(deliveries - last.1) / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, deliveries);
        shared.drain_live(&mut live);
        let p99 = if live.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0} us", to_f64(live.value_at_quantile(0.99)) / 1000.0)
        };
        live.reset();
        bar.set_message(format!(
            "{:<10} conn {}/{}  pub {}  recv {} ({:.0}/s)  p99 {}",
            Phase::name(shared.phase.load(Relaxed)),
            shared.open.load(Relaxed),
            clients,
            shared.published.load(Relaxed),
            deliveries,
            rate,
            p99
        ));
        bar.tick();
    }
}
