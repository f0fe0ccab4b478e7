//! Master key rotation and tenant key versions. Neither re-encrypts data.
//!
//! Master key rotation runs as the operator, because it re-wraps the keys of every tenant.
//! Several nodes may re-wrap at once: each claims its batch with `FOR UPDATE SKIP LOCKED`.

use medconnect_crypto::{KeyId, MasterKey};
use medconnect_domain::audit::AuditEvent;
use medconnect_domain::model::Tenant;
use postgres::Transaction;

use super::{PgAudit, PgStore};
use crate::keys::{KeyScope, Keys};
use crate::{Result, StoreError};

impl PgStore {
    pub(crate) fn set_master_keys_impl(
        &mut self,
        master: MasterKey,
        next: Option<MasterKey>,
    ) -> Result<()> {
        let now = self.now();
        let mut keys = Keys::new(master, next);
        // The index key belongs to no tenant, so only the operator role may create it.
        self.operator_tx(|tx| keys.load_blind_index_key(&mut *tx, now))?;
        self.keys = Some(keys);
        Ok(())
    }

    /// Returns the version of the master key the store's data keys are wrapped with.
    pub(crate) fn master_key_version_impl(&self) -> Result<u32> {
        self.operator_tx(master_key_version)
    }

    /// Returns the master key version a rotation under way moves to.
    pub(crate) fn master_rotation_target_impl(&self) -> Result<Option<u32>> {
        self.operator_tx(master_rotation_target)
    }

    pub(crate) fn begin_master_rotation_impl(
        &mut self,
        next_version: u32,
        actor: &str,
    ) -> Result<()> {
        let (now, simulated) = (self.now(), self.simulated());
        self.operator_tx(|tx| {
            tx.execute(
                "INSERT INTO store_meta (key, value) VALUES ('master_rotation', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&next_version.to_string()],
            )?;
            let mut audit = PgAudit::begin(tx, now, simulated)?;
            let detail = format!("master key rotation to version {next_version} started");
            audit.append(tx, AuditEvent::new(actor, "keys.rotate_master.start").detail(detail))?;
            audit.finish(tx)
        })
    }

    /// Re-wraps up to `limit` data keys still wrapped by the current master key under the
    /// next one, in one transaction. Returns how many remain, counting those another node is
    /// re-wrapping at the same moment; run it until none do.
    pub(crate) fn rewrap_data_keys_impl(&mut self, limit: u32) -> Result<u64> {
        let current = self.master_key_version_impl()?;
        let keys = self.keys()?;
        let next = keys.next_version().ok_or(StoreError::NoRotation)?;
        self.operator_tx(|tx| {
            let rows = tx.query(
                "SELECT id, version, wrapped FROM data_keys WHERE master_version = $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&i64::from(current), &i64::from(limit)],
            )?;
            for row in rows {
                let id: &str = row.get(0);
                let version = u32::try_from(row.get::<_, i64>(1)).map_err(|_| {
                    StoreError::Corrupt(format!("invalid version of data key {id}"))
                })?;
                let rewrapped = keys.rewrap(row.get(2), KeyId::parse(id)?, version)?;
                tx.execute(
                    "UPDATE data_keys SET wrapped = $1, master_version = $2 WHERE id = $3",
                    &[&rewrapped, &i64::from(next), &id],
                )?;
            }
            let remaining: i64 = tx
                .query_one(
                    "SELECT count(*) FROM data_keys WHERE master_version = $1",
                    &[&i64::from(current)],
                )?
                .get(0);
            Ok(remaining as u64)
        })
    }

    pub(crate) fn finish_master_rotation_impl(&mut self, actor: &str) -> Result<u32> {
        let (now, simulated) = (self.now(), self.simulated());
        self.operator_tx(|tx| {
            // Blocks new data keys until the commit: a node that lacks the next master key
            // could otherwise wrap one with the old key after the count below.
            tx.batch_execute("LOCK TABLE data_keys IN SHARE MODE")?;
            let target = master_rotation_target(tx)?.ok_or(StoreError::NoRotation)?;
            let current = master_key_version(tx)?;
            let remaining: i64 = tx
                .query_one(
                    "SELECT count(*) FROM data_keys WHERE master_version <> $1",
                    &[&i64::from(target)],
                )?
                .get(0);
            if remaining > 0 {
                return Err(StoreError::RotationIncomplete { remaining: remaining as u64 });
            }
            tx.execute(
                "INSERT INTO store_meta (key, value) VALUES ('master_key_version', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&target.to_string()],
            )?;
            tx.execute("DELETE FROM store_meta WHERE key = 'master_rotation'", &[])?;
            let mut audit = PgAudit::begin(tx, now, simulated)?;
            let detail = format!("master key rotated from version {current} to {target}");
            audit.append(tx, AuditEvent::new(actor, "keys.rotate_master").detail(detail))?;
            audit.finish(tx)?;
            Ok(target)
        })
    }

    /// Adds a new version of a tenant's data key. New writes use it; ciphertexts under older
    /// versions stay readable, because each names its key in its header.
    pub(crate) fn rotate_tenant_key_impl(&mut self, tenant: &Tenant, actor: &str) -> Result<u32> {
        let (now, simulated) = (self.now(), self.simulated());
        let keys = self.keys()?;
        let owner = tenant.id.to_string();
        self.tenant_tx(tenant.id, |tx| {
            let version = keys.add_key_version(&mut *tx, KeyScope::Tenant, &owner, now)?;
            let mut audit = PgAudit::begin(tx, now, simulated)?;
            let detail = format!("tenant data key version {version} now seals new writes");
            let event =
                AuditEvent::new(actor, "keys.rotate_tenant").tenant(tenant.id).detail(detail);
            audit.append(tx, event)?;
            audit.finish(tx)?;
            Ok(version)
        })
    }
}

fn meta_value(tx: &mut Transaction<'_>, key: &str) -> Result<Option<String>> {
    let row = tx.query_opt("SELECT value FROM store_meta WHERE key = $1", &[&key])?;
    Ok(row.map(|row| row.get(0)))
}

fn master_key_version(tx: &mut Transaction<'_>) -> Result<u32> {
    match meta_value(tx, "master_key_version")? {
        None => Ok(1),
        Some(value) => value
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("invalid master key version {value:?}"))),
    }
}

fn master_rotation_target(tx: &mut Transaction<'_>) -> Result<Option<u32>> {
    match meta_value(tx, "master_rotation")? {
        None => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("invalid master rotation target {value:?}"))),
    }
}
