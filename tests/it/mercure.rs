//! The Mercure endpoint: every MUST of draft-07 the hub implements, over real sockets, in
//! HTTP/1.1 and HTTP/2 (prior knowledge), on one node and in cluster mode (publish on one
//! node, subscribe on another). Each check runs in every setting (`for_each_setting`).
//!
//! "Not delivered" is shown without sleeps: after the update that must not arrive, a marker
//! that must arrive is published; a subscriber's events come in order, so if the next event
//! is the marker, the first was not sent.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ringcast::config::ServerConfig;
use ringcast::security::auth::JwtKey;
use ringcast::security::mercure::MercureAuthConfig;
use ringcast::wire::parse::{Item, Parser, SseEvent};
use serde_json::{Value, json};

use crate::support::{self, Options, RedisServer, SseClient, TestServer, WAIT};

const PUBLISHER_KEY: &str = "publisher-secret-for-tests";
const SUBSCRIBER_KEY: &str = "subscriber-secret-for-tests";
const MERCURE: &str = "/.well-known/mercure";

/// A signed HS256 token with `claims`.
fn token(key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .expect("sign")
}

fn publisher(topics: &[&str]) -> String {
    token(PUBLISHER_KEY, &json!({ "mercure": { "publish": topics } }))
}

fn subscriber(topics: &[&str]) -> String {
    token(SUBSCRIBER_KEY, &json!({ "mercure": { "subscribe": topics, "payload": { "user": "u1" } } }))
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The path of a subscription to `selectors`, plus `extra` query parameters.
fn subscribe_path(selectors: &[&str], extra: &str) -> String {
    let query: Vec<String> = selectors.iter().map(|s| format!("topic={}", encode(s))).collect();
    format!("{MERCURE}?{}{extra}", query.join("&"))
}

fn options() -> Options {
    let mut options = Options::default();
    options.server = ServerConfig {
        mercure_subscriptions: true,
        security: ringcast::security::SecurityConfig {
            mercure: MercureAuthConfig {
                publisher_key: Some(JwtKey::Hs256(PUBLISHER_KEY.into())),
                subscriber_key: Some(JwtKey::Hs256(SUBSCRIBER_KEY.into())),
                anonymous: true,
                ..MercureAuthConfig::default()
            },
            ..options.server.security.clone()
        },
        ..options.server
    };
    options
}

/// How a check reaches the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    H1,
    H2,
}

/// Where a check publishes and subscribes (the same node, or two nodes of a cluster).
struct Env {
    wire: Wire,
    publish: SocketAddr,
    subscribe: SocketAddr,
    _servers: Vec<TestServer>,
    _redis: Option<RedisServer>,
}

impl Env {
    async fn standalone(wire: Wire) -> Self {
        let server = support::start(options()).await;
        Self { wire, publish: server.addr, subscribe: server.addr, _servers: vec![server], _redis: None }
    }

    async fn cluster(wire: Wire) -> Self {
        let redis = RedisServer::start();
        let a = support::start_node(options(), &redis).await;
        let b = support::start_node(options(), &redis).await;
        Self { wire, publish: a.addr, subscribe: b.addr, _servers: vec![a, b], _redis: Some(redis) }
    }

    /// Publishes a form; returns (status, content type, body).
    async fn post(&self, form: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        match self.wire {
            Wire::H1 => {
                let (status, head, body) = support::request(self.publish, "POST", MERCURE, &all, form.as_bytes()).await;
                let content_type = header_of(&head, "content-type").unwrap_or_default();
                (status, content_type, body)
            }
            Wire::H2 => h2_post(self.publish, form, &all).await,
        }
    }

    /// Publishes an update authorized for its topics; returns its id.
    async fn publish(&self, form: &str) -> String {
        let topics: Vec<String> = form_urlencoded::parse(form.as_bytes())
            .filter(|(key, _)| key == "topic")
            .map(|(_, value)| value.into_owned())
            .collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let auth = format!("Bearer {}", publisher(&topics));
        let (status, content_type, body) = self.post(form, &[("authorization", &auth)]).await;
        assert_eq!(status, 200, "publish {form}: {body}");
        assert_eq!(content_type, "text/plain; charset=utf-8");
        body
    }

    async fn subscribe(&self, path: &str, headers: &[(&str, &str)]) -> Sub {
        Sub::open(self.wire, self.subscribe, path, headers).await
    }
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
    })
}

async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    support::h2c::connect(tcp, 1 << 20).await
}

async fn h2_post(addr: SocketAddr, form: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut client = h2_client(addr).await.ready().await.expect("ready");
    let mut request = http::Request::post(format!("http://localhost{MERCURE}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut send) = client.send_request(request.body(()).expect("request"), false).expect("send");
    send.send_data(Bytes::from(form.to_owned()), true).expect("body");
    let response = tokio::time::timeout(WAIT, response).await.expect("answer in time").expect("answer");
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.data()).await.expect("body in time") {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, content_type, String::from_utf8_lossy(&text).into_owned())
}

/// A subscriber over HTTP/1.1 or HTTP/2.
struct Sub {
    status: u16,
    headers: http::HeaderMap,
    inner: Inner,
}

enum Inner {
    H1(Box<SseClient>),
    H2 { body: h2::RecvStream, parser: Parser, closed: bool, _client: h2::client::SendRequest<Bytes> },
}

impl Sub {
    async fn open(wire: Wire, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Self {
        match wire {
            Wire::H1 => {
                let client = SseClient::connect(addr, path, headers).await;
                let mut map = http::HeaderMap::new();
                for line in client.head.lines().skip(1) {
                    if let Some((name, value)) = line.split_once(':')
                        && let (Ok(name), Ok(value)) =
                            (http::HeaderName::try_from(name.trim()), http::HeaderValue::try_from(value.trim()))
                    {
                        map.append(name, value);
                    }
                }
                Self { status: client.status, headers: map, inner: Inner::H1(Box::new(client)) }
            }
            Wire::H2 => {
                let mut client = h2_client(addr).await.ready().await.expect("ready");
                let mut request = http::Request::get(format!("http://localhost{path}"));
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                let (response, _) = client.send_request(request.body(()).expect("request"), true).expect("send");
                let response = tokio::time::timeout(WAIT, response).await.expect("head in time").expect("head");
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response.into_body();
                Self {
                    status,
                    headers,
                    inner: Inner::H2 { body, parser: Parser::new(), closed: false, _client: client },
                }
            }
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    /// The next event (comments skipped), or `None` on timeout or close.
    async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        match &mut self.inner {
            Inner::H1(client) => client.next_event(wait).await,
            Inner::H2 { body, parser, closed, .. } => {
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    while let Some(item) = parser.next_item() {
                        if let Item::Event(event) = item {
                            return Some(event);
                        }
                    }
                    if *closed {
                        return None;
                    }
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match tokio::time::timeout(left, body.data()).await {
                        Ok(Some(Ok(data))) => {
                            let _ = body.flow_control().release_capacity(data.len());
                            parser.feed(&data);
                        }
                        Ok(_) => *closed = true,
                        Err(_) => return None,
                    }
                }
            }
        }
    }

    /// The next event, failing the check if none comes in time.
    async fn event(&mut self) -> SseEvent {
        self.next(WAIT).await.expect("an event in time")
    }

    /// The next event is `data` (a marker: nothing else came before it).
    async fn next_is(&mut self, data: &str) {
        let event = self.event().await;
        assert_eq!(event.data, data, "expected `{data}` next, got {event:?}");
    }

    /// The stream ends within `wait`.
    async fn ends_within(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while self.next(deadline.saturating_duration_since(tokio::time::Instant::now())).await.is_some() {}
        assert!(tokio::time::Instant::now() < deadline, "the stream did not end in time");
    }
}

/// Runs `check` on one node over HTTP/1.1 and HTTP/2, and on a cluster over both.
async fn for_each_setting<F, Fut>(check: F)
where
    F: Fn(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    for wire in [Wire::H1, Wire::H2] {
        check(Env::standalone(wire).await).await;
        check(Env::cluster(wire).await).await;
    }
}

#[tokio::test]
async fn selectors_exact_templates_all_and_alternate_topics() {
    for_each_setting(|env| async move {
        let books = "https://example.com/books/{id}";
        let mut template = env.subscribe(&subscribe_path(&[books], ""), &[]).await;
        assert_eq!(template.status, 200);
        assert_eq!(template.header("content-type").as_deref(), Some("text/event-stream"));
        let mut exact = env.subscribe(&subscribe_path(&["https://example.com/authors/1"], ""), &[]).await;
        let mut all = env.subscribe(&subscribe_path(&["*"], ""), &[]).await;
        // A topic nobody published before: the template and `*` match it.
        env.publish("topic=https%3A%2F%2Fexample.com%2Fbooks%2F42&data=book42").await;
        template.next_is("book42").await;
        all.next_is("book42").await;
        // Not a book (a second path segment): the template does not match.
        env.publish("topic=https%3A%2F%2Fexample.com%2Fbooks%2F42%2Freviews&data=review").await;
        // Canonical topic unmatched, alternate topic matched: delivered, once.
        env.publish("topic=urn%3Aother&topic=https%3A%2F%2Fexample.com%2Fauthors%2F1&topic=https%3A%2F%2Fexample.com%2Fbooks%2F7&data=alt").await;
        template.next_is("alt").await;
        exact.next_is("alt").await;
        all.next_is("review").await;
        let alt = all.event().await;
        assert_eq!(alt.data, "alt");
        // `/health` counts the three distinct subscriptions, the updates held (three published,
        // three subscription-start events: the options turn active subscriptions on) and names
        // the newest update.
        let (status, _, body) = support::request(env.subscribe, "GET", "/health", &[], b"").await;
        assert_eq!(status, 200, "{body}");
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["mercure"]["audiences"], 3, "{body}");
        assert_eq!(health["mercure"]["updates_held"], 6, "{body}");
        assert_eq!(health["mercure"]["last_event_id"], alt.last_event_id, "{body}");
        assert_eq!(health["mercure"]["subscribers"], 3, "{body}");
    })
    .await;
}

#[tokio::test]
async fn private_updates_reach_only_authorized_subscribers() {
    for_each_setting(|env| async move {
        let topic = "https://example.com/books/1";
        let path = subscribe_path(&["https://example.com/books/{id}"], "");
        let mut anonymous = env.subscribe(&path, &[]).await;
        let other = format!("Bearer {}", subscriber(&["https://example.com/books/2"]));
        let mut unauthorized = env.subscribe(&path, &[("authorization", &other)]).await;
        let allowed = subscriber(&["https://example.com/books/{id}"]);
        let mut by_header = env.subscribe(&path, &[("authorization", &format!("Bearer {allowed}"))]).await;
        let cookie = format!("mercureAuthorization={allowed}");
        let mut by_cookie = env.subscribe(&path, &[("cookie", &cookie)]).await;
        let draft_08 = format!("__Secure-mercure_access_token={allowed}");
        let mut by_draft_08_cookie = env.subscribe(&path, &[("cookie", &draft_08)]).await;
        let mut by_query = env.subscribe(&format!("{path}&authorization={allowed}"), &[]).await;
        // The header wins over the cookie (spec: the header's token MUST be used).
        let mut header_wins = env.subscribe(&path, &[("authorization", &other), ("cookie", &cookie)]).await;
        // Authorized by an alternate topic only (the spec's users/foo/?topic= pattern).
        let mut by_alternate = {
            let claim = subscriber(&["https://example.com/users/foo/{?topic}"]);
            env.subscribe(&path, &[("authorization", &format!("Bearer {claim}"))]).await
        };
        env.publish(&format!("topic={}&data=secret&private=on", encode(topic))).await;
        env.publish(&format!(
            "topic={}&topic={}&data=for-foo&private=on",
            encode("https://example.com/books/3"),
            encode("https://example.com/users/foo/?topic=https%3A%2F%2Fexample.com%2Fbooks%2F3")
        ))
        .await;
        env.publish(&format!("topic={}&data=public", encode(topic))).await;
        // Their claim (books/{id}) matches the canonical topic of both private updates.
        for sub in [&mut by_header, &mut by_cookie, &mut by_draft_08_cookie, &mut by_query] {
            sub.next_is("secret").await;
            sub.next_is("for-foo").await;
            sub.next_is("public").await;
        }
        by_alternate.next_is("for-foo").await;
        by_alternate.next_is("public").await;
        for sub in [&mut anonymous, &mut unauthorized, &mut header_wins] {
            sub.next_is("public").await;
        }
        let bad = env.subscribe(&path, &[("authorization", "Bearer not-a-jwt")]).await;
        assert_eq!(bad.status, 401, "an invalid token is refused, not treated as anonymous");
    })
    .await;
}

#[tokio::test]
async fn publishing_needs_a_token_covering_every_topic() {
    for_each_setting(|env| async move {
        let mut all = env.subscribe(&subscribe_path(&["*"], ""), &[]).await;
        let form = "topic=https%3A%2F%2Fexample.com%2Fa&topic=https%3A%2F%2Fexample.com%2Fb&data=x";
        let (status, _, body) = env.post(form, &[]).await;
        assert_eq!(status, 401, "{body}");
        let partial = format!("Bearer {}", publisher(&["https://example.com/a"]));
        let (status, _, body) = env.post(form, &[("authorization", &partial)]).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("https://example.com/b"), "the refusal names the topic: {body}");
        let none = format!("Bearer {}", token(PUBLISHER_KEY, &json!({ "mercure": { "publish": [] } })));
        let (status, _, _) = env.post(form, &[("authorization", &none)]).await;
        assert_eq!(status, 403);
        let wrong_key = format!("Bearer {}", token(SUBSCRIBER_KEY, &json!({ "mercure": { "publish": ["*"] } })));
        let (status, _, _) = env.post(form, &[("authorization", &wrong_key)]).await;
        assert_eq!(status, 401, "a subscriber key does not sign publishers");
        let template = format!("Bearer {}", publisher(&["https://example.com/{x}"]));
        let (status, content_type, id) = env.post(form, &[("authorization", &template)]).await;
        assert_eq!((status, content_type.as_str()), (200, "text/plain; charset=utf-8"), "{id}");
        // Nothing of the refused publishes reached anyone: the first event is the accepted one.
        let event = all.event().await;
        assert_eq!((event.data.as_str(), event.last_event_id.as_str()), ("x", id.as_str()));
        let (status, _, _) = env.post("data=x", &[("authorization", &template)]).await;
        assert_eq!(status, 400, "an update needs a topic");
        let (status, _, _) =
            support::request(env.publish, "POST", MERCURE, &[("content-type", "application/json")], b"{}").await;
        assert_eq!(status, 415);
    })
    .await;
}

#[tokio::test]
async fn ids_publisher_given_verbatim_generated_as_urns_and_checked() {
    for_each_setting(|env| async move {
        let mut sub = env.subscribe(&subscribe_path(&["https://example.com/x"], ""), &[]).await;
        let topic = "topic=https%3A%2F%2Fexample.com%2Fx";
        let id = env
            .publish(&format!("{topic}&data=one&id=https%3A%2F%2Fexample.com%2Fx%2Frev%2F1&type=rev&retry=2500"))
            .await;
        assert_eq!(id, "https://example.com/x/rev/1");
        let generated = env.publish(&format!("{topic}&data=two")).await;
        assert!(generated.starts_with("urn:uuid:") && generated.len() == 45, "{generated}");
        let one = sub.event().await;
        assert_eq!((one.last_event_id.as_str(), one.event.as_str(), one.data.as_str()), (id.as_str(), "rev", "one"));
        let two = sub.event().await;
        assert_eq!((two.last_event_id.as_str(), two.data.as_str()), (generated.as_str(), "two"));
        let auth = format!("Bearer {}", publisher(&["*"]));
        for bad in ["%23fragment", "earliest", "a%0Ab", "tab%09"] {
            let (status, _, body) = env.post(&format!("{topic}&data=x&id={bad}"), &[("authorization", &auth)]).await;
            assert_eq!(status, 400, "id {bad}: {body}");
        }
        env.publish(&format!("{topic}&data=marker")).await;
        sub.next_is("marker").await;
    })
    .await;
}

#[tokio::test]
async fn reconnection_by_header_query_earliest_and_unknown_ids() {
    for_each_setting(|env| async move {
        let selector = "https://example.com/r/{id}";
        let path = subscribe_path(&[selector], "");
        let mut live = env.subscribe(&path, &[]).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(env.publish(&format!("topic=https%3A%2F%2Fexample.com%2Fr%2F{i}&data=e{i}&id=id-{i}")).await);
            env.publish(&format!("topic=https%3A%2F%2Fexample.com%2Fother&data=skip{i}")).await;
        }
        for i in 0..5 {
            live.next_is(&format!("e{i}")).await;
        }
        let check = |mut sub: Sub, header: &'static str, first: usize| async move {
            assert_eq!(sub.status, 200);
            assert_eq!(sub.header("last-event-id").as_deref(), Some(header));
            assert_eq!(sub.header("mercure-last-event-id").as_deref(), Some(header));
            for i in first..5 {
                sub.next_is(&format!("e{i}")).await;
            }
            sub
        };
        let by_header = env.subscribe(&path, &[("last-event-id", "id-1")]).await;
        let by_query = env.subscribe(&subscribe_path(&[selector], "&lastEventID=id-2"), &[]).await;
        let by_draft_08 = env.subscribe(&subscribe_path(&[selector], "&last_event_id=id-3"), &[]).await;
        let header_wins =
            env.subscribe(&subscribe_path(&[selector], "&lastEventID=id-0"), &[("last-event-id", "id-3")]).await;
        let earliest = env.subscribe(&subscribe_path(&[selector], "&lastEventID=earliest"), &[]).await;
        let mut subs = vec![
            check(by_header, "id-1", 2).await,
            check(by_query, "id-2", 3).await,
            check(by_draft_08, "id-3", 4).await,
            check(header_wins, "id-3", 4).await,
            check(earliest, "earliest", 0).await,
        ];
        // A duplicate id resumes after its latest use.
        env.publish("topic=https%3A%2F%2Fexample.com%2Fr%2F9&data=dup&id=id-1").await;
        env.publish("topic=https%3A%2F%2Fexample.com%2Fr%2F9&data=after-dup").await;
        for sub in &mut subs {
            sub.next_is("dup").await;
            sub.next_is("after-dup").await;
        }
        let mut dup = env.subscribe(&path, &[("last-event-id", "id-1")]).await;
        assert_eq!(dup.header("last-event-id").as_deref(), Some("id-1"));
        dup.next_is("after-dup").await;
        // An id never seen: the header says where the stream starts, and a reset event.
        let newest = env.publish("topic=https%3A%2F%2Fexample.com%2Fother&data=newest").await;
        let mut unknown = env.subscribe(&path, &[("last-event-id", "no-such-id")]).await;
        assert_eq!(unknown.header("last-event-id"), Some(newest.clone()));
        let reset = unknown.event().await;
        assert_eq!(reset.event, "reset");
        assert_eq!(reset.last_event_id, newest);
        let reason: Value = serde_json::from_str(&reset.data).expect("JSON");
        assert_eq!(reason["lastEventId"], "no-such-id");
        env.publish("topic=https%3A%2F%2Fexample.com%2Fr%2F10&data=after").await;
        unknown.next_is("after").await;
        // No id given: no header.
        assert_eq!(live.header("last-event-id"), None);
    })
    .await;
}

#[tokio::test]
async fn subscription_events_and_the_subscriptions_api() {
    for_each_setting(|env| async move {
        let watcher_claim = subscriber(&["/.well-known/mercure/subscriptions{/topic}{/subscriber}"]);
        let watch_path = subscribe_path(&["/.well-known/mercure/subscriptions{/topic}{/subscriber}"], "");
        let mut watcher = env.subscribe(&watch_path, &[("authorization", &format!("Bearer {watcher_claim}"))]).await;
        let mut anonymous_watcher = env.subscribe(&watch_path, &[]).await;
        let selector = "https://example.com/watched/{id}";
        let mut watched_sub = Some(
            env.subscribe(
                &subscribe_path(&[selector], ""),
                &[("authorization", &format!("Bearer {}", subscriber(&["https://example.com/watched/1"])))],
            )
            .await,
        );
        let mut seen_active = None;
        // The watcher may see its own subscription's event first.
        for _ in 0..3 {
            let event = watcher.event().await;
            let doc: Value = serde_json::from_str(&event.data).expect("JSON-LD");
            if doc["topic"] == selector {
                seen_active = Some(doc);
                break;
            }
        }
        let doc = seen_active.expect("the watched subscription's event");
        assert_eq!(doc["@context"], "https://mercure.rocks/");
        assert_eq!(doc["type"], "Subscription");
        assert_eq!(doc["active"], true);
        assert_eq!(doc["payload"], json!({ "user": "u1" }));
        let subscriber_id = doc["subscriber"].as_str().expect("subscriber").to_owned();
        assert!(subscriber_id.starts_with("urn:uuid:"));
        let id = doc["id"].as_str().expect("id").to_owned();
        assert!(
            id.starts_with(
                "/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2Fwatched%2F%7Bid%7D/urn%3Auuid%3A"
            ),
            "{id}"
        );
        // The API, on the subscriber's node.
        let api = |path: String, auth: Option<String>| {
            let addr = env.subscribe;
            async move {
                let header = auth.map(|token| format!("Bearer {token}"));
                let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
                support::request(addr, "GET", &path, &headers, b"").await
            }
        };
        let reader = subscriber(&[
            "/.well-known/mercure/subscriptions{/topic}{/subscriber}",
            "/.well-known/mercure/subscriptions",
        ]);
        let (status, head, body) = api("/.well-known/mercure/subscriptions".into(), Some(reader.clone())).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(header_of(&head, "content-type").as_deref(), Some("application/ld+json"));
        let list: Value = serde_json::from_str(&body).expect("JSON-LD");
        assert_eq!(list["type"], "Subscriptions");
        assert!(list["lastEventID"].is_string());
        let listed = list["subscriptions"].as_array().expect("array");
        assert!(listed.iter().any(|s| s["subscriber"] == subscriber_id.as_str() && s["topic"] == selector), "{list}");
        let (status, _, body) = api(id.clone(), Some(reader.clone())).await;
        assert_eq!(status, 200, "{body}");
        let one: Value = serde_json::from_str(&body).expect("JSON-LD");
        assert_eq!((one["id"].as_str(), one["active"].as_bool()), (Some(id.as_str()), Some(true)));
        let topic_collection = id.rsplit_once('/').expect("segments").0.to_owned();
        let (status, _, body) = api(topic_collection, Some(reader.clone())).await;
        assert_eq!(status, 200);
        assert!(body.contains(&subscriber_id));
        let (status, _, _) = api("/.well-known/mercure/subscriptions".into(), None).await;
        assert_eq!(status, 401);
        let (status, _, _) =
            api("/.well-known/mercure/subscriptions".into(), Some(subscriber(&["https://example.com/x"]))).await;
        assert_eq!(status, 403);
        let (status, _, _) = api(format!("{id}x"), Some(reader.clone())).await;
        assert_eq!(status, 404);
        // The subscription ends: an `active: false` event.
        drop(watched_sub.take());
        let mut ended = None;
        for _ in 0..5 {
            let event = watcher.event().await;
            let doc: Value = serde_json::from_str(&event.data).expect("JSON-LD");
            if doc["subscriber"] == subscriber_id.as_str() {
                ended = Some(doc);
                break;
            }
        }
        assert_eq!(ended.expect("the end event")["active"], false);
        // Subscription events are private: the anonymous watcher got none of them.
        env.publish("topic=%2F.well-known%2Fmercure%2Fsubscriptions%2Fmarker&data=marker").await;
        anonymous_watcher.next_is("marker").await;
    })
    .await;
}

#[tokio::test]
async fn bad_subscriptions_are_refused_with_the_spec_statuses() {
    let env = Env::standalone(Wire::H1).await;
    let (status, _, body) = support::request(env.subscribe, "GET", MERCURE, &[], b"").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("topic"));
    let (status, _, body) =
        support::request(env.subscribe, "GET", &format!("{MERCURE}?matchRegexp=.*"), &[], b"").await;
    assert_eq!(status, 501, "{body}");
    let (status, _, _) = support::request(env.subscribe, "GET", &format!("{MERCURE}?topic=%7Bbroken"), &[], b"").await;
    assert_eq!(status, 400);
    let object_claim =
        token(SUBSCRIBER_KEY, &json!({ "mercure": { "subscribe": [{ "match": ".*", "matchType": "Regexp" }] } }));
    let auth = format!("Bearer {object_claim}");
    let (status, _, _) =
        support::request(env.subscribe, "GET", &format!("{MERCURE}?topic=a"), &[("authorization", &auth)], b"").await;
    assert_eq!(status, 501, "an unsupported matcher type in the claim");
    let (status, _, _) = support::request(env.subscribe, "DELETE", MERCURE, &[], b"").await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn anonymous_subscribers_need_the_flag() {
    let mut options = options();
    options.server.security.mercure.anonymous = false;
    let server = support::start(options).await;
    let path = subscribe_path(&["*"], "");
    let (status, head, _) = support::request(server.addr, "GET", &path, &[], b"").await;
    assert_eq!(status, 401);
    assert!(header_of(&head, "www-authenticate").is_some());
    let auth = format!("Bearer {}", subscriber(&[]));
    let sub = SseClient::connect(server.addr, &path, &[("authorization", &auth)]).await;
    assert_eq!(sub.status, 200, "a token without subscribe selectors still subscribes (public updates)");
}

#[tokio::test]
async fn the_stream_closes_when_the_token_expires() {
    for wire in [Wire::H1, Wire::H2] {
        let env = Env::standalone(wire).await;
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 2;
        let claim = token(SUBSCRIBER_KEY, &json!({ "exp": exp, "mercure": { "subscribe": ["*"] } }));
        let mut sub =
            env.subscribe(&subscribe_path(&["*"], ""), &[("authorization", &format!("Bearer {claim}"))]).await;
        assert_eq!(sub.status, 200);
        sub.ends_within(Duration::from_secs(6)).await;
    }
}

/// A publish in cluster mode with an idempotency key and no id: the retry gets the same id.
#[tokio::test]
async fn a_retried_publish_keeps_its_generated_id() {
    for_each_setting(|env| async move {
        let auth = format!("Bearer {}", publisher(&["*"]));
        let headers = [("authorization", auth.as_str()), ("idempotency-key", "mercure-retry-1")];
        let (status, _, first) = env.post("topic=a&data=once", &headers).await;
        assert_eq!(status, 200, "{first}");
        let (status, _, again) = env.post("topic=a&data=once", &headers).await;
        assert_eq!((status, again.as_str()), (200, first.as_str()));
        let mut sub = env.subscribe(&subscribe_path(&["a"], "&lastEventID=earliest"), &[]).await;
        sub.next_is("once").await;
        env.publish("topic=a&data=marker").await;
        sub.next_is("marker").await;
    })
    .await;
}
