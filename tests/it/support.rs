//! Test support: an in-process server on an ephemeral port, a raw SSE client that keeps the
//! exact bytes it received, and a raw HTTP/1.1 request helper.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringcast::config::ServerConfig;
use ringcast::hub::{Hub, HubConfig};
use ringcast::metrics::Metrics;
use ringcast::wire::parse::{Item, Parser, SseEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Options {
    pub(crate) hub: HubConfig,
    pub(crate) server: ServerConfig,
    /// Also serve a monitoring listener (`--metrics-listen`).
    pub(crate) monitor: bool,
}

impl Default for Options {
    fn default() -> Self {
        // A small send buffer, so that a client that stops reading blocks the server quickly.
        let server = ServerConfig { send_buffer: 16 << 10, ..ServerConfig::default() };
        let hub = HubConfig { ring_capacity: 64, tick: server.tick(), ..HubConfig::default() };
        Self { hub, server, monitor: false }
    }
}

impl Options {
    /// Sets heartbeat and write timeout and keeps the hub clock consistent with them.
    pub(crate) fn timing(mut self, heartbeat: Duration, write_timeout: Duration) -> Self {
        self.server.heartbeat = heartbeat;
        self.server.write_timeout = write_timeout;
        self.hub.tick = self.server.tick();
        self
    }

    pub(crate) fn ring(mut self, capacity: usize) -> Self {
        self.hub.ring_capacity = capacity;
        self
    }
}

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    /// The monitoring listener's address, if `Options::monitor`.
    pub(crate) monitor: Option<SocketAddr>,
    pub(crate) hub: Hub,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ringcast::server::ServerError>>,
}

pub(crate) async fn start(mut options: Options) -> TestServer {
    // The hub clock serves every timeout measured in ticks, as the binary sets it up.
    options.hub.tick = options.hub.tick.min(options.server.tick());
    let hub = Hub::new(options.hub, Arc::new(Metrics::default())).expect("runtime");
    let listener = ringcast::server::bind_with("127.0.0.1:0".parse().expect("addr"), &options.server).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let monitor =
        options.monitor.then(|| ringcast::server::bind("127.0.0.1:0".parse().expect("addr"), 64).expect("bind"));
    let monitor_addr = monitor.as_ref().map(|listener| listener.local_addr().expect("local addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let listeners = ringcast::server::Listeners { main: listener, monitor };
    let task = tokio::spawn(ringcast::server::run(listeners, hub.clone(), options.server, async move {
        let _ = stopped.await;
    }));
    TestServer { addr, monitor: monitor_addr, hub, stop: Some(stop), task }
}

impl TestServer {
    pub(crate) fn metrics(&self) -> &Metrics {
        self.hub.metrics()
    }

    /// Starts shutdown and waits for `run` to return.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task).await.expect("server stops in time").expect("join").expect("run");
    }

    pub(crate) fn disconnects(&self, reason: ringcast::metrics::DisconnectReason) -> u64 {
        self.metrics().disconnects.get_or_create(&ringcast::metrics::ReasonLabel { reason }).get()
    }
}

/// A raw SSE client: sends the request by hand, keeps every body byte it reads.
pub(crate) struct SseClient {
    pub(crate) tcp: TcpStream,
    pub(crate) status: u16,
    pub(crate) head: String,
    /// Every body byte received so far.
    pub(crate) body: Vec<u8>,
    parser: Parser,
    pub(crate) closed: bool,
    /// Read buffer (on the heap: keeps the client's futures small).
    scratch: Vec<u8>,
}

impl SseClient {
    pub(crate) async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Self {
        Self::connect_on(TcpStream::connect(addr).await.expect("connect"), path, headers).await
    }

    pub(crate) async fn connect_on(mut tcp: TcpStream, path: &str, headers: &[(&str, &str)]) -> Self {
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n");
        for (name, value) in headers {
            let _ = write!(request, "{name}: {value}\r\n");
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await.expect("send request");
        let mut raw = Vec::new();
        let head_end = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await.expect("response head in time").expect("read");
            assert!(n > 0, "connection closed before the response head: {:?}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
        let mut client = Self {
            tcp,
            status,
            head,
            body: Vec::new(),
            parser: Parser::new(),
            closed: false,
            scratch: vec![0; 16 << 10],
        };
        client.take(&raw[head_end..]);
        client
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    }

    fn take(&mut self, bytes: &[u8]) {
        self.body.extend_from_slice(bytes);
        self.parser.feed(bytes);
    }

    /// Reads once (up to `wait`); false on timeout or close.
    async fn read_more(&mut self, wait: Duration) -> bool {
        if self.closed {
            return false;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        let outcome = tokio::time::timeout(wait, self.tcp.read(&mut buf)).await;
        let more = match outcome {
            Ok(Ok(0) | Err(_)) => {
                self.closed = true;
                false
            }
            Ok(Ok(n)) => {
                self.take(&buf[..n]);
                true
            }
            Err(_) => false,
        };
        self.scratch = buf;
        more
    }

    /// The next parsed item (event or comment), or `None` on timeout or close.
    pub(crate) async fn next_item(&mut self, wait: Duration) -> Option<Item> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(item) = self.parser.next_item() {
                return Some(item);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.read_more(left).await {
                return self.parser.next_item();
            }
        }
    }

    /// The next event, skipping comments; `None` on timeout or close.
    pub(crate) async fn next_event(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await? {
                Item::Event(event) => return Some(event),
                Item::Comment(_) => {}
            }
        }
    }

    /// `n` events, failing the test if they do not arrive in time.
    pub(crate) async fn events(&mut self, n: usize) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(n);
        for i in 0..n {
            let event = self.next_event(WAIT).await;
            events.push(event.unwrap_or_else(|| panic!("event {} of {n} did not arrive; got {events:?}", i + 1)));
        }
        events
    }

    /// Reads until the server closes the connection; returns the comments seen on the way.
    pub(crate) async fn until_closed(&mut self) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut comments = Vec::new();
        loop {
            while let Some(item) = self.parser.next_item() {
                if let Item::Comment(comment) = item {
                    comments.push(comment);
                }
            }
            if self.closed {
                return comments;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "the server did not close the stream in time");
            self.read_more(left).await;
        }
    }
}

/// A raw HTTP/1.1 request with `connection: close`; returns (status, head, body).
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.expect("send head");
    tcp.write_all(body).await.expect("send body");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap_or_else(|error| panic!("{method} {path}: {error} after {:?}", String::from_utf8_lossy(&raw)));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, head.to_owned(), body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// What a publish answered, as a publisher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 200, with the ids, and whether it replayed a known idempotency key.
    Ok { ids: Vec<String>, replayed: bool },
    /// Any other status (the outcome header, the body).
    Refused { status: u16, outcome: Option<String>, body: String },
    /// No answer within the client's timeout: the outcome is unknown to the publisher.
    Silent,
}

/// Publishes `body` (JSON) with `Idempotency-Key: key`, waiting at most `wait` for the answer.
pub(crate) async fn publish_keyed(addr: SocketAddr, key: &str, body: &serde_json::Value, wait: Duration) -> Answer {
    let headers = [("content-type", "application/json"), ("idempotency-key", key)];
    let body = body.to_string();
    let Ok((status, head, text)) =
        tokio::time::timeout(wait, try_request(addr, "POST", "/publish", &headers, body.as_bytes())).await
    else {
        return Answer::Silent;
    };
    let Some(status) = status else { return Answer::Silent };
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    };
    if status == 200 {
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON, got {text:?}"));
        let ids = parsed["ids"].as_array().expect("ids").iter().map(|id| id.as_str().expect("id").to_owned()).collect();
        return Answer::Ok { ids, replayed: header("idempotent-replayed").as_deref() == Some("true") };
    }
    Answer::Refused { status, outcome: header("ringcast-outcome"), body: text }
}

/// Like `request`, but a connection error or reset is `None` (a node or Redis under test
/// may be paused or gone).
pub(crate) async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (Option<u16>, String, String) {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        std::io::Result::Ok(raw)
    };
    let Ok(raw) = attempt.await else { return (None, String::new(), String::new()) };
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    (status, head.to_owned(), body.to_owned())
}

/// Publishes a JSON body; returns (status, parsed response).
pub(crate) async fn publish_json(addr: SocketAddr, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, _, text) =
        request(addr, "POST", "/publish", &[("content-type", "application/json")], body.to_string().as_bytes()).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON response, got {text:?}")))
}

/// Publishes one event with `data` on `topic`; returns its id.
pub(crate) async fn publish(addr: SocketAddr, topic: &str, data: &str) -> String {
    let (status, response) = publish_json(addr, &serde_json::json!({ "topic": topic, "data": data })).await;
    assert_eq!(status, 200, "{response}");
    response["ids"][0].as_str().expect("id").to_owned()
}

/// A `redis-server` of the test's own, on a free port, with its data in a temporary folder.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one; fails the test with instructions if `redis-server` is not installed.
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("probe").local_addr().expect("addr").port();
        let mut server = Self { port, dir: tempfile::tempdir().expect("tempdir"), child: None };
        server.spawn();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    #[expect(clippy::disallowed_methods, reason = "test set-up, before the runtime has other work")]
    fn spawn(&mut self) {
        // appendfsync always: a write Redis acknowledged survives a kill (the outage test
        // restarts it and expects nothing acknowledged to be lost).
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start redis-server ({error}): install it (Debian: apt-get install -y redis-server)")
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut reply = [0u8; 16];
                if tcp.write_all(b"PING\r\n").is_ok()
                    && tcp.read(&mut reply).is_ok_and(|n| reply[..n].starts_with(b"+PONG"))
                {
                    return;
                }
            }
            assert!(std::time::Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL, like a crash).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with `SIGSTOP` (it keeps its connections and answers nothing) until `resume`.
    pub(crate) fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "STOP");
        }
    }

    /// Lets a paused server go on (`SIGCONT`).
    pub(crate) fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "CONT");
        }
    }

    /// Starts it again on the same port, with its data (`keep_data`) or empty.
    pub(crate) fn restart(&mut self, keep_data: bool) {
        self.kill();
        if !keep_data {
            self.dir = tempfile::tempdir().expect("tempdir");
        }
        self.spawn();
    }
}

/// Sends `SIGNAL` (a name such as `STOP`) to a process this test started.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    assert!(status.is_ok_and(|status| status.success()), "kill -{signal} {pid} failed");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster node: a fed hub linked to `redis` and served like `start` does.
pub(crate) async fn start_node(options: Options, redis: &RedisServer) -> TestServer {
    let mut options = options;
    options.hub.tick = options.hub.tick.min(options.server.tick());
    let hub = Hub::with_mode(options.hub, Arc::new(Metrics::default()), ringcast::hub::Mode::Fed).expect("runtime");
    let cluster_config = ringcast::cluster::ClusterConfig {
        url: redis.url(),
        timeout: Duration::from_millis(500),
        ..ringcast::cluster::ClusterConfig::default()
    };
    options.server.cluster = Some(ringcast::cluster::Cluster::start(cluster_config, hub.clone()).expect("cluster"));
    let listener = ringcast::server::bind_with("127.0.0.1:0".parse().expect("addr"), &options.server).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ringcast::server::run(listener, hub.clone(), options.server, async move {
        let _ = stopped.await;
    }));
    let server = TestServer { addr, monitor: None, hub, stop: Some(stop), task };
    server.wait_for_redis().await;
    server
}

impl TestServer {
    /// Waits until the node's consumer is reading the log (`/health` says redis ok).
    pub(crate) async fn wait_for_redis(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, _, body) = request(self.addr, "GET", "/health", &[], b"").await;
            if body.contains(r#""redis":"ok""#) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the node did not reach Redis: {body}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// TLS for tests: a self-signed certificate for `localhost` and clients that trust it.
pub(crate) mod tls {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use ringcast::security::TlsFiles;
    use tokio::net::TcpStream;
    use tokio_rustls::rustls;

    /// A certificate and key in PEM files (kept while this lives), and the certificate's DER.
    pub(crate) struct Cert {
        _dir: tempfile::TempDir,
        pub(crate) files: TlsFiles,
        pub(crate) der: Vec<u8>,
    }

    pub(crate) fn cert() -> Cert {
        let dir = tempfile::tempdir().expect("tempdir");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("self-signed");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).expect("write cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        Cert { _dir: dir, files: TlsFiles { cert, key }, der: certified.cert.der().to_vec() }
    }

    pub(crate) fn client_config(cert_der: &[u8], alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(cert_der.to_vec())).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A TLS connection over `tcp` offering `alpn`.
    pub(crate) async fn connect_on(
        tcp: TcpStream,
        cert_der: &[u8],
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(cert_der, alpn)));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await.expect("TLS handshake")
    }

    pub(crate) async fn connect(
        addr: SocketAddr,
        cert_der: &[u8],
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        connect_on(TcpStream::connect(addr).await.expect("connect"), cert_der, alpn).await
    }
}

/// HTTP/2 clients on the `h2` crate, which lets a test hold a stream's window shut.
pub(crate) mod h2c {
    use bytes::Bytes;
    use tokio::io::{AsyncRead, AsyncWrite};

    /// An HTTP/2 connection over `io` whose streams start with a window of `window` bytes.
    pub(crate) async fn connect<I>(io: I, window: u32) -> h2::client::SendRequest<Bytes>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (client, connection) =
            h2::client::Builder::new().initial_window_size(window).handshake::<_, Bytes>(io).await.expect("h2");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// `GET path` with `headers`: the response status and its body.
    pub(crate) async fn get(
        client: &mut h2::client::SendRequest<Bytes>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, h2::RecvStream) {
        let mut request = http::Request::get(format!("http://localhost{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let ready = client.clone().ready().await.expect("connection ready");
        *client = ready;
        let (response, _) = client.send_request(request.body(()).expect("request"), true).expect("send");
        let response = tokio::time::timeout(super::WAIT, response).await.expect("response in time").expect("response");
        (response.status().as_u16(), response.into_body())
    }

    /// Reads `body` until `n` events are parsed (releasing the window as it reads).
    pub(crate) async fn events(
        body: &mut h2::RecvStream,
        parser: &mut ringcast::wire::parse::Parser,
        n: usize,
    ) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            while let Some(event) = parser.next_event() {
                got.push(event.data);
            }
            if got.len() >= n {
                return got;
            }
            let data = tokio::time::timeout(super::WAIT, body.data())
                .await
                .unwrap_or_else(|_| panic!("event {} of {n} in time; got {got:?}", got.len() + 1))
                .expect("stream open")
                .expect("data");
            let _ = body.flow_control().release_capacity(data.len());
            parser.feed(&data);
        }
    }
}

/// The `ringcast` binary as a separate process (for what only a process shows, like its
/// memory, a crash, or its own start-up), on a free port; stopped (by its PID) when dropped.
pub(crate) struct Binary {
    pub(crate) addr: SocketAddr,
    child: std::process::Child,
}

/// The binary under test (`RINGCAST_BIN` overrides it, to compare builds).
pub(crate) fn binary_path() -> String {
    std::env::var("RINGCAST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringcast").to_owned())
}

impl Binary {
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_with(&[], args, std::process::Stdio::inherit())
    }

    /// Starts it with its standard error in `log` (to read what it said).
    pub(crate) fn start_logged(args: &[&str], log: &std::path::Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        Self::start_with(&[], args, std::process::Stdio::from(file))
    }

    /// Starts `prefix` (a program and its arguments, such as `prlimit --fsize=N --`) followed
    /// by the binary with `args`.
    #[expect(clippy::disallowed_methods, reason = "test set-up: waiting for a child process to listen")]
    pub(crate) fn start_with(prefix: &[&str], args: &[&str], stderr: std::process::Stdio) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("probe").local_addr().expect("addr").port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let program = binary_path();
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut command = std::process::Command::new(first);
                command.args(rest).arg(&program);
                command
            }
            None => std::process::Command::new(&program),
        };
        let mut child = command
            .args(["--listen", &addr.to_string(), "--log", "info"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the ringcast binary");
        let deadline = std::time::Instant::now() + WAIT * 2;
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the binary exited before listening: {status}");
            }
            assert!(std::time::Instant::now() < deadline, "the binary did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { addr, child }
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with `SIGKILL` (a crash) and waits for it.
    pub(crate) fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with `SIGTERM` (a graceful shutdown) and waits for it to exit.
    #[expect(clippy::disallowed_methods, reason = "test: waiting for a child process to exit")]
    pub(crate) fn stop(&mut self) {
        signal(self.child.id(), "TERM");
        let deadline = std::time::Instant::now() + WAIT * 2;
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(std::time::Instant::now() < deadline, "the binary did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pauses the process (`SIGSTOP`), as a stalled or descheduled node would be.
    pub(crate) fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Lets a paused process go on (`SIGCONT`).
    pub(crate) fn resume(&self) {
        signal(self.child.id(), "CONT");
    }

    /// The process's resident set size, bytes.
    pub(crate) fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// One value of the binary's `/metrics` (a series name with its labels), 0 if absent.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let (_, _, text) = request(self.addr, "GET", "/metrics", &[], b"").await;
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args` expecting it to refuse to start: its exit status and what it
/// wrote to standard error.
#[expect(clippy::disallowed_methods, reason = "test: waiting for a child process to exit")]
pub(crate) fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut child = std::process::Command::new(binary_path())
        .args(["--listen", "127.0.0.1:0", "--log", "info"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log.reopen().expect("log file")))
        .spawn()
        .expect("run the ringcast binary");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the binary started although it was expected to refuse: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(log.path()).unwrap_or_default())
}
