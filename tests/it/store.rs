//! History that survives restarts (`--data-dir`), with the real binary as a process: a
//! `kill -9` under load loses no acknowledged event; a torn last record is cut and said; a
//! corrupt one in the middle stops the start (or is cut with `--log-recover`); a full disk
//! answers 507 and loses nothing acknowledged, and publishing resumes when there is room;
//! retention keeps the log within its bound; a second process on one directory is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringcast::wire::parse::SseEvent;

use crate::support::{Binary, SseClient, WAIT, request, run_to_exit, try_request};

/// Publishes `events` (data strings) on `topic` in one NDJSON batch; the ids if acknowledged,
/// else the status.
async fn publish(addr: std::net::SocketAddr, topic: &str, events: &[String]) -> Result<Vec<String>, u16> {
    let body: String = events
        .iter()
        .map(|data| format!("{}\n", serde_json::json!({ "topic": topic, "data": data })))
        .collect::<Vec<_>>()
        .concat();
    // The node may be killed mid-request (kill -9 under load): a reset is "no answer".
    let attempt = try_request(addr, "POST", "/publish", &[("content-type", "application/x-ndjson")], body.as_bytes());
    let Ok((Some(status), _, text)) = tokio::time::timeout(WAIT, attempt).await else { return Err(0) };
    if status != 200 {
        return Err(status);
    }
    let parsed: serde_json::Value = serde_json::from_str(&text).map_err(|_| status)?;
    Ok(parsed["ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(|id| id.as_str().map(str::to_owned)).collect())
        .unwrap_or_default())
}

async fn epoch(addr: std::net::SocketAddr) -> u64 {
    let (_, _, health) = request(addr, "GET", "/health", &[], b"").await;
    let health: serde_json::Value = serde_json::from_str(&health).expect("health");
    health["epoch"].as_u64().expect("epoch")
}

/// Every event after `after` up to the one whose data is `until`, resumed from the log.
async fn replay(addr: std::net::SocketAddr, topic: &str, after: &str, until: &str) -> Vec<SseEvent> {
    let mut client = SseClient::connect(addr, &format!("/events?topic={topic}"), &[("last-event-id", after)]).await;
    let mut events = Vec::new();
    loop {
        let event =
            client.next_event(WAIT * 2).await.unwrap_or_else(|| panic!("{until:?} did not come; got {}", events.len()));
        let last = event.data == until;
        events.push(event);
        if last {
            return events;
        }
    }
}

fn dir_arg(dir: &Path) -> String {
    dir.display().to_string()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_under_load_loses_no_acknowledged_event() {
    // `always`: on disk before the answer; `interval`: in the page cache, which a process
    // crash does not lose.
    for fsync in ["always", "interval"] {
        kill_9_under_load(fsync).await;
    }
}

async fn kill_9_under_load(fsync: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir_arg(dir.path());
    let args = [
        "--data-dir",
        &data_dir,
        "--fsync",
        fsync,
        "--ring-capacity",
        "256",
        "--replay-limit",
        "1000000",
        "--publish-rate",
        "0",
    ];
    let mut node = Binary::start(&args);
    let addr = node.addr;
    let epoch_before = epoch(addr).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..4 {
        let stop = std::sync::Arc::clone(&stop);
        publishers.push(tokio::spawn(async move {
            let mut acked: Vec<(String, String)> = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch: Vec<String> = (n..n + 20).map(|i| format!("p{p}-{i}")).collect();
                n += 20;
                match publish(addr, "t", &batch).await {
                    Ok(ids) => acked.extend(batch.into_iter().zip(ids)),
                    Err(_) => break, // the node is gone
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.crash();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked: Vec<(String, String)> = Vec::new();
    for publisher in publishers {
        acked.extend(publisher.await.expect("publisher"));
    }
    assert!(acked.len() > 200, "the publishers got going: {} acknowledged", acked.len());

    let node = Binary::start(&args);
    assert_eq!(epoch(node.addr).await, epoch_before, "the same epoch: ids resume across the restart");
    let end = publish(node.addr, "t", &["end".to_owned()]).await.expect("publish after the restart");
    let events = replay(node.addr, "t", &format!("{epoch_before}-0"), "end").await;
    assert!(events.iter().all(|e| e.event == "message"), "no reset: the log holds everything");
    let seen: HashMap<&str, &str> = events.iter().map(|e| (e.data.as_str(), e.last_event_id.as_str())).collect();
    assert_eq!(seen.len(), events.len(), "no event twice");
    for (data, id) in &acked {
        assert_eq!(seen.get(data.as_str()), Some(&id.as_str()), "acknowledged {data} is in the log with its id");
    }
    let keys: Vec<u64> =
        events.iter().map(|e| e.last_event_id.rsplit('-').next().and_then(|s| s.parse().ok()).expect("seq")).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in order");
    let seq = |id: &str| id.rsplit('-').next().and_then(|s| s.parse::<u64>().ok()).expect("seq");
    let last_acked = acked.iter().map(|(_, id)| seq(id)).max().expect("ids");
    assert!(seq(&end[0]) > last_acked, "ids go on increasing");

    // A Last-Event-ID from before the kill resumes right after it.
    let (middle_data, middle_id) = &acked[acked.len() / 2];
    let at = events.iter().position(|e| &e.data == middle_data).expect("in the log");
    let resumed = replay(node.addr, "t", middle_id, "end").await;
    assert_eq!(resumed.first().map(|e| e.data.as_str()), events.get(at + 1).map(|e| e.data.as_str()));
    assert_eq!(resumed.len(), events.len() - at - 1, "exactly the events after it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_cut_and_said_and_a_corrupt_middle_one_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir_arg(dir.path());
    let args = ["--data-dir", &data_dir, "--fsync", "always"];
    let mut node = Binary::start(&args);
    let epoch = epoch(node.addr).await;
    for i in 0..10 {
        publish(node.addr, "t", &[format!("e{i}")]).await.expect("publish");
    }
    // Node-local $sys/ events take ids too (the stats, each second), without being logged.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, _, health) = request(node.addr, "GET", "/health", &[], b"").await;
    let health: serde_json::Value = serde_json::from_str(&health).expect("health");
    let last_id = health["last_event_id"].as_str().expect("id").to_owned();
    node.stop();
    drop(node);
    let segment = segments(dir.path()).pop().expect("a segment");
    let len = std::fs::metadata(&segment).expect("meta").len();
    std::fs::OpenOptions::new().write(true).open(&segment).expect("open").set_len(len - 3).expect("truncate");

    let log = dir.path().join("stderr.txt");
    let node = Binary::start_logged(&args, &log);
    let events = replay(node.addr, "t", &format!("{epoch}-0"), "e8").await;
    assert_eq!(events.len(), 9, "e0..e8 survive; the cut e9 is gone");
    let after = publish(node.addr, "t", &["after".to_owned()]).await.expect("the log takes new events");
    let seq = |id: &str| id.rsplit('-').next().and_then(|s| s.parse::<u64>().ok()).expect("seq");
    assert!(seq(&after[0]) > seq(&last_id), "no id of the last run is used again ({last_id}, {})", after[0]);
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(said.contains("cut short") && said.contains("cut it off"), "{said}");
    drop(node);

    // Damage in the middle of the segment: the start stops, naming the file and the offset.
    let mut bytes = std::fs::read(&segment).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, &bytes).expect("write");
    let (status, said) = run_to_exit(&args);
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("corrupt") && said.contains(&segment.display().to_string()) && said.contains("at byte"),
        "{said}"
    );
    assert!(said.contains("--log-recover"), "says what to do: {said}");
    // --log-recover keeps the log up to the last good record.
    let recover: Vec<&str> = args.iter().copied().chain(["--log-recover"]).collect();
    let node = Binary::start(&recover);
    let ids = publish(node.addr, "t", &["recovered".to_owned()]).await.expect("publish");
    let events = replay(node.addr, "t", &format!("{epoch}-0"), "recovered").await;
    assert!(events.len() >= 2 && events.len() < 12, "the events before the damage, then the new one: {}", events.len());
    assert_eq!(events.last().map(|e| e.last_event_id.clone()), Some(ids[0].clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_loses_nothing_acknowledged_and_publishing_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir_arg(dir.path());
    // The file size limit (RLIMIT_FSIZE) stands in for a full disk: a write beyond it fails.
    let node = Binary::start_with(
        &["prlimit", "--fsize=120000:unlimited", "--"],
        &["--data-dir", &data_dir, "--fsync", "always", "--segment-bytes", "1MiB"],
        std::process::Stdio::null(),
    );
    let epoch = epoch(node.addr).await;
    let pad = "x".repeat(1000);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..500 {
        match publish(node.addr, "t", &[format!("{i} {pad}")]).await {
            Ok(_) => acked.push(i),
            Err(status) => {
                refused = Some((i, status));
                break;
            }
        }
    }
    let (first_refused, status) = refused.expect("the limit was reached");
    assert_eq!(status, 507, "a full disk is 507");
    let refused_body = serde_json::json!({ "topic": "t", "data": format!("refused {pad}") }).to_string();
    let (status, head, body) =
        request(node.addr, "POST", "/publish", &[("content-type", "application/json")], refused_body.as_bytes()).await;
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("disk is full") && body.contains("nothing was published"), "{body}");
    assert!(head.to_ascii_lowercase().contains("ringcast-outcome: not-published"), "{head}");
    let (_, _, health) = request(node.addr, "GET", "/health", &[], b"").await;
    assert!(health.contains(r#""state":"failing""#) && health.contains(r#""status":"degraded""#), "{health}");
    let (_, _, metrics) = request(node.addr, "GET", "/metrics", &[], b"").await;
    let errors: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ringcast_log_append_errors_total ")?.parse().ok())
        .expect("the log's metrics");
    assert!(errors >= 2.0, "{metrics}");
    assert!(metrics.contains("ringcast_log_fsync_seconds_count"), "{metrics}");
    // Room again (the limit raised on the running process): publishing resumes.
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &node.pid().to_string(), "--fsize=unlimited:unlimited"])
        .status()
        .expect("prlimit");
    assert!(status.success());
    publish(node.addr, "t", &["resumed".to_owned()]).await.expect("publishing resumes when there is room");
    let events = replay(node.addr, "t", &format!("{epoch}-0"), "resumed").await;
    let got: Vec<usize> = events.iter().filter_map(|e| e.data.split(' ').next()?.parse().ok()).collect();
    assert_eq!(got, acked, "every acknowledged event, once, and no refused one ({first_refused} was refused)");
    let (_, _, health) = request(node.addr, "GET", "/health", &[], b"").await;
    assert!(health.contains(r#""state":"ok""#), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_log_within_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir_arg(dir.path());
    let node = Binary::start(&[
        "--data-dir",
        &data_dir,
        "--segment-bytes",
        "64KiB",
        "--retain-bytes",
        "256KiB",
        "--ring-capacity",
        "64",
        "--publish-rate",
        "0",
    ]);
    let epoch = epoch(node.addr).await;
    let pad = "x".repeat(1000);
    let mut largest = 0;
    let mut first = None;
    for round in 0..40 {
        let batch: Vec<String> = (0..50).map(|i| format!("{} {pad}", round * 50 + i)).collect();
        let ids = publish(node.addr, "t", &batch).await.expect("publish");
        first.get_or_insert_with(|| ids[0].clone());
        let bytes: u64 = segments(dir.path()).iter().map(|path| std::fs::metadata(path).map_or(0, |m| m.len())).sum();
        largest = largest.max(bytes);
    }
    assert!(largest <= (256 + 64 + 8) << 10, "the log grew to {largest} bytes with a 256 KiB bound");
    // The oldest events are gone: a resume from them is a reset; a recent one is exact.
    let mut old =
        SseClient::connect(node.addr, "/events?topic=t", &[("last-event-id", first.as_deref().expect("an id"))]).await;
    let reset = old.next_event(WAIT).await.expect("reset");
    assert_eq!(reset.event, "reset", "{reset:?}");
    let recent = format!("{epoch}-{}", 40 * 50 - 100);
    publish(node.addr, "t", &["end".to_owned()]).await.expect("publish");
    let events = replay(node.addr, "t", &recent, "end").await;
    assert_eq!(events.len(), 101, "the last 100 events and the end, from the ring and the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir_arg(dir.path());
    let _first = Binary::start(&["--data-dir", &data_dir]);
    let (status, said) = run_to_exit(&["--data-dir", &data_dir]);
    assert!(!status.success());
    assert!(said.contains("in use by another ringcast process"), "{said}");
}

#[tokio::test]
async fn a_data_dir_and_cluster_mode_are_refused_together() {
    let (status, said) = run_to_exit(&["--data-dir", "/tmp/unused", "--redis", "redis://127.0.0.1:1"]);
    assert!(!status.success());
    assert!(said.contains("--data-dir") && said.contains("--redis"), "{said}");
}

/// Publishes a Mercure update (the binary runs without keys: publishing is open).
async fn mercure_publish(addr: std::net::SocketAddr, form: &str) -> String {
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let (status, _, id) = request(addr, "POST", "/.well-known/mercure", &headers, form.as_bytes()).await;
    assert_eq!(status, 200, "{form}: {id}");
    id
}

/// Mercure updates survive a `kill -9`: publisher ids resume exactly after the restart,
/// `earliest` replays what the history holds, and a private update stays private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mercure_ids_and_earliest_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir_arg(dir.path());
    let args = ["--data-dir", &data_dir, "--fsync", "always"];
    let mut node = Binary::start(&args);
    for i in 0..5 {
        let private = if i == 2 { "&private=on" } else { "" };
        let id = mercure_publish(
            node.addr,
            &format!("topic=https%3A%2F%2Fexample.com%2Fm%2F{i}&data=m{i}&id=m-{i}{private}"),
        )
        .await;
        assert_eq!(id, format!("m-{i}"));
    }
    node.crash();
    let node = Binary::start(&args);
    let path = "/.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Fm%2F%7Bi%7D";
    let mut resumed = SseClient::connect(node.addr, path, &[("last-event-id", "m-1")]).await;
    assert_eq!(resumed.header("last-event-id").as_deref(), Some("m-1"));
    let mut earliest = SseClient::connect(node.addr, &format!("{path}&lastEventID=earliest"), &[]).await;
    let generated = mercure_publish(node.addr, "topic=https%3A%2F%2Fexample.com%2Fm%2F9&data=after").await;
    assert!(generated.starts_with("urn:uuid:"));
    let data = |events: Vec<SseEvent>| events.into_iter().map(|e| e.data).collect::<Vec<_>>();
    assert_eq!(data(resumed.events(3).await), ["m3", "m4", "after"], "the private m2 is not sent to anonymous");
    assert_eq!(data(earliest.events(5).await), ["m0", "m1", "m3", "m4", "after"]);
}

/// Mercure topics are not ringcast topics: a `/events` resume served from the log never
/// includes a Mercure update, even one whose topic has the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_resume_of_a_topic_skips_mercure_updates_of_the_same_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir_arg(dir.path());
    let node = Binary::start(&["--data-dir", &data_dir, "--ring-capacity", "2"]);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.extend(publish(node.addr, "shared", &[format!("events-{i}")]).await.expect("published"));
        mercure_publish(node.addr, &format!("topic=shared&data=mercure-{i}")).await;
    }
    // The ring holds the last two events of `shared`: the first ones come from the log.
    let replayed = replay(node.addr, "shared", &ids[0], "events-3").await;
    let data: Vec<&str> = replayed.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["events-1", "events-2", "events-3"]);
}
