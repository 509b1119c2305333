//! The Redis server that replicas share state through (`[redis]`): global rate limits
//! (`global_rate`) and export cancellations (`bulk::cancelled`).
//!
//! One connection per process (redis-rs `ConnectionManager`, which reconnects by itself), every
//! call bounded by `redis.timeout_ms`, and a health flag so that while Redis is down no request
//! waits for it: a call that fails or times out marks the store down and wakes its supervisor
//! task, which probes Redis (PING, every 250 ms) until it answers and then marks it up again —
//! recovery without a restart. While down, callers get [`StoreError::Down`] at once and decide
//! without Redis. The store survives config reloads that leave `[redis]` unchanged (`state`).
//! Going down and coming back are logged once each (and every 30 s while down, with the number
//! of decisions taken without Redis), never a line per request; those decisions are counted in
//! `fhir_fence_limit_backend_fallback_total{reason}`, the state in `fhir_fence_redis_up`.
use crate::config::Redis as RedisConfig;
use crate::metrics::Metrics;
use prometheus::{IntCounterVec, IntGauge};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How often an unreachable Redis is tried again.
const PROBE: Duration = Duration::from_millis(250);
/// How long the supervisor waits for a connection to be set up (in the background).
const CONNECT: Duration = Duration::from_secs(1);
/// How often a Redis that stays down is logged again.
const LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("Redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("Redis failed: {0}")]
    Failed(String),
    #[error("Redis is unreachable (being retried in the background)")]
    Down,
}

impl StoreError {
    /// The `reason` label of the fallback counter.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Failed(_) => "error",
            StoreError::Down => "down",
        }
    }
}

pub struct Store {
    config: RedisConfig,
    client: redis::Client,
    conn: watch::Sender<Option<ConnectionManager>>,
    up: AtomicBool,
    supervised: AtomicBool,
    trouble: Arc<Notify>,
    /// Decisions taken without Redis since it last went down (for the log).
    fallbacks: AtomicU64,
    fallback_total: IntCounterVec,
    up_gauge: IntGauge,
}

impl Store {
    /// A store for `[redis]` (nothing is connected until first used; `url` was validated at load).
    pub fn new(config: &RedisConfig, metrics: &Metrics) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| StoreError::Failed(e.to_string()))?;
        metrics.redis_up.set(1);
        Ok(Store {
            config: config.clone(),
            client,
            conn: watch::Sender::new(None),
            up: AtomicBool::new(true),
            supervised: AtomicBool::new(false),
            trouble: Arc::new(Notify::new()),
            fallbacks: AtomicU64::new(0),
            fallback_total: metrics.limit_backend_fallback.clone(),
            up_gauge: metrics.redis_up.clone(),
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The key of `id` of `kind` (`rate`, `export-cancelled`) under `redis.key_prefix`.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.config.key_prefix)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The deadline of a call starting now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.timeout_ms)
    }

    /// Counts one decision taken without Redis.
    pub fn fell_back(&self, e: &StoreError) {
        self.fallback_total.with_label_values(&[e.reason()]).inc();
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `f` on the connection, answered by `deadline` or failed: at once while Redis is down.
    pub async fn call<T, F, Fut>(self: &Arc<Self>, deadline: Instant, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(StoreError::Down);
        }
        self.supervise();
        let timeout = StoreError::Timeout(self.config.timeout_ms);
        let conn = self.conn.borrow().clone();
        let conn = match conn {
            Some(c) => c,
            // The first calls of a process wait (within their deadline) for the first connection.
            None => {
                let mut rx = self.conn.subscribe();
                let first = tokio::time::timeout_at(deadline, async {
                    rx.wait_for(Option::is_some).await.ok().and_then(|c| c.clone())
                });
                match first.await {
                    Ok(Some(c)) => c,
                    _ => return Err(self.trouble(timeout)),
                }
            }
        };
        match tokio::time::timeout_at(deadline, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.trouble(StoreError::Failed(e.to_string()))),
            Err(_) => Err(self.trouble(timeout)),
        }
    }

    /// Sets `key` for `ttl` (a flag every replica can see).
    pub async fn set_flag(self: &Arc<Self>, key: String, ttl: Duration) -> Result<(), StoreError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.call(self.deadline(), |mut c| async move {
            redis::cmd("SET").arg(&key).arg(1).arg("PX").arg(ms).query_async::<()>(&mut c).await
        })
        .await
    }

    /// Whether `key` is set.
    pub async fn has_flag(self: &Arc<Self>, key: String) -> Result<bool, StoreError> {
        self.call(self.deadline(), |mut c| async move {
            redis::cmd("EXISTS").arg(&key).query_async::<u32>(&mut c).await.map(|n| n > 0)
        })
        .await
    }

    /// Marks the store down (logged on the change) and wakes the supervisor; returns `e`.
    fn trouble(&self, e: StoreError) -> StoreError {
        if self.up.swap(false, Ordering::AcqRel) {
            self.up_gauge.set(0);
            self.fallbacks.store(0, Ordering::Relaxed);
            tracing::warn!(error = %e, fail = ?self.config.fail, "Redis unreachable: rate limits fall back (redis.fail), export status and files are refused until it answers");
        }
        self.trouble.notify_one();
        e
    }

    fn recovered(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.up_gauge.set(1);
            let n = self.fallbacks.load(Ordering::Relaxed);
            tracing::info!(
                decisions_without_redis = n,
                "Redis answers again: global limits and shared cancellations resume"
            );
        }
    }

    /// Starts the supervisor task once (on first use, inside the runtime).
    fn supervise(self: &Arc<Self>) {
        if !self.supervised.swap(true, Ordering::AcqRel) {
            tokio::spawn(supervisor(Arc::downgrade(self), self.trouble.clone()));
        }
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(PROBE)
    }
}

/// Connects, then watches: while the store is up it waits for trouble; while down it probes
/// every [`PROBE`] until Redis answers. Ends when the store is dropped (a changed `[redis]`).
async fn supervisor(store: Weak<Store>, trouble: Arc<Notify>) {
    let mut logged = Instant::now();
    loop {
        let Some(s) = store.upgrade() else { return };
        let conn = s.conn.borrow().clone();
        let healthy = match conn {
            None => match tokio::time::timeout(
                CONNECT,
                ConnectionManager::new_with_config(s.client.clone(), s.manager_config()),
            )
            .await
            {
                Ok(Ok(m)) => {
                    s.conn.send_replace(Some(m));
                    true
                }
                Ok(Err(e)) => {
                    s.trouble(StoreError::Failed(e.to_string()));
                    false
                }
                Err(_) => {
                    s.trouble(StoreError::Timeout(CONNECT.as_millis() as u64));
                    false
                }
            },
            Some(mut c) if !s.is_up() => {
                let ping = async move { redis::cmd("PING").query_async::<String>(&mut c).await };
                matches!(tokio::time::timeout(CONNECT, ping).await, Ok(Ok(_)))
            }
            Some(_) => true,
        };
        if healthy {
            s.recovered();
            drop(s);
            // Woken by the next failure; the timer only lets a dropped store end this task.
            tokio::select! {
                _ = trouble.notified() => {}
                _ = tokio::time::sleep(LOG_EVERY) => {}
            }
        } else {
            if logged.elapsed() >= LOG_EVERY {
                logged = Instant::now();
                let n = s.fallbacks.load(Ordering::Relaxed);
                tracing::warn!(decisions_without_redis = n, "Redis still unreachable");
            }
            drop(s);
            tokio::time::sleep(PROBE).await;
        }
    }
}
