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
//! A login is admitted through [`LoginLimiter::admit`] before its password is checked, and
//! counts as pending on its account and address until its [`LoginPermit`] records the outcome.
//! Pending logins count towards the maximum, so a burst of concurrent guesses gets no more
//! password checks than the same guesses sent one after another.
//!
//! Password checks also wait for one of a few slots ([`LoginLimits::password_checks`]), on
//! threads of their own, so that a flood of logins queues there instead of taking the store
//! connections that every other request needs.
//!
//! The state lives in one process: a restart clears it, and each node of a cluster counts
//! on its own. The store's own count of failed logins per account persists.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

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
/// The `Retry-After` of a login refused because earlier logins of its account or address are
/// still being checked and could reach the maximum.
pub const PENDING_RETRY: Duration = Duration::from_secs(1);
/// How long a login waits for a password check slot before it gets 429.
pub const PASSWORD_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// Password checks that run at once.
    pub password_checks: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            account_max_failures: ACCOUNT_MAX_FAILURES,
            address_max_failures: ADDRESS_MAX_FAILURES,
            base_lockout: BASE_LOCKOUT,
            max_lockout: MAX_LOCKOUT,
            forget_after: FORGET_AFTER,
            password_checks: std::thread::available_parallelism().map_or(2, |cores| cores.get()),
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
    /// Logins admitted whose outcome is not known yet.
    pending: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Failures { count: 0, pending: 0, last: now, locked_until: None }
    }
}

/// The failed logins of one process.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: LoginLimits,
    keys: Mutex<HashMap<Key, Failures>>,
    password_checks: Semaphore,
}

/// The password check slots were all taken for [`PASSWORD_QUEUE_TIMEOUT`], or the check
/// could not run.
#[derive(Debug, thiserror::Error)]
pub enum PasswordCheckError {
    #[error("no password check slot became free within {} s", PASSWORD_QUEUE_TIMEOUT.as_secs())]
    Busy,
    #[error("the password check thread failed: {0}")]
    Failed(#[from] tokio::task::JoinError),
}

/// A login admitted past the lockout. It counts as pending on its account and address until
/// [`LoginPermit::failed`] or [`LoginPermit::succeeded`] records its outcome. Dropped without
/// an outcome, as after a store failure, it counts as neither.
#[derive(Debug)]
pub struct LoginPermit {
    limiter: Arc<LoginLimiter>,
    attempt: LoginAttempt,
    open: bool,
}

impl LoginPermit {
    /// Counts the login as failed on its account and its address, locking each that has
    /// reached its maximum. Returns the lockout that now applies, if any.
    pub fn failed(mut self, now: Instant) -> Option<Duration> {
        self.open = false;
        self.limiter.finish_failure(&self.attempt, now)
    }

    /// Clears the failures of the login's account, and releases it on its address without
    /// counting it.
    pub fn succeeded(mut self) {
        self.open = false;
        self.limiter.finish_success(&self.attempt);
    }
}

impl Drop for LoginPermit {
    fn drop(&mut self) {
        if self.open {
            self.limiter.release(&self.attempt);
        }
    }
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
        LoginLimiter {
            limits,
            keys: Mutex::new(HashMap::new()),
            password_checks: Semaphore::new(limits.password_checks.max(1)),
        }
    }

    /// Admits a login whose account and address are not locked at `now`, or returns how long
    /// it must wait. A key whose failures and pending logins together reach its maximum
    /// admits no more logins until the pending ones end, and a key past a lockout admits one
    /// at a time.
    pub fn admit(
        self: &Arc<Self>,
        attempt: &LoginAttempt,
        now: Instant,
    ) -> Result<LoginPermit, Duration> {
        let mut keys = self.lock_keys();
        if keys.len() + 2 > MAX_KEYS {
            self.evict(&mut keys, now);
        }
        let mut wait = None;
        for (key, max_failures) in self.maxima(attempt) {
            let Some(entry) = keys.get_mut(key) else { continue };
            if entry.pending == 0 && now.duration_since(entry.last) >= self.limits.forget_after {
                *entry = Failures::new(now);
            }
            let key_wait = match entry.locked_until {
                Some(until) if until > now => Some(until - now),
                // Below the maximum, pending logins may take up what is left of it. Past a
                // lockout, each login can lock again, so one at a time is checked.
                _ if entry.pending >= max_failures.saturating_sub(entry.count).max(1) => {
                    Some(PENDING_RETRY)
                }
                _ => None,
            };
            wait = wait.max(key_wait);
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        for key in [&attempt.account, &attempt.address] {
            let entry = keys.entry(key.clone()).or_insert_with(|| Failures::new(now));
            entry.pending += 1;
            entry.last = now;
        }
        Ok(LoginPermit { limiter: Arc::clone(self), attempt: attempt.clone(), open: true })
    }

    /// Runs `check` on a blocking thread once one of the password check slots is free.
    pub async fn check_password<F>(&self, check: F) -> Result<bool, PasswordCheckError>
    where
        F: FnOnce() -> bool + Send + 'static,
    {
        let slot = tokio::time::timeout(PASSWORD_QUEUE_TIMEOUT, self.password_checks.acquire())
            .await
            .map_err(|_| PasswordCheckError::Busy)?
            .map_err(|_| PasswordCheckError::Busy)?;
        let matches = tokio::task::spawn_blocking(check).await?;
        drop(slot);
        Ok(matches)
    }

    fn maxima<'a>(&self, attempt: &'a LoginAttempt) -> [(&'a Key, u32); 2] {
        [
            (&attempt.account, self.limits.account_max_failures),
            (&attempt.address, self.limits.address_max_failures),
        ]
    }

    fn finish_failure(&self, attempt: &LoginAttempt, now: Instant) -> Option<Duration> {
        let mut keys = self.lock_keys();
        let mut lockout = None;
        for (key, max_failures) in self.maxima(attempt) {
            let entry = keys.entry(key.clone()).or_insert_with(|| Failures::new(now));
            entry.pending = entry.pending.saturating_sub(1);
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

    fn finish_success(&self, attempt: &LoginAttempt) {
        let mut keys = self.lock_keys();
        if let Some(entry) = keys.get_mut(&attempt.account) {
            entry.pending = entry.pending.saturating_sub(1);
            entry.count = 0;
            entry.locked_until = None;
            if entry.pending == 0 {
                keys.remove(&attempt.account);
            }
        }
        if let Some(entry) = keys.get_mut(&attempt.address) {
            entry.pending = entry.pending.saturating_sub(1);
        }
    }

    fn release(&self, attempt: &LoginAttempt) {
        let mut keys = self.lock_keys();
        for key in [&attempt.account, &attempt.address] {
            if let Some(entry) = keys.get_mut(key) {
                entry.pending = entry.pending.saturating_sub(1);
            }
        }
    }

    /// Returns the lockout of the `excess`-th locking failure (1 for the first).
    fn lockout(&self, excess: u32) -> Duration {
        let doublings = excess.saturating_sub(1).min(16);
        let lockout = self.limits.base_lockout.saturating_mul(1 << doublings);
        lockout.min(self.limits.max_lockout)
    }

    /// Drops forgotten keys, and then the oldest ones until there is room for two more.
    fn evict(&self, keys: &mut HashMap<Key, Failures>, now: Instant) {
        keys.retain(|_, failures| {
            failures.pending > 0 || now.duration_since(failures.last) < self.limits.forget_after
        });
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

    fn limiter(limits: LoginLimits) -> Arc<LoginLimiter> {
        Arc::new(LoginLimiter::new(limits))
    }

    /// Admits a login and records it as failed.
    fn fail(limiter: &Arc<LoginLimiter>, login: &LoginAttempt, now: Instant) -> Option<Duration> {
        limiter.admit(login, now).expect("login admitted").failed(now)
    }

    /// Returns how long a login must wait, admitting and dropping it when it need not.
    fn locked_for(
        limiter: &Arc<LoginLimiter>,
        login: &LoginAttempt,
        now: Instant,
    ) -> Option<Duration> {
        limiter.admit(login, now).err()
    }

    #[test]
    fn account_locks_at_max_failures() {
        let limiter = limiter(LoginLimits::default());
        let start = Instant::now();
        let login = attempt("admin", [10, 0, 0, 1]);
        for _ in 1..ACCOUNT_MAX_FAILURES {
            assert_eq!(fail(&limiter, &login, start), None);
        }
        assert_eq!(locked_for(&limiter, &login, start), None);
        assert_eq!(fail(&limiter, &login, start), Some(BASE_LOCKOUT));
        assert_eq!(locked_for(&limiter, &login, start), Some(BASE_LOCKOUT));
        let later = start + BASE_LOCKOUT;
        assert_eq!(locked_for(&limiter, &login, later), None);
    }

    #[test]
    fn concurrent_logins_count_as_pending() {
        let limiter = limiter(LoginLimits::default());
        let now = Instant::now();
        let login = attempt("admin", [10, 0, 0, 1]);
        let permits: Vec<LoginPermit> = (0..ACCOUNT_MAX_FAILURES)
            .map(|_| limiter.admit(&login, now).expect("admitted below the maximum"))
            .collect();
        assert_eq!(locked_for(&limiter, &login, now), Some(PENDING_RETRY));
        let lockouts: Vec<Option<Duration>> =
            permits.into_iter().map(|permit| permit.failed(now)).collect();
        assert_eq!(lockouts.last(), Some(&Some(BASE_LOCKOUT)));
        assert_eq!(locked_for(&limiter, &login, now), Some(BASE_LOCKOUT));
    }

    #[test]
    fn dropped_permit_releases_pending() {
        let limiter = limiter(LoginLimits { account_max_failures: 1, ..LoginLimits::default() });
        let now = Instant::now();
        let login = attempt("admin", [10, 0, 0, 1]);
        let permit = limiter.admit(&login, now).expect("admitted");
        assert_eq!(locked_for(&limiter, &login, now), Some(PENDING_RETRY));
        drop(permit);
        assert_eq!(locked_for(&limiter, &login, now), None, "a dropped login counts as nothing");
    }

    #[test]
    fn lockout_doubles_up_to_max() {
        let limiter = limiter(LoginLimits::default());
        let mut now = Instant::now();
        let login = attempt("admin", [10, 0, 0, 1]);
        let mut lockouts = Vec::new();
        for _ in 0..ACCOUNT_MAX_FAILURES + 6 {
            let lockout = fail(&limiter, &login, now);
            lockouts.push(lockout);
            now += lockout.unwrap_or_default();
        }
        let seconds: Vec<u64> = lockouts.into_iter().flatten().map(|d| d.as_secs()).collect();
        assert_eq!(seconds, [30, 60, 120, 240, 480, 900, 900]);
    }

    #[test]
    fn username_case_shares_lockout() {
        let limiter = limiter(LoginLimits::default());
        let now = Instant::now();
        for _ in 0..ACCOUNT_MAX_FAILURES {
            fail(&limiter, &attempt("Admin", [10, 0, 0, 1]), now);
        }
        assert!(locked_for(&limiter, &attempt("admin", [10, 0, 0, 2]), now).is_some());
        assert!(locked_for(&limiter, &attempt("other", [10, 0, 0, 2]), now).is_none());
    }

    #[test]
    fn address_locks_across_accounts() {
        let limiter = limiter(LoginLimits::default());
        let now = Instant::now();
        for n in 0..ADDRESS_MAX_FAILURES {
            fail(&limiter, &attempt(&format!("user{n}"), [10, 0, 0, 9]), now);
        }
        assert!(locked_for(&limiter, &attempt("fresh", [10, 0, 0, 9]), now).is_some());
        assert!(locked_for(&limiter, &attempt("fresh", [10, 0, 0, 8]), now).is_none());
    }

    #[test]
    fn success_clears_account_not_address() {
        let limits = LoginLimits { address_max_failures: 3, ..LoginLimits::default() };
        let limiter = limiter(limits);
        let now = Instant::now();
        let login = attempt("admin", [10, 0, 0, 1]);
        for _ in 0..2 {
            fail(&limiter, &login, now);
        }
        limiter.admit(&login, now).expect("admitted").succeeded();
        let other = attempt("other", [10, 0, 0, 1]);
        fail(&limiter, &other, now);
        assert!(locked_for(&limiter, &other, now).is_some(), "the address counts 3 failures");
        let elsewhere = attempt("admin", [10, 0, 0, 2]);
        assert!(locked_for(&limiter, &elsewhere, now).is_none(), "the account is cleared");
    }

    #[test]
    fn quiet_key_forgets_failures() {
        let limiter = limiter(LoginLimits::default());
        let start = Instant::now();
        let login = attempt("admin", [10, 0, 0, 1]);
        for _ in 1..ACCOUNT_MAX_FAILURES {
            fail(&limiter, &login, start);
        }
        let later = start + FORGET_AFTER;
        assert_eq!(fail(&limiter, &login, later), None);
    }

    #[tokio::test]
    async fn password_checks_wait_for_a_slot() {
        let limiter = limiter(LoginLimits { password_checks: 1, ..LoginLimits::default() });
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move {
                limiter
                    .check_password(move || {
                        started_tx.send(()).expect("test waits");
                        release_rx.recv().expect("test releases");
                        true
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || started_rx.recv().expect("first check started"))
            .await
            .expect("wait");
        assert_eq!(limiter.password_checks.available_permits(), 0, "the only slot is taken");
        release_tx.send(()).expect("first check waits");
        assert!(first.await.expect("task").expect("checked"));
        assert!(limiter.check_password(|| false).await.is_ok_and(|matches| !matches));
    }
}
