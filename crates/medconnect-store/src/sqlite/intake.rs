//! Audited writes and reads of intake forms and ID photos. Each runs with its audit entry in
//! one SQLite transaction, as the audited reads of `access.rs` do.

use medconnect_domain::model::Tenant;
use medconnect_domain::time::{format_instant, truncate_to_second};
use medconnect_domain::{PatientId, PhotoId};
use rusqlite::OptionalExtension;
use uuid::Uuid;

use super::records::insert_photo_row;
use super::values::{parse_stored_id, parse_stored_instant};
use super::SqliteStore;
use crate::intake::{answers_document, parse_answers, ANSWERS_COLUMN, INTAKE_TABLE};
use crate::keys::{seal_text, KeyScope, Place};
use crate::{
    Access, IdPhotoContent, IdPhotoInfo, IntakeForm, IntakeFormInfo, NewIdPhoto, NewIntakeForm,
    Result, StoreError, UNKNOWN_PHOTO_CONTENT_TYPE,
};

impl SqliteStore {
    pub(crate) fn submit_intake_form_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        form: &NewIntakeForm,
        access: &Access,
    ) -> Result<IntakeFormInfo> {
        self.keys()?;
        let event = access.event(tenant, "intake_form.submit").subject(patient);
        let document = answers_document(form);
        let info = IntakeFormInfo {
            id: Uuid::new_v4(),
            form: form.form.clone(),
            submitted_at: truncate_to_second(form.submitted_at),
        };
        let now = self.now();
        self.audited_read(
            event,
            |store| {
                let link = store.require_link(tenant, patient)?;
                let key =
                    store.keys()?.data_key(&store.conn, KeyScope::Link, &link.to_string(), now)?;
                let (id, tenant_text) = (info.id.to_string(), tenant.id.to_string());
                let place = Place { tenant: &tenant_text, table: INTAKE_TABLE, record: &id };
                let sealed = seal_text(&key, place, ANSWERS_COLUMN, &document)?;
                store.conn.execute(
                    "INSERT INTO intake_forms (id, tenant_id, link_id, form, answers_json,
                     submitted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![
                        id,
                        tenant_text,
                        link,
                        &info.form,
                        sealed,
                        format_instant(info.submitted_at),
                    ],
                )?;
                Ok(info.clone())
            },
            |entry, info| entry.subject(info.id),
        )
    }

    pub(crate) fn read_intake_forms_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<Vec<IntakeForm>> {
        self.keys()?;
        let event = access.event(tenant, "intake_form.list").subject(patient);
        self.audited_read(
            event,
            |store| store.intake_forms(tenant, patient),
            |entry, forms| {
                let detail = format!("{} count={}", entry.detail, forms.len());
                entry.detail(detail)
            },
        )
    }

    fn intake_forms(&self, tenant: &Tenant, patient: PatientId) -> Result<Vec<IntakeForm>> {
        let link = self.require_link(tenant, patient)?;
        let keys = self.keys()?;
        let tenant_text = tenant.id.to_string();
        let mut statement = self.conn.prepare(
            "SELECT id, form, answers_json, submitted_at FROM intake_forms
             WHERE tenant_id = ?1 AND link_id = ?2 ORDER BY submitted_at DESC, id DESC",
        )?;
        let mut rows = statement.query((&tenant_text, link))?;
        let mut forms = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let sealed: Vec<u8> = row.get(2)?;
            let place = Place { tenant: &tenant_text, table: INTAKE_TABLE, record: &id };
            let document = keys.open_text(&self.conn, place, ANSWERS_COLUMN, &sealed)?;
            forms.push(IntakeForm {
                id: parse_stored_id(&id)?,
                form: row.get(1)?,
                submitted_at: parse_stored_instant(&row.get::<_, String>(3)?)?,
                answers: parse_answers(&document, &id)?,
            });
        }
        Ok(forms)
    }

    pub(crate) fn upload_id_photo_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        photo: &NewIdPhoto,
        access: &Access,
    ) -> Result<IdPhotoInfo> {
        self.keys()?;
        let event = access.event(tenant, "id_photo.upload").subject(patient);
        // A missing patient gets its entry before any file is written.
        let link = match self.require_link(tenant, patient) {
            Ok(link) => link,
            Err(error) => return self.audited_read(event, |_| Err(error), |entry, _| entry),
        };
        let file = self.write_photo_file(tenant, link, photo.bytes())?;
        let uploaded_at = truncate_to_second(self.now());
        let result = self.audited_read(
            event,
            |store| {
                // A disposal may have removed the link since it was looked up, so the
                // transaction looks again before it writes the row.
                if store.require_link(tenant, patient)? != link {
                    return Err(StoreError::PatientNotFound {
                        tenant: tenant.slug.clone(),
                        patient: patient.to_string(),
                    });
                }
                let content_type = Some(photo.content_type());
                insert_photo_row(&store.conn, tenant, link, &file, content_type, uploaded_at)?;
                Ok(IdPhotoInfo {
                    id: file.id,
                    content_type: photo.content_type().to_owned(),
                    bytes: file.bytes,
                    sha256: file.sha256.clone(),
                    uploaded_at,
                })
            },
            |entry, info| entry.subject(info.id),
        );
        if result.is_err() {
            file.remove();
        }
        result
    }

    pub(crate) fn read_id_photos_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        access: &Access,
    ) -> Result<Vec<IdPhotoInfo>> {
        let event = access.event(tenant, "id_photo.list").subject(patient);
        self.audited_read(
            event,
            |store| store.id_photos(tenant, patient),
            |entry, photos| {
                let detail = format!("{} count={}", entry.detail, photos.len());
                entry.detail(detail)
            },
        )
    }

    fn id_photos(&self, tenant: &Tenant, patient: PatientId) -> Result<Vec<IdPhotoInfo>> {
        let link = self.require_link(tenant, patient)?;
        let mut statement = self.conn.prepare(
            "SELECT id, content_type, bytes, sha256, uploaded_at FROM id_photos
             WHERE tenant_id = ?1 AND link_id = ?2 ORDER BY uploaded_at DESC, id DESC",
        )?;
        let mut rows = statement.query((tenant.id.to_string(), link))?;
        let mut photos = Vec::new();
        while let Some(row) = rows.next()? {
            let content_type: Option<String> = row.get(1)?;
            photos.push(IdPhotoInfo {
                id: parse_stored_id(&row.get::<_, String>(0)?)?,
                content_type: content_type.unwrap_or_else(|| UNKNOWN_PHOTO_CONTENT_TYPE.to_owned()),
                bytes: row.get::<_, i64>(2)? as u64,
                sha256: row.get(3)?,
                uploaded_at: parse_stored_instant(&row.get::<_, String>(4)?)?,
            });
        }
        Ok(photos)
    }

    pub(crate) fn read_patient_id_photo_impl(
        &mut self,
        tenant: &Tenant,
        patient: PatientId,
        photo: PhotoId,
        access: &Access,
    ) -> Result<IdPhotoContent> {
        self.keys()?;
        let event = access.event(tenant, "id_photo.read").subject(patient).subject(photo);
        self.audited_read(
            event,
            |store| {
                let link = store.require_link(tenant, patient)?;
                let found: Option<Option<String>> = store
                    .conn
                    .query_row(
                        "SELECT content_type FROM id_photos
                         WHERE id = ?1 AND tenant_id = ?2 AND link_id = ?3",
                        (photo.to_string(), tenant.id.to_string(), link),
                        |row| row.get(0),
                    )
                    .optional()?;
                let Some(content_type) = found else {
                    return Err(StoreError::PhotoNotFound {
                        tenant: tenant.slug.clone(),
                        photo: photo.to_string(),
                    });
                };
                Ok(IdPhotoContent {
                    content_type: content_type
                        .unwrap_or_else(|| UNKNOWN_PHOTO_CONTENT_TYPE.to_owned()),
                    bytes: store.read_id_photo_impl(tenant, photo)?,
                })
            },
            |entry, _| entry,
        )
    }
}
