//! Key rotation: re-wrapping every data key under a new master key, and adding tenant key
//! versions. Neither re-encrypts data.

use medconnect_crypto::KeyId;
use medconnect_domain::audit::AuditEvent;
use medconnect_domain::model::Tenant;

use super::audit::AuditAppender;
use super::{meta_value, SqliteStore};
use crate::keys::KeyScope;
use crate::{Result, StoreError};

impl SqliteStore {
    /// Returns the version of the master key the store's data keys are wrapped with.
    pub(crate) fn master_key_version_impl(&self) -> Result<u32> {
        match meta_value(&self.conn, "master_key_version")? {
            None => Ok(1),
            Some(value) => value
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("invalid master key version {value:?}"))),
        }
    }

    /// Returns the master key version a rotation under way moves to.
    pub(crate) fn master_rotation_target_impl(&self) -> Result<Option<u32>> {
        match meta_value(&self.conn, "master_rotation")? {
            None => Ok(None),
            Some(value) => value.parse().map(Some).map_err(|_| {
                StoreError::Corrupt(format!("invalid master rotation target {value:?}"))
            }),
        }
    }

    pub(crate) fn begin_master_rotation_impl(
        &mut self,
        next_version: u32,
        actor: &str,
    ) -> Result<()> {
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO store_meta (key, value) VALUES ('master_rotation', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [next_version.to_string()],
        )?;
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        let detail = format!("master key rotation to version {next_version} started");
        audit.append(&tx, AuditEvent::new(actor, "keys.rotate_master.start").detail(detail))?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Re-wraps up to `limit` data keys still wrapped by the current master key under the
    /// next one, in one transaction. Returns how many remain; run it until none do.
    pub(crate) fn rewrap_data_keys_impl(&mut self, limit: u32) -> Result<u64> {
        let current = self.master_key_version_impl()?;
        let keys = self.keys.as_ref().ok_or(StoreError::MasterKeyRequired)?;
        let next = keys.next_version().ok_or(StoreError::NoRotation)?;
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rows: Vec<(String, u32, Vec<u8>)> = {
            let mut statement = tx.prepare(
                "SELECT id, version, wrapped FROM data_keys WHERE master_version = ?1 LIMIT ?2",
            )?;
            let rows = statement
                .query_map((current, limit), |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (id, version, wrapped) in rows {
            let rewrapped = keys.rewrap(&wrapped, KeyId::parse(&id)?, version)?;
            tx.prepare_cached(
                "UPDATE data_keys SET wrapped = ?1, master_version = ?2 WHERE id = ?3",
            )?
            .execute((rewrapped, next, &id))?;
        }
        let remaining: i64 = tx.query_row(
            "SELECT count(*) FROM data_keys WHERE master_version = ?1",
            [current],
            |row| row.get(0),
        )?;
        tx.commit()?;
        Ok(remaining as u64)
    }

    pub(crate) fn finish_master_rotation_impl(&mut self, actor: &str) -> Result<u32> {
        let target = self.master_rotation_target_impl()?.ok_or(StoreError::NoRotation)?;
        let current = self.master_key_version_impl()?;
        let (now, simulated) = (self.now(), self.simulated());
        let tx = self.write_tx()?;
        let remaining: i64 = tx.query_row(
            "SELECT count(*) FROM data_keys WHERE master_version <> ?1",
            [target],
            |row| row.get(0),
        )?;
        if remaining > 0 {
            return Err(StoreError::RotationIncomplete { remaining: remaining as u64 });
        }
        tx.execute(
            "INSERT INTO store_meta (key, value) VALUES ('master_key_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [target.to_string()],
        )?;
        tx.execute("DELETE FROM store_meta WHERE key = 'master_rotation'", [])?;
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        let detail = format!("master key rotated from version {current} to {target}");
        audit.append(&tx, AuditEvent::new(actor, "keys.rotate_master").detail(detail))?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(target)
    }

    /// Adds a new version of a tenant's data key. New writes use it; ciphertexts under older
    /// versions stay readable, because each names its key in its header.
    pub(crate) fn rotate_tenant_key_impl(&mut self, tenant: &Tenant, actor: &str) -> Result<u32> {
        let (now, simulated) = (self.now(), self.simulated());
        let keys = self.keys.as_ref().ok_or(StoreError::MasterKeyRequired)?;
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let owner = tenant.id.to_string();
        let version = keys.add_key_version(&*tx, KeyScope::Tenant, &owner, now)?;
        let mut audit = AuditAppender::begin(&tx, now, simulated)?;
        let detail = format!("tenant data key version {version} now seals new writes");
        audit.append(
            &tx,
            AuditEvent::new(actor, "keys.rotate_tenant").tenant(tenant.id).detail(detail),
        )?;
        audit.finish(&tx)?;
        tx.commit()?;
        Ok(version)
    }
}
