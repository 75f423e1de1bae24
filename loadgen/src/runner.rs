//! [`run`]: drives a load run through its phases (connect, warm up, measure, drain, close)
//! and turns what the tasks saw into a [`Report`].
//!
//! Every phase is bounded: each connection attempt has `--connect-timeout`, the connect
//! phase as a whole a deadline derived from it, publishing stops at the end of the window,
//! the drain lasts at most `--drain`, and each slow client's end check `--slow-check`.
//! Stopping is one signal: a `watch` channel the driver flips once, which every client
//! task selects on; dropping the sender has the same effect.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tokio::sync::watch;

use crate::client::{self, End, Outcome, Spec};
use crate::config::{Config, Plan};
use crate::progress::Progress;
use crate::publisher::{self, PublishStats};
use crate::report::{ConnectReport, CpuReport, DeliveryReport, GroupReport, LatencyReport, PublishReport, Report};
use crate::stats::{Phase, Shared, cpu_times, memory, to_f64};

/// How often the driver polls the shared counters while it waits.
const POLL: Duration = Duration::from_millis(10);
/// Read errors kept per client group for the report.
const KEEP_ERRORS: usize = 5;

/// Runs a load test as `config` says and reports what it measured. Must run inside a tokio
/// runtime with I/O and time enabled. Fails only when the run could not be set up (bad
/// options, open-files limit); what goes wrong during the run is in the [`Report`].
pub async fn run(config: Config) -> anyhow::Result<Report> {
    let plan = Arc::new(Plan::new(&config)?);
    let connections = plan.clients.div_ceil(plan.streams_per_connection);
    let needed = connections as u64 + plan.publish_connections as u64 + 64;
    ensure_open_files(needed, plan.clients)?;
    let shards = (plan.threads * 2).clamp(1, 16);
    let shared = Arc::new(Shared::new(plan.clients, plan.topics.len(), shards, plan.connect_concurrency));
    let progress = Progress::start(plan.progress, &shared, plan.clients);
    let cpu_at_start = cpu_times();
    let mut warnings = Vec::new();

    // Connect. The stop signal: flipped once by the driver (dropping the sender would do too).
    let (stop_tx, stop_rx) = watch::channel(false);
    let connect_start = Instant::now();
    let pool = Arc::new(client::H2Pool::new(&plan));
    let tasks = spawn_clients(&plan, &shared, &pool, &stop_rx, connect_start);
    drop(pool);
    drop(stop_rx);
    wait_for_attempts(&plan, &shared, connect_start, &mut warnings).await;
    let connected_at = Duration::from_nanos(shared.last_connected_ns.load(Relaxed));
    let time_to_connect_all = connected_at.saturating_sub(connect_start.duration_since(shared.t0));

    // Publish and measure; then the publishers finish their last request.
    let window = publish_and_measure(&plan, &shared, &mut warnings).await;

    // Drain: the clients receive the last events.
    let per_topic: Vec<u64> = shared.acked.iter().map(|seq| seq.load(Relaxed)).collect();
    let drain_deadline = Instant::now() + plan.drain;
    while !caught_up(&plan, &shared, &per_topic) && Instant::now() < drain_deadline {
        tokio::time::sleep(POLL).await;
    }

    // Close: normal clients stop, slow clients check their sockets.
    shared.set_phase(Phase::Closing);
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => warnings.push(format!("a client task failed: {error}")),
        }
    }
    let cpu_at_end = cpu_times();
    if let Some(progress) = progress {
        progress.finish();
    }
    let cpu = cpu_report(window.cpu_start, window.cpu_end, cpu_at_start, cpu_at_end, plan.duration, plan.threads);
    let mut report = build_report(config, &plan, &shared, &outcomes, &window.publish, per_topic, cpu);
    report.warnings = warnings;
    report.connect.time_to_connect_all_s = time_to_connect_all.as_secs_f64();
    judge(&mut report);
    Ok(report)
}

/// Spawns every client task; client `index` starts at its ramp slot.
fn spawn_clients(
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
    pool: &Arc<client::H2Pool>,
    stop_rx: &watch::Receiver<bool>,
    connect_start: Instant,
) -> Vec<tokio::task::JoinHandle<Outcome>> {
    (0..plan.clients)
        .map(|index| {
            let spec = Spec {
                index,
                topic: index % plan.topics.len(),
                slow: plan.is_slow(index),
                source: (!plan.sources.is_empty()).then(|| plan.sources[index % plan.sources.len()]),
                start_at: connect_start + plan.ramp.mul_f64(to_f64(index as u64) / to_f64(plan.clients as u64)),
            };
            tokio::spawn(client::run(spec, Arc::clone(plan), Arc::clone(shared), Arc::clone(pool), stop_rx.clone()))
        })
        .collect()
}

/// Waits until every connection attempt is over (each has its own timeout; the phase a
/// deadline derived from them, in case a task died).
async fn wait_for_attempts(plan: &Plan, shared: &Shared, connect_start: Instant, warnings: &mut Vec<String>) {
    let waves = u32::try_from(plan.clients.div_ceil(plan.connect_concurrency)).unwrap_or(u32::MAX);
    let deadline = connect_start + plan.ramp + plan.connect_timeout.saturating_mul(waves) + Duration::from_secs(1);
    // Relaxed: progress counters (see `stats`).
    while shared.attempts_done.load(Relaxed) < plan.clients {
        if Instant::now() >= deadline {
            warnings.push(format!(
                "the connect phase hit its deadline with {} of {} attempts finished",
                shared.attempts_done.load(Relaxed),
                plan.clients
            ));
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What the publish phase measured.
struct Window {
    publish: PublishStats,
    cpu_start: Option<(Duration, Duration)>,
    cpu_end: Option<(Duration, Duration)>,
}

/// Publishes through the warm-up and the measured window, sampling the loadgen's CPU at the
/// window's edges, and waits for the publishers to finish.
async fn publish_and_measure(plan: &Arc<Plan>, shared: &Arc<Shared>, warnings: &mut Vec<String>) -> Window {
    let publish_start = Instant::now();
    let window_start = publish_start + plan.warmup;
    let window_end = window_start + plan.duration;
    // Relaxed: set before any publisher exists; read by tasks spawned after (see `stats`).
    shared.window_start_ns.store(shared.ns_at(window_start), Relaxed);
    shared.window_end_ns.store(shared.ns_at(window_end), Relaxed);
    shared.set_phase(Phase::Warmup);
    let connections = plan.publish_connections;
    let publishers: Vec<_> = (0..connections)
        .filter(|_| plan.rate > 0.0)
        .map(|j| {
            let topics: Vec<usize> = (j..plan.topics.len()).step_by(connections).collect();
            let rate = plan.rate * to_f64(topics.len() as u64) / to_f64(plan.topics.len() as u64);
            tokio::spawn(publisher::run(
                j,
                Arc::clone(plan),
                Arc::clone(shared),
                topics,
                rate,
                publish_start,
                window_end,
            ))
        })
        .collect();
    tokio::time::sleep_until(window_start.into()).await;
    shared.set_phase(Phase::Measuring);
    let cpu_start = cpu_times();
    tokio::time::sleep_until(window_end.into()).await;
    let cpu_end = cpu_times();
    shared.set_phase(Phase::Draining);
    let mut publish = PublishStats::new();
    for task in publishers {
        match task.await {
            Ok(stats) => publish.merge(&stats),
            Err(error) => warnings.push(format!("a publisher task failed: {error}")),
        }
    }
    Window { publish, cpu_start, cpu_end }
}

/// Assembles the report (without its verdict).
fn build_report(
    config: Config,
    plan: &Plan,
    shared: &Shared,
    outcomes: &[Outcome],
    publish: &PublishStats,
    per_topic: Vec<u64>,
    cpu: CpuReport,
) -> Report {
    let histogram = shared.measured();
    let connect_times = shared.connect_times.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let (normal, slow, failures, measured) = tally(outcomes, &per_topic);
    let ms = |micros: u64| to_f64(micros) / 1000.0;
    let window_s = plan.duration.as_secs_f64();
    Report {
        server: plan.server.to_string(),
        connect: ConnectReport {
            attempted: plan.clients as u64,
            connected: normal.connected + slow.connected,
            failed: failures.values().sum(),
            failures,
            time_to_connect_all_s: 0.0,
            p50_ms: ms(connect_times.value_at_quantile(0.5)),
            p90_ms: ms(connect_times.value_at_quantile(0.9)),
            p99_ms: ms(connect_times.value_at_quantile(0.99)),
            max_ms: ms(connect_times.max()),
            source_addrs: plan.sources.len(),
        },
        publish: PublishReport {
            target_rate: plan.rate,
            achieved_rate: to_f64(publish.acked_in_window) / window_s,
            events_acked: publish.acked,
            events_acked_in_window: publish.acked_in_window,
            events_failed: publish.failed,
            events_unknown: publish.unknown,
            requests: publish.requests,
            errors: publish.errors.clone(),
            first_error: publish.first_error.clone(),
            connections_opened: publish.connects,
            largest_batch: publish.largest_batch,
            round_trip_p50_ms: ms(publish.round_trips.value_at_quantile(0.5)),
            round_trip_p99_ms: ms(publish.round_trips.value_at_quantile(0.99)),
            per_topic,
        },
        latency: LatencyReport::from_nanos(&histogram),
        delivery: DeliveryReport {
            window_s,
            deliveries_in_window: measured,
            deliveries_per_s: to_f64(measured) / window_s,
            deliveries_total: normal.received,
            expected_total: normal.expected,
        },
        cpu,
        problems: Vec::new(),
        warnings: Vec::new(),
        ok: false,
        normal,
        slow,
        histogram,
        args: config,
    }
}

/// Makes sure this process may open `needed` files, raising the soft limit if it must.
fn ensure_open_files(needed: u64, clients: usize) -> anyhow::Result<()> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).context("could not read the open-files limit")?;
    if soft >= needed {
        return Ok(());
    }
    let raised = rlimit::increase_nofile_limit(needed).context("could not raise the open-files limit")?;
    ensure!(
        raised >= needed,
        "--clients {clients} needs about {needed} open files, but the limit is {raised} (hard limit {hard}); \
         lower --clients, or raise the hard limit (ulimit -Hn, or LimitNOFILE in a service)"
    );
    Ok(())
}

/// Whether every open normal client has every event the server acknowledged for its topic.
fn caught_up(plan: &Plan, shared: &Shared, per_topic: &[u64]) -> bool {
    shared.clients.iter().enumerate().all(|(index, slot)| {
        // Relaxed: progress signals; the final numbers come from the tasks' outcomes.
        plan.is_slow(index)
            || !slot.open.load(Relaxed)
            || slot.last_seq.load(Relaxed) >= per_topic[index % per_topic.len()]
    })
}

/// Sums the outcomes per group: (normal, slow, connect failures, deliveries in the window).
fn tally(outcomes: &[Outcome], per_topic: &[u64]) -> (GroupReport, GroupReport, BTreeMap<String, u64>, u64) {
    let mut normal = GroupReport::default();
    let mut slow = GroupReport::default();
    let mut failures = BTreeMap::new();
    let mut measured = 0;
    for outcome in outcomes {
        let group = if outcome.slow { &mut slow } else { &mut normal };
        group.clients += 1;
        if let Err(failure) = &outcome.connect {
            *failures.entry(failure.to_string()).or_insert(0) += 1;
            continue;
        }
        group.connected += 1;
        if !outcome.slow {
            measured += outcome.measured;
        }
        let expected = per_topic[outcome.topic];
        let seq = &outcome.seq;
        group.expected += expected;
        group.received += seq.received;
        if outcome.end == End::Lapped {
            group.gap_events_lapped += seq.missing;
        } else {
            group.gap_events += seq.missing;
            group.clients_with_gaps += u64::from(seq.gaps > 0);
        }
        group.duplicates += seq.duplicates;
        group.clients_with_duplicates += u64::from(seq.duplicates > 0);
        group.misrouted += outcome.misrouted;
        group.foreign += outcome.foreign;
        group.heartbeats += outcome.heartbeats;
        group.bytes += outcome.bytes;
        let counter = match outcome.end {
            End::Open | End::NotConnected => None,
            End::Lapped => Some(&mut group.disconnects.lapped),
            End::Shutdown => Some(&mut group.disconnects.shutdown),
            End::Closed => Some(&mut group.disconnects.closed),
            End::Error => Some(&mut group.disconnects.error),
            End::Timeout => Some(&mut group.disconnects.timeout),
        };
        if let Some(counter) = counter {
            *counter += 1;
        } else {
            group.open_at_end += 1;
            group.missing_at_end += expected.saturating_sub(seq.last);
        }
        if let Some(error) = outcome.error.as_ref().filter(|_| group.errors.len() < KEEP_ERRORS) {
            group.errors.push(error.clone());
        }
    }
    (normal, slow, failures, measured)
}

fn cpu_report(
    window_start: Option<(Duration, Duration)>,
    window_end: Option<(Duration, Duration)>,
    run_start: Option<(Duration, Duration)>,
    run_end: Option<(Duration, Duration)>,
    window: Duration,
    threads: usize,
) -> CpuReport {
    let window_s = window.as_secs_f64();
    let delta = |from: Option<(Duration, Duration)>, to: Option<(Duration, Duration)>| match (from, to) {
        (Some((user0, sys0)), Some((user1, sys1))) => {
            (user1.saturating_sub(user0).as_secs_f64(), sys1.saturating_sub(sys0).as_secs_f64())
        }
        _ => (0.0, 0.0),
    };
    let (user_s, sys_s) = delta(window_start, window_end);
    let (run_user_s, run_sys_s) = delta(run_start, run_end);
    let (rss_bytes, peak_rss_bytes) = memory().unwrap_or_default();
    CpuReport {
        window_s,
        user_s,
        sys_s,
        percent_of_one_core: 100.0 * (user_s + sys_s) / window_s,
        threads,
        run_user_s,
        run_sys_s,
        rss_bytes,
        peak_rss_bytes,
    }
}

/// Fills `problems` (integrity failures among the normal clients) and `warnings`.
fn judge(report: &mut Report) {
    let normal = &report.normal;
    let mut problems = Vec::new();
    if normal.clients > 0 && normal.connected == 0 {
        problems.push("no normal client connected, so nothing was checked".to_owned());
    }
    if normal.gap_events > 0 {
        problems.push(format!(
            "{} normal clients had gaps: {} events skipped inside their streams without being lapped",
            normal.clients_with_gaps, normal.gap_events
        ));
    }
    if normal.duplicates > 0 {
        problems.push(format!(
            "{} normal clients received {} events twice or out of order",
            normal.clients_with_duplicates, normal.duplicates
        ));
    }
    if normal.missing_at_end > 0 {
        problems.push(format!(
            "normal clients still connected at the end lacked {} acknowledged events after the {} s drain \
             (lost, or the server is slower than the drain: raise --drain to tell)",
            normal.missing_at_end, report.args.drain
        ));
    }
    if normal.misrouted > 0 {
        problems.push(format!("{} events arrived on a stream of another topic", normal.misrouted));
    }
    if !problems.is_empty() && report.publish.events_unknown > 0 {
        problems.push(format!(
            "note: {} events had an unknown publish outcome (connection failed mid-request); they count as \
             published, so some gaps may come from them",
            report.publish.events_unknown
        ));
    }

    let mut warnings = std::mem::take(&mut report.warnings);
    if report.connect.failed > 0 {
        warnings.push(format!("{} clients failed to connect: {:?}", report.connect.failed, report.connect.failures));
    }
    if report.publish.events_failed > 0 {
        warnings
            .push(format!("{} events were not published: {:?}", report.publish.events_failed, report.publish.errors));
    }
    let publish = &report.publish;
    if publish.target_rate > 0.0 && publish.events_failed == 0 && publish.achieved_rate < 0.95 * publish.target_rate {
        warnings.push(format!(
            "the publisher reached {:.1}/s of the {:.1}/s target: the server's publish path (or the loadgen, see cpu) \
             could not keep up; try --publish-connections or --batch-interval-ms",
            publish.achieved_rate, publish.target_rate
        ));
    }
    let disconnected = normal.disconnects.total();
    if disconnected > 0 {
        warnings.push(format!(
            "{disconnected} normal clients were disconnected during the run: {:?} (errors: {:?})",
            normal.disconnects, normal.errors
        ));
    }
    if normal.foreign > 0 {
        warnings
            .push(format!("{} events were not loadgen payloads (another publisher on these topics?)", normal.foreign));
    }
    let slow = &report.slow;
    if slow.open_at_end > 0 {
        warnings.push(format!(
            "{} of {} slow clients were still connected at the end: the server had not dropped them \
             (a longer run or a higher rate laps them; see the server's write timeout)",
            slow.open_at_end, slow.connected
        ));
    }
    let cpu = &report.cpu;
    if cpu.percent_of_one_core > 85.0 * to_f64(cpu.threads as u64) {
        warnings.push(format!(
            "the loadgen used {:.0}% of a core with {} thread(s): it may have been the bottleneck; try --threads",
            cpu.percent_of_one_core, cpu.threads
        ));
    }
    report.ok = problems.is_empty();
    report.problems = problems;
    report.warnings = warnings;
}
