//! Authorization on the Mercure endpoint: where the token comes from, the `mercure` claim,
//! and the publisher's and subscriber's keys.
//!
//! - The token: the `Authorization: Bearer` header if present (then nothing else is
//!   looked at), else the `authorization` query parameter, else the cookie
//!   (`mercureAuthorization` by default, then draft-08's `__Secure-mercure_access_token`).
//! - The claim: `{"mercure": {"publish": [...], "subscribe": [...], "payload": ...}}`. A
//!   selector is a string (draft-07: exact, `*` or a URI template) or, as draft-08 writes
//!   them, an object `{"match": ..., "matchType": "Exact" | "URITemplate", "payload": ...}`;
//!   other matcher types are answered with 501.
//! - Keys: the publisher's (`--mercure-publisher-jwt-key`) and the subscriber's
//!   (`--mercure-subscriber-jwt-key`), each an HMAC secret or a PEM public key, falling back
//!   to `--jwt-secret` / `--jwt-public-key`. Without a publisher key anyone may publish;
//!   without a subscriber key every subscriber is anonymous (public updates only).
//!   With one, a subscriber without a token needs `--mercure-anonymous`.
//!
//! Tokens are checked once per connection or publish, never per event.

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::auth::{AuthError, JwtKey, KeyError, Verifier, bearer, cookie_value};
use crate::hub::Selector;

/// The draft-08 cookie name, read after the configured one.
pub const DRAFT_08_COOKIE: &str = "__Secure-mercure_access_token";

/// Mercure authorization settings.
#[derive(Debug, Clone)]
pub struct MercureAuthConfig {
    /// Verifies publishers' tokens; `None`: publishing needs no token.
    pub publisher_key: Option<JwtKey>,
    /// The publisher key's algorithm, when not the one the key implies.
    pub publisher_algorithm: Option<Algorithm>,
    /// Verifies subscribers' tokens; `None`: every subscriber is anonymous.
    pub subscriber_key: Option<JwtKey>,
    /// The subscriber key's algorithm, when not the one the key implies.
    pub subscriber_algorithm: Option<Algorithm>,
    /// Whether subscribers without a token are let in (public updates only).
    pub anonymous: bool,
    /// The cookie that may carry the token.
    pub cookie_name: String,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
}

impl Default for MercureAuthConfig {
    fn default() -> Self {
        Self {
            publisher_key: None,
            publisher_algorithm: None,
            subscriber_key: None,
            subscriber_algorithm: None,
            anonymous: false,
            cookie_name: "mercureAuthorization".to_owned(),
            leeway: 30,
        }
    }
}

/// Why a Mercure request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MercureDenied {
    /// 401 or 403.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A matcher type this hub does not implement (501).
    #[error("{0}")]
    NotImplemented(String),
}

/// A subscriber, once authorized.
#[derive(Debug, Clone, Default)]
pub struct MercureSubscriber {
    /// The token's `subscribe` selectors with their payloads (`None`: no private updates).
    pub claims: Option<ClaimSelectors>,
    /// The token's top-level `mercure.payload`.
    pub payload: Option<serde_json::Value>,
    /// The token's `exp` (Unix seconds).
    pub expires: Option<u64>,
}

impl MercureSubscriber {
    /// The claim selectors alone.
    pub fn claim_selectors(&self) -> Option<Vec<Selector>> {
        self.claims.as_ref().map(|claims| claims.iter().map(|(selector, _)| selector.clone()).collect())
    }

    /// Whether the claims allow `topic` (a private update's, or a subscription API URL).
    pub fn may_receive(&self, topic: &str) -> bool {
        self.claims.as_ref().is_some_and(|claims| claims.iter().any(|(selector, _)| selector.matches(topic)))
    }

    /// The payload of a subscription to `selector`: the first claim's that covers it (the
    /// same text, `*`, or a claim that matches it as a topic), else the top-level one.
    pub fn payload_for(&self, selector: &str) -> Option<&serde_json::Value> {
        let claims = self.claims.iter().flatten();
        claims
            .filter(|(claim, payload)| {
                payload.is_some() && (claim.text() == selector || claim.text() == "*" || claim.matches(selector))
            })
            .find_map(|(_, payload)| payload.as_ref())
            .or(self.payload.as_ref())
    }
}

/// A publisher, once authorized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MercurePublisher {
    /// The token's `sub`, if any (the publish rate limit is kept per subject).
    pub subject: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    mercure: Option<Claim>,
}

#[derive(Debug, Default, Deserialize)]
struct Claim {
    #[serde(default)]
    publish: Option<Vec<ClaimSelector>>,
    #[serde(default)]
    subscribe: Option<Vec<ClaimSelector>>,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClaimSelector {
    Text(String),
    Object {
        #[serde(rename = "match")]
        pattern: String,
        #[serde(rename = "matchType", default)]
        match_type: Option<String>,
        #[serde(default)]
        payload: Option<serde_json::Value>,
    },
}

impl ClaimSelector {
    fn parse(self, claim: &str) -> Result<(Selector, Option<serde_json::Value>), MercureDenied> {
        let bad = |error: crate::hub::SelectorError| {
            MercureDenied::Auth(AuthError::Unauthorized(format!("the token's mercure.{claim} claim: {error}")))
        };
        match self {
            Self::Text(text) => Ok((Selector::parse(&text).map_err(bad)?, None)),
            Self::Object { pattern, match_type, payload } => {
                let selector = match match_type.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    _ if pattern == "*" => Selector::parse("*"),
                    None | Some("exact") => Selector::exact(&pattern),
                    Some("uritemplate") => Selector::template(&pattern),
                    Some(other) => {
                        return Err(MercureDenied::NotImplemented(format!(
                            "the token's mercure.{claim} claim uses the matcher type `{other}`, which this hub does \
                             not implement (it takes Exact and URITemplate)"
                        )));
                    }
                }
                .map_err(bad)?;
                Ok((selector, payload))
            }
        }
    }
}

/// A claim's selectors, each with its payload.
pub type ClaimSelectors = Vec<(Selector, Option<serde_json::Value>)>;

fn selectors(list: Option<Vec<ClaimSelector>>, claim: &str) -> Result<Option<ClaimSelectors>, MercureDenied> {
    list.map(|list| list.into_iter().map(|item| item.parse(claim)).collect()).transpose()
}

/// The Mercure verifiers and rules (module docs).
pub struct MercureAuth {
    publisher: Option<Verifier>,
    subscriber: Option<Verifier>,
    config: MercureAuthConfig,
}

impl std::fmt::Debug for MercureAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MercureAuth")
            .field("publisher", &self.publisher.is_some())
            .field("subscriber", &self.subscriber.is_some())
            .field("anonymous", &self.config.anonymous)
            .finish_non_exhaustive()
    }
}

impl MercureAuth {
    /// Builds the verifiers; fails if a key cannot be read or does not fit its algorithm.
    pub fn new(config: MercureAuthConfig) -> Result<Self, KeyError> {
        let verifier = |key: &Option<JwtKey>, algorithm| {
            key.as_ref().map(|key| Verifier::new(key, algorithm, config.leeway)).transpose()
        };
        let publisher = verifier(&config.publisher_key, config.publisher_algorithm)?;
        let subscriber = verifier(&config.subscriber_key, config.subscriber_algorithm)?;
        Ok(Self { publisher, subscriber, config })
    }

    /// Whether publishers need a token (a publisher key is configured).
    pub fn verifies_publishers(&self) -> bool {
        self.publisher.is_some()
    }

    /// Whether subscribers' tokens are verified (a subscriber key is configured).
    pub fn verifies_subscribers(&self) -> bool {
        self.subscriber.is_some()
    }

    /// The settings.
    pub fn config(&self) -> &MercureAuthConfig {
        &self.config
    }

    /// The token of a request (module docs); `Err` for an `Authorization` header that is not
    /// a bearer token.
    pub fn token<'a>(
        &self,
        authorization: Option<&'a str>,
        query: Option<&'a str>,
        cookie: Option<&'a str>,
    ) -> Result<Option<&'a str>, AuthError> {
        if let Some(value) = authorization {
            return bearer(value)
                .map(Some)
                .ok_or_else(|| AuthError::Unauthorized("the Authorization header is not `Bearer <token>`".to_owned()));
        }
        if let Some(token) = query.filter(|token| !token.is_empty()) {
            return Ok(Some(token));
        }
        Ok(cookie.and_then(|header| {
            cookie_value(header, &self.config.cookie_name).or_else(|| cookie_value(header, DRAFT_08_COOKIE))
        }))
    }

    /// Authorizes a subscriber holding `token` (or none).
    pub fn subscriber(&self, token: Option<&str>) -> Result<MercureSubscriber, MercureDenied> {
        let Some(verifier) = &self.subscriber else { return Ok(MercureSubscriber::default()) };
        let Some(token) = token else {
            if self.config.anonymous {
                return Ok(MercureSubscriber::default());
            }
            return Err(AuthError::Unauthorized(
                "subscribing requires a token (Authorization header, `authorization` parameter or the \
                 mercureAuthorization cookie); or start the hub with --mercure-anonymous"
                    .to_owned(),
            )
            .into());
        };
        let claims: Claims = verifier.verify(token)?;
        let claim = claims.mercure.unwrap_or_default();
        Ok(MercureSubscriber {
            claims: selectors(claim.subscribe, "subscribe")?,
            payload: claim.payload,
            expires: claims.exp,
        })
    }

    /// Authorizes a publisher holding `token` (or none) to publish on every one of `topics`.
    pub fn publisher(&self, token: Option<&str>, topics: &[&str]) -> Result<MercurePublisher, MercureDenied> {
        let Some(verifier) = &self.publisher else { return Ok(MercurePublisher::default()) };
        let Some(token) = token else {
            return Err(AuthError::Unauthorized(
                "publishing requires a token whose mercure.publish claim covers the topics".to_owned(),
            )
            .into());
        };
        let claims: Claims = verifier.verify(token)?;
        let allowed = selectors(claims.mercure.and_then(|claim| claim.publish), "publish")?.unwrap_or_default();
        if allowed.is_empty() {
            return Err(AuthError::Forbidden(
                "the token's mercure.publish claim is missing or empty: it allows publishing on no topic".to_owned(),
            )
            .into());
        }
        if let Some(topic) = topics.iter().find(|topic| !allowed.iter().any(|(selector, _)| selector.matches(topic))) {
            return Err(AuthError::Forbidden(format!(
                "the token's mercure.publish claim does not cover the topic `{topic}`; nothing was published"
            ))
            .into());
        }
        Ok(MercurePublisher { subject: claims.sub })
    }
}

/// A key from a flag's value: a PEM public key (`-----BEGIN ...`), else an HMAC secret.
pub fn key_from_text(text: &str) -> JwtKey {
    if text.trim_start().starts_with("-----BEGIN") {
        JwtKey::PublicPem(text.as_bytes().to_vec())
    } else {
        JwtKey::Hs256(text.as_bytes().to_vec())
    }
}
