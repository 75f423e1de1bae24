//! Publishing, shared by `POST /publish` and Mercure's `POST /.well-known/mercure`: reading
//! the body within its limits, publishing at most once per idempotency key (through the
//! cluster log or into the hub), the refusal for every way it can fail, and the outcome
//! header that says whether anything was published.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};

use super::ctx::Ctx;
use super::idempotency::Seen;
use super::request::{Refusal, Reply, error_json, json};
use crate::cluster::{ClusterError, Published};
use crate::hub::{JournalError, Publish, PublishError, TopicError};
use crate::metrics::Rejection;
use crate::wire::publish::{BodyError, Format, OwnedPublish};

/// The header of a publish answer that says what happened to the events when it was not
/// `200`: `not-published` (nothing was published: fix or retry), or `unknown` (`504`: they
/// may have been; retry with the same `Idempotency-Key`).
pub(crate) const OUTCOME: &str = "ringcast-outcome";
/// The header of a `200` that replays a known `Idempotency-Key`: nothing new was published.
pub(crate) const REPLAYED: &str = "idempotent-replayed";

/// `POST /publish`, with the outcome header on every answer but a success.
pub(crate) async fn publish<B>(ctx: &Ctx, ip: IpAddr, request: Request<B>) -> Reply
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
        Err(error) => {
            ctx.metrics.reject(Rejection::BadRequest);
            return error_json(StatusCode::BAD_REQUEST, &error.to_string());
        }
    };
    let access_token = crate::wire::query::param(request.uri().query(), "access_token");
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
    if let Err(refusal) = take_publish_budget(ctx, grant.subject.as_deref(), ip, events.len()) {
        return refusal_json(refusal);
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

/// Takes `events` from the publish rate budget of the token's subject (or of the client's
/// address, for a publish without one); `Err` is the `429` to answer.
pub(crate) fn take_publish_budget(ctx: &Ctx, subject: Option<&str>, ip: IpAddr, events: usize) -> Result<(), Refusal> {
    let key = subject.map_or_else(|| format!("ip:{ip}"), |subject| format!("sub:{subject}"));
    ctx.security.publish_limits.take(&key, events).map_err(|limited| {
        ctx.metrics.reject(Rejection::PublishRate);
        Refusal::limited(&limited)
    })
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
