//! The publishing link to Redis: one multiplexed connection shared by every publish, kept
//! by a supervisor task that makes it again, one attempt at a time with jittered backoff,
//! when it breaks. A publish never waits for a reconnect: it takes the connection there is
//! (or fails at once with "nothing sent"), and its deadline covers the whole call.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::hub::Hub;

/// First pause after a failed connect; it doubles up to [`MAX_BACKOFF`], with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between connects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a call to Redis failed, by what it means for the command.
#[derive(Debug)]
pub(super) enum CallError {
    /// The command was never sent (no connection): it did nothing.
    NotSent(String),
    /// Redis answered with an error: the command did nothing (the publish script refuses
    /// before writing, or runs whole).
    Refused(String),
    /// The command was handed to the connection and no answer came in time (or the
    /// connection failed under it): it may or may not have run.
    NoAnswer(String),
}

/// The connection and its generation (bumped at each connect).
#[derive(Clone)]
struct Current {
    generation: u64,
    connection: MultiplexedConnection,
}

pub(super) struct Link {
    client: redis::Client,
    /// Time allowed for a connect (and a publish, end to end).
    timeout: Duration,
    /// The connection publishes use; `None` while down. Held only to clone or replace it.
    current: Mutex<Option<Current>>,
    /// The last generation a caller found broken; the supervisor reconnects when it reaches
    /// the current one.
    broken: watch::Sender<u64>,
    /// Seed of the backoff jitter.
    jitter: AtomicU64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("timeout", &self.timeout).field("up", &self.is_up()).finish_non_exhaustive()
    }
}

impl Link {
    pub(super) fn new(client: redis::Client, timeout: Duration) -> Arc<Self> {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Arc::new(Self {
            client,
            timeout,
            current: Mutex::new(None),
            broken: watch::Sender::new(0),
            jitter: AtomicU64::new(seed | 1),
        })
    }

    /// Whether a connection is up now.
    pub(super) fn is_up(&self) -> bool {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// A new connection, checked with a `PING`, within the timeout (a stalled Redis accepts
    /// TCP connections but answers nothing: that is a failed connect).
    pub(super) async fn connect(client: &redis::Client, timeout: Duration) -> Result<MultiplexedConnection, String> {
        // No response timeout in the client (its default is shorter than the consumer's
        // blocking XREAD): every call has a deadline of its own.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(None).set_connection_timeout(Some(timeout));
        let attempt = async {
            let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
            redis::cmd("PING").query_async::<()>(&mut connection).await?;
            Ok::<_, redis::RedisError>(connection)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// Keeps a connection up until the hub shuts down (see the module docs).
    pub(super) async fn supervise(self: Arc<Self>, hub: Hub) {
        let mut backoff = FIRST_BACKOFF;
        let mut generation = 0;
        let mut broken = self.broken.subscribe();
        let shutdown = hub.shut_down();
        tokio::pin!(shutdown);
        loop {
            let connected = tokio::select! {
                connected = Self::connect(&self.client, self.timeout) => connected,
                () = &mut shutdown => return,
            };
            match connected {
                Ok(connection) => {
                    generation += 1;
                    backoff = FIRST_BACKOFF;
                    *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(Current { generation, connection });
                    tracing::debug!(generation, "cluster: publishing connection up");
                    tokio::select! {
                        _ = broken.wait_for(|&failed| failed >= generation) => {}
                        () = &mut shutdown => return,
                    }
                    // Cleared before the reconnect: a publish meanwhile finds no connection and
                    // fails at once, saying that nothing was sent.
                    *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    tracing::warn!(generation, "cluster: publishing connection lost; reconnecting");
                }
                Err(error) => {
                    let pause = self.jittered(backoff);
                    tracing::warn!(%error, retry_ms = pause.as_millis(), "cluster: cannot reach Redis to publish");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut shutdown => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// `base` times a factor in [0.5, 1.5), so that nodes that lost Redis together do not
    /// come back together.
    pub(super) fn jittered(&self, base: Duration) -> Duration {
        // xorshift64; Relaxed: a source of noise, nothing is synchronized through it.
        let mut x = self.jitter.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.store(x, Relaxed);
        base.mul_f64(0.5 + f64::from((x % 1000) as u32) / 1000.0)
    }

    /// Marks the current connection broken (another connection to the same Redis failed,
    /// so this one is likely dead too): publishes fail at once with "nothing sent" until the
    /// supervisor has a new one, instead of being sent into a dead connection.
    pub(super) fn mark_broken(&self) {
        let generation = self.current.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|c| c.generation);
        if let Some(generation) = generation {
            self.report(generation);
        }
    }

    fn report(&self, generation: u64) {
        self.broken.send_if_modified(|failed| {
            let newer = *failed < generation;
            if newer {
                *failed = generation;
            }
            newer
        });
    }

    /// Runs `command` (a command, a pipeline or a script) on the current connection, by
    /// `deadline`. A failure that may have left the command unanswered marks the
    /// connection broken, so the supervisor makes a new one.
    pub(super) async fn call<T, F, Fut>(&self, deadline: Instant, command: F) -> Result<T, CallError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(Current { generation, connection }) = current else {
            return Err(CallError::NotSent("Redis is unreachable (reconnecting)".into()));
        };
        let outcome = tokio::time::timeout_at(deadline, command(connection)).await;
        let error = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if error.kind() != redis::ErrorKind::Io && !error.is_connection_dropped() => {
                return Err(CallError::Refused(error.to_string()));
            }
            Ok(Err(error)) => CallError::NoAnswer(format!("the connection failed ({error})")),
            Err(_) => CallError::NoAnswer(format!("Redis did not answer within {:?}", self.timeout)),
        };
        self.report(generation);
        Err(error)
    }
}
