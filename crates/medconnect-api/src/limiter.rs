//! Lockout after repeated failed logins, kept in memory per account and per client address.
//!
//! Each key (an account, named by its tenant slug and username, or a client IP address) is
//! locked by its [`LoginLimits::account_max_failures`]-th or
//! [`LoginLimits::address_max_failures`]-th failed login in a row, for
//! [`LoginLimits::base_lockout`]. Each further failure locks it again for twice as long as the
//! one before, up to [`LoginLimits::max_lockout`]. While a key is locked, login requests get 429 with
//! `Retry-After` and no password is checked. A successful login clears its account's
//! failures but not its address's, so that one valid account does not unlock guessing at
//! others from the same address. A key's failures are forgotten once it has been quiet for
//! [`LoginLimits::forget_after`].
//!
//! The state lives in one process: a restart clears it, and each node of a cluster counts
//! on its own. The store's own count of failed logins per account persists.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins that lock an account.
pub const ACCOUNT_MAX_FAILURES: u32 = 5;
/// Failed logins that lock a client address. Higher than an account's, because several
/// people can share one address behind a NAT or proxy.
pub const ADDRESS_MAX_FAILURES: u32 = 20;
/// The first lockout; it doubles with each further failure.
pub const BASE_LOCKOUT: Duration = Duration::from_secs(30);
/// Longest lockout.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Quiet time after which a key's failures are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Keys tracked at most. When full, keys whose failures are forgotten are dropped first,
/// and then the oldest ones, so that a flood of new keys cannot exhaust memory.
pub const MAX_KEYS: usize = 100_000;

/// The numbers of the lockout.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub account_max_failures: u32,
    pub address_max_failures: u32,
    pub base_lockout: Duration,
    pub max_lockout: Duration,
    pub forget_after: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            account_max_failures: ACCOUNT_MAX_FAILURES,
            address_max_failures: ADDRESS_MAX_FAILURES,
            base_lockout: BASE_LOCKOUT,
            max_lockout: MAX_LOCKOUT,
            forget_after: FORGET_AFTER,
        }
    }
}

/// The account or the address that failures are counted for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// Tenant slug (empty for a platform operator) and username, both in lower case, as the
    /// store compares them.
    Account(String, String),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// The failed logins of one process.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: LoginLimits,
    keys: Mutex<HashMap<Key, Failures>>,
}

/// The account and the address of one login request.
#[derive(Debug, Clone)]
pub struct LoginAttempt {
    account: Key,
    address: Key,
}

impl LoginAttempt {
    pub fn new(tenant: Option<&str>, username: &str, address: IpAddr) -> Self {
        let tenant = tenant.unwrap_or_default().to_lowercase();
        LoginAttempt {
            account: Key::Account(tenant, username.to_lowercase()),
            address: Key::Address(address),
        }
    }
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        LoginLimiter { limits, keys: Mutex::new(HashMap::new()) }
    }

    /// Returns how long the attempt must wait when its account or address is locked at `now`.
    pub fn locked_for(&self, attempt: &LoginAttempt, now: Instant) -> Option<Duration> {
        let keys = self.lock_keys();
        [&attempt.account, &attempt.address]
            .into_iter()
            .filter_map(|key| keys.get(key)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// Counts a failed login for the account and the address, locking each that has reached
    /// its maximum. Returns the lockout that now applies, if any.
    pub fn record_failure(&self, attempt: &LoginAttempt, now: Instant) -> Option<Duration> {
        let mut keys = self.lock_keys();
        if keys.len() + 2 > MAX_KEYS {
            self.evict(&mut keys, now);
        }
        let maxima = [
            (&attempt.account, self.limits.account_max_failures),
            (&attempt.address, self.limits.address_max_failures),
        ];
        let mut lockout = None;
        for (key, max_failures) in maxima {
            let entry = keys.entry(key.clone()).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: None,
            });
            if now.duration_since(entry.last) >= self.limits.forget_after {
                *entry = Failures { count: 0, last: now, locked_until: None };
            }
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
            if entry.count >= max_failures {
                let duration = self.lockout(entry.count + 1 - max_failures.max(1));
                entry.locked_until = Some(now + duration);
                lockout = lockout.max(Some(duration));
            }
        }
        lockout
    }

    /// Clears the failures of the attempt's account after a successful login.
    pub fn record_success(&self, attempt: &LoginAttempt) {
        self.lock_keys().remove(&attempt.account);
    }

    /// Returns the lockout of the `excess`-th locking failure (1 for the first).
    fn lockout(&self, excess: u32) -> Duration {
        let doublings = excess.saturating_sub(1).min(16);
        let lockout = self.limits.base_lockout.saturating_mul(1 << doublings);
        lockout.min(self.limits.max_lockout)
    }

    /// Drops forgotten keys, and then the oldest ones until there is room for two more.
    fn evict(&self, keys: &mut HashMap<Key, Failures>, now: Instant) {
        keys.retain(|_, failures| now.duration_since(failures.last) < self.limits.forget_after);
        if keys.len() + 2 <= MAX_KEYS {
            return;
        }
        let mut by_age: Vec<(Instant, Key)> =
            keys.iter().map(|(key, failures)| (failures.last, key.clone())).collect();
        by_age.sort_by_key(|(last, _)| *last);
        let excess = keys.len() + 2 - MAX_KEYS;
        for (_, key) in by_age.into_iter().take(excess) {
            keys.remove(&key);
        }
    }

    /// Locks the map. Each change to it is one insert or remove, so a poisoned lock still
    /// holds a consistent map.
    fn lock_keys(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Failures>> {
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(username: &str, address: [u8; 4]) -> LoginAttempt {
        LoginAttempt::new(Some("northwind"), username, IpAddr::from(address))
    }

    #[test]
    fn account_locks_at_max_failures() {
        let limiter = LoginLimiter::new(LoginLimits::default());
        let start = Instant::now();
        let login = attempt("admin", [10, 0, 0, 1]);
        for _ in 1..ACCOUNT_MAX_FAILURES {
            assert_eq!(limiter.record_failure(&login, start), None);
        }
        assert_eq!(limiter.locked_for(&login, start), None);
        assert_eq!(limiter.record_failure(&login, start), Some(BASE_LOCKOUT));
        assert_eq!(limiter.locked_for(&login, start), Some(BASE_LOCKOUT));
        let later = start + BASE_LOCKOUT;
        assert_eq!(limiter.locked_for(&login, later), None);
    }

    #[test]
    fn lockout_doubles_up_to_max() {
        let limiter = LoginLimiter::new(LoginLimits::default());
        let now = Instant::now();
        let login = attempt("admin", [10, 0, 0, 1]);
        let mut lockouts = Vec::new();
        for _ in 0..ACCOUNT_MAX_FAILURES + 6 {
            lockouts.push(limiter.record_failure(&login, now));
        }
        let seconds: Vec<u64> = lockouts.into_iter().flatten().map(|d| d.as_secs()).collect();
        assert_eq!(seconds, [30, 60, 120, 240, 480, 900, 900]);
    }

    #[test]
    fn username_case_shares_lockout() {
        let limiter = LoginLimiter::new(LoginLimits::default());
        let now = Instant::now();
        for _ in 0..ACCOUNT_MAX_FAILURES {
            limiter.record_failure(&attempt("Admin", [10, 0, 0, 1]), now);
        }
        assert!(limiter.locked_for(&attempt("admin", [10, 0, 0, 2]), now).is_some());
        assert!(limiter.locked_for(&attempt("other", [10, 0, 0, 2]), now).is_none());
    }

    #[test]
    fn address_locks_across_accounts() {
        let limiter = LoginLimiter::new(LoginLimits::default());
        let now = Instant::now();
        for n in 0..ADDRESS_MAX_FAILURES {
            limiter.record_failure(&attempt(&format!("user{n}"), [10, 0, 0, 9]), now);
        }
        assert!(limiter.locked_for(&attempt("fresh", [10, 0, 0, 9]), now).is_some());
        assert!(limiter.locked_for(&attempt("fresh", [10, 0, 0, 8]), now).is_none());
    }

    #[test]
    fn success_clears_account_not_address() {
        let limits = LoginLimits { address_max_failures: 2, ..LoginLimits::default() };
        let limiter = LoginLimiter::new(limits);
        let now = Instant::now();
        let login = attempt("admin", [10, 0, 0, 1]);
        for _ in 0..2 {
            limiter.record_failure(&login, now);
        }
        limiter.record_success(&login);
        let other = attempt("other", [10, 0, 0, 1]);
        assert!(limiter.locked_for(&other, now).is_some(), "the address stays locked");
        let elsewhere = attempt("admin", [10, 0, 0, 2]);
        assert!(limiter.locked_for(&elsewhere, now).is_none(), "the account is cleared");
    }

    #[test]
    fn quiet_key_forgets_failures() {
        let limiter = LoginLimiter::new(LoginLimits::default());
        let start = Instant::now();
        let login = attempt("admin", [10, 0, 0, 1]);
        for _ in 1..ACCOUNT_MAX_FAILURES {
            limiter.record_failure(&login, start);
        }
        let later = start + FORGET_AFTER;
        assert_eq!(limiter.record_failure(&login, later), None);
    }
}
