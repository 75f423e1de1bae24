//! Topic authorization with JSON Web Tokens.
//!
//! A token's claims carry the topics its holder may read and write:
//! `{"sub": "...", "exp": ..., "ringcast": {"subscribe": ["news/*"], "publish": ["news/sport"]}}`.
//! A pattern is an exact topic name or a glob where `*` matches any run of characters
//! (including `/`): `news/*`, `*`. Keys: an HS256 secret, or an RS256 / ES256 public key in
//! PEM. Tokens with another algorithm (`none` included), a bad signature, a past `exp` or a
//! future `nbf` (beyond the leeway) are refused. `exp` is optional; when present, a stream ends
//! when it passes (see `hub::Next::Expired`).
//!
//! Without a key the server is open: anyone may subscribe to and publish on any topic.
//! The token is checked once per connection or publish request, never per event.

#[cfg(test)]
mod tests;

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// A topic pattern: exact, or a glob with `*` wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text.
    pub fn new(text: &str) -> Self {
        Self(text.to_owned())
    }

    /// Whether `topic` matches. `*` matches any (possibly empty) run of characters.
    pub fn matches(&self, topic: &str) -> bool {
        glob_match(self.0.as_bytes(), topic.as_bytes())
    }
}

/// Iterative glob match with backtracking to the last `*` (linear in practice, no recursion).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The key that verifies tokens.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 shared secret.
    Hs256(Vec<u8>),
    /// RS256 or ES256 public key, PEM (the algorithm follows the key type).
    PublicPem(Vec<u8>),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hs256(_) => "JwtKey::Hs256(<secret>)",
            Self::PublicPem(_) => "JwtKey::PublicPem(..)",
        })
    }
}

/// Authorization settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The verifying key; `None` runs the server open.
    pub key: Option<JwtKey>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
    /// Topics anyone may subscribe to without a token.
    pub public_topics: Vec<Pattern>,
    /// Whether publishing without a token is allowed when a key is configured.
    pub anonymous_publish: bool,
    /// Name of the cookie that may carry the token (browsers' `EventSource` cannot send headers).
    pub cookie_name: String,
    /// Whether the `access_token` query parameter is accepted. It ends up in access logs and
    /// browser history; switch it off where cookies or headers can be used.
    pub query_token: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            key: None,
            leeway: 30,
            public_topics: Vec::new(),
            anonymous_publish: false,
            cookie_name: "ringcast_token".to_owned(),
            query_token: true,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials that do not allow this (403).
    #[error("{0}")]
    Forbidden(String),
}

/// The key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the JWT public key is neither an RSA nor an EC (P-256) public key in PEM: {0}")]
pub struct KeyError(String);

/// What a request is allowed, once authorized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`, if any (the publish rate limit is kept per subject).
    pub subject: Option<String>,
    /// The token's `exp` (Unix seconds), if any.
    pub expires: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    ringcast: Rights,
}

#[derive(Debug, Default, Deserialize)]
struct Rights {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Verifies tokens signed with one key: the algorithm is the key's (or the one given), and
/// nothing else is accepted. Shared by ringcast's own routes and the Mercure endpoint.
pub(crate) struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// A verifier of `key`; `algorithm` overrides the one the key implies (HS256 for a
    /// secret, RS256 or ES256 for a public key), and must fit the key.
    pub(crate) fn new(key: &JwtKey, algorithm: Option<Algorithm>, leeway: u64) -> Result<Self, KeyError> {
        let (key, implied) = match key {
            JwtKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            JwtKey::PublicPem(pem) => match DecodingKey::from_rsa_pem(pem) {
                Ok(key) => (key, Algorithm::RS256),
                Err(rsa) => match DecodingKey::from_ec_pem(pem) {
                    Ok(key) => (key, Algorithm::ES256),
                    Err(ec) => return Err(KeyError(format!("as RSA: {rsa}; as EC: {ec}"))),
                },
            },
        };
        let algorithm = algorithm.unwrap_or(implied);
        if family(algorithm) != family(implied) {
            return Err(KeyError(format!("the algorithm {algorithm:?} does not fit this key (it takes {implied:?})")));
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway;
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::new();
        Ok(Self { key, validation })
    }

    /// The claims of `token`, if it is valid: the configured algorithm, a good signature, not
    /// expired, not before its `nbf`.
    pub(crate) fn verify<C: serde::de::DeserializeOwned>(&self, token: &str) -> Result<C, AuthError> {
        let expected = self.validation.algorithms.first().copied().unwrap_or(Algorithm::HS256);
        match jsonwebtoken::decode_header(token) {
            Err(_) => {
                return Err(AuthError::Unauthorized(
                    "the token's header is malformed or names an unsupported algorithm (`none` is never accepted)"
                        .into(),
                ));
            }
            Ok(header) if header.alg != expected => {
                return Err(AuthError::Unauthorized(format!(
                    "the token's algorithm {:?} is not the configured one ({expected:?})",
                    header.alg
                )));
            }
            Ok(_) => {}
        }
        jsonwebtoken::decode::<C>(token, &self.key, &self.validation).map(|data| data.claims).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            let reason = match error.kind() {
                ErrorKind::ExpiredSignature => "the token has expired (exp is in the past)".to_owned(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf is in the future)".to_owned(),
                ErrorKind::InvalidSignature => "the token's signature is invalid".to_owned(),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    format!("the token's algorithm is not the configured one ({expected:?})")
                }
                ErrorKind::Json(error) => format!("the token's claims are not the expected JSON ({error})"),
                _ => format!("the token is malformed ({error})"),
            };
            AuthError::Unauthorized(reason)
        })
    }
}

/// A token verifier and the topic rules.
pub struct Auth {
    verifier: Option<Verifier>,
    config: AuthConfig,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Auth {
    /// Builds the verifier; fails if a public key cannot be read.
    pub fn new(config: AuthConfig) -> Result<Self, KeyError> {
        let verifier = config.key.as_ref().map(|key| Verifier::new(key, None, config.leeway)).transpose()?;
        Ok(Self { verifier, config })
    }

    /// Whether no key is configured (everything is allowed).
    pub fn is_open(&self) -> bool {
        self.verifier.is_none()
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        match &self.verifier {
            Some(verifier) => verifier.verify(token),
            None => Err(AuthError::Unauthorized("no key is configured".into())),
        }
    }

    /// May the holder of `token` (or anyone, without one) subscribe to all of `topics`?
    pub fn subscribe(&self, token: Option<&str>, topics: &[&str]) -> Result<Grant, AuthError> {
        if self.is_open() {
            return Ok(Grant::default());
        }
        let public = |topic: &str| self.config.public_topics.iter().any(|p| p.matches(topic));
        let Some(token) = token else {
            return match topics.iter().find(|topic| !public(topic)) {
                None => Ok(Grant::default()),
                Some(topic) => {
                    Err(AuthError::Unauthorized(format!("topic `{topic}` is not public: a token is required")))
                }
            };
        };
        let claims = self.verify(token)?;
        if let Some(topic) = topics.iter().find(|topic| !public(topic) && !allowed(&claims.ringcast.subscribe, topic)) {
            return Err(AuthError::Forbidden(format!("the token does not allow subscribing to `{topic}`")));
        }
        Ok(Grant { subject: claims.sub, expires: claims.exp })
    }

    /// May the holder of `token` (or anyone, without one) publish on all of `topics`?
    pub fn publish(&self, token: Option<&str>, topics: &[&str]) -> Result<Grant, AuthError> {
        if self.is_open() {
            return Ok(Grant::default());
        }
        let Some(token) = token else {
            return if self.config.anonymous_publish {
                Ok(Grant::default())
            } else {
                Err(AuthError::Unauthorized("publishing requires a token with `publish` rights".into()))
            };
        };
        let claims = self.verify(token)?;
        if let Some(topic) = topics.iter().find(|topic| !allowed(&claims.ringcast.publish, topic)) {
            return Err(AuthError::Forbidden(format!("the token does not allow publishing to `{topic}`")));
        }
        Ok(Grant { subject: claims.sub, expires: claims.exp })
    }

    /// The token of a request: `Authorization: Bearer`, else the cookie, else (if enabled) the
    /// `access_token` query parameter.
    pub fn token_from<'a>(
        &self,
        authorization: Option<&'a str>,
        cookie: Option<&'a str>,
        query_token: Option<&'a str>,
    ) -> Option<&'a str> {
        if let Some(token) = authorization.and_then(bearer) {
            return Some(token);
        }
        let from_cookie = cookie.and_then(|header| cookie_value(header, &self.config.cookie_name));
        from_cookie.or_else(|| query_token.filter(|_| self.config.query_token).filter(|t| !t.is_empty()))
    }
}

/// The kind of key an algorithm takes.
fn family(algorithm: Algorithm) -> u8 {
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => 0,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => 1,
        Algorithm::ES256 | Algorithm::ES384 => 2,
        Algorithm::EdDSA => 3,
    }
}

/// The token of an `Authorization: Bearer` header value, if it is one.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The value of the cookie `name` in a `Cookie` header, if set and not empty.
pub(crate) fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name && !value.is_empty()).then_some(value)
    })
}

fn allowed(patterns: &[String], topic: &str) -> bool {
    patterns.iter().any(|pattern| glob_match(pattern.as_bytes(), topic.as_bytes()))
}
