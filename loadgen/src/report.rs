//! The result of a run: [`Report`] (serializable: `--json` prints it), its human summary
//! table ([`Report::table`]), and the HdrHistogram percentile distribution text
//! ([`write_hgrm`], the classic `.hgrm` format that HdrHistogram's plotters read).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::Config;
use crate::stats::to_f64;

/// Everything a run measured. Latencies are in microseconds, rates per second.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The options of the run.
    pub args: Config,
    /// The server address the run resolved and loaded.
    pub server: String,
    /// Connection opening.
    pub connect: ConnectReport,
    /// Publishing.
    pub publish: PublishReport,
    /// End-to-end latency (publish to receipt) of the normal clients' events sent inside the
    /// measured window.
    pub latency: LatencyReport,
    /// Deliveries to the normal clients.
    pub delivery: DeliveryReport,
    /// Clients that read their stream.
    pub normal: GroupReport,
    /// Clients that stopped reading after connecting (`--slow-fraction`).
    pub slow: GroupReport,
    /// The loadgen's own CPU use.
    pub cpu: CpuReport,
    /// Integrity failures (gaps, duplicates, missing or misrouted events among the normal
    /// clients); non-empty means the run failed.
    pub problems: Vec<String>,
    /// Things worth a look that do not fail the run.
    pub warnings: Vec<String>,
    /// Whether `problems` is empty.
    pub ok: bool,
    /// The measured latency histogram, nanoseconds (for [`write_hgrm`]).
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

/// Connection opening.
#[derive(Debug, Serialize)]
pub struct ConnectReport {
    /// Clients that tried.
    pub attempted: u64,
    /// Clients that got a `200` event stream.
    pub connected: u64,
    /// Clients that did not, by cause.
    pub failed: u64,
    /// Failure causes and their counts.
    pub failures: BTreeMap<String, u64>,
    /// From the first attempt to the last successful connection, seconds.
    pub time_to_connect_all_s: f64,
    /// Connect time (TCP connect to response head), milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, milliseconds.
    pub p90_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
    /// Source addresses used (0: chosen by the kernel).
    pub source_addrs: usize,
}

/// Publishing.
#[derive(Debug, Serialize)]
pub struct PublishReport {
    /// Target events/s.
    pub target_rate: f64,
    /// Acknowledged events sent inside the measured window, per second of it.
    pub achieved_rate: f64,
    /// Events acknowledged by the server (2xx), over the whole run.
    pub events_acked: u64,
    /// Acknowledged events sent inside the measured window.
    pub events_acked_in_window: u64,
    /// Events of failed requests (refused or never sent), not published.
    pub events_failed: u64,
    /// Events of requests with an unknown outcome (counted as published).
    pub events_unknown: u64,
    /// Requests sent.
    pub requests: u64,
    /// Failed requests by cause.
    pub errors: BTreeMap<String, u64>,
    /// The first failure in full.
    pub first_error: Option<String>,
    /// Connections opened.
    pub connections_opened: u64,
    /// Most events in one request.
    pub largest_batch: u64,
    /// Request round trip, milliseconds, median.
    pub round_trip_p50_ms: f64,
    /// Request round trip, milliseconds, 99th percentile.
    pub round_trip_p99_ms: f64,
    /// Per topic, the last sequence number acknowledged (= events acknowledged).
    pub per_topic: Vec<u64>,
}

/// A latency distribution, microseconds.
#[derive(Debug, Serialize, Default, Clone, Copy)]
pub struct LatencyReport {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl LatencyReport {
    /// Summarizes a histogram recorded in nanoseconds.
    pub fn from_nanos(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| to_f64(ns) / 1000.0;
        Self {
            count: histogram.len(),
            min_us: us(histogram.min()),
            mean_us: histogram.mean() / 1000.0,
            p50_us: us(histogram.value_at_quantile(0.5)),
            p90_us: us(histogram.value_at_quantile(0.9)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
        }
    }
}

/// Deliveries to the normal clients.
#[derive(Debug, Serialize)]
pub struct DeliveryReport {
    /// Length of the measured window, seconds.
    pub window_s: f64,
    /// Events sent inside the window and received (each client's copy counts once).
    pub deliveries_in_window: u64,
    /// `deliveries_in_window / window_s`.
    pub deliveries_per_s: f64,
    /// Events received over the whole run.
    pub deliveries_total: u64,
    /// Events the connected normal clients should have received (every acknowledged event
    /// of their topic).
    pub expected_total: u64,
}

/// Disconnects by cause.
#[derive(Debug, Serialize, Default, Clone, Copy, PartialEq, Eq)]
pub struct Disconnects {
    /// The server's "fell a whole ring behind" comment was seen.
    pub lapped: u64,
    /// The server's shutdown comment was seen.
    pub shutdown: u64,
    /// The stream ended without a final comment the client could see.
    pub closed: u64,
    /// A read error (connection reset) or a malformed stream.
    pub error: u64,
    /// The client gave up after `--idle-timeout` without a byte.
    pub timeout: u64,
}

impl Disconnects {
    /// All disconnects.
    pub fn total(&self) -> u64 {
        self.lapped + self.shutdown + self.closed + self.error + self.timeout
    }
}

/// One group of clients (normal or slow).
#[derive(Debug, Serialize, Default)]
pub struct GroupReport {
    /// Clients in the group.
    pub clients: u64,
    /// Clients that connected.
    pub connected: u64,
    /// Events received (in order or after a gap; duplicates not counted).
    pub received: u64,
    /// Every acknowledged event of their topics, over the connected clients.
    pub expected: u64,
    /// Events not received by clients still connected at the end (after the drain).
    pub missing_at_end: u64,
    /// Sequence numbers skipped inside streams, by clients that were not lapped.
    pub gap_events: u64,
    /// Clients (not lapped) with at least one gap.
    pub clients_with_gaps: u64,
    /// Sequence numbers skipped by clients that were lapped (expected for them).
    pub gap_events_lapped: u64,
    /// Events received a second time (or out of order).
    pub duplicates: u64,
    /// Clients with at least one duplicate.
    pub clients_with_duplicates: u64,
    /// Loadgen events of another topic.
    pub misrouted: u64,
    /// Events that are not loadgen payloads.
    pub foreign: u64,
    /// Heartbeat comments seen.
    pub heartbeats: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Disconnects by cause.
    pub disconnects: Disconnects,
    /// Clients still connected when the run ended.
    pub open_at_end: u64,
    /// A few read errors, for diagnosis.
    pub errors: Vec<String>,
}

/// The loadgen process's CPU use.
#[derive(Debug, Serialize, Default)]
pub struct CpuReport {
    /// The measured window, seconds.
    pub window_s: f64,
    /// User CPU seconds in the window.
    pub user_s: f64,
    /// System CPU seconds in the window.
    pub sys_s: f64,
    /// `(user + sys) / window`, in percent of one core.
    pub percent_of_one_core: f64,
    /// Runtime worker threads (`--threads`).
    pub threads: usize,
    /// User CPU seconds over the whole run.
    pub run_user_s: f64,
    /// System CPU seconds over the whole run.
    pub run_sys_s: f64,
    /// Resident memory of the loadgen process at the end of the run, bytes.
    pub rss_bytes: u64,
    /// Peak resident memory of the loadgen process, bytes.
    pub peak_rss_bytes: u64,
}

impl Report {
    /// The human summary table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let args = &self.args;
        let connect = &self.connect;
        let publish = &self.publish;
        let latency = &self.latency;
        let delivery = &self.delivery;
        let _ = writeln!(
            out,
            "loadgen -> {} ({})  clients {} (slow {})  topics {}  rate {}/s  size {} B  format {:?}",
            args.url,
            self.server,
            args.clients,
            self.slow.clients,
            args.topics,
            args.rate,
            args.size,
            args.publish_format
        );
        let _ = writeln!(
            out,
            "connect    {}/{} connected in {:.3} s  (p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms, {} source addrs){}",
            connect.connected,
            connect.attempted,
            connect.time_to_connect_all_s,
            connect.p50_ms,
            connect.p90_ms,
            connect.p99_ms,
            connect.max_ms,
            connect.source_addrs,
            if connect.failures.is_empty() {
                String::new()
            } else {
                format!("\n           failures: {:?}", connect.failures)
            }
        );
        let _ = writeln!(
            out,
            "publish    target {:.0}/s  achieved {:.1}/s  acked {} (in window {})  failed {}  unknown {}  requests {}  rtt p50 {:.2} ms p99 {:.2} ms",
            publish.target_rate,
            publish.achieved_rate,
            publish.events_acked,
            publish.events_acked_in_window,
            publish.events_failed,
            publish.events_unknown,
            publish.requests,
            publish.round_trip_p50_ms,
            publish.round_trip_p99_ms
        );
        if let Some(error) = &publish.first_error {
            let _ = writeln!(out, "           first publish error: {error}");
        }
        let _ = writeln!(
            out,
            "latency    p50 {:.0} us  p90 {:.0} us  p99 {:.0} us  p99.9 {:.0} us  max {:.0} us  (n = {})",
            latency.p50_us, latency.p90_us, latency.p99_us, latency.p999_us, latency.max_us, latency.count
        );
        let _ = writeln!(
            out,
            "delivery   {:.0}/s over {:.1} s  ({} in window, {} total, {} expected)",
            delivery.deliveries_per_s,
            delivery.window_s,
            delivery.deliveries_in_window,
            delivery.deliveries_total,
            delivery.expected_total
        );
        self.client_rows(&mut out);
        let cpu = &self.cpu;
        let _ = writeln!(
            out,
            "cpu        loadgen {:.1}% of one core in the window (user {:.2} s + sys {:.2} s over {:.1} s, {} thread{}); \
             peak RSS {:.1} MiB",
            cpu.percent_of_one_core,
            cpu.user_s,
            cpu.sys_s,
            cpu.window_s,
            cpu.threads,
            if cpu.threads == 1 { "" } else { "s" },
            to_f64(cpu.peak_rss_bytes) / f64::from(1 << 20)
        );
        for warning in &self.warnings {
            let _ = writeln!(out, "warning    {warning}");
        }
        if self.ok {
            let _ = writeln!(out, "result     OK: no gaps, duplicates or missing events among the normal clients");
        } else {
            for problem in &self.problems {
                let _ = writeln!(out, "FAILED     {problem}");
            }
        }
        out
    }

    /// The normal/slow client table.
    fn client_rows(&self, out: &mut String) {
        let _ = writeln!(out, "{:<26}{:>14}{:>14}", "clients", "normal", "slow");
        let rows: [Row; 16] = [
            ("  total", |g| g.clients),
            ("  connected", |g| g.connected),
            ("  events received", |g| g.received),
            ("  events expected", |g| g.expected),
            ("  missing at end", |g| g.missing_at_end),
            ("  gap events (not lapped)", |g| g.gap_events),
            ("  clients with gaps", |g| g.clients_with_gaps),
            ("  duplicates", |g| g.duplicates),
            ("  misrouted", |g| g.misrouted),
            ("  disconnect: lapped", |g| g.disconnects.lapped),
            ("  disconnect: shutdown", |g| g.disconnects.shutdown),
            ("  disconnect: closed", |g| g.disconnects.closed),
            ("  disconnect: error", |g| g.disconnects.error),
            ("  disconnect: timeout", |g| g.disconnects.timeout),
            ("  open at end", |g| g.open_at_end),
            ("  heartbeats", |g| g.heartbeats),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "{name:<26}{:>14}{:>14}", value(&self.normal), value(&self.slow));
        }
    }
}

/// A row of the client table: its label and how to read it from a group.
type Row = (&'static str, fn(&GroupReport) -> u64);

/// Writes `histogram` (recorded in nanoseconds) as HdrHistogram's classic percentile
/// distribution text, values in microseconds: the `Value Percentile TotalCount
/// 1/(1-Percentile)` table at 5 ticks per half distance, then the mean/max/bucket footer,
/// as Java's `outputPercentileDistribution` prints it.
pub fn write_hgrm(histogram: &Histogram<u64>, out: &mut impl io::Write) -> io::Result<()> {
    const SCALE: f64 = 1000.0; // ns -> us
    let digits = usize::from(histogram.sigfig());
    writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    let mut total = 0u64;
    if !histogram.is_empty() {
        for step in histogram.iter_quantiles(5) {
            total += step.count_since_last_iteration();
            let value = to_f64(step.value_iterated_to()) / SCALE;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                writeln!(out, "{value:12.digits$} {quantile:2.12} {total:10} {:14.2}", 1.0 / (1.0 - quantile))?;
            } else {
                writeln!(out, "{value:12.digits$} {quantile:2.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev, max) = if histogram.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (histogram.mean() / SCALE, histogram.stdev() / SCALE, to_f64(histogram.max()) / SCALE)
    };
    writeln!(out, "#[Mean    = {mean:12.digits$}, StdDeviation   = {stdev:12.digits$}]")?;
    writeln!(out, "#[Max     = {max:12.digits$}, Total count    = {:12}]", histogram.len())?;
    // Sub-buckets per bucket: the power of two that holds 2 * 10^sigfig.
    let sub_buckets = (2 * 10u64.pow(u32::from(histogram.sigfig()))).next_power_of_two();
    writeln!(out, "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]", histogram.buckets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_has_the_classic_shape() {
        let mut histogram = crate::stats::latency_histogram();
        for micros in 1..=1000u64 {
            histogram.record(micros * 1000).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&histogram, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]);
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<Vec<&str>> =
            lines.clone().take_while(|l| !l.starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        assert!(rows.len() > 20, "{text}");
        // Percentiles and counts never decrease; values are microseconds.
        for pair in rows.windows(2) {
            assert!(pair[0][1].parse::<f64>().unwrap() <= pair[1][1].parse::<f64>().unwrap());
            assert!(pair[0][2].parse::<u64>().unwrap() <= pair[1][2].parse::<u64>().unwrap());
        }
        let median = rows.iter().find(|r| r[1].parse::<f64>().unwrap() >= 0.5).unwrap();
        let median_us: f64 = median[0].parse().unwrap();
        assert!((499.0..=501.0).contains(&median_us), "{median:?}");
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3, "the 100% row has no 1/(1-Percentile) column");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        assert!(text.contains("#[Max     =     1000.447, Total count    =         1000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }
}
