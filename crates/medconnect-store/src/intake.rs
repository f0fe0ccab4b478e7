//! Intake forms and ID photos that patients, providers and the Storefront submit through the
//! API, and what the audited store methods return of them.
//!
//! Intake form answers are sealed under the patient link's data key, column `answers_json`,
//! as the import seals consultation notes. ID photos are sealed as [`crate::Store::add_id_photo`]
//! seals them. The stored size and SHA-256 of a photo are of the sealed bytes, so they reveal
//! nothing about the image.

use chrono::{DateTime, Utc};
use medconnect_domain::PhotoId;
use serde::Serialize;
use uuid::Uuid;

use crate::{Result, StoreError};

/// The table, and the column of the associated data, under which answers are sealed.
pub(crate) const INTAKE_TABLE: &str = "intake_forms";
pub(crate) const ANSWERS_COLUMN: &str = "answers_json";

/// The media types an ID photo may have.
pub const ID_PHOTO_CONTENT_TYPES: [&str; 2] = ["image/jpeg", "image/png"];

/// The media type served for a photo stored without one, such as a photo that
/// [`crate::Store::add_id_photo`] stored.
pub const UNKNOWN_PHOTO_CONTENT_TYPE: &str = "application/octet-stream";

/// An intake form to store. It contains PHI, so it has no `Debug`.
pub struct NewIntakeForm {
    /// The form's name, which is not PHI and is stored in plain text.
    pub form: String,
    /// The answers by question id. They are sealed as one JSON document.
    pub answers: serde_json::Map<String, serde_json::Value>,
    pub submitted_at: DateTime<Utc>,
}

/// The metadata of a stored intake form, without its answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(description = "A stored intake form, without its answers.")
)]
pub struct IntakeFormInfo {
    pub id: Uuid,
    pub form: String,
    pub submitted_at: DateTime<Utc>,
}

/// A stored intake form with its decrypted answers. It contains PHI, so it has no `Debug`.
#[derive(Clone, Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(description = "A stored intake form with its decrypted answers.")
)]
pub struct IntakeForm {
    pub id: Uuid,
    pub form: String,
    pub submitted_at: DateTime<Utc>,
    /// Answers by question id: strings, numbers or booleans.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub answers: serde_json::Map<String, serde_json::Value>,
}

/// An ID photo to store: a JPEG or PNG image whose first bytes match its media type. Only
/// [`NewIdPhoto::new`] builds one, so the store never stores an image of another type. It
/// contains PHI, so it has no `Debug`.
pub struct NewIdPhoto {
    bytes: Vec<u8>,
    content_type: &'static str,
}

/// Error returned for an ID photo whose media type is not accepted or does not match its
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdPhoto {
    #[error("an ID photo must be image/jpeg or image/png")]
    UnsupportedType,
    #[error("the photo's bytes are not a {0} image")]
    ContentMismatch(&'static str),
}

impl NewIdPhoto {
    /// Checks that `content_type` (parameters such as `; charset` ignored, compared without
    /// regard to case) is JPEG or PNG and that `bytes` start with that format's signature.
    pub fn new(bytes: Vec<u8>, content_type: &str) -> Result<Self, InvalidIdPhoto> {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        let content_type = ID_PHOTO_CONTENT_TYPES
            .into_iter()
            .find(|known| known.eq_ignore_ascii_case(essence))
            .ok_or(InvalidIdPhoto::UnsupportedType)?;
        if sniff_image(&bytes) != Some(content_type) {
            return Err(InvalidIdPhoto::ContentMismatch(content_type));
        }
        Ok(NewIdPhoto { bytes, content_type })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn content_type(&self) -> &'static str {
        self.content_type
    }
}

/// Returns the media type whose file signature `bytes` start with: JPEG (`FF D8 FF`) or PNG
/// (the 8-byte signature of RFC 2083), or None.
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    const PNG: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(&PNG) {
        Some("image/png")
    } else {
        None
    }
}

/// The metadata of a stored ID photo. `bytes` and `sha256` describe the sealed file, not
/// the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(description = "The metadata of a stored ID photo.")
)]
pub struct IdPhotoInfo {
    pub id: PhotoId,
    /// `image/jpeg` or `image/png`, or `application/octet-stream` for a photo stored without
    /// a media type.
    pub content_type: String,
    /// Size of the encrypted file at rest, which is larger than the image.
    pub bytes: u64,
    /// SHA-256 of the encrypted file at rest, in hex. It is not the digest of the image, so it
    /// reveals nothing about it.
    pub sha256: String,
    pub uploaded_at: DateTime<Utc>,
}

/// The decrypted image of an ID photo and its media type. It contains PHI, so it has no
/// `Debug`.
pub struct IdPhotoContent {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// Returns the JSON document that [`NewIntakeForm::answers`] is sealed as.
pub(crate) fn answers_document(form: &NewIntakeForm) -> String {
    serde_json::Value::Object(form.answers.clone()).to_string()
}

/// Parses the opened answers of the intake form `record`.
pub(crate) fn parse_answers(
    document: &str,
    record: &str,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(document) {
        Ok(serde_json::Value::Object(answers)) => Ok(answers),
        _ => Err(StoreError::Corrupt(format!(
            "{INTAKE_TABLE}.{ANSWERS_COLUMN} of {record} is not a JSON object"
        ))),
    }
}
