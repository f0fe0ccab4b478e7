//! Master key rotation and tenant key versions.

// Stub imports: the implementation narrows them.
#![allow(unused_imports)]

use chrono::{DateTime, Utc};
use medconnect_crypto::AuditSigner;
use medconnect_domain::audit::{AuditEvent, VerifyReport};
use medconnect_domain::checkpoint::{AuditPublicKey, Checkpoint, ExportLine};
use medconnect_domain::model::{HoldScope, ImportBatch, ImportCounts, LegalHold, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::{HoldId, PatientId, PhotoId, SessionId, TenantId};

use super::PgStore;
use crate::keys::Keys;
use crate::*;

#[allow(unused_variables)]
impl PgStore {
    pub(crate) fn set_master_keys_impl(
        &mut self,
        master: medconnect_crypto::MasterKey,
        next: Option<medconnect_crypto::MasterKey>,
    ) -> Result<()> {
        let now = self.now();
        let mut keys = Keys::new(master, next);
        // The index key belongs to no tenant, so only the operator role may create it.
        self.operator_tx(|tx| keys.load_blind_index_key(&mut *tx, now))?;
        self.keys = Some(keys);
        Ok(())
    }

    pub(crate) fn master_key_version_impl(&self) -> Result<u32> {
        unimplemented!("PostgreSQL master_key_version")
    }

    pub(crate) fn master_rotation_target_impl(&self) -> Result<Option<u32>> {
        unimplemented!("PostgreSQL master_rotation_target")
    }

    pub(crate) fn begin_master_rotation_impl(
        &mut self,
        next_version: u32,
        actor: &str,
    ) -> Result<()> {
        unimplemented!("PostgreSQL begin_master_rotation")
    }

    pub(crate) fn rewrap_data_keys_impl(&mut self, limit: u32) -> Result<u64> {
        unimplemented!("PostgreSQL rewrap_data_keys")
    }

    pub(crate) fn finish_master_rotation_impl(&mut self, actor: &str) -> Result<u32> {
        unimplemented!("PostgreSQL finish_master_rotation")
    }

    pub(crate) fn rotate_tenant_key_impl(&mut self, tenant: &Tenant, actor: &str) -> Result<u32> {
        unimplemented!("PostgreSQL rotate_tenant_key")
    }
}
