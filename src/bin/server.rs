//! The `ringcast` server binary: parse options, set up logging and the runtime, raise the
//! open-files limit, bind, and serve until SIGINT or SIGTERM.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use ringcast::cluster::Cluster;
use ringcast::config::Args;
use ringcast::hub::{Hub, Mode};
use ringcast::metrics::Metrics;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log)
                .with_context(|| format!("invalid --log filter `{}`", args.log))?,
        )
        .init();
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX).context("could not raise the open-files limit")?;
    let (hub_config, server_config) = args.configs(fd_limit)?;
    if args.jwt_secret.as_ref().is_some_and(|secret| secret.len() < 32) {
        tracing::warn!(
            "the JWT secret is shorter than 32 bytes: use at least 32 random bytes (e.g. openssl rand -hex 32)"
        );
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers.max(1));
    }
    let runtime = runtime.enable_all().build().context("could not start the tokio runtime")?;
    runtime.block_on(async move {
        let listener = ringcast::server::bind_with(args.listen, &server_config)
            .with_context(|| format!("could not listen on {}", args.listen))?;
        let monitor = match args.metrics_listen {
            None => None,
            Some(addr) => Some(
                ringcast::server::bind(addr, 128)
                    .with_context(|| format!("could not listen on {addr} (--metrics-listen)"))?,
            ),
        };
        let metrics = Arc::new(Metrics::default());
        let cluster_config = args.cluster_config();
        let mut server_config = server_config;
        let hub = if let Some(store_config) = args.store_config() {
            // Beyond RLIMIT_FSIZE a write fails with EFBIG (a full disk) instead of the
            // signal killing the process.
            let file_size_limit = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25))
                .context("could not handle SIGXFSZ")?;
            std::mem::forget(file_size_limit);
            let dir = store_config.dir.clone();
            let opening = ringcast::store::Store::open(store_config)
                .with_context(|| format!("could not open the event log in {}", dir.display()))?;
            let hub = Hub::with_epoch(hub_config.clone(), metrics, opening.epoch())?;
            let store = opening
                .recover(&hub)
                .with_context(|| format!("could not recover the event log in {}", dir.display()))?;
            server_config.store = Some(store);
            hub
        } else {
            let mode = if cluster_config.is_some() { Mode::Fed } else { Mode::Standalone };
            Hub::with_mode(hub_config.clone(), metrics, mode)?
        };
        if let Some(cluster_config) = cluster_config {
            tracing::info!(redis = %cluster_config.url, stream = %cluster_config.stream, "cluster mode");
            server_config.cluster = Some(Cluster::start(cluster_config, hub.clone())?);
        }
        tracing::info!(
            listen = %args.listen,
            open_files = fd_limit,
            max_connections = server_config.max_connections,
            ring_capacity = hub_config.ring_capacity,
            heartbeat_s = server_config.heartbeat.as_secs_f64(),
            metrics_listen = ?args.metrics_listen,
            demo = args.demo,
            tls = server_config.security.tls.is_some(),
            data_dir = ?args.data_dir,
            auth = server_config.security.auth.key.is_some(),
            "ringcast listening"
        );
        if args.demo {
            match server_config.cluster.clone() {
                None => drop(ringcast::producer::spawn(&hub, "demo", ringcast::demo::produce)),
                Some(cluster) => drop(ringcast::producer::spawn(&hub, "demo", move |_| {
                    ringcast::demo::produce_to(Arc::clone(&cluster))
                })),
            }
        }
        let listeners = ringcast::server::Listeners { main: listener, monitor };
        let store = server_config.store.clone();
        ringcast::server::run(listeners, hub, server_config, shutdown_signal()).await?;
        if let Some(store) = store {
            // Writes and syncs what is waiting.
            tokio::task::spawn_blocking(move || store.close()).await.context("closing the event log")?;
        }
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
