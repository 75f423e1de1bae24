//! Test helpers: start an in-process ringcast server on `127.0.0.1:0` and stop it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringcast::config::ServerConfig;
use ringcast::hub::{Hub, HubConfig};
use ringcast::metrics::{DisconnectReason, Metrics, ReasonLabel};

/// A running in-process ringcast server.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) metrics: Arc<Metrics>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts a server with these ring, heartbeat and write-timeout settings; the hub clock
/// ticks at `ServerConfig::tick()`, as the binary sets it up.
pub(crate) async fn start_server(ring_capacity: usize, heartbeat: Duration, write_timeout: Duration) -> Server {
    let config =
        ServerConfig { heartbeat, write_timeout, shutdown_grace: Duration::from_secs(2), ..Default::default() };
    start_server_with(ring_capacity, config)
}

/// Starts a server with `config` and this ring capacity.
pub(crate) fn start_server_with(ring_capacity: usize, config: ServerConfig) -> Server {
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(HubConfig { ring_capacity, tick: config.tick(), ..Default::default() }, Arc::clone(&metrics))
        .expect("inside a runtime");
    let any_port = "127.0.0.1:0".parse().expect("a socket address");
    let listener = ringcast::server::bind(any_port, 1024).expect("loopback port 0 can be bound");
    let addr = listener.local_addr().expect("a bound listener has an address");
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = shutdown_rx.await;
        };
        if let Err(error) = ringcast::server::run(listener, hub, config, shutdown).await {
            panic!("the server failed: {error}");
        }
    });
    Server { addr, metrics, shutdown: Some(shutdown_tx), task }
}

impl Server {
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's count of streams ended for `reason`.
    pub(crate) fn disconnects(&self, reason: DisconnectReason) -> u64 {
        self.metrics.disconnects.get_or_create(&ReasonLabel { reason }).get()
    }

    /// Shuts the server down and waits for it (bounded by its grace period).
    pub(crate) async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("the server stops within its grace period")
            .expect("the server ran without an error");
    }
}
