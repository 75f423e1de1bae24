//! Every route but the streams, for any transport that hands over an `http::Request`:
//! `POST /publish`, the Mercure publish and subscriptions API (`server::mercure`),
//! `GET /health`, `GET /metrics`, the dashboard, CORS preflights, the test hook, and the
//! answers for wrong methods and paths. Each answer is a complete [`Reply`]. (`GET /events`
//! and `GET /.well-known/mercure` are served by each transport through the stream engine.)

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body::Body;

use super::ctx::Ctx;
use super::request::{Reply, add_cors, complete, json, text};
use crate::mercure;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routes {
    /// The main listener: everything (`/metrics` only without a monitoring listener).
    Main,
    /// The monitoring listener (`--metrics-listen`): `/metrics` and `/health`.
    Monitor,
}

/// Answers `request` (anything but `GET /events`).
pub(crate) async fn route<B>(ctx: &Ctx, routes: Routes, ip: IpAddr, request: Request<B>) -> Reply
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let origin = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let cors = ctx.security.cors.grant(origin.as_deref());
    let metrics_here = routes == Routes::Monitor || !ctx.monitored;
    let mut reply = match (routes, request.method(), request.uri().path()) {
        (_, &Method::GET, "/health") => health(ctx),
        (_, &Method::GET, "/metrics") if metrics_here => metrics(ctx),
        (Routes::Monitor, _, "/health" | "/metrics") => method_not_allowed("GET"),
        (Routes::Monitor, _, _) => {
            text(StatusCode::NOT_FOUND, "not found: this listener serves GET /metrics and /health")
        }
        (Routes::Main, &Method::POST, "/publish") => super::publish::publish(ctx, ip, request).await,
        (Routes::Main, &Method::POST, mercure::PATH) => super::mercure::publish(ctx, ip, request).await,
        (Routes::Main, &Method::GET, path) if path.starts_with(mercure::SUBSCRIPTIONS_PATH) => {
            super::mercure::subscriptions(ctx, &request)
        }
        (Routes::Main, &Method::OPTIONS, "/publish" | "/events" | mercure::PATH) => preflight(cors.is_some()),
        (Routes::Main, &Method::GET, "/" | "/dashboard") => dashboard(),
        (Routes::Main, &Method::POST, "/debug/disconnect") if ctx.config.test_hooks => {
            ctx.kick_all();
            text(StatusCode::OK, "every stream dropped")
        }
        (Routes::Main, _, "/events" | "/health") => method_not_allowed("GET"),
        (Routes::Main, _, "/metrics") if metrics_here => method_not_allowed("GET"),
        (Routes::Main, _, "/publish") => method_not_allowed("POST, OPTIONS"),
        (Routes::Main, _, mercure::PATH) => method_not_allowed("GET, POST, OPTIONS"),
        (Routes::Main, _, _) => {
            text(StatusCode::NOT_FOUND, "not found: try GET /events?topic=NAME, POST /publish, /health, /metrics")
        }
    };
    add_cors(reply.headers_mut(), cors.as_ref());
    reply
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    reply.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    reply
}

/// `/metrics`: the Prometheus text, with the ring gauges set now.
fn metrics(ctx: &Ctx) -> Reply {
    if let Some(store) = &ctx.config.store {
        store.update_metrics(&ctx.metrics);
    }
    let topics = ctx.hub.topic_stats();
    let frames: u64 = topics.iter().map(crate::hub::TopicStats::held).sum();
    let fill = topics.iter().map(|t| t.held() * 1000 / t.capacity.max(1) as u64).max().unwrap_or(0);
    ctx.metrics.ring_frames.set(i64::try_from(frames).unwrap_or(i64::MAX));
    let (audiences, _) = ctx.hub.routed_counts();
    ctx.metrics.audiences.set(i64::try_from(audiences).unwrap_or(i64::MAX));
    ctx.metrics.ring_fill_max.set(i64::try_from(fill).unwrap_or(i64::MAX));
    complete(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        Bytes::from(ctx.metrics.render()),
    )
}

/// A CORS preflight: the methods and headers a browser may use, for allowed origins only
/// (`route` adds the origin headers; a disallowed origin gets none and the browser stops).
fn preflight(allowed: bool) -> Reply {
    let mut reply = complete(StatusCode::NO_CONTENT, "text/plain; charset=utf-8", Bytes::new());
    reply.headers_mut().remove(header::CONTENT_TYPE);
    if allowed {
        let headers = reply.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    reply
}

/// The dashboard page (see `dashboard`).
fn dashboard() -> Reply {
    let mut reply =
        complete(StatusCode::OK, "text/html; charset=utf-8", Bytes::from_static(crate::dashboard::PAGE.as_bytes()));
    let headers = reply.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(crate::dashboard::CONTENT_SECURITY_POLICY));
    reply
}

/// `/health`: `ok`; `degraded` (still 200: streams are served from the rings) when the
/// cluster log is unreachable or the durable log cannot be written, so publishing fails;
/// `shutting-down` (503).
fn health(ctx: &Ctx) -> Reply {
    let redis = ctx.config.cluster.as_ref().map(|cluster| if cluster.is_healthy() { "ok" } else { "unreachable" });
    let log = ctx.config.store.as_ref().map(|store| {
        let (bytes, segments, oldest) = store.size();
        let (state, error) = match store.state() {
            crate::store::LogState::Ok => ("ok", None),
            crate::store::LogState::Failing(error) => ("failing", Some(error)),
        };
        serde_json::json!({
            "state": state,
            "error": error,
            "bytes": bytes,
            "segments": segments,
            "oldest_id": oldest.map(|key| ctx.hub.id_of(key).to_string()),
        })
    });
    let log_failing = log.as_ref().is_some_and(|log| log["state"] == "failing");
    let status = match (ctx.hub.is_shut_down(), redis) {
        (true, _) => "shutting-down",
        (false, Some("unreachable")) => "degraded",
        _ if log_failing => "degraded",
        _ => "ok",
    };
    json(
        if ctx.hub.is_shut_down() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK },
        &serde_json::json!({
            "status": status,
            "redis": redis,
            "epoch": ctx.hub.epoch(),
            "last_event_id": ctx.hub.last_event_id().to_string(),
            "streams": ctx.metrics.streams.get(),
            "topics": ctx.hub.topic_count(),
            "mercure": mercure_health(ctx),
            "log": log,
        }),
    )
}

/// `/health`'s `mercure` object: audiences, updates held, the newest id, live subscribers.
fn mercure_health(ctx: &Ctx) -> serde_json::Value {
    let (audiences, held) = ctx.hub.routed_counts();
    serde_json::json!({
        "audiences": audiences,
        "updates_held": held,
        "last_event_id": ctx.hub.newest_routed_id(),
        "subscribers": ctx.config.mercure_subscriptions.then(|| ctx.subscriptions.len()),
    })
}
