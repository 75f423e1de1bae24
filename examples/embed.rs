//! Embedding ringcast in your own program: create a hub, publish in-process from a
//! supervised producer, and mount ringcast's routes in your own hyper server next to a route
//! of your own.
//!
//! Run: `cargo run --example embed` and, in another terminal,
//! `curl -N 'http://127.0.0.1:8081/events?topic=clock'` and `curl http://127.0.0.1:8081/hello`.
//! It stops by itself after `EMBED_SECONDS` seconds (default 60).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ringcast::config::ServerConfig;
use ringcast::hub::{Hub, HubConfig, Publish};
use ringcast::metrics::Metrics;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ServerConfig::default();
    let hub = Hub::new(HubConfig { tick: config.tick(), ..HubConfig::default() }, Arc::new(Metrics::default()))?;

    // An in-process producer: publishes the time every second; restarted if it fails.
    ringcast::producer::spawn(&hub, "clock", clock);

    let ringcast = ringcast::server::http::Service::new(hub.clone(), config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await.context("bind 127.0.0.1:8081")?;
    let seconds: u64 = std::env::var("EMBED_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    println!("serving on http://127.0.0.1:8081 for {seconds} s (/events?topic=clock, /publish, /hello)");
    let deadline = tokio::time::sleep(Duration::from_secs(seconds));
    tokio::pin!(deadline);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut deadline => break,
        };
        let ringcast = ringcast.clone();
        tokio::spawn(async move {
            // Your routes first, ringcast's for everything else.
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let ringcast = ringcast.clone();
                async move {
                    if request.uri().path() == "/hello" {
                        let body = Full::new(Bytes::from_static(b"hello from the host application\n"));
                        return Ok::<_, Infallible>(hyper::Response::new(body.map_err(|never| match never {}).boxed()));
                    }
                    let response = ringcast.call(request).await?;
                    Ok(response.map(|body| body.map_err(|never| match never {}).boxed()))
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(tcp), service).await {
                eprintln!("connection error: {error}");
            }
        });
    }
    hub.shutdown();
    Ok(())
}

/// Publishes the time on `clock` every second.
async fn clock(hub: Hub) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        hub.publish(&Publish {
            topics: &["clock"],
            event: Some("time"),
            data: &now.to_string(),
            retry: None,
            routed: None,
        })?;
    }
}
