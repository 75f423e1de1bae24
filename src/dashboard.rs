//! The dashboard: one self-contained page (no CDN) compiled into the binary, fed over SSE by
//! the `$sys/stats` topic that [`stats`] publishes.

pub mod stats;

/// The page (`src/dashboard/page.html`), served at `GET /` and `GET /dashboard`.
pub(crate) const PAGE: &str = include_str!("dashboard/page.html");

/// Its `Content-Security-Policy`: everything from this server, inline script and style.
pub(crate) const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:";
