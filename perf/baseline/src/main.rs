//! `ringcast-baseline`: the comparison server for `perf/run.sh --compare`.
//!
//! This is the idiomatic Rust answer to "SSE fan-out", written the way a competent team would
//! from the axum docs: an axum 0.8 [`Sse`] response per subscriber, fed by one
//! [`tokio::sync::broadcast`] channel per topic. It exists so ringcast's load numbers have an
//! honest yardstick: it is neither deliberately slow nor hand-optimized. The only departures
//! from a docs-style server are the ones any production deployment makes and that keep the
//! comparison about fan-out rather than about setup: the mimalloc global allocator, the
//! open-files soft limit raised to the hard limit, a 16384 listen backlog (the kernel still caps
//! it at `net.core.somaxconn`), and `TCP_NODELAY` on accepted sockets (the `tap_io` example in
//! axum's docs).
//!
//! It speaks ringcast's HTTP interface so the same load generator drives both:
//!
//! - `GET /events?topic=A[&topic=B…]`: `text/event-stream`, one `id:`/`data:` (and optional
//!   `event:`) frame per published event, a `:heartbeat` comment every 15 s. Each topic's
//!   `broadcast::Sender<Arc<Message>>` is created on first use. A subscriber that lags
//!   ([`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged)) is
//!   disconnected after a `: disconnected: …` comment, mirroring ringcast; SIGTERM ends every
//!   stream with `: server shutting down`, so graceful shutdown can finish. Differences that
//!   come with the design: a broadcast receiver only notices it lagged when its stream is
//!   polled again, i.e. when the socket accepts writes, so a client that reads nothing at all
//!   is never detected (ringcast's write timeout closes those); `Last-Event-ID` is ignored
//!   (broadcast channels keep no history to resume from); with several topics, events of
//!   different topics interleave in polling order, not id order (each topic stays in order).
//! - `POST /publish`: `application/json` (`{"topic":"a"|["a","b"],"event":"x","data":…,
//!   "retry":ms}`; a string `data` is sent as is, any other JSON value as compact JSON) or
//!   `application/x-ndjson` (one such object per line). Every event gets the next id of a
//!   global counter and is sent to each of its topics; the answer is `{"ids":["1",…]}`.
//!   (The counter is not held across the send, so two *concurrent* publishers to one topic may
//!   deliver ids out of order; one publisher's events always arrive in order.)
//!   400 on bad JSON, 415 on another content type, 413 past axum's default 2 MiB body limit.
//! - `GET /health`: 200.
//!
//! Each SSE frame is built per subscriber (axum's `Event` owns its bytes), which is the cost
//! this idiomatic design pays and ringcast's pre-serialized shared frames avoid.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(name = "ringcast-baseline", version, about = "Baseline SSE broadcaster: axum Sse + tokio broadcast.")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,

    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,

    /// Capacity of each topic's broadcast channel; a subscriber this far behind is disconnected.
    /// (`--ring-capacity` is accepted too, so run scripts can pass ringcast's flag name.)
    #[arg(long, alias = "ring-capacity", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    capacity: u32,
}

/// One published event, shared by every subscriber of its topics.
#[derive(Debug)]
struct Message {
    id: String,
    /// The topics it was published to, without duplicates (see [`event_stream`]).
    topics: Vec<String>,
    event: Option<String>,
    data: String,
    retry: Option<u64>,
}

/// Shared server state.
#[derive(Debug)]
struct AppState {
    topics: Mutex<HashMap<String, broadcast::Sender<Arc<Message>>>>,
    next_id: AtomicU64,
    capacity: usize,
    /// Cancelled on SIGTERM/SIGINT so open SSE streams end and graceful shutdown can finish.
    shutdown: CancellationToken,
}

impl AppState {
    /// The topic's sender, created on first use.
    fn sender(&self, topic: &str) -> broadcast::Sender<Arc<Message>> {
        let mut topics = self.topics.lock().expect("topics mutex poisoned");
        if let Some(sender) = topics.get(topic) {
            return sender.clone();
        }
        let (sender, _) = broadcast::channel(self.capacity);
        topics.insert(topic.to_owned(), sender.clone());
        sender
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Raise the soft open-files limit to the hard limit: 10,000 subscribers need 10,000 fds.
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-files limit: {err}");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers);
    }
    runtime.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let state = Arc::new(AppState {
        topics: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        capacity: args.capacity as usize,
        shutdown: CancellationToken::new(),
    });
    let app = Router::new()
        .route("/events", get(events))
        .route("/publish", post(publish))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(Arc::clone(&state));

    // tokio's `TcpListener::bind` uses a fixed backlog of 1024; bind by hand for a larger one.
    let socket =
        if args.listen.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let listener = socket.listen(16384)?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!("ringcast-baseline listening on http://{} (capacity {})", args.listen, args.capacity);

    let shutdown = state.shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!("shutting down");
            shutdown.cancel();
        })
        .await?;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.expect("install SIGINT handler");
    };
    #[cfg(unix)]
    let terminate = async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler")
            .recv()
            .await;
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// `GET /events?topic=A[&topic=B…]`.
async fn events(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let mut topics: Vec<String> = Vec::new();
    for (key, topic) in form_urlencoded::parse(query.as_bytes()) {
        if key == "topic" && !topic.is_empty() && !topics.iter().any(|t| *t == topic) {
            topics.push(topic.into_owned());
        }
    }
    if topics.is_empty() {
        return (StatusCode::BAD_REQUEST, "missing `topic` query parameter\n").into_response();
    }
    Sse::new(event_stream(&state, topics))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("heartbeat"))
        .into_response()
}

/// The subscriber's frames: one receiver per topic, merged with a [`StreamMap`].
///
/// Ends at the first lag on any topic, with ringcast's `: disconnected: …` comment, or at
/// shutdown, with `: server shutting down` (the comments the load generator classifies).
/// An event published to several of the subscribed topics arrives on each of their receivers;
/// like ringcast, it is delivered once: from the first of *its* topics that the subscriber has.
fn event_stream(state: &AppState, topics: Vec<String>) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
    let mut streams = StreamMap::new();
    for (index, topic) in topics.iter().enumerate() {
        streams.insert(index, BroadcastStream::new(state.sender(topic).subscribe()));
    }
    let shutdown = state.shutdown.clone();
    async_stream::stream! {
        // Registered once, not per event: all subscribers share this token.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                () = &mut cancelled => {
                    yield Ok(Event::default().comment("server shutting down"));
                    break;
                }
                next = streams.next() => match next {
                    Some((index, Ok(message))) => {
                        let first_here = topics.len() == 1
                            || message.topics.len() == 1
                            || message.topics.iter().find(|t| topics.contains(t)) == Some(&topics[index]);
                        if first_here {
                            yield Ok(to_event(&message));
                        }
                    }
                    Some((_, Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                        yield Ok(Event::default().comment(format!(
                            "disconnected: this client fell {missed} events behind (channel capacity exceeded)"
                        )));
                        break;
                    }
                    None => break,
                },
            }
        }
    }
}

fn to_event(message: &Message) -> Event {
    let mut event = Event::default().id(&message.id);
    if let Some(name) = &message.event {
        event = event.event(name);
    }
    if let Some(retry) = message.retry {
        event = event.retry(Duration::from_millis(retry));
    }
    event.data(&message.data)
}

/// A single topic or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Topics {
    One(String),
    Many(Vec<String>),
}

/// One event of a publish body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: Topics,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    retry: Option<u64>,
}

/// `POST /publish` with a JSON or NDJSON body.
async fn publish(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let requests: Vec<PublishRequest> = match essence.as_str() {
        "application/json" => match serde_json::from_slice(&body) {
            Ok(request) => vec![request],
            Err(err) => return bad_request(format!("invalid JSON: {err}")),
        },
        "application/x-ndjson" => {
            let mut requests = Vec::new();
            for (i, line) in body.split(|&b| b == b'\n').enumerate() {
                if line.trim_ascii().is_empty() {
                    continue;
                }
                match serde_json::from_slice(line) {
                    Ok(request) => requests.push(request),
                    Err(err) => return bad_request(format!("line {}: invalid JSON: {err}", i + 1)),
                }
            }
            requests
        }
        _ => {
            return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "send application/json or application/x-ndjson\n")
                .into_response();
        }
    };
    if requests.is_empty() {
        return bad_request("the body holds no event".into());
    }

    // Validate the whole batch before publishing any of it.
    let mut batch = Vec::with_capacity(requests.len());
    for request in requests {
        let mut topics = match request.topic {
            Topics::One(topic) => vec![topic],
            Topics::Many(topics) => topics,
        };
        let mut seen = HashSet::new();
        topics.retain(|topic| seen.insert(topic.clone()));
        if topics.is_empty() || topics.iter().any(String::is_empty) {
            return bad_request("`topic` must name at least one non-empty topic".into());
        }
        // axum's `Event::event` panics on line breaks; reject them here instead.
        if request.event.as_deref().is_some_and(|name| name.contains(['\r', '\n'])) {
            return bad_request("`event` must not contain line breaks".into());
        }
        let data = match request.data {
            None => String::new(),
            Some(serde_json::Value::String(text)) => text,
            Some(value) => value.to_string(),
        };
        batch.push((topics, request.event, data, request.retry));
    }

    let mut ids = Vec::with_capacity(batch.len());
    for (topics, event, data, retry) in batch {
        let id = state.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let senders: Vec<_> = topics.iter().map(|topic| state.sender(topic)).collect();
        let message = Arc::new(Message { id: id.clone(), topics, event, data, retry });
        for sender in senders {
            // `Err` only means nobody is subscribed right now, which is fine.
            let _ = sender.send(Arc::clone(&message));
        }
        ids.push(id);
    }
    Json(serde_json::json!({ "ids": ids })).into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message + "\n").into_response()
}
