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
use http_body_util::{BodyExt, Limited};

use super::ctx::Ctx;
use super::idempotency::Seen;
use super::request::{Refusal, Reply, add_cors, complete, error_json, json, text};
use crate::cluster::{ClusterError, Published};
use crate::hub::{JournalError, Publish, PublishError, TopicError};
use crate::mercure;
use crate::metrics::Rejection;
use crate::wire::publish::{BodyError, Format, OwnedPublish};

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
        (Routes::Main, &Method::POST, "/publish") => publish(ctx, ip, request).await,
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

/// The header of a publish answer that says what happened to the events when it was not
/// `200`: `not-published` (nothing was published: fix or retry), or `unknown` (`504`: they
/// may have been; retry with the same `Idempotency-Key`).
pub(crate) const OUTCOME: &str = "ringcast-outcome";
/// The header of a `200` that replays a known `Idempotency-Key`: nothing new was published.
pub(crate) const REPLAYED: &str = "idempotent-replayed";

/// `POST /publish`, with the outcome header on every answer but a success.
async fn publish<B>(ctx: &Ctx, ip: IpAddr, request: Request<B>) -> Reply
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut reply = publish_request(ctx, ip, request).await;
    mark_outcome(&mut reply);
    reply
}

/// Reads the body (within the size limit and the body timeout), parses, authorizes,
/// rate-limits, publishes.
async fn publish_request<B>(ctx: &Ctx, ip: IpAddr, request: Request<B>) -> Reply
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let headers = super::request::RequestHeaders::of(request.headers());
    let idempotency_key = match super::idempotency::key_of(request.headers()) {
        Ok(key) => key,
        Err(refusal) => {
            ctx.metrics.reject(Rejection::BadRequest);
            return refusal_json(refusal);
        }
    };
    let access_token = request.uri().query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "access_token")
            .map(|(_, value)| value.into_owned())
    });
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let format = match Format::from_content_type(content_type) {
        Ok(format) => format,
        Err(error) => {
            ctx.metrics.reject(Rejection::BadRequest);
            return error_json(StatusCode::UNSUPPORTED_MEDIA_TYPE, &error.to_string());
        }
    };
    let body = match read_body(ctx, request).await {
        Ok(body) => body,
        Err(refusal) => return refusal_json(refusal),
    };
    let events = match crate::wire::publish::parse(format, &body) {
        Ok(events) => events,
        Err(error) => {
            ctx.metrics.reject(Rejection::BadRequest);
            let status = match error {
                BodyError::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                _ => StatusCode::BAD_REQUEST,
            };
            return error_json(status, &error.to_string());
        }
    };
    let reserved_prefix = crate::dashboard::stats::RESERVED_PREFIX;
    if let Some(reserved) = events.iter().flat_map(|e| &e.topics).find(|topic| topic.starts_with(reserved_prefix)) {
        ctx.metrics.reject(Rejection::Forbidden);
        let message = format!("topic `{reserved}` is reserved: topics under $sys/ are published by the server");
        return error_json(StatusCode::FORBIDDEN, &message);
    }
    let auth = &ctx.security.auth;
    let token = auth.token_from(headers.authorization.as_deref(), headers.cookie.as_deref(), access_token.as_deref());
    let all_topics: Vec<&str> = events.iter().flat_map(|e| e.topics.iter().map(String::as_str)).collect();
    let grant = match auth.publish(token, &all_topics) {
        Ok(grant) => grant,
        Err(error) => return refusal_json(Refusal::from_auth(&error, &ctx.metrics)),
    };
    let key = grant.subject.map_or_else(|| format!("ip:{ip}"), |subject| format!("sub:{subject}"));
    if let Err(limited) = ctx.security.publish_limits.take(&key, events.len()) {
        ctx.metrics.reject(Rejection::PublishRate);
        return refusal_json(Refusal::limited(&limited));
    }
    match publish_events(ctx, &events, idempotency_key.as_deref()).await {
        Ok(Published { ids, replayed }) => {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            let mut reply = json(StatusCode::OK, &serde_json::json!({ "ids": ids }));
            if replayed {
                reply.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
            }
            reply
        }
        Err(refusal) => refusal_json(refusal),
    }
}

/// Reads a publish request's body within the size limit (413) and the body timeout (408).
pub(crate) async fn read_body<B>(ctx: &Ctx, request: Request<B>) -> Result<Bytes, Refusal>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = ctx.config.max_body_bytes;
    let too_large = || {
        ctx.metrics.reject(Rejection::TooLarge);
        Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than the limit of {max} bytes"))
    };
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let timeout = ctx.config.body_timeout;
    match tokio::time::timeout(timeout, Limited::new(request.into_body(), max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(error)) => Err(Refusal::new(StatusCode::BAD_REQUEST, format!("could not read the body: {error}"))),
        Err(_) => {
            ctx.metrics.reject(Rejection::BodyTimeout);
            let message = format!("the body did not arrive within {timeout:?} (--body-timeout); nothing was published");
            Err(Refusal::new(StatusCode::REQUEST_TIMEOUT, message))
        }
    }
}

/// The outcome header on a publish answer that is not a success (see [`OUTCOME`]).
pub(crate) fn mark_outcome(reply: &mut Reply) {
    let outcome = match reply.status() {
        status if status.is_success() => return,
        StatusCode::GATEWAY_TIMEOUT => "unknown",
        _ => "not-published",
    };
    reply.headers_mut().insert(OUTCOME, HeaderValue::from_static(outcome));
}

/// A refusal as the JSON error body publishers get.
fn refusal_json(refusal: Refusal) -> Reply {
    let mut reply = error_json(refusal.status, &refusal.message);
    reply.headers_mut().extend(refusal.headers.into_iter().map(|(name, value)| (Some(name), value)));
    reply
}

/// Publishes through the cluster log (cluster mode) or into the hub, at most once per
/// idempotency key (see `idempotency`).
pub(crate) async fn publish_events(
    ctx: &Ctx,
    events: &[OwnedPublish],
    key: Option<&str>,
) -> Result<Published, Refusal> {
    let key_reused = || Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, ClusterError::KeyReused.to_string());
    let result = match &ctx.config.cluster {
        None => {
            let mut topics = Vec::new();
            let views = Publish::borrow_all(events, &mut topics);
            match key {
                None => ctx.hub.publish_acked(&views).await.map(|ids| Published { ids, replayed: false }),
                Some(key) => match ctx.recent.begin(key, crate::wire::publish::digest(events)) {
                    Seen::Conflict => return Err(key_reused()),
                    Seen::InFlight => {
                        return Err(Refusal::new(
                            StatusCode::CONFLICT,
                            "a publish with this Idempotency-Key is in progress; retry shortly",
                        ));
                    }
                    Seen::Replay(ids) => Ok(Published { ids, replayed: true }),
                    Seen::New => {
                        let published = ctx.hub.publish_acked(&views).await;
                        ctx.recent.finish(key, published.as_ref().ok().map(Vec::as_slice));
                        published.map(|ids| Published { ids, replayed: false })
                    }
                },
            }
        }
        Some(cluster) => match cluster.publish(events, key).await {
            Ok(published) => Ok(published),
            Err(ClusterError::Invalid(error)) => Err(error),
            Err(ClusterError::KeyReused) => return Err(key_reused()),
            Err(error @ ClusterError::Unknown(_)) => {
                ctx.metrics.publish_unknown.inc();
                return Err(Refusal::new(StatusCode::GATEWAY_TIMEOUT, error.to_string()));
            }
            Err(error) => return Err(Refusal::unavailable(error.to_string())),
        },
    };
    result.map_err(|error| {
        let (status, rejection) = match &error {
            PublishError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, Some(Rejection::TooLarge)),
            PublishError::Topic { error: TopicError::Full { .. }, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, Some(Rejection::MaxTopics))
            }
            PublishError::ShuttingDown | PublishError::Fed => {
                (StatusCode::SERVICE_UNAVAILABLE, Some(Rejection::BadRequest))
            }
            PublishError::Topic { .. } | PublishError::Frame { .. } => {
                (StatusCode::BAD_REQUEST, Some(Rejection::BadRequest))
            }
            // The log's failures are counted by the log (`ringcast_log_append_errors_total`).
            PublishError::Journal(JournalError::Full(_)) => (StatusCode::INSUFFICIENT_STORAGE, None),
            PublishError::Journal(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
        };
        if let Some(rejection) = rejection {
            ctx.metrics.reject(rejection);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            Refusal::unavailable(error.to_string())
        } else {
            Refusal::new(status, error.to_string())
        }
    })
}
