//! Run configuration: the command-line options ([`Config`], clap derive, also built directly
//! by tests and embedders) and their checked, resolved form (`Plan`): the server address,
//! the source addresses, and every request head prebuilt once per topic.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use serde::Serialize;

/// How events are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishFormat {
    /// ringcast `POST /publish` with `application/x-ndjson`: one request per batch (the
    /// events due every `--batch-interval-ms`).
    RingcastNdjson,
    /// ringcast `POST /publish` with `application/json`: one request per event.
    RingcastJson,
    /// The data itself as the body (`text/plain`), one request per event, to a path template
    /// such as `/pub/{topic}` (nginx + nchan publishers take this).
    Raw,
    /// A Mercure update (`application/x-www-form-urlencoded`: `topic`, `data`), one request
    /// per event, to `--publish-path` (`/.well-known/mercure`).
    Mercure,
    /// A private Mercure update (`private=on`): only subscribers whose token's claims match
    /// its topic get it.
    MercurePrivate,
}

/// Options of a load run. `loadgen --help` documents each; every duration is in seconds.
#[expect(clippy::struct_excessive_bools, reason = "on/off command-line flags are bools")]
#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "loadgen",
    version,
    about = "A swarm of SSE clients and a paced publisher: latency, deliveries/s, gaps, duplicates."
)]
pub struct Config {
    /// Server to load: `http://HOST:PORT` or `https://HOST:PORT` (a path here prefixes both
    /// path templates). Over `https://` the clients and the publisher speak TLS (rustls),
    /// trusting the system's CA certificates unless `--ca-cert` or `--insecure` says otherwise.
    #[arg(long, env = "LOADGEN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Trust the CA certificates of this PEM file (instead of the system's) for `https://`.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,

    /// Accept any server certificate for `https://` (test servers with a self-signed one);
    /// the handshake still checks that the server holds the certificate's key.
    #[arg(long)]
    #[serde(default)]
    pub insecure: bool,

    /// Open the event streams over HTTP/2: ALPN `h2` over `https://`, prior knowledge (h2c)
    /// over `http://`. The publisher still speaks HTTP/1.1.
    #[arg(long)]
    #[serde(default)]
    pub http2: bool,

    /// With `--http2`: event streams per connection (a browser tab holding several
    /// EventSource streams on one connection). Clients `k*N .. k*N+N-1` share connection `k`.
    #[arg(long, default_value_t = 1)]
    pub streams_per_connection: usize,

    /// SSE connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,

    /// Spread client source addresses over 127.0.0.1..=127.0.0.K (K <= 254; 0: let the kernel
    /// choose). Only for a loopback IPv4 server; each address has its own ephemeral ports.
    /// ringcast limits connections per client IP (1000, and 1000 new at once, by default), so
    /// the default of 16 lets 10,000 clients in; use K >= clients / 1000. Publish connections
    /// then come from 127.0.1.x, counted apart from the clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(0..=254))]
    pub source_addrs: u8,

    /// Connection attempts in flight at once (TCP connect up to the response head).
    #[arg(long, default_value_t = 512)]
    pub connect_concurrency: usize,

    /// Seconds one connection attempt may take (TCP connect up to the response head).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,

    /// Seconds over which to spread opening the connections (0: as fast as allowed).
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,

    /// Topics; clients are spread over them round-robin, one topic each.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,

    /// Topic names are this prefix followed by 0..topics.
    #[arg(long, default_value = "lg-")]
    pub topic_prefix: String,

    /// Events per second to publish, over all topics (0: publish nothing, an idle run).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Bytes of each event's data (the header `TOPIC SEQ SENT_NS ` plus padding; never less
    /// than the header).
    #[arg(long, default_value_t = 128)]
    pub size: usize,

    /// Milliseconds between publish batches (ringcast-ndjson sends the events due every
    /// interval as one batch).
    #[arg(long, default_value_t = 2.0)]
    pub batch_interval_ms: f64,

    /// Keep-alive publish connections; each owns a share of the topics, so that per-topic
    /// order is kept (at most one per topic).
    #[arg(long, default_value_t = 1)]
    pub publish_connections: usize,

    /// Share of clients (0..=1) that stop reading right after connecting.
    #[arg(long, default_value_t = 0.0)]
    pub slow_fraction: f64,

    /// `SO_RCVBUF` of slow clients, in bytes (default: the kernel's); a small buffer makes a
    /// stuck client's backlog reach the server sooner.
    #[arg(long)]
    pub slow_recv_buffer: Option<usize>,

    /// Seconds of publishing before the measured window (not measured).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,

    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds after publishing stops that clients get to receive the last events.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,

    /// Seconds without any byte after which a client gives up (0: never); ringcast sends a
    /// heartbeat every 15 s by default.
    #[arg(long, default_value_t = 45.0)]
    pub idle_timeout: f64,

    /// Seconds a slow client may spend at the end of the run reading its backlog to see
    /// whether the server closed its connection.
    #[arg(long, default_value_t = 3.0)]
    pub slow_check: f64,

    /// Subscribe request path; `{topic}` is replaced by the (percent-encoded) topic name.
    #[arg(long, default_value = "/events?topic={topic}")]
    pub subscribe_path: String,

    /// Publish to this server instead of `--url` (e.g. another node of a ringcast cluster,
    /// to measure the hop through Redis). Default: `--url`.
    #[arg(long)]
    #[serde(default)]
    pub publish_url: Option<String>,

    /// A bearer token sent with every subscribe and publish request (`Authorization:
    /// Bearer`), for a server with authorization on.
    #[arg(long, env = "LOADGEN_TOKEN", hide_env_values = true)]
    #[serde(default, skip_serializing)]
    pub token: Option<String>,

    /// A file of bearer tokens, one per line: the subscribers of topic `i` send line
    /// `i mod lines` (instead of `--token`), to give groups of subscribers different rights
    /// (e.g. Mercure claims for private updates). The publisher still sends `--token`.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub topic_tokens: Option<PathBuf>,

    /// Publish request path; `{topic}` is replaced by the topic name (for `raw`).
    #[arg(long, default_value = "/publish")]
    pub publish_path: String,

    /// Publish body format.
    #[arg(long, value_enum, default_value_t = PublishFormat::RingcastNdjson)]
    pub publish_format: PublishFormat,

    /// Runtime worker threads of the loadgen (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Print the summary as JSON on stdout (the human table then goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Write the latency percentile distribution (HdrHistogram `.hgrm` text, microseconds).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Never draw the progress bar (it is also off when stdout is not a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// Draw the live progress bar on stderr (set by the binary from `--no-progress` and
    /// whether stdout is a terminal).
    #[arg(skip)]
    pub progress: bool,
}

impl Default for Config {
    /// The command-line defaults, without a progress bar.
    fn default() -> Self {
        Self::try_parse_from(["loadgen"]).expect("the option defaults parse")
    }
}

/// The longest event data the loadgen generates, in bytes.
const MAX_SIZE: usize = 1 << 20;

/// One topic's names and prebuilt requests.
#[derive(Debug)]
pub(crate) struct TopicPlan {
    /// The name as a JSON string literal (with quotes).
    pub(crate) json: String,
    /// The name percent-encoded (a form field's value).
    pub(crate) encoded: String,
    /// The complete HTTP/1.1 `GET` request of a subscriber, shared by every client of the topic.
    pub(crate) subscribe_request: Vec<u8>,
    /// The subscribe path (with the URL's prefix) and the `authorization` value, for HTTP/2.
    pub(crate) subscribe_path: String,
    pub(crate) authorization: Option<String>,
    /// The publish path with `{topic}` replaced.
    pub(crate) publish_path: String,
}

/// A checked [`Config`], resolved.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) server: SocketAddr,
    /// `Some` for `https://`: the clients' and the publisher's TLS.
    pub(crate) tls: Option<crate::transport::Tls>,
    /// Event streams over HTTP/2, this many per connection.
    pub(crate) http2: bool,
    pub(crate) streams_per_connection: usize,
    /// The `host` header (HTTP/2 `:authority`) of the subscribe requests.
    pub(crate) authority: String,
    /// Where publishing goes (`--publish-url`, else `server`), and its `Host` header.
    pub(crate) publish_server: SocketAddr,
    pub(crate) publish_host: String,
    /// Extra header lines of every request (`--token`), each ending in CRLF.
    pub(crate) auth_header: String,
    /// Addresses to bind clients to, used round-robin (empty: no bind).
    pub(crate) sources: Vec<Ipv4Addr>,

    pub(crate) topics: Vec<TopicPlan>,
    pub(crate) clients: usize,
    pub(crate) connect_concurrency: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) ramp: Duration,
    pub(crate) rate: f64,
    pub(crate) size: usize,
    pub(crate) batch_interval: Duration,
    pub(crate) publish_connections: usize,
    pub(crate) publish_format: PublishFormat,
    pub(crate) slow_fraction: f64,
    pub(crate) slow_recv_buffer: Option<usize>,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) drain: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) slow_check: Duration,
    pub(crate) threads: usize,
    pub(crate) progress: bool,
}

/// The checks of `config` that need nothing resolved.
fn check(config: &Config) -> anyhow::Result<()> {
    ensure!(config.clients >= 1, "--clients must be at least 1");
    ensure!(config.topics >= 1, "--topics must be at least 1");
    ensure!(config.connect_concurrency >= 1, "--connect-concurrency must be at least 1");
    ensure!(config.publish_connections >= 1, "--publish-connections must be at least 1");
    ensure!(config.threads >= 1, "--threads must be at least 1");
    ensure!(
        (1..=1000).contains(&config.streams_per_connection),
        "--streams-per-connection must be between 1 and 1000, not {}",
        config.streams_per_connection
    );
    ensure!(
        config.http2 || config.streams_per_connection == 1,
        "--streams-per-connection {} needs --http2 (HTTP/1.1 carries one stream per connection)",
        config.streams_per_connection
    );
    ensure!(config.rate.is_finite() && config.rate >= 0.0, "--rate must be a number of events/s, 0 or more");
    ensure!(config.size <= MAX_SIZE, "--size {} is larger than the loadgen's limit of {MAX_SIZE} bytes", config.size);
    ensure!(
        (0.0..=1.0).contains(&config.slow_fraction),
        "--slow-fraction must be between 0 and 1 (a share of the clients), not {}",
        config.slow_fraction
    );
    ensure!(
        config.batch_interval_ms.is_finite() && (0.1..=1000.0).contains(&config.batch_interval_ms),
        "--batch-interval-ms must be between 0.1 and 1000"
    );
    ensure!(
        config.topics == 1 || config.subscribe_path.contains("{topic}"),
        "--subscribe-path has no `{{topic}}`, so all {} topics would share one stream; add `{{topic}}`",
        config.topics
    );
    ensure!(
        config.publish_format != PublishFormat::Raw || config.topics == 1 || config.publish_path.contains("{topic}"),
        "--publish-format raw publishes to --publish-path, which has no `{{topic}}`; add it (e.g. /pub/{{topic}})"
    );
    for path in [&config.subscribe_path, &config.publish_path] {
        ensure!(path.starts_with('/'), "path template `{path}` must start with `/`");
        ensure!(
            !path.bytes().any(|b| b.is_ascii_control() || b == b' '),
            "path template `{path}` has a space or control character; percent-encode it"
        );
    }
    Ok(())
}

impl Plan {
    /// Checks `config` and resolves the server address (a blocking DNS lookup for a name).
    pub(crate) fn new(config: &Config) -> anyhow::Result<Self> {
        let url = Url::parse(&config.url)?;
        let resolve = |url: &Url, flag: &str, text: &str| -> anyhow::Result<SocketAddr> {
            (url.host.as_str(), url.port)
                .to_socket_addrs()
                .with_context(|| format!("could not resolve `{}` from {flag} {text}", url.host))?
                .min_by_key(SocketAddr::is_ipv6) // prefer IPv4: the source addresses are IPv4
                .with_context(|| format!("`{}` from {flag} resolved to no address", url.host))
        };
        let server = resolve(&url, "--url", &config.url)?;
        let (publish_server, publish_host) = match &config.publish_url {
            None => (server, url.host_header()),
            Some(text) => {
                let publish = Url::parse(text)?;
                ensure!(
                    publish.https == url.https,
                    "--publish-url {text} and --url {} must both be http:// or both https://",
                    config.url
                );
                (resolve(&publish, "--publish-url", text)?, publish.host_header())
            }
        };
        let tls = tls(config, &url)?;
        let sources = match (config.source_addrs, server.ip()) {
            (0, _) => Vec::new(),
            (k, IpAddr::V4(ip)) if ip.is_loopback() => (1..=k).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect(),
            (k, ip) => bail!(
                "--source-addrs {k} binds clients to 127.0.0.x, which cannot reach {ip}; \
                 pass --source-addrs 0 for a server that is not on IPv4 loopback"
            ),
        };
        check(config)?;
        let seconds = |name: &str, value: f64, min: f64| -> anyhow::Result<Duration> {
            ensure!(value.is_finite() && value >= min && value < 1e7, "--{name} must be at least {min} seconds");
            Ok(Duration::from_secs_f64(value))
        };
        let host = url.host_header();
        let auth_header =
            config.token.as_ref().map_or_else(String::new, |token| format!("authorization: Bearer {token}\r\n"));
        ensure!(
            config.token.as_ref().is_none_or(|token| !token.chars().any(char::is_control)),
            "--token must be one line of printable characters"
        );
        let topic_tokens = topic_tokens(config)?;
        let topics = (0..config.topics)
            .map(|i| {
                let name = format!("{}{i}", config.topic_prefix);
                let encoded = percent_encode(&name);
                let path = format!("{}{}", url.path, config.subscribe_path.replace("{topic}", &encoded));
                let authorization = match topic_tokens.get(i % topic_tokens.len().max(1)) {
                    Some(token) => Some(format!("Bearer {token}")),
                    None => config.token.as_ref().map(|token| format!("Bearer {token}")),
                };
                let auth_header = authorization
                    .as_ref()
                    .map_or_else(String::new, |value| format!("authorization: {value}\r\n"));
                let subscribe_request = format!(
                    "GET {path} HTTP/1.1\r\nhost: {host}\r\naccept: text/event-stream\r\ncache-control: no-cache\r\n{auth_header}\r\n"
                )
                .into_bytes();
                TopicPlan {
                    json: serde_json::to_string(&name).expect("a string serializes"),
                    encoded: encoded.clone(),
                    publish_path: format!("{}{}", url.path, config.publish_path.replace("{topic}", &encoded)),
                    subscribe_request,
                    subscribe_path: path,
                    authorization,
                }
            })
            .collect();
        Ok(Self {
            server,
            tls,
            http2: config.http2,
            streams_per_connection: config.streams_per_connection,
            authority: host,
            publish_server,
            publish_host,
            auth_header,
            sources,
            topics,
            clients: config.clients,
            connect_concurrency: config.connect_concurrency,
            connect_timeout: seconds("connect-timeout", config.connect_timeout, 0.001)?,
            ramp: seconds("ramp", config.ramp, 0.0)?,
            rate: config.rate,
            size: config.size,
            batch_interval: Duration::from_secs_f64(config.batch_interval_ms / 1000.0),
            publish_connections: config.publish_connections.min(config.topics),
            publish_format: config.publish_format,
            slow_fraction: config.slow_fraction,
            slow_recv_buffer: config.slow_recv_buffer,
            warmup: seconds("warmup", config.warmup, 0.0)?,
            duration: seconds("duration", config.duration, 0.01)?,
            drain: seconds("drain", config.drain, 0.0)?,
            idle_timeout: Some(seconds("idle-timeout", config.idle_timeout, 0.0)?).filter(|d| !d.is_zero()),
            slow_check: seconds("slow-check", config.slow_check, 0.0)?,
            threads: config.threads,
            progress: config.progress,
        })
    }

    /// The address to bind publish connection `j` to: `127.0.1.(j % 254 + 1)`, apart from the
    /// clients', so that a server's per-IP limits count it separately; `None` (no bind) when
    /// the clients do not bind either.
    pub(crate) fn publisher_source(&self, j: usize) -> Option<Ipv4Addr> {
        let last = u8::try_from(j % 254 + 1).unwrap_or(1);
        (!self.sources.is_empty()).then_some(Ipv4Addr::new(127, 0, 1, last))
    }

    /// Whether client `index` is one of the slow ones: `floor(clients * fraction)` of them,
    /// spread evenly over the indices (and so over the topics).
    pub(crate) fn is_slow(&self, index: usize) -> bool {
        let share = |i: usize| (crate::stats::to_f64(i as u64) * self.slow_fraction).floor();
        share(index + 1) > share(index)
    }
}

/// The TLS of an `https://` run (`None` for `http://`), trusting what the flags say.
fn tls(config: &Config, url: &Url) -> anyhow::Result<Option<crate::transport::Tls>> {
    use crate::transport::{Tls, Trust};
    ensure!(
        url.https || (config.ca_cert.is_none() && !config.insecure),
        "--ca-cert and --insecure are for an https:// --url, not {}",
        config.url
    );
    if !url.https {
        return Ok(None);
    }
    let trust = match (&config.ca_cert, config.insecure) {
        (Some(path), _) => Trust::CaFile(path.clone()),
        (None, true) => Trust::Anything,
        (None, false) => Trust::System,
    };
    Ok(Some(Tls::new(&url.host, &trust, config.http2)?))
}

/// The lines of `--topic-tokens`, checked (empty without the flag).
fn topic_tokens(config: &Config) -> anyhow::Result<Vec<String>> {
    let Some(path) = &config.topic_tokens else { return Ok(Vec::new()) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("could not read --topic-tokens {}", path.display()))?;
    let tokens: Vec<String> = text.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect();
    ensure!(!tokens.is_empty(), "--topic-tokens {} holds no token", path.display());
    ensure!(
        tokens.iter().all(|token| !token.chars().any(|c| c.is_control() || c == ' ')),
        "--topic-tokens {}: a token has a space or control character",
        path.display()
    );
    Ok(tokens)
}

/// The parts of an `http://` or `https://` URL the loadgen uses.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    https: bool,
    host: String,
    port: u16,
    /// The path without a trailing `/` (empty for none).
    path: String,
}

impl Url {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let (https, rest) = match (text.strip_prefix("http://"), text.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => bail!("--url {text} is not an http:// or https:// URL"),
        };
        let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').with_context(|| format!("--url {text}: unclosed `[` in host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        ensure!(!host.is_empty(), "--url {text} has no host");
        let port = match port {
            None if https => 443,
            None => 80,
            Some(port) => port.parse().with_context(|| format!("--url {text}: `{port}` is not a port number"))?,
        };
        Ok(Self { https, host: host.to_owned(), port, path: path.trim_end_matches('/').to_owned() })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.https { 443 } else { 80 };
        if self.port == default { host } else { format!("{host}:{}", self.port) }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            Url::parse("http://127.0.0.1:18181").unwrap(),
            Url { https: false, host: "127.0.0.1".into(), port: 18181, path: String::new() }
        );
        assert_eq!(
            Url::parse("http://localhost/base/").unwrap(),
            Url { https: false, host: "localhost".into(), port: 80, path: "/base".into() }
        );
        assert_eq!(Url::parse("http://[::1]:9/").unwrap().host_header(), "[::1]:9");
        let secure = Url::parse("https://localhost").unwrap();
        assert_eq!((secure.https, secure.port, secure.host_header()), (true, 443, "localhost".to_owned()));
        assert_eq!(Url::parse("https://x:8443").unwrap().host_header(), "x:8443");
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://x:notaport").is_err());
    }

    #[test]
    fn templates_and_slow_spread() {
        let config = Config {
            url: "http://127.0.0.1:9/api".into(),
            topics: 2,
            topic_prefix: "a b".into(),
            clients: 20,
            slow_fraction: 0.25,
            ..Config::default()
        };
        let plan = Plan::new(&config).unwrap();
        let request = String::from_utf8(plan.topics[1].subscribe_request.clone()).unwrap();
        assert!(request.starts_with("GET /api/events?topic=a%20b1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\n"), "{request}");
        assert_eq!(plan.topics[1].json, "\"a b1\"");
        assert_eq!(plan.sources.len(), 16);
        assert_eq!((0..20).filter(|&i| plan.is_slow(i)).count(), 5);
        let bad = Config { url: "http://127.0.0.1:9".into(), topics: 2, subscribe_path: "/events".into(), ..config };
        assert!(Plan::new(&bad).unwrap_err().to_string().contains("{topic}"));
    }
}
