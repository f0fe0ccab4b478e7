//! Audited writes and reads of intake forms and ID photos. Each runs with its audit entry in
//! one tenant transaction, as the audited reads of `access.rs` do.

use medconnect_domain::model::Tenant;
use medconnect_domain::time::{format_instant, truncate_to_second};
use medconnect_domain::{PatientId, PhotoId};
use uuid::Uuid;

use super::records::{insert_photo, lock_link, open_id_photo, require_link, NewPhotoRow};
use super::PgStore;
use crate::intake::{answers_document, parse_answers, ANSWERS_COLUMN, INTAKE_TABLE};
use crate::keys::{seal_text, KeyScope, Place};
use crate::sqlite::values::{parse_stored_id, parse_stored_instant};
use crate::{
    Access, IdPhotoContent, IdPhotoInfo, IntakeForm, IntakeFormInfo, NewIdPhoto, NewIntakeForm,
    Result, StoreError, UNKNOWN_PHOTO_CONTENT_TYPE,
};

impl PgStore {
    pub(crate) fn submit_intake_form_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
        form: &NewIntakeForm,
        access: &Access,
    ) -> Result<IntakeFormInfo> {
        let keys = self.keys()?;
        let event = access.event(tenant, "intake_form.submit").subject(patient);
        let document = answers_document(form);
        let info = IntakeFormInfo {
            id: Uuid::new_v4(),
            form: form.form.clone(),
            submitted_at: truncate_to_second(form.submitted_at),
        };
        let (id, tenant_text) = (info.id.to_string(), tenant.id.to_string());
        let now = self.now();
        self.audited_read(
            tenant,
            event,
            |tx| {
                // The link stays locked until the form's row commits, so a disposal of the
                // patient cannot remove the link in between.
                let link = lock_link(tx, tenant, patient)?;
                let key = keys.data_key(&mut *tx, KeyScope::Link, &link.to_string(), now)?;
                let place = Place { tenant: &tenant_text, table: INTAKE_TABLE, record: &id };
                let sealed = seal_text(&key, place, ANSWERS_COLUMN, &document)?;
                tx.execute(
                    "INSERT INTO intake_forms (id, tenant_id, link_id, form, answers_json,
                     submitted_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &id,
                        &tenant_text,
                        &link,
                        &info.form,
                        &sealed,
                        &format_instant(info.submitted_at),
                    ],
                )?;
                Ok(info.clone())
            },
            |entry, info| entry.subject(info.id),
        )
    }

    pub(crate) fn read_intake_forms_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<Vec<IntakeForm>> {
        let keys = self.keys()?;
        let event = access.event(tenant, "intake_form.list").subject(patient);
        let tenant_text = tenant.id.to_string();
        self.audited_read(
            tenant,
            event,
            |tx| {
                let link = require_link(tx, tenant, patient)?;
                let rows = tx.query(
                    "SELECT id, form, answers_json, submitted_at FROM intake_forms
                     WHERE tenant_id = $1 AND link_id = $2 ORDER BY submitted_at DESC, id DESC",
                    &[&tenant_text, &link],
                )?;
                let mut forms = Vec::with_capacity(rows.len());
                for row in rows {
                    let id: String = row.get(0);
                    let sealed: Vec<u8> = row.get(2);
                    let place = Place { tenant: &tenant_text, table: INTAKE_TABLE, record: &id };
                    let document = keys.open_text(&mut *tx, place, ANSWERS_COLUMN, &sealed)?;
                    forms.push(IntakeForm {
                        id: parse_stored_id(&id)?,
                        form: row.get(1),
                        submitted_at: parse_stored_instant(row.get(3))?,
                        answers: parse_answers(&document, &id)?,
                    });
                }
                Ok(forms)
            },
            |entry, forms| {
                let detail = format!("{} count={}", entry.detail, forms.len());
                entry.detail(detail)
            },
        )
    }

    pub(crate) fn upload_id_photo_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
        photo: &NewIdPhoto,
        access: &Access,
    ) -> Result<IdPhotoInfo> {
        let keys = self.keys()?;
        let event = access.event(tenant, "id_photo.upload").subject(patient);
        let now = self.now();
        let row = NewPhotoRow {
            id: PhotoId::new(),
            bytes: photo.bytes(),
            content_type: Some(photo.content_type()),
            uploaded_at: truncate_to_second(now),
        };
        self.audited_read(
            tenant,
            event,
            |tx| {
                let link = lock_link(tx, tenant, patient)?;
                let (bytes, sha256) = insert_photo(tx, keys, tenant, link, &row, now)?;
                Ok(IdPhotoInfo {
                    id: row.id,
                    content_type: photo.content_type().to_owned(),
                    bytes,
                    sha256,
                    uploaded_at: row.uploaded_at,
                })
            },
            |entry, info| entry.subject(info.id),
        )
    }

    pub(crate) fn read_id_photos_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<Vec<IdPhotoInfo>> {
        let event = access.event(tenant, "id_photo.list").subject(patient);
        let tenant_text = tenant.id.to_string();
        self.audited_read(
            tenant,
            event,
            |tx| {
                let link = require_link(tx, tenant, patient)?;
                let rows = tx.query(
                    "SELECT id, content_type, bytes, sha256, uploaded_at FROM id_photos
                     WHERE tenant_id = $1 AND link_id = $2 ORDER BY uploaded_at DESC, id DESC",
                    &[&tenant_text, &link],
                )?;
                let mut photos = Vec::with_capacity(rows.len());
                for row in rows {
                    let content_type: Option<String> = row.get(1);
                    photos.push(IdPhotoInfo {
                        id: parse_stored_id(row.get(0))?,
                        content_type: content_type
                            .unwrap_or_else(|| UNKNOWN_PHOTO_CONTENT_TYPE.to_owned()),
                        bytes: row.get::<_, i64>(2) as u64,
                        sha256: row.get(3),
                        uploaded_at: parse_stored_instant(row.get(4))?,
                    });
                }
                Ok(photos)
            },
            |entry, photos| {
                let detail = format!("{} count={}", entry.detail, photos.len());
                entry.detail(detail)
            },
        )
    }

    pub(crate) fn read_patient_id_photo_impl(
        &self,
        tenant: &Tenant,
        patient: PatientId,
        photo: PhotoId,
        access: &Access,
    ) -> Result<IdPhotoContent> {
        let keys = self.keys()?;
        let event = access.event(tenant, "id_photo.read").subject(patient).subject(photo);
        let (photo_text, tenant_text) = (photo.to_string(), tenant.id.to_string());
        self.audited_read(
            tenant,
            event,
            |tx| {
                let link = require_link(tx, tenant, patient)?;
                let row = tx.query_opt(
                    "SELECT content_type FROM id_photos
                     WHERE id = $1 AND tenant_id = $2 AND link_id = $3",
                    &[&photo_text, &tenant_text, &link],
                )?;
                let Some(row) = row else {
                    return Err(StoreError::PhotoNotFound {
                        tenant: tenant.slug.clone(),
                        photo: photo_text.clone(),
                    });
                };
                let content_type: Option<String> = row.get(0);
                Ok(IdPhotoContent {
                    content_type: content_type
                        .unwrap_or_else(|| UNKNOWN_PHOTO_CONTENT_TYPE.to_owned()),
                    bytes: open_id_photo(tx, keys, tenant, photo)?,
                })
            },
            |entry, _| entry,
        )
    }
}
