//! One tenant's rate limit across replicas (`limits.backend = "redis"`): the GCRA state lives in
//! Redis, updated by one atomic script; each replica leases small batches of the tenant's
//! allowance from it and spends them locally.
//!
//! A request that its replica's lease covers costs a mutex and a clock read, never a Redis
//! round trip. When the lease runs low, one background refill per tenant and replica tops it up
//! to `redis.batch`; a request that finds it empty waits (bounded by `redis.timeout_ms`) for the
//! one refill in flight. A refusal from Redis is remembered until the time Redis named, so a
//! flood over the limit is refused locally too. Leased units lapse unspent after `lease_ms`
//! (they are not handed back: the GCRA regains them as its time passes).
//!
//! Tolerance: units are taken from the global GCRA before they are spent, so the only excess is
//! what replicas leased before a window and spend in it: over any window the tenant is admitted
//! at most `rate × window + burst + replicas × batch` units, and a replica never holds more than
//! `batch` unspent (nor more than one request's cost, if that is larger) — the most it can leave
//! unused while another replica is refused.
use crate::shared_store::{Store, StoreError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The GCRA, leasing: KEYS[1] holds the tenant's theoretical arrival time (TAT) in microseconds
/// of Redis's own clock (so replicas' clocks never matter). ARGV: microseconds per unit, the
/// burst tolerance in microseconds (burst × interval), units wanted, units needed (≥ 1).
/// Returns {granted, 0} with needed ≤ granted ≤ wanted, or {0, microseconds until `needed`
/// units are free}. The key expires once the TAT has passed (a full bucket needs no state).
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local need = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local free = math.floor((tolerance - (tat - now)) / interval)
if free >= need then
  local granted = math.min(want, free)
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  return {granted, 0}
end
return {0, math.ceil(tat - now + need * interval - tolerance)}
";

/// Loaded once per Redis (EVALSHA, and EVAL when Redis answers NOSCRIPT: after a restart).
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SCRIPT));

/// What Redis or the lease decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Granted,
    /// Refused; the tenant's allowance has room again after this long.
    Denied(Duration),
}

pub struct GlobalRate {
    store: Arc<Store>,
    key: String,
    interval_us: f64,
    tolerance_us: f64,
    batch: u32,
    lease: Duration,
    state: Mutex<Lease>,
    /// Held by the one refill in flight (tokio's: a waiting request yields while Redis answers).
    refill: tokio::sync::Mutex<()>,
    prefetching: AtomicBool,
}

/// This replica's unspent units of the tenant.
struct Lease {
    held: u32,
    expires: Instant,
    /// Redis said no until then: refused without asking again.
    denied_until: Option<Instant>,
}

impl GlobalRate {
    /// `rate` units per second with `burst`; batches of `redis.batch` (default: a tenth of the rate).
    pub fn new(store: Arc<Store>, tenant: &str, rate: u32, burst: u32) -> Self {
        let c = store.config();
        let batch = c.batch.unwrap_or((rate / 10).max(1)).min(burst).max(1);
        let interval_us = 1e6 / f64::from(rate);
        GlobalRate {
            key: store.key("rate", tenant),
            interval_us,
            tolerance_us: interval_us * f64::from(burst),
            batch,
            lease: Duration::from_millis(c.lease_ms),
            store,
            state: Mutex::new(Lease { held: 0, expires: Instant::now(), denied_until: None }),
            refill: tokio::sync::Mutex::new(()),
            prefetching: AtomicBool::new(false),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Spends `cost` units (at most the burst: checked by the caller): from the lease if it
    /// covers them, else after one refill (bounded by `redis.timeout_ms`); `Err` when Redis
    /// could not decide in time.
    pub async fn take(self: &Arc<Self>, cost: u32) -> Result<Decision, StoreError> {
        if let Some(d) = self.spend(cost) {
            return Ok(d);
        }
        let deadline = self.store.deadline();
        if !self.store.is_up() {
            return Err(StoreError::Down);
        }
        let _refilling = tokio::time::timeout_at(deadline, self.refill.lock())
            .await
            .map_err(|_| StoreError::Timeout(self.store.config().timeout_ms))?;
        // The refill this request waited for may have brought enough.
        if let Some(d) = self.spend(cost) {
            return Ok(d);
        }
        let held = self.lock().held;
        let (need, want) = (cost - held, self.batch.max(cost) - held);
        self.lease(deadline, want, need).await?;
        // Concurrent requests may have spent some of what was held meanwhile: then this one waits
        // for the next unit like any refused request.
        let next = Duration::from_micros((self.interval_us * f64::from(cost)) as u64);
        Ok(self.spend(cost).unwrap_or(Decision::Denied(next)))
    }

    /// The lease's answer without Redis: `None` when it holds too little and Redis must be asked.
    fn spend(self: &Arc<Self>, cost: u32) -> Option<Decision> {
        let now = Instant::now();
        let mut s = self.lock();
        if s.expires <= now {
            s.held = 0;
        }
        if s.held >= cost {
            s.held -= cost;
            // Below half a batch (a batch of 1: empty), the next units are fetched meanwhile.
            let low = s.held * 2 < self.batch;
            drop(s);
            if low {
                self.prefetch();
            }
            return Some(Decision::Granted);
        }
        match s.denied_until {
            Some(until) if until > now => Some(Decision::Denied(until - now)),
            _ => None,
        }
    }

    /// Tops the lease up in the background (one refill at a time), so the requests that follow
    /// find units without waiting.
    fn prefetch(self: &Arc<Self>) {
        if !self.store.is_up() || self.prefetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.prefetching.store(false, Ordering::Release);
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            if let Ok(_refilling) = me.refill.try_lock() {
                let want = me.batch.saturating_sub(me.lock().held);
                if want > 0 {
                    // A failure marks the store down; the next request that needs units falls back.
                    let _ = me.lease(me.store.deadline(), want, 1).await;
                }
            }
            me.prefetching.store(false, Ordering::Release);
        });
    }

    /// Asks Redis for `want` units (at least `need`), adds what it grants to the lease.
    async fn lease(&self, deadline: tokio::time::Instant, want: u32, need: u32) -> Result<Decision, StoreError> {
        let (key, interval, tolerance) = (self.key.clone(), self.interval_us, self.tolerance_us);
        let (granted, wait_us): (u32, u64) = self
            .store
            .call(deadline, move |mut c| async move {
                GCRA.key(&key).arg(interval).arg(tolerance).arg(want).arg(need).invoke_async(&mut c).await
            })
            .await?;
        let now = Instant::now();
        let mut s = self.lock();
        if granted > 0 {
            s.held += granted;
            s.expires = now + self.lease;
            s.denied_until = None;
            Ok(Decision::Granted)
        } else {
            let wait = Duration::from_micros(wait_us.max(1));
            s.denied_until = Some(now + wait);
            Ok(Decision::Denied(wait))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Redis, RedisFail};
    use crate::metrics::Metrics;

    /// A Redis that is not there: the first decision ends within the timeout (connecting is
    /// left to the background), and once the store is known down every decision is immediate.
    #[tokio::test]
    async fn without_redis_a_decision_is_bounded_then_taken_at_once() {
        let metrics = Metrics::new();
        let config = Redis {
            url: "redis+unix:///nonexistent/fhir-fence-test.sock".into(),
            timeout_ms: 5,
            fail: RedisFail::Local,
            batch: None,
            lease_ms: 1000,
            key_prefix: "test".into(),
        };
        let store = Arc::new(Store::new(&config, &metrics).unwrap());
        let rate = Arc::new(GlobalRate::new(store.clone(), "t", 10, 10));
        let first = tokio::time::timeout(Duration::from_secs(1), rate.take(1)).await.expect("bounded");
        assert!(matches!(first, Err(StoreError::Timeout(5) | StoreError::Failed(_))), "{first:?}");
        assert!(!store.is_up());
        assert_eq!(metrics.redis_up.get(), 0);
        assert!(matches!(rate.take(1).await, Err(StoreError::Down)));
        assert_eq!(rate.batch, 1, "a tenth of the rate");
        // Units already leased are spent without Redis; a refusal Redis gave holds until its time.
        *rate.lock() = Lease { held: 2, expires: Instant::now() + Duration::from_secs(60), denied_until: None };
        assert_eq!(rate.take(1).await.unwrap(), Decision::Granted);
        assert_eq!(rate.take(1).await.unwrap(), Decision::Granted);
        assert!(matches!(rate.take(1).await, Err(StoreError::Down)));
        rate.lock().denied_until = Some(Instant::now() + Duration::from_secs(60));
        assert!(matches!(rate.take(1).await, Ok(Decision::Denied(d)) if d > Duration::from_secs(50)));
        // Leased units lapse with their lease.
        *rate.lock() = Lease { held: 5, expires: Instant::now(), denied_until: None };
        assert!(matches!(rate.take(1).await, Err(StoreError::Down)));
    }
}
