//! A small pool of opened stores for the async handlers.
//!
//! The store is synchronous and not `Sync`, because each backend owns its database
//! connections. So a store cannot be shared between tasks. Each one moves to the thread that
//! uses it, which needs `Send`. The pool keeps up to `size` opened stores, lends one store at a
//! time to a closure, and runs that closure on tokio's blocking threads, so a slow query never
//! stalls the async workers. Stores are opened lazily through the factory the binary supplies,
//! which decides the backend (SQLite or PostgreSQL) and loads the keys.

use std::sync::{Arc, Mutex};

use medconnect_store::Store;
use tokio::sync::Semaphore;

use crate::{error_chain, BoxError};

/// An opened store that can move to another thread.
pub type SendStore = Box<dyn Store + Send>;

/// Opens one store. Called on a blocking thread.
pub type StoreFactory = dyn Fn() -> Result<SendStore, BoxError> + Send + Sync;

/// Why [`StorePool::run`] did not return the closure's result.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The factory failed to open a store. The text is the error's chain of causes.
    #[error("opening a store failed: {0}")]
    Open(String),
    /// The closure panicked; the store it held was dropped.
    #[error("a store call panicked")]
    Panicked,
    /// The pool was closed because the server is shutting down.
    #[error("the store pool is closed")]
    Closed,
}

/// Up to `size` opened stores, each used by one closure at a time.
#[derive(Clone)]
pub struct StorePool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    factory: Box<StoreFactory>,
    /// Stores not in use. Fewer than `size` while some are lent out or not opened yet.
    idle: Mutex<Vec<SendStore>>,
    /// One permit per store that may be open at once.
    permits: Semaphore,
    size: usize,
}

impl StorePool {
    /// Creates a pool of at most `size` stores (at least 1) that opens stores with `factory`.
    /// No store is opened until the first call.
    pub fn new(
        size: usize,
        factory: impl Fn() -> Result<SendStore, BoxError> + Send + Sync + 'static,
    ) -> Self {
        let size = size.max(1);
        StorePool {
            inner: Arc::new(PoolInner {
                factory: Box::new(factory),
                idle: Mutex::new(Vec::with_capacity(size)),
                permits: Semaphore::new(size),
                size,
            }),
        }
    }

    /// Returns the maximum number of stores open at once.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Runs `call` with a store on a blocking thread and returns its result.
    ///
    /// Waits while every store is lent out. Takes an idle store or opens a new one, and puts
    /// it back afterwards, also when `call` returns an error, because store errors leave the
    /// store usable (a PostgreSQL store reconnects by itself). A store whose call panicked is
    /// dropped, and the next call opens a replacement.
    pub async fn run<T, F>(&self, call: F) -> Result<T, PoolError>
    where
        F: FnOnce(&mut dyn Store) -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self.inner.permits.acquire().await.map_err(|_| PoolError::Closed)?;
        let inner = Arc::clone(&self.inner);
        let outcome = tokio::task::spawn_blocking(move || {
            let mut store = match inner.take_idle() {
                Some(store) => store,
                None => (inner.factory)().map_err(|error| PoolError::Open(error_chain(&*error)))?,
            };
            let result = call(&mut *store);
            inner.put_back(store);
            Ok(result)
        })
        .await;
        drop(permit);
        match outcome {
            Ok(result) => result,
            Err(_) => Err(PoolError::Panicked),
        }
    }

    /// Closes the pool: calls waiting for a store fail with [`PoolError::Closed`], calls
    /// under way finish, and idle stores are closed before this returns.
    pub async fn close(&self) {
        self.inner.permits.close();
        let idle = std::mem::take(&mut *self.inner.lock_idle());
        if let Some(closing) = drop_off_runtime(idle) {
            let _ = tokio::task::spawn_blocking(move || closing.join()).await;
        }
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let _ = drop_off_runtime(std::mem::take(&mut *self.lock_idle()));
    }
}

/// Drops stores where blocking is allowed. A PostgreSQL store closes its connection by
/// blocking on a runtime of its own, which tokio forbids on any thread of a runtime, so there
/// the stores are dropped on a new thread, whose handle is returned.
fn drop_off_runtime(stores: Vec<SendStore>) -> Option<std::thread::JoinHandle<()>> {
    if stores.is_empty() {
        return None;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        drop(stores);
        return None;
    }
    let spawned =
        std::thread::Builder::new().name("store-close".to_owned()).spawn(move || drop(stores));
    match spawned {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "closing idle stores failed: their connections close at exit");
            None
        }
    }
}

impl PoolInner {
    fn take_idle(&self) -> Option<SendStore> {
        self.lock_idle().pop()
    }

    /// Returns a store to the idle list, or closes it when the pool is closed.
    fn put_back(&self, store: SendStore) {
        if self.permits.is_closed() {
            return;
        }
        self.lock_idle().push(store);
    }

    /// Locks the idle list. A panic while the lock was held cannot leave the list half
    /// changed (push, pop and clear are single steps), so a poisoned lock is used as is.
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<SendStore>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use medconnect_domain::clock::SystemClock;
    use medconnect_store::testing::Backend;
    use medconnect_store::SqliteStore;

    use super::*;

    /// Returns a pool over a new SQLite store that counts how often it opens a store.
    fn counting_pool(
        size: usize,
    ) -> (StorePool, Arc<AtomicU32>, medconnect_store::testing::TestStore) {
        let store = Backend::Sqlite.create(Box::new(SystemClock));
        let dir = store.data_dir().expect("SQLite data dir");
        let opens = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&opens);
        let pool = StorePool::new(size, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(SqliteStore::open(&dir)?))
        });
        (pool, opens, store)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn idle_store_reused() {
        let (pool, opens, _store) = counting_pool(2);
        let runtime = runtime();
        for _ in 0..3 {
            let backend = runtime.block_on(pool.run(|store| store.info().map(|info| info.backend)));
            assert_eq!(backend.expect("pool").expect("info"), "sqlite");
        }
        assert_eq!(opens.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn store_replaced_after_panic() {
        let (pool, opens, _store) = counting_pool(1);
        let runtime = runtime();
        let panicked = runtime.block_on(pool.run(|_| -> u32 { panic!("a failing call") }));
        assert!(matches!(panicked, Err(PoolError::Panicked)), "{panicked:?}");
        let after = runtime.block_on(pool.run(|store| store.info().is_ok()));
        assert!(after.expect("pool"));
        assert_eq!(opens.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn open_failure_names_cause() {
        let pool = StorePool::new(1, || Err("database \"clinic\" does not exist".into()));
        let outcome = runtime().block_on(pool.run(|_| ()));
        let Err(PoolError::Open(cause)) = outcome else { panic!("expected an open error") };
        assert!(cause.contains("does not exist"), "{cause}");
    }

    #[test]
    fn closed_pool_rejects_calls() {
        let (pool, _opens, _store) = counting_pool(1);
        let runtime = runtime();
        runtime.block_on(pool.close());
        let outcome = runtime.block_on(pool.run(|_| ()));
        assert!(matches!(outcome, Err(PoolError::Closed)), "{outcome:?}");
    }
}
