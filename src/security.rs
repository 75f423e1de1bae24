//! Security settings and their runtime form: authorization, CORS, TLS, per-IP and publish
//! limits. Built once when the server starts ([`Security::new`]); a bad key or certificate
//! stops the start with a message saying which file and why.
//!
//! - [`auth`]: JWT verification, topic patterns, where a request's token comes from.
//! - [`mercure`]: the Mercure endpoint's tokens, claims and keys (sharing `auth`'s verifier).
//! - [`limits`]: per-IP connection and publish-rate token buckets (bounded tables).
//! - `tls`: the TLS acceptor built from the certificate and key files.

pub mod auth;
pub mod limits;
pub mod mercure;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use self::auth::{Auth, AuthConfig, KeyError};
use self::limits::{IpLimits, Rate, RateLimits};
use self::mercure::{MercureAuth, MercureAuthConfig};

/// Certificate chain and private key files (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Security settings (plain data; see [`Security`]).
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Token verification and topic rules.
    pub auth: AuthConfig,
    /// The Mercure endpoint's keys and rules.
    pub mercure: MercureAuthConfig,
    /// Origins allowed to read responses cross-origin; `*` allows any (without credentials).
    pub cors_origins: Vec<String>,
    /// Concurrent connections per client IP (0: no limit).
    pub per_ip_max_connections: usize,
    /// New connections per second per client IP.
    pub per_ip_connection_rate: Rate,
    /// Published events per second per token subject (or per IP without a token).
    pub publish_rate: Rate,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with these files.
    pub tls: Option<TlsFiles>,
    /// Close a keep-alive connection with no request and no stream for this long.
    pub idle_timeout: Duration,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            auth: AuthConfig::default(),
            mercure: MercureAuthConfig::default(),
            cors_origins: Vec::new(),
            per_ip_max_connections: 1000,
            per_ip_connection_rate: Rate { per_second: 200.0, burst: 1000.0 },
            publish_rate: Rate { per_second: 10_000.0, burst: 20_000.0 },
            tls: None,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the security settings could not be put to use.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The JWT key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No tokio runtime to run the node-local hub on.
    #[error("the server must run inside a tokio runtime")]
    Runtime,
    /// A TLS file.
    #[error("TLS: {what} {path}: {reason}")]
    Tls {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// CORS: which origins get which headers.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

/// The CORS headers for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsGrant {
    /// `Access-Control-Allow-Origin`.
    pub allow_origin: String,
    /// `Access-Control-Allow-Credentials: true` (only for an exactly listed origin).
    pub credentials: bool,
}

impl Cors {
    /// From the configured origins (`*` = any origin, without credentials).
    pub fn new(origins: &[String]) -> Self {
        let any = origins.iter().any(|o| o == "*");
        Self {
            any,
            origins: origins.iter().filter(|o| *o != "*").map(|o| o.trim_end_matches('/').to_owned()).collect(),
        }
    }

    /// The headers for a request from `origin`; `None` for no origin or a disallowed one.
    pub fn grant(&self, origin: Option<&str>) -> Option<CorsGrant> {
        let origin = origin?;
        if self.origins.iter().any(|allowed| allowed == origin) {
            // Echo the exact origin so cookies may be sent (`withCredentials`).
            Some(CorsGrant { allow_origin: origin.to_owned(), credentials: true })
        } else if self.any {
            Some(CorsGrant { allow_origin: "*".to_owned(), credentials: false })
        } else {
            None
        }
    }
}

/// Security in use by a running server.
pub struct Security {
    /// Token verification.
    pub auth: Auth,
    /// The Mercure endpoint's token verification.
    pub mercure: MercureAuth,
    /// CORS rules.
    pub cors: Cors,
    /// Per-IP connection limits.
    pub ip_limits: Arc<IpLimits>,
    /// Publish rate limits, keyed `sub:<subject>` or `ip:<address>`.
    pub publish_limits: RateLimits<String>,
    /// TLS, if configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Idle keep-alive timeout.
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").field("auth", &self.auth).field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

impl Security {
    /// Builds everything; reads the TLS files.
    pub fn new(config: &SecurityConfig) -> Result<Self, SecurityError> {
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        Ok(Self {
            auth: Auth::new(config.auth.clone())?,
            mercure: MercureAuth::new(config.mercure.clone())?,
            cors: Cors::new(&config.cors_origins),
            ip_limits: IpLimits::new(config.per_ip_max_connections, config.per_ip_connection_rate),
            publish_limits: RateLimits::new(config.publish_rate),
            tls,
            idle_timeout: config.idle_timeout,
        })
    }
}
