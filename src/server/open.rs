//! Opening a stream: `GET /events` here (topics, authorization, resume, a resume gap filled
//! from the cluster or the durable log), `GET /.well-known/mercure` in `mercure`. Every
//! transport opens its streams through [`open_stream`].

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;

use super::ctx::Ctx;
use super::request::{Opened, Refusal, Reply, RequestHeaders, stream_head};
use crate::dashboard::stats::RESERVED_PREFIX;
use crate::hub::{Mode, SubscribeError, Subscription};
use crate::metrics::Rejection;
use crate::security::CorsGrant;
use crate::wire::query::{EventsQuery, parse_events_query};

/// A stream request (`GET /events` or `GET /.well-known/mercure`), from request to
/// subscription: validation, authorization, resume, and a cluster resume gap. `Err` is the
/// complete refusal to send.
pub(crate) async fn open_stream(
    ctx: &Arc<Ctx>,
    path_and_query: &str,
    headers: RequestHeaders,
) -> Result<Opened, Reply> {
    if path_and_query.split('?').next() == Some(crate::mercure::PATH) {
        return super::mercure::open(ctx, path_and_query, headers).await;
    }
    let request = EventsRequest::parse(path_and_query, headers);
    let cors = request.cors(ctx);
    let mut sub = request.subscribe(ctx).map_err(|refusal| refusal.reply(cors.as_ref()))?;
    let backlog = request.fill_gap(ctx, &mut sub).await;
    tracing::debug!(topics = ?request.topics(), start = ?sub.start(), "stream opened");
    Ok(Opened { sub, backlog, head: stream_head(cors.as_ref()), active: None })
}

/// A parsed `GET /events` request.
#[derive(Debug)]
pub(crate) struct EventsRequest {
    topics: Vec<String>,
    last_event_id: Option<String>,
    access_token: Option<String>,
    headers: RequestHeaders,
}

impl EventsRequest {
    /// The request from its query and headers; the `Last-Event-ID` header, when present,
    /// wins over the `lastEventId` parameter.
    pub(crate) fn parse(path_and_query: &str, headers: RequestHeaders) -> Self {
        let EventsQuery { topics, last_event_id, access_token } = parse_events_query(path_and_query);
        let last_event_id = headers.last_event_id.clone().filter(|id| !id.is_empty()).or(last_event_id);
        Self { topics, last_event_id, access_token, headers }
    }

    /// The topics asked for.
    pub(crate) fn topics(&self) -> Vec<&str> {
        self.topics.iter().map(String::as_str).collect()
    }

    /// The `Last-Event-ID` (header or parameter), as given.
    fn last_event_id(&self) -> &str {
        self.last_event_id.as_deref().unwrap_or("")
    }

    /// CORS headers for this request's origin, if allowed.
    pub(crate) fn cors(&self, ctx: &Ctx) -> Option<CorsGrant> {
        ctx.security.cors.grant(self.headers.origin.as_deref())
    }

    /// Authorizes and subscribes, or says why not.
    fn subscribe(&self, ctx: &Ctx) -> Result<Subscription, Refusal> {
        let names = self.topics();
        let hub = ctx.hub_for(&names);
        hub.check_topics(&names).map_err(|error| Refusal::from_topic(&error, &ctx.metrics))?;
        let reserved = names.iter().filter(|name| name.starts_with(RESERVED_PREFIX)).count();
        if ctx.hub.mode() == Mode::Fed && reserved != 0 && reserved != names.len() {
            ctx.metrics.reject(Rejection::BadRequest);
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "topics under $sys/ are per node in cluster mode: subscribe to them in a stream of their own",
            ));
        }
        let auth = &ctx.security.auth;
        let token = auth.token_from(
            self.headers.authorization.as_deref(),
            self.headers.cookie.as_deref(),
            self.access_token.as_deref(),
        );
        let grant = auth.subscribe(token, &names).map_err(|error| Refusal::from_auth(&error, &ctx.metrics))?;
        let mut subscription = hub.subscribe(&names, self.last_event_id.as_deref()).map_err(|error| match error {
            SubscribeError::Topic(error) => Refusal::from_topic(&error, &ctx.metrics),
            SubscribeError::ShuttingDown => Refusal::unavailable(error.to_string()),
        })?;
        if let Some(exp) = grant.expires {
            subscription.expire_at(exp);
        }
        Ok(subscription)
    }

    /// Fills a fed subscription's resume gap from the cluster log; on failure the
    /// subscription starts with a `reset` event instead. Returns the frames to send first.
    async fn fill_gap(&self, ctx: &Ctx, subscription: &mut Subscription) -> Vec<Bytes> {
        let Some(gap) = subscription.take_gap() else { return Vec::new() };
        let topics = self.topics();
        let filled = match (&ctx.config.cluster, &ctx.config.store) {
            (Some(cluster), _) => cluster.fill_gap(gap, &topics).await.map_err(|error| error.to_string()),
            (None, Some(store)) => store.fill_gap(gap, &topics).await.map_err(|error| error.to_string()),
            // A hub with a log but no link to it: the log cannot be asked, so say so.
            (None, None) => Err("no log to ask".to_owned()),
        };
        match filled {
            Ok(frames) => {
                subscription.gap_filled();
                frames
            }
            Err(error) => {
                tracing::debug!(%error, "resume from the log impossible: reset");
                subscription.gap_failed(self.last_event_id());
                Vec::new()
            }
        }
    }
}
