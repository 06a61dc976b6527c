//! The per-model limiter of the HTTP providers, shared by all `-j`
//! workers (process-wide, keyed by the model's name; cleared by
//! [`begin_build`]):
//!
//! - token buckets for requests and tokens per minute: the ones set in
//!   `prompts.toml` (`requests_per_minute`, spread evenly;
//!   `tokens_per_minute`) and the ones learnt from the rate-limit headers
//!   of the answers (`x-ratelimit-*`, `anthropic-ratelimit-*`), whose
//!   level is re-read from every answer. Requests wait in line: the first
//!   waits until every bucket holds its cost (1 request, its estimated
//!   tokens), takes it and goes, so waiting workers leave one after the
//!   other instead of all at once, and an answer that corrects a bucket
//!   counts at once;
//! - a concurrency window in the manner of TCP: unbounded (so `-j` and
//!   `max_concurrency` are the only bounds) until an answer of 429 or 529
//!   or a timeout halves it, then one more request in flight per window's
//!   worth of successes.
//!
//! The `mock` and `command` providers never come here.

use super::ModelError;
use crate::config::ModelConfig;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// What the limits are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    /// Input and output tokens (the output counted as `max_tokens`).
    Tokens,
    InputTokens,
    OutputTokens,
}

/// What one request costs in each [`Kind`], estimated before it is sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Cost {
    fn of(self, kind: Kind) -> f64 {
        match kind {
            Kind::Requests => 1.0,
            Kind::Tokens => (self.input_tokens + self.output_tokens) as f64,
            Kind::InputTokens => self.input_tokens as f64,
            Kind::OutputTokens => self.output_tokens as f64,
        }
    }
}

/// What a provider's answer said about one limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learnt {
    pub kind: Kind,
    pub limit: u64,
    pub remaining: u64,
    /// How long until the server's limit is full again, when it says.
    pub reset: Option<Duration>,
}

/// A learnt bucket refills a little slower than the limit it read, so
/// that the server's bucket (on another clock) is never overtaken.
const LEARNT_RATE: f64 = 0.98;

struct Bucket {
    kind: Kind,
    learnt: bool,
    capacity: f64,
    /// Units per second.
    rate: f64,
    /// Below zero after a request larger than the bucket.
    level: f64,
    updated: Instant,
    /// When the request whose answer last set a learnt level was sent: an
    /// answer to an earlier one is older news and may only lower it.
    synced: Option<Instant>,
    /// A reset that a per-minute refill does not explain (a shorter or
    /// fixed window): the bucket stays as it is until then, and then gets
    /// back the units the answer said were used.
    full_at: Option<(Instant, f64)>,
}

impl Bucket {
    fn new(kind: Kind, learnt: bool, capacity: f64, per_minute: f64) -> Bucket {
        Bucket {
            kind,
            learnt,
            capacity,
            rate: per_minute / 60.0,
            level: capacity,
            updated: Instant::now(),
            synced: None,
            full_at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some((at, used)) = self.full_at {
            if now < at {
                self.updated = self.updated.max(now);
                return;
            }
            self.level = (self.level + used).min(self.capacity);
            self.updated = at;
            self.full_at = None;
        }
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + dt * self.rate).min(self.capacity);
        self.updated = self.updated.max(now);
    }

    /// How long until the bucket holds `amount` (or is full, for an
    /// amount larger than it holds).
    fn wait_for(&mut self, amount: f64, now: Instant) -> Duration {
        self.refill(now);
        let need = amount.min(self.capacity);
        if self.level >= need {
            Duration::ZERO
        } else if let Some((at, _)) = self.full_at {
            at.saturating_duration_since(now)
        } else {
            Duration::from_secs_f64((need - self.level) / self.rate)
        }
    }
}

struct State {
    in_flight: u32,
    /// The adaptive bound on requests in flight; infinite until the
    /// first sign of congestion.
    window: f64,
    /// When the window was last halved: answers to requests sent before
    /// it do not halve it again (one decrease per congestion event).
    last_decrease: Option<Instant>,
    buckets: Vec<Bucket>,
    /// Per [`Kind`]: the units taken by requests whose answer has not
    /// come back (whether or not a bucket of that kind exists yet).
    pending: [f64; 4],
    /// Requests take their turn in the order they came: the next ticket
    /// to give, and the one whose turn it is.
    next_ticket: u64,
    serving: u64,
}

const KINDS: [Kind; 4] = [
    Kind::Requests,
    Kind::Tokens,
    Kind::InputTokens,
    Kind::OutputTokens,
];

impl State {
    fn add_pending(&mut self, cost: Cost, sign: f64) {
        for (p, k) in self.pending.iter_mut().zip(KINDS) {
            *p += sign * cost.of(k);
        }
    }
}

pub struct Limiter {
    max: Option<u32>,
    state: Mutex<State>,
    freed: Condvar,
}

/// How an answer went, for the concurrency window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    Fine,
    /// 429, 529 or a timeout.
    Congested,
    /// Anything else: the window stays.
    Neutral,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static LIMITERS: Mutex<BTreeMap<String, Arc<Limiter>>> = Mutex::new(BTreeMap::new());

/// The limiter of model `m`, made on its first request of the build.
pub fn for_model(m: &ModelConfig) -> Arc<Limiter> {
    let mut all = lock(&LIMITERS);
    Arc::clone(
        all.entry(m.name.clone())
            .or_insert_with(|| Arc::new(Limiter::new(m))),
    )
}

pub(super) fn begin_build() {
    lock(&LIMITERS).clear();
    WAIT_UNTIL_MS.store(0, Ordering::Relaxed);
    WAITED_US.store(0, Ordering::Relaxed);
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
/// The end of the longest wait under way, in ms since [`EPOCH`].
static WAIT_UNTIL_MS: AtomicU64 = AtomicU64::new(0);
/// The waits of this build, summed over requests, in µs.
static WAITED_US: AtomicU64 = AtomicU64::new(0);

/// How long the longest wait for a rate limit now under way has left
/// (for a progress line), if any.
pub fn rate_limit_wait_left() -> Option<Duration> {
    let until = *EPOCH + Duration::from_millis(WAIT_UNTIL_MS.load(Ordering::Relaxed));
    until
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// The time requests of this build spent waiting for rate limits,
/// summed over requests.
pub fn rate_limit_waited() -> Duration {
    Duration::from_micros(WAITED_US.load(Ordering::Relaxed))
}

/// Sleeps `pause` as a wait for a rate limit: shown by
/// [`rate_limit_wait_left`], counted in [`rate_limit_waited`]. Stops early
/// when the build is interrupted.
pub fn wait(pause: Duration) -> Result<(), ModelError> {
    if pause.is_zero() {
        return Ok(());
    }
    show_wait(Instant::now() + pause);
    WAITED_US.fetch_add(pause.as_micros() as u64, Ordering::Relaxed);
    sleep_interruptible(pause)
}

fn show_wait(until: Instant) {
    let ms = until.saturating_duration_since(*EPOCH).as_millis() as u64;
    WAIT_UNTIL_MS.fetch_max(ms, Ordering::Relaxed);
}

pub fn sleep_interruptible(pause: Duration) -> Result<(), ModelError> {
    let until = Instant::now() + pause;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if super::interrupted() {
            return Err(ModelError::Interrupted);
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
    if super::interrupted() {
        return Err(ModelError::Interrupted);
    }
    Ok(())
}

/// A request on its way: its place in flight and its cost in the buckets'
/// pending units, given back by [`Permit::answered`] or when dropped.
pub struct Permit<'a> {
    limiter: &'a Limiter,
    cost: Cost,
    sent: Instant,
    done: bool,
}

impl Limiter {
    fn new(m: &ModelConfig) -> Limiter {
        let s = &m.settings;
        let mut buckets = Vec::new();
        if let Some(n) = s.requests_per_minute {
            // capacity 1: starts spread evenly, never in a burst
            buckets.push(Bucket::new(Kind::Requests, false, 1.0, f64::from(n)));
        }
        if let Some(n) = s.tokens_per_minute {
            // a second's worth at most in a burst
            let n = n as f64;
            buckets.push(Bucket::new(Kind::Tokens, false, (n / 60.0).max(1.0), n));
        }
        Limiter {
            max: s.max_concurrency,
            state: Mutex::new(State {
                in_flight: 0,
                window: f64::INFINITY,
                last_decrease: None,
                buckets,
                pending: [0.0; 4],
                next_ticket: 0,
                serving: 0,
            }),
            freed: Condvar::new(),
        }
    }

    /// Waits until a request of `cost` may be sent: its turn, its share
    /// of every bucket and a place in flight; then takes them. The first
    /// in line waits for the buckets, re-reading them as answers correct
    /// them; the others wait for their turn. Returns the time it waited.
    pub fn acquire(&self, cost: Cost) -> Result<(Permit<'_>, Duration), ModelError> {
        let t = Instant::now();
        let mut st = lock(&self.state);
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        loop {
            if super::interrupted() {
                if st.serving == ticket {
                    st.serving += 1;
                    self.freed.notify_all();
                }
                return Err(ModelError::Interrupted);
            }
            let now = Instant::now();
            let nap = if st.serving != ticket || self.full(&st) {
                Duration::from_millis(50)
            } else {
                let need = st
                    .buckets
                    .iter_mut()
                    .map(|b| b.wait_for(cost.of(b.kind), now));
                match need.max().unwrap_or_default() {
                    d if d.is_zero() => break,
                    d => {
                        show_wait(now + d);
                        d.min(Duration::from_millis(100))
                    }
                }
            };
            st = self
                .freed
                .wait_timeout(st, nap)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        for b in &mut st.buckets {
            b.level -= cost.of(b.kind);
        }
        st.add_pending(cost, 1.0);
        st.in_flight += 1;
        st.serving += 1;
        drop(st);
        self.freed.notify_all();
        let waited = t.elapsed();
        WAITED_US.fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        let permit = Permit {
            limiter: self,
            cost,
            sent: Instant::now(),
            done: false,
        };
        Ok((permit, waited))
    }

    fn full(&self, st: &State) -> bool {
        let max = self.max.map_or(f64::INFINITY, f64::from);
        f64::from(st.in_flight) >= max.min(st.window.floor().max(1.0))
    }
}

impl Permit<'_> {
    /// The answer came: the request leaves the flight, the buckets take
    /// what the answer said about the limits, the window what it said
    /// about congestion.
    pub fn answered(mut self, learnt: &[Learnt], signal: Signal) {
        self.done = true;
        let l = self.limiter;
        let mut st = lock(&l.state);
        st.in_flight -= 1;
        st.add_pending(self.cost, -1.0);
        let now = Instant::now();
        for n in learnt {
            let pending = st.pending[n.kind as usize];
            learn(&mut st.buckets, n, pending, self.sent, now);
        }
        match signal {
            Signal::Fine if st.window.is_finite() => st.window += 1.0 / st.window,
            Signal::Congested if st.last_decrease.is_none_or(|d| self.sent > d) => {
                let w = st.window.min(f64::from(st.in_flight + 1));
                st.window = (w / 2.0).max(1.0);
                st.last_decrease = Some(now);
            }
            _ => {}
        }
        drop(st);
        l.freed.notify_all();
    }
}

/// Sets the learnt bucket of `n.kind` from an answer: its level is what
/// the server has left less what the other requests in flight took (a
/// lower bound of the truth: some of them may already be counted). Only
/// the answer to a request sent later than the last one that set it may
/// raise it (answers come back out of order).
fn learn(buckets: &mut Vec<Bucket>, n: &Learnt, pending: f64, sent: Instant, now: Instant) {
    if n.limit == 0 {
        return;
    }
    let limit = n.limit as f64;
    let i = match buckets.iter().position(|b| b.learnt && b.kind == n.kind) {
        Some(i) => i,
        None => {
            buckets.push(Bucket::new(n.kind, true, limit, limit * LEARNT_RATE));
            buckets.len() - 1
        }
    };
    let b = &mut buckets[i];
    b.capacity = limit;
    b.rate = limit * LEARNT_RATE / 60.0;
    let level = (n.remaining as f64).min(limit) - pending;
    b.refill(now);
    if b.synced.is_none_or(|t| sent >= t) {
        b.level = level;
        b.synced = Some(sent);
        b.full_at = short_reset(n).map(|r| (now + r, limit - n.remaining as f64));
    } else {
        b.level = b.level.min(level);
    }
}

/// The reset of `n` when a per-minute refill cannot explain it: more than
/// half the limit used, and full again sooner than half the time a
/// per-minute bucket would take (a window shorter than a minute, or a
/// fixed one). Then the bucket does not refill before it, and a request it
/// cannot hold waits for it. A reset that a per-minute refill explains (or
/// the reset of a barely used limit, where the servers' rounding to seconds
/// or thousands says little) changes nothing: the per-minute pacing is as
/// fast as the server allows (llmock's and the providers' buckets refill
/// continuously, so a literal "nothing before the reset" would halve it).
fn short_reset(n: &Learnt) -> Option<Duration> {
    let (limit, left) = (n.limit as f64, n.remaining as f64);
    let per_minute_full = 60.0 * (limit - left) / limit;
    n.reset
        .filter(|r| 2.0 * left < limit && r.as_secs_f64() < per_minute_full / 2.0)
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let l = self.limiter;
        // given back without an answer (interrupted, or no HTTP answer)
        let mut st = lock(&l.state);
        st.in_flight -= 1;
        st.add_pending(self.cost, -1.0);
        drop(st);
        l.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelSettings, Provider};

    fn limiter(settings: ModelSettings) -> Limiter {
        Limiter::new(&ModelConfig {
            name: "m".into(),
            provider: Provider::Openai,
            settings,
        })
    }

    #[test]
    fn max_concurrency_bounds_requests_in_flight() {
        let l = limiter(ModelSettings {
            max_concurrency: Some(2),
            ..Default::default()
        });
        let peak = Mutex::new(0u32);
        let now = Mutex::new(0u32);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let (p, _) = l.acquire(Cost::default()).unwrap();
                    let n = {
                        let mut n = now.lock().unwrap();
                        *n += 1;
                        *n
                    };
                    let mut pk = peak.lock().unwrap();
                    *pk = (*pk).max(n);
                    drop(pk);
                    std::thread::sleep(Duration::from_millis(20));
                    *now.lock().unwrap() -= 1;
                    p.answered(&[], Signal::Fine);
                });
            }
        });
        assert_eq!(*peak.lock().unwrap(), 2);
        assert_eq!(lock(&l.state).in_flight, 0);
    }

    #[test]
    fn requests_per_minute_spaces_the_starts() {
        // 1200 per minute: one every 50 ms
        let l = limiter(ModelSettings {
            requests_per_minute: Some(1200),
            ..Default::default()
        });
        let t = Instant::now();
        for _ in 0..4 {
            let (p, _) = l.acquire(Cost::default()).unwrap();
            p.answered(&[], Signal::Fine);
        }
        // starts at 0, 50, 100, 150 ms
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(145), "{took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }

    #[test]
    fn a_learnt_limit_paces_from_what_the_server_has_left() {
        let l = limiter(ModelSettings::default());
        let (p, waited) = l.acquire(Cost::default()).unwrap();
        assert_eq!(waited.as_millis(), 0, "nothing known: no wait");
        // 6000 a minute (100 a second, 98 as learnt), 2 left
        let told = Learnt {
            kind: Kind::Requests,
            limit: 6000,
            remaining: 2,
            reset: None,
        };
        p.answered(&[told], Signal::Fine);
        let t = Instant::now();
        let mut permits = Vec::new();
        for _ in 0..7 {
            permits.push(l.acquire(Cost::default()).unwrap().0);
        }
        // 2 at once, then 5 at ~10.2 ms apart
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    /// `l` after an answer that left `remaining` of `limit` requests, full
    /// again in `reset`.
    fn told_reset(l: &Limiter, limit: u64, remaining: u64, reset: Duration) {
        let (p, _) = l.acquire(Cost::default()).unwrap();
        let told = Learnt {
            kind: Kind::Requests,
            limit,
            remaining,
            reset: Some(reset),
        };
        p.answered(&[told], Signal::Fine);
    }

    #[test]
    fn an_exhausted_limit_sends_nothing_before_a_short_reset() {
        // 600 a minute would refill one in ~0.1 s; the server says its
        // (shorter or fixed) window is full again in 0.25 s (waits here
        // stay under the 300 ms of `a_wait_under_way_is_shown_and_counted`)
        let l = limiter(ModelSettings::default());
        told_reset(&l, 600, 0, Duration::from_millis(250));
        let t = Instant::now();
        let (p, waited) = l.acquire(Cost::default()).unwrap();
        assert!(waited >= Duration::from_millis(240), "{waited:?}");
        drop(p);
        // then the units the answer said were used are back: no wait
        for _ in 0..20 {
            l.acquire(Cost::default())
                .unwrap()
                .0
                .answered(&[], Signal::Fine);
        }
        let took = t.elapsed();
        assert!(took < Duration::from_millis(900), "{took:?}");
    }

    #[test]
    fn a_short_reset_is_waited_instead_of_a_minute() {
        // 1 request per window, none left, full again in 0.2 s: not the
        // 61 s that a limit per minute would take
        let l = limiter(ModelSettings::default());
        told_reset(&l, 1, 0, Duration::from_millis(200));
        let (_, waited) = l.acquire(Cost::default()).unwrap();
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn a_reset_that_a_minute_explains_changes_nothing() {
        // 6000 a minute, 2 left: full in 60 s, as a per-minute bucket
        let l = limiter(ModelSettings::default());
        told_reset(&l, 6000, 2, Duration::from_secs(60));
        let t = Instant::now();
        let _permits: Vec<_> = (0..7)
            .map(|_| l.acquire(Cost::default()).unwrap().0)
            .collect();
        // 2 at once, then 5 at ~10.2 ms apart, as without a reset
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        // a barely used limit: its reset says little
        let l = limiter(ModelSettings::default());
        told_reset(&l, 6000, 5999, Duration::ZERO);
        assert!(lock(&l.state).buckets[0].full_at.is_none());
    }

    #[test]
    fn an_answer_to_an_older_request_cannot_raise_a_learnt_level() {
        let l = limiter(ModelSettings::default());
        let (older, _) = l.acquire(Cost::default()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let (newer, _) = l.acquire(Cost::default()).unwrap();
        let told = |remaining| Learnt {
            kind: Kind::Requests,
            limit: 6000,
            remaining,
            reset: None,
        };
        newer.answered(&[told(0)], Signal::Fine);
        // the server counted `older` before `newer`: its 50 left are stale
        older.answered(&[told(50)], Signal::Fine);
        let level = lock(&l.state).buckets[0].level;
        assert!(level < 0.0, "{level}");
        // a newer answer may raise it
        let (p, _) = l.acquire(Cost::default()).unwrap_or_else(|e| panic!("{e}"));
        p.answered(&[told(30)], Signal::Fine);
        assert_eq!(lock(&l.state).buckets[0].level, 30.0);
    }

    #[test]
    fn a_wait_under_way_is_shown_and_counted() {
        let before = rate_limit_waited();
        std::thread::scope(|s| {
            s.spawn(|| wait(Duration::from_millis(300)).unwrap());
            std::thread::sleep(Duration::from_millis(100));
            let left = rate_limit_wait_left().expect("a wait under way");
            // (at most the whole wait: on a loaded machine the waiting
            // thread may have started well after this one slept)
            assert!(left <= Duration::from_millis(300), "{left:?}");
        });
        assert!(rate_limit_waited() >= before + Duration::from_millis(300));
    }

    #[test]
    fn tokens_are_taken_as_estimated() {
        // 60,000 tokens a minute: 1000 a second, a burst of 1000
        let l = limiter(ModelSettings {
            tokens_per_minute: Some(60_000),
            ..Default::default()
        });
        let cost = Cost {
            input_tokens: 400,
            output_tokens: 100,
        };
        let t = Instant::now();
        for _ in 0..4 {
            l.acquire(cost).unwrap().0.answered(&[], Signal::Fine);
        }
        // 2000 tokens: 1000 at once, 1000 more over a second
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(950), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn congestion_halves_the_window_once_then_it_grows_back() {
        let l = limiter(ModelSettings::default());
        let permits: Vec<_> = (0..8)
            .map(|_| l.acquire(Cost::default()).unwrap().0)
            .collect();
        let mut it = permits.into_iter();
        it.next().unwrap().answered(&[], Signal::Congested);
        assert_eq!(lock(&l.state).window, 4.0, "8 in flight, halved");
        // the others were sent before the decrease: no second halving
        it.next().unwrap().answered(&[], Signal::Congested);
        assert_eq!(lock(&l.state).window, 4.0);
        for p in it {
            p.answered(&[], Signal::Fine);
        }
        let w = lock(&l.state).window;
        assert!(w > 4.0 && w < 6.0, "{w}");
        // a request sent after the decrease halves it again
        let (p, _) = l.acquire(Cost::default()).unwrap();
        p.answered(&[], Signal::Congested);
        assert_eq!(lock(&l.state).window, 1.0, "one in flight: 1");
    }
}
