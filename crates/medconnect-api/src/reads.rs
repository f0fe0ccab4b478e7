//! Group commit of the audited reads of `GET /v1/patients/{id}`.
//!
//! Each read appends its audit entry in the transaction of the read, and the response leaves
//! only after that transaction has committed. On SQLite with `synchronous = FULL` every commit
//! waits for a sync of the write-ahead log, so one commit per request would cap the reads per
//! second at the syncs per second of the disk. Reads therefore queue here, and a task hands
//! the queued ones to [`Store::read_patients`] together. The SQLite store commits such a batch
//! in one transaction, each read with its own entry, and PostgreSQL runs each read in a
//! transaction of its own. A batch contains at most [`MAX_BATCH`] reads, and at most
//! `concurrent_batches` batches run at once. While they run, new reads queue for the next
//! batch.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use medconnect_domain::model::Tenant;
use medconnect_domain::{PatientId, TenantId};
use medconnect_store::{Access, PatientRead, PatientRecord, Store, StoreError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error_chain;
use crate::pool::StorePool;

/// Maximum number of reads in one batch, which bounds how long one transaction keeps the
/// write lock.
pub const MAX_BATCH: usize = 64;

/// Reads that may wait for a batch before [`PatientReads::read`] waits to queue.
const QUEUE_CAPACITY: usize = 1024;

/// The result of one queued read: the store's result, or the failure of its whole batch.
pub type ReadResult = Result<Result<PatientRecord, StoreError>, BatchFailed>;

/// A failure that no read of a batch survives: opening a store, the batch transaction, or a
/// server that is shutting down. The text is the error's chain of causes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("a batch of patient reads failed: {0}")]
pub struct BatchFailed(String);

/// The queue of audited patient reads and the task that runs them in batches.
#[derive(Clone)]
pub struct PatientReads {
    queue: mpsc::Sender<Queued>,
}

/// One read with the caller's tenant id, as the handler has it.
struct Queued {
    tenant: TenantId,
    patient: PatientId,
    access: Access,
    reply: oneshot::Sender<ReadResult>,
}

impl PatientReads {
    /// Starts the task that runs queued reads through `pool`, with at most
    /// `concurrent_batches` (at least 1) batches at once. Call it inside a tokio runtime. The
    /// task ends when every handle is dropped.
    pub fn start(pool: StorePool, concurrent_batches: usize) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let permits = Arc::new(Semaphore::new(concurrent_batches.max(1)));
        tokio::spawn(run_batches(pool, receiver, permits));
        PatientReads { queue }
    }

    /// Reads `patient` of `tenant` for `access` and appends its `patient.read` entry, as
    /// [`Store::read_patient`] does, in the next batch.
    pub async fn read(&self, tenant: TenantId, patient: PatientId, access: Access) -> ReadResult {
        let (reply, result) = oneshot::channel();
        let queued = Queued { tenant, patient, access, reply };
        if self.queue.send(queued).await.is_err() {
            return Err(BatchFailed("the read queue is closed".to_owned()));
        }
        // The reply is dropped unsent only when the batch task panicked or the runtime is
        // shutting down.
        let unsent =
            |_| Err(BatchFailed("the batch of this read ended without a result".to_owned()));
        result.await.unwrap_or_else(unsent)
    }
}

/// Takes the queued reads, up to [`MAX_BATCH`] at a time, whenever a batch permit is free,
/// and runs each batch on a task of its own.
async fn run_batches(
    pool: StorePool,
    mut receiver: mpsc::Receiver<Queued>,
    permits: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            run_batch(&pool, batch).await;
            drop(permit);
        });
    }
}

/// Runs one batch in one store call and sends each read its result.
async fn run_batch(pool: &StorePool, batch: Vec<Queued>) {
    let mut requests = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for queued in batch {
        requests.push((queued.tenant, queued.patient, queued.access));
        replies.push(queued.reply);
    }
    let count = requests.len();
    let outcome = pool.run(move |store| read_batch(store, requests)).await;
    let failure = match outcome {
        Ok(Ok(results)) => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A reply whose request was cancelled has no receiver, and that is fine.
                let _ = reply.send(Ok(result));
            }
            return;
        }
        Ok(Err(error)) => error_chain(&error),
        Err(error) => error_chain(&error),
    };
    tracing::warn!(reads = count, cause = %failure, "a batch of patient reads failed: none committed");
    for reply in replies {
        let _ = reply.send(Err(BatchFailed(failure.clone())));
    }
}

/// Looks up each distinct tenant once and reads the batch with [`Store::read_patients`]. A
/// read whose tenant cannot be loaded gets that error and is left out of the batch.
fn read_batch(
    store: &mut dyn Store,
    requests: Vec<(TenantId, PatientId, Access)>,
) -> Result<Vec<Result<PatientRecord, StoreError>>, StoreError> {
    let mut tenants: HashMap<TenantId, Tenant> = HashMap::new();
    let mut reads = Vec::with_capacity(requests.len());
    let mut tenant_failures: Vec<Option<StoreError>> = Vec::with_capacity(requests.len());
    for (tenant_id, patient, access) in requests {
        let tenant = match tenants.entry(tenant_id) {
            Entry::Occupied(known) => known.get().clone(),
            Entry::Vacant(slot) => match store.tenant(tenant_id) {
                Ok(tenant) => slot.insert(tenant).clone(),
                Err(error) => {
                    tenant_failures.push(Some(error));
                    continue;
                }
            },
        };
        tenant_failures.push(None);
        reads.push(PatientRead { tenant, patient, access });
    }
    let mut read = store.read_patients(&reads)?.into_iter();
    let results = tenant_failures
        .into_iter()
        .map(|failure| match failure {
            Some(error) => Err(error),
            None => read.next().unwrap_or_else(|| {
                Err(StoreError::Corrupt("the store returned fewer results than reads".into()))
            }),
        })
        .collect();
    Ok(results)
}
