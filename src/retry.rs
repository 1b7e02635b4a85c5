//! Retrying well: jittered exponential backoff, a little randomness, and failure logs that do not flood
//! stderr during a long outage.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How often a failure that goes on is logged again, with how long it has lasted.
const REPEAT_EVERY: Duration = Duration::from_secs(30);

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::BuildHasher;
    // The operating system's randomness (std's hash keys come from getrandom(2)): time, pid and an address
    // alone were the same in two containers whose mpsync is PID 1, with no address-space randomisation,
    // under one frozen clock (one libfaketime FAKETIME), and so was every "random" stamp step they drew
    // (found by review, helper-186: two processes given one identity stamped their creates alike every
    // time, and both ran their child).
    let os = std::hash::RandomState::new().hash_one(0u64);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    (os ^ nanos ^ (u64::from(std::process::id()) << 32) ^ (&local as *const u8 as u64)) | 1
}

/// Whether this process can have randomness as std takes it for its hash keys (and so for every `HashMap`):
/// getrandom(2), else /dev/urandom. With neither (a seccomp profile refusing getrandom in an image without
/// /dev), std panics at the first `HashMap`; checked first, it is a clear error (found by review, rv247: exit
/// 101 and a panic's message).
pub fn check_randomness() -> std::io::Result<()> {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is writable for its whole length.
    let got = unsafe { nix::libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), nix::libc::GRND_NONBLOCK) };
    let refused = std::io::Error::last_os_error();
    if got >= 0 || matches!(refused.raw_os_error(), Some(nix::libc::EAGAIN | nix::libc::EINTR)) {
        return Ok(());
    }
    use std::io::Read;
    match std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut buf)) {
        Ok(()) => Ok(()),
        Err(err) => Err(std::io::Error::new(
            err.kind(),
            format!("getrandom(2) refused ({refused}) and /dev/urandom unreadable ({err})"),
        )),
    }
}

/// This thread's draws from `seed` on (the property model: each run repeatable, stamps included).
#[cfg(test)]
pub(crate) fn reseed(seed: u64) {
    STATE.with(|state| state.set(seed | 1));
}

/// A pseudo-random number (xorshift64*): for spreading retries apart, never for secrets.
pub fn random_u64() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A random fraction in [0, 1).
pub fn random_fraction() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` scaled by a random factor in [0.5, 1.0]: spreads the retries of many processes apart.
pub fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + random_fraction() / 2.0)
}

/// Exponential backoff for retries after `failures` consecutive failures: from `base / 4` up to
/// `base`, jittered.
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let step = (base / 4).max(Duration::from_millis(50));
    let grown = step.saturating_mul(1u32 << failures.min(6).saturating_sub(1)).min(base.max(step));
    jittered(grown)
}

/// Backoff after `failures` consecutive failures of something that is usually quick to recover (a
/// broken watch): none after the first, then from `min` doubling up to `max`, jittered.
pub fn backoff_between(min: Duration, max: Duration, failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let grown = min.saturating_mul(1u32 << (failures - 2).min(16)).min(max.max(min));
    jittered(grown)
}

/// Logs a failure that may go on for a long time: the first at WARN, then at most one line every 30 s
/// saying how long it has lasted and that mpsync is still retrying, and one line when it recovers.
pub struct FailureLog {
    lease: String,
    what: &'static str,
    since: Option<Instant>,
    last_logged: Option<Instant>,
    count: u64,
    last_error: Option<String>,
}

impl FailureLog {
    pub fn new(lease: &str, what: &'static str) -> FailureLog {
        FailureLog { lease: lease.to_string(), what, since: None, last_logged: None, count: 0, last_error: None }
    }

    /// One more failure; logged if it is the first or the last line is old enough.
    pub fn failed(&mut self, error: &str) {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        self.count += 1;
        self.last_error = Some(error.to_string());
        match self.last_logged {
            None => {
                tracing::warn!(lease = %self.lease, error = %error, "{} failed; retrying", self.what);
                self.last_logged = Some(now);
            }
            Some(last) if now.duration_since(last) >= REPEAT_EVERY => {
                let lasted = humantime::format_duration(Duration::from_secs(now.duration_since(since).as_secs()));
                tracing::warn!(
                    lease = %self.lease,
                    error = %error,
                    failures = self.count,
                    "{} has been failing for {lasted}; still retrying",
                    self.what
                );
                self.last_logged = Some(now);
            }
            Some(_) => tracing::debug!(lease = %self.lease, error = %error, "{} failed again", self.what),
        }
    }

    /// The call worked again: say so once, if a failure was logged.
    pub fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            let lasted = humantime::format_duration(Duration::from_millis(since.elapsed().as_millis() as u64));
            tracing::info!(lease = %self.lease, failures = self.count, "{} works again after {lasted}", self.what);
        }
        self.last_logged = None;
        self.count = 0;
        self.last_error = None;
    }

    /// Whether failures are going on now.
    pub fn failing(&self) -> bool {
        self.since.is_some()
    }

    /// The last error, while failures go on.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_base_and_is_jittered() {
        let base = Duration::from_secs(2);
        for failures in 0..20 {
            let delay = backoff(base, failures);
            assert!(delay <= base, "{failures}: {delay:?}");
            assert!(delay >= Duration::from_millis(250), "{failures}: {delay:?}");
        }
        assert!(backoff(base, 10) >= Duration::from_secs(1));
    }

    #[test]
    fn watch_backoff_retries_at_once_then_doubles_to_the_maximum() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff_between(min, max, 1), Duration::ZERO);
        assert!(backoff_between(min, max, 2) <= min);
        assert!(backoff_between(min, max, 30) >= max / 2);
        assert!(backoff_between(min, max, 30) <= max);
    }

    #[test]
    fn random_fractions_are_spread() {
        let samples: Vec<f64> = (0..1000).map(|_| random_fraction()).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let low = samples.iter().filter(|x| **x < 0.5).count();
        assert!((400..600).contains(&low), "{low}");
    }
}
