//! The Mercure endpoint over HTTP: `GET /.well-known/mercure` (a stream, opened here and
//! then served by every transport's stream engine like `GET /events`), `POST` (publish), and
//! the active subscriptions API. The protocol's formats are `crate::mercure`'s, the tokens
//! `security::mercure`'s; publishing goes through the same path as `POST /publish`
//! (idempotency, the cluster log or the durable log, the same statuses), and the answers
//! differ only where Mercure's wire does (text bodies, the id as the body of a `200`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body::Body;

use super::ctx::Ctx;
use super::publish::{mark_outcome, publish_events, read_body, take_publish_budget};
use super::request::{Opened, Refusal, Reply, RequestHeaders, complete, stream_head, text};
use crate::cluster::Published;
use crate::hub::{EARLIEST, Mode, SelectedError, Selector};
use crate::mercure::query::parse_subscribe_query;
use crate::mercure::subscriptions::{self, Filter, Subscriber};
use crate::mercure::update::parse_update;
use crate::mercure::{self as protocol, JSONLD_CONTEXT};
use crate::metrics::Rejection;
use crate::security::auth::AuthError;
use crate::security::mercure::{MercureDenied, MercureSubscriber};
use crate::wire::publish::{OwnedPublish, OwnedRouted};

/// The draft-08 name of the response's `Last-Event-ID` header.
const MERCURE_LAST_EVENT_ID: &str = "mercure-last-event-id";

/// How long a cluster node waits to see a `Last-Event-ID` it does not know yet (the client
/// may have read it on a node ahead of this one), in steps.
const CATCH_UP: (u32, Duration) = (10, Duration::from_millis(50));

/// A refusal of the Mercure endpoint (401, 403 or 501), counted.
fn denied(error: &MercureDenied, ctx: &Ctx) -> Refusal {
    match error {
        MercureDenied::Auth(error) => Refusal::from_auth(error, &ctx.metrics),
        MercureDenied::NotImplemented(message) => {
            ctx.metrics.reject(Rejection::BadRequest);
            Refusal::new(StatusCode::NOT_IMPLEMENTED, message.clone())
        }
    }
}

fn bad_request(ctx: &Ctx, message: impl Into<String>) -> Refusal {
    ctx.metrics.reject(Rejection::BadRequest);
    Refusal::new(StatusCode::BAD_REQUEST, message)
}

/// `GET /.well-known/mercure`, from request to subscription. `Err` is the complete refusal.
pub(crate) async fn open(ctx: &Arc<Ctx>, path_and_query: &str, headers: RequestHeaders) -> Result<Opened, Reply> {
    let cors = ctx.security.cors.grant(headers.origin.as_deref());
    let refuse = |refusal: Refusal| refusal.reply(cors.as_ref());
    let query = parse_subscribe_query(path_and_query).map_err(|error| {
        let refusal = if error.is_unsupported() {
            ctx.metrics.reject(Rejection::BadRequest);
            Refusal::new(StatusCode::NOT_IMPLEMENTED, error.to_string())
        } else {
            bad_request(ctx, error.to_string())
        };
        refuse(refusal)
    })?;
    let auth = &ctx.security.mercure;
    let token = auth
        .token(headers.authorization.as_deref(), query.authorization.as_deref(), headers.cookie.as_deref())
        .map_err(|error| refuse(Refusal::from_auth(&error, &ctx.metrics)))?;
    let subscriber = auth.subscriber(token).map_err(|error| refuse(denied(&error, ctx)))?;
    let last_event_id = headers.last_event_id.clone().filter(|id| !id.is_empty()).or(query.last_event_id);
    let hub = &ctx.hub;
    if let Some(id) = last_event_id.as_deref()
        && hub.mode() == Mode::Fed
        && id != EARLIEST
    {
        for _ in 0..CATCH_UP.0 {
            if hub.routed_key_of(id).is_some() {
                break;
            }
            tokio::time::sleep(CATCH_UP.1).await;
        }
    }
    let claims = subscriber.claim_selectors();
    let selected =
        hub.subscribe_selected(&query.selectors, claims.as_deref(), last_event_id.as_deref()).map_err(|error| {
            refuse(match error {
                SelectedError::Topic(error) => Refusal::from_topic(&error, &ctx.metrics),
                SelectedError::Full(_) | SelectedError::ShuttingDown => Refusal::unavailable(error.to_string()),
            })
        })?;
    let mut sub = selected.subscription;
    if let Some(exp) = subscriber.expires {
        sub.expire_at(exp);
    }
    let mut head = stream_head(cors.as_ref());
    if let Some(id) = selected.last_event_id.as_deref().and_then(|id| HeaderValue::from_bytes(id.as_bytes()).ok()) {
        head.insert(HeaderName::from_static("last-event-id"), id.clone());
        head.insert(HeaderName::from_static(MERCURE_LAST_EVENT_ID), id);
    }
    let active = ctx
        .config
        .mercure_subscriptions
        .then(|| Box::new(Active::start(ctx, &query.selectors, &subscriber)) as super::request::Guard);
    tracing::debug!(selectors = query.selectors.len(), start = ?sub.start(), "mercure stream opened");
    Ok(Opened { sub, backlog: Vec::new(), head, active })
}

/// A live subscriber of the active subscriptions (`--mercure-subscriptions`): registered
/// while its stream lives; its start and end are published as private updates.
#[derive(Debug)]
pub(crate) struct Active {
    ctx: Arc<Ctx>,
    subscriber: Subscriber,
}

impl Active {
    fn start(ctx: &Arc<Ctx>, selectors: &[Selector], token: &MercureSubscriber) -> Self {
        let mut seen: Vec<&str> = Vec::new();
        let subscriptions = selectors
            .iter()
            .map(Selector::text)
            .filter(|text| {
                let new = !seen.contains(text);
                seen.push(text);
                new
            })
            .map(|text| (text.to_owned(), token.payload_for(text).cloned()))
            .collect();
        let subscriber = Subscriber { id: protocol::new_id(), subscriptions };
        ctx.subscriptions.add(subscriber.clone());
        let active = Self { ctx: Arc::clone(ctx), subscriber };
        active.announce(true);
        active
    }

    /// Publishes the subscriber's subscriptions as `active` (one private update each), in
    /// the background: the stream never waits for it.
    fn announce(&self, active: bool) {
        let events: Vec<OwnedPublish> = self
            .subscriber
            .subscriptions
            .iter()
            .map(|(selector, payload)| {
                let topic = subscriptions::topic_of(selector, &self.subscriber.id);
                let doc = subscriptions::document(selector, &self.subscriber.id, active, payload.as_ref(), true);
                OwnedPublish {
                    topics: vec![topic],
                    event: None,
                    data: doc.to_string(),
                    retry: None,
                    routed: Some(OwnedRouted { id: protocol::new_id(), private: true }),
                }
            })
            .collect();
        let ctx = Arc::clone(&self.ctx);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            for event in &events {
                if let Err(refusal) = publish_events(&ctx, std::slice::from_ref(event), None).await {
                    tracing::warn!(status = %refusal.status, error = %refusal.message, "a subscription event was not published");
                }
            }
        });
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.ctx.subscriptions.remove(&self.subscriber.id);
        self.announce(false);
    }
}

/// `POST /.well-known/mercure`: publishes one update; `200` with its id as the body.
pub(crate) async fn publish<B>(ctx: &Ctx, ip: IpAddr, request: Request<B>) -> Reply
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut reply = match publish_update(ctx, ip, request).await {
        Ok(id) => complete(StatusCode::OK, "text/plain; charset=utf-8", Bytes::from(id)),
        Err(refusal) => {
            let mut reply = text(refusal.status, &refusal.message);
            reply.headers_mut().extend(refusal.headers.into_iter().map(|(name, value)| (Some(name), value)));
            reply
        }
    };
    mark_outcome(&mut reply);
    reply
}

async fn publish_update<B>(ctx: &Ctx, ip: IpAddr, request: Request<B>) -> Result<String, Refusal>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let headers = RequestHeaders::of(request.headers());
    let idempotency_key = super::idempotency::key_of(request.headers()).map_err(|error| {
        ctx.metrics.reject(Rejection::BadRequest);
        Refusal::new(StatusCode::BAD_REQUEST, error.to_string())
    })?;
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        ctx.metrics.reject(Rejection::BadRequest);
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type {content_type:?}: Mercure updates are application/x-www-form-urlencoded"),
        ));
    }
    let query_token = crate::wire::query::param(request.uri().query(), "authorization");
    let body = read_body(ctx, request).await?;
    let event = parse_update(&body, idempotency_key.as_deref()).map_err(|error| bad_request(ctx, error.to_string()))?;
    let auth = &ctx.security.mercure;
    let token = auth
        .token(headers.authorization.as_deref(), query_token.as_deref(), headers.cookie.as_deref())
        .map_err(|error| Refusal::from_auth(&error, &ctx.metrics))?;
    let topics: Vec<&str> = event.topics.iter().map(String::as_str).collect();
    let publisher = auth.publisher(token, &topics).map_err(|error| denied(&error, ctx))?;
    take_publish_budget(ctx, publisher.subject.as_deref(), ip, 1)?;
    let id = event.routed.as_ref().map(|routed| routed.id.clone()).unwrap_or_default();
    let Published { .. } = publish_events(ctx, std::slice::from_ref(&event), idempotency_key.as_deref()).await?;
    Ok(id)
}

/// `GET /.well-known/mercure/subscriptions[/{topic}[/{subscriber}]]` (JSON-LD).
pub(crate) fn subscriptions<B>(ctx: &Ctx, request: &Request<B>) -> Reply {
    let refused = |refusal: Refusal| text(refusal.status, &refusal.message);
    if !ctx.config.mercure_subscriptions {
        return text(
            StatusCode::NOT_FOUND,
            "not found: active subscriptions are off (start with --mercure-subscriptions)",
        );
    }
    let path = request.uri().path();
    let filter = match subscriptions::parse_path(path) {
        Some(Ok(filter)) => filter,
        Some(Err(error)) => return refused(bad_request(ctx, error.to_string())),
        None => return text(StatusCode::NOT_FOUND, "not found"),
    };
    let headers = RequestHeaders::of(request.headers());
    let query_token = crate::wire::query::param(request.uri().query(), "authorization");
    let auth = &ctx.security.mercure;
    if auth.verifies_subscribers() {
        let token =
            match auth.token(headers.authorization.as_deref(), query_token.as_deref(), headers.cookie.as_deref()) {
                Ok(Some(token)) => token,
                Ok(None) => {
                    let error = AuthError::Unauthorized("the subscriptions API requires a token".to_owned());
                    return refused(Refusal::from_auth(&error, &ctx.metrics));
                }
                Err(error) => return refused(Refusal::from_auth(&error, &ctx.metrics)),
            };
        match auth.subscriber(Some(token)) {
            Ok(subscriber) if subscriber.may_receive(path) => {}
            Ok(_) => {
                let error = AuthError::Forbidden(format!("the token's mercure.subscribe claim does not cover {path}"));
                return refused(Refusal::from_auth(&error, &ctx.metrics));
            }
            Err(error) => return refused(denied(&error, ctx)),
        }
    }
    let last_event_id = ctx.hub.newest_routed_id().unwrap_or_else(|| EARLIEST.to_owned());
    let docs = ctx.subscriptions.list(&filter);
    let body = match (&filter, docs.as_slice()) {
        (Filter { subscriber: Some(_), .. }, [one, ..]) => {
            let mut doc = one.clone();
            if let Some(object) = doc.as_object_mut() {
                object.insert("@context".to_owned(), JSONLD_CONTEXT.into());
                object.insert("lastEventID".to_owned(), last_event_id.into());
            }
            doc
        }
        (Filter { subscriber: Some(_), .. }, []) => return text(StatusCode::NOT_FOUND, "no such subscription"),
        _ => serde_json::json!({
            "@context": JSONLD_CONTEXT,
            "id": path,
            "type": "Subscriptions",
            "lastEventID": last_event_id,
            "subscriptions": docs,
        }),
    };
    complete(StatusCode::OK, "application/ld+json", Bytes::from(body.to_string()))
}
