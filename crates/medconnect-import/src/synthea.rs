//! The Synthea CSV importer.
//!
//! Rows of `patients.csv` become core profiles linked to the tenant. Profiles are matched on
//! the Synthea patient id, so a second tenant links the same profiles. Rows of
//! `providers.csv` become the tenant's providers, `encounters.csv` rows become
//! consultations and `medications.csv` rows become prescriptions. Rows of `conditions.csv`,
//! `allergies.csv`, `immunizations.csv`, `procedures.csv` and `careplans.csv` become
//! medical-history entries. Each patient's latest encounter end sets
//! `last_medical_encounter_at`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use medconnect_domain::model::{
    ImportBatch, ImportCounts, NewConsultation, NewHistoryEntry, NewPatientProfile,
    NewPrescription, NewProvider, Tenant,
};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant_rounding_up;
use medconnect_store::Store;

use crate::ImportError;

/// The source system recorded on imported profiles.
pub const SOURCE_SYSTEM: &str = "synthea";

/// Files read, with whether each must be present.
const FILES: [(&str, bool); 10] = [
    ("patients.csv", true),
    ("encounters.csv", true),
    ("providers.csv", false),
    ("medications.csv", false),
    ("conditions.csv", false),
    ("allergies.csv", false),
    ("immunizations.csv", false),
    ("procedures.csv", false),
    ("careplans.csv", false),
    ("organizations.csv", false),
];

/// Substances of DEA schedules II to IV that Synthea prescribes, matched case-insensitively
/// against the medication description to flag controlled prescriptions.
const CONTROLLED_SUBSTANCES: [&str; 12] = [
    "oxycodone",
    "hydrocodone",
    "fentanyl",
    "morphine",
    "meperidine",
    "methadone",
    "tramadol",
    "alprazolam",
    "diazepam",
    "lorazepam",
    "methylphenidate",
    "amphetamine",
];

/// Rows read per file, for reporting.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileCounts {
    pub rows: Vec<(String, u64)>,
}

/// Checks an import applies beyond the format itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Rejects encounters that start or end after this instant. Production stores pass the
    /// current time, because a future encounter would stretch retention for no reason.
    pub not_after: Option<DateTime<Utc>>,
}

/// Reads a Synthea CSV folder into a batch, checking every row and reference.
pub fn read_dir(
    dir: &Path,
    options: &ReadOptions,
) -> Result<(ImportBatch, FileCounts), ImportError> {
    if !dir.is_dir() {
        return Err(ImportError::File {
            path: dir.to_owned(),
            message: "not a folder: pass the folder that contains patients.csv and encounters.csv"
                .into(),
        });
    }
    for (name, required) in FILES {
        if required && !dir.join(name).is_file() {
            return Err(ImportError::File {
                path: dir.join(name),
                message: "missing: a Synthea CSV export needs patients.csv and encounters.csv"
                    .into(),
            });
        }
    }
    let mut reader = Reader { dir: dir.to_owned(), counts: FileCounts::default() };
    let mut batch =
        ImportBatch { source_system: SOURCE_SYSTEM.to_owned(), ..ImportBatch::default() };

    let organizations = reader.organizations()?;
    batch.patients = reader.patients()?;
    let patients: HashMap<String, NaiveDate> = batch
        .patients
        .iter()
        .filter_map(|p| {
            Some((p.source_id.clone(), NaiveDate::parse_from_str(&p.birth_date, "%Y-%m-%d").ok()?))
        })
        .collect();
    batch.providers = reader.providers(&organizations)?;
    let providers: HashSet<String> = batch.providers.iter().map(|p| p.source_id.clone()).collect();
    batch.consultations = reader.encounters(&patients, &providers, options)?;
    let encounters: HashMap<String, String> = batch
        .consultations
        .iter()
        .map(|c| (c.source_id.clone(), c.patient_source_id.clone()))
        .collect();
    batch.prescriptions = reader.medications(&encounters)?;
    batch.history = reader.history(&encounters)?;
    Ok((batch, reader.counts))
}

/// Reads a Synthea CSV folder and imports it into one tenant in a single transaction.
pub fn import_dir(
    store: &mut dyn Store,
    tenant: &Tenant,
    dir: &Path,
    options: &ReadOptions,
    policy: &Policy,
    actor: &str,
) -> Result<(ImportCounts, FileCounts), ImportError> {
    let (batch, files) = read_dir(dir, options)?;
    let counts = store.import(tenant, &batch, policy, actor)?;
    tracing::info!(tenant_id = %tenant.id, patients = batch.patients.len(), consultations = counts.consultations, "synthea import committed");
    Ok((counts, files))
}

/// One CSV row with its header, for reading cells by column name.
struct Row<'a> {
    file: &'a str,
    content: &'a [u8],
    byte: u64,
    header: &'a HashMap<String, usize>,
    record: &'a csv::StringRecord,
}

/// Returns the 1-based line of the record that starts at `byte`. The CSV reader reports a
/// record's start before the line ending of the previous record when lines end in CRLF, so
/// line endings at the offset are skipped first.
fn line_at(content: &[u8], byte: u64) -> u64 {
    let mut offset = (byte as usize).min(content.len());
    while offset < content.len() && matches!(content[offset], b'\r' | b'\n') {
        offset += 1;
    }
    1 + content[..offset].iter().filter(|b| **b == b'\n').count() as u64
}

impl Row<'_> {
    fn error(&self, message: impl Into<String>) -> ImportError {
        let line = line_at(self.content, self.byte);
        ImportError::Row { file: self.file.to_owned(), line, message: message.into() }
    }

    fn cell(&self, column: &str) -> Result<&str, ImportError> {
        let index = self
            .header
            .get(column)
            .ok_or_else(|| self.error(format!("missing column {column}")))?;
        self.record
            .get(*index)
            .map(str::trim)
            .ok_or_else(|| self.error(format!("row has no cell for column {column}")))
    }

    fn required(&self, column: &str) -> Result<&str, ImportError> {
        let value = self.cell(column)?;
        if value.is_empty() {
            return Err(self.error(format!("column {column} is empty; it is required")));
        }
        Ok(value)
    }

    fn optional(&self, column: &str) -> Result<Option<String>, ImportError> {
        if !self.header.contains_key(column) {
            return Ok(None);
        }
        let value = self.cell(column)?;
        Ok((!value.is_empty()).then(|| value.to_owned()))
    }

    /// Parses an instant or a date. The cell's value is not echoed, since it may be PHI.
    fn instant(&self, column: &str) -> Result<DateTime<Utc>, ImportError> {
        let value = self.required(column)?;
        parse_instant_rounding_up(value).map_err(|_| {
            self.error(format!(
                "column {column} is not a valid instant or date (expected 2022-07-20T07:13:55Z or 2022-07-20; value not shown because it may contain PHI)"
            ))
        })
    }

    fn optional_instant(&self, column: &str) -> Result<Option<DateTime<Utc>>, ImportError> {
        match self.optional(column)? {
            Some(_) => self.instant(column).map(Some),
            None => Ok(None),
        }
    }

    fn date(&self, column: &str) -> Result<String, ImportError> {
        let value = self.required(column)?;
        NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
            self.error(format!("column {column} is not a valid date (expected 1962-03-01; value not shown because it may contain PHI)"))
        })?;
        Ok(value.to_owned())
    }
}

struct Reader {
    dir: PathBuf,
    counts: FileCounts,
}

impl Reader {
    /// Calls `each` for every data row of a file; a missing optional file yields no rows.
    fn for_each_row(
        &mut self,
        name: &str,
        mut each: impl FnMut(&Row<'_>) -> Result<(), ImportError>,
    ) -> Result<(), ImportError> {
        let path = self.dir.join(name);
        if !path.is_file() {
            return Ok(());
        }
        let content = std::fs::read(&path)
            .map_err(|e| ImportError::File { path: path.clone(), message: e.to_string() })?;
        let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(content.as_slice());
        let header: HashMap<String, usize> = reader
            .headers()
            .map_err(|e| ImportError::Row {
                file: name.to_owned(),
                line: 1,
                message: format!("invalid header: {e}"),
            })?
            .iter()
            .enumerate()
            .map(|(index, column)| (column.trim().to_owned(), index))
            .collect();
        let mut record = csv::StringRecord::new();
        let mut rows = 0;
        loop {
            let byte = reader.position().byte();
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(err) => {
                    let byte = err.position().map_or(byte, |p| p.byte());
                    let message = match err.kind() {
                        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                            format!("row has {len} cells but the header has {expected_len}")
                        }
                        csv::ErrorKind::Utf8 { .. } => "row is not valid UTF-8".to_owned(),
                        _ => "row is not valid CSV".to_owned(),
                    };
                    let line = line_at(&content, byte);
                    return Err(ImportError::Row { file: name.to_owned(), line, message });
                }
            }
            let byte = record.position().map_or(byte, |p| p.byte());
            each(&Row { file: name, content: &content, byte, header: &header, record: &record })?;
            rows += 1;
        }
        self.counts.rows.push((name.to_owned(), rows));
        Ok(())
    }

    fn organizations(&mut self) -> Result<HashMap<String, String>, ImportError> {
        let mut names = HashMap::new();
        self.for_each_row("organizations.csv", |row| {
            names.insert(row.required("Id")?.to_owned(), row.cell("NAME")?.to_owned());
            Ok(())
        })?;
        Ok(names)
    }

    fn patients(&mut self) -> Result<Vec<NewPatientProfile>, ImportError> {
        let mut patients = Vec::new();
        let mut seen = HashSet::new();
        self.for_each_row("patients.csv", |row| {
            let id = row.required("Id")?.to_owned();
            if !seen.insert(id.clone()) {
                return Err(row.error("duplicate patient Id"));
            }
            patients.push(NewPatientProfile {
                source_system: SOURCE_SYSTEM.to_owned(),
                source_id: id,
                given_name: row.required("FIRST")?.to_owned(),
                family_name: row.required("LAST")?.to_owned(),
                birth_date: row.date("BIRTHDATE")?,
                death_date: match row.optional("DEATHDATE")? {
                    // Fixed-width dates order like time, so comparing strings is exact.
                    Some(_) if row.date("DEATHDATE")? < row.date("BIRTHDATE")? => {
                        return Err(row.error("column DEATHDATE is earlier than BIRTHDATE"))
                    }
                    Some(_) => Some(row.date("DEATHDATE")?),
                    None => None,
                },
                sex: row.cell("GENDER")?.to_owned(),
                ssn: row.optional("SSN")?,
                phone: row.optional("PHONE")?,
                email: row.optional("EMAIL")?,
                address_line: row.cell("ADDRESS")?.to_owned(),
                city: row.cell("CITY")?.to_owned(),
                state: row.cell("STATE")?.to_owned(),
                postal_code: row.cell("ZIP")?.to_owned(),
            });
            Ok(())
        })?;
        Ok(patients)
    }

    fn providers(
        &mut self,
        organizations: &HashMap<String, String>,
    ) -> Result<Vec<NewProvider>, ImportError> {
        let mut providers = Vec::new();
        self.for_each_row("providers.csv", |row| {
            let organization = row.cell("ORGANIZATION")?;
            providers.push(NewProvider {
                source_id: row.required("Id")?.to_owned(),
                name: row.required("NAME")?.to_owned(),
                specialty: row.cell("SPECIALITY")?.to_owned(),
                organization: organizations.get(organization).cloned().unwrap_or_default(),
                // Synthea exports no license or DEA numbers; the license state is the
                // provider's practice state.
                license_number: None,
                license_state: row.cell("STATE")?.to_owned(),
                dea_number: None,
            });
            Ok(())
        })?;
        Ok(providers)
    }

    fn encounters(
        &mut self,
        patients: &HashMap<String, NaiveDate>,
        providers: &HashSet<String>,
        options: &ReadOptions,
    ) -> Result<Vec<NewConsultation>, ImportError> {
        let mut consultations = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let check_providers = !providers.is_empty();
        self.for_each_row("encounters.csv", |row| {
            let id = row.required("Id")?.to_owned();
            if !seen.insert(id.clone()) {
                return Err(row.error("duplicate encounter Id"));
            }
            let patient = row.required("PATIENT")?;
            let Some(birth) = patients.get(patient) else {
                return Err(
                    row.error("column PATIENT references a patient that is not in patients.csv")
                );
            };
            let provider = row.optional("PROVIDER")?;
            if check_providers && provider.as_ref().is_some_and(|p| !providers.contains(p)) {
                return Err(
                    row.error("column PROVIDER references a provider that is not in providers.csv")
                );
            }
            let started_at = row.instant("START")?;
            let ended_at = row.optional_instant("STOP")?;
            if ended_at.is_some_and(|end| end < started_at) {
                return Err(row.error("column STOP is earlier than START"));
            }
            if started_at.date_naive() < *birth {
                return Err(row.error("column START is earlier than the patient's BIRTHDATE"));
            }
            let latest = ended_at.unwrap_or(started_at);
            if options.not_after.is_some_and(|limit| latest > limit) {
                return Err(row.error(
                    "the encounter lies in the future; a production store accepts only \
                     encounters that happened",
                ));
            }
            let description = row.cell("DESCRIPTION")?;
            let reason = match row.optional("REASONDESCRIPTION")? {
                Some(reason) => format!("{description}; reason: {reason}"),
                None => description.to_owned(),
            };
            consultations.push(NewConsultation {
                source_id: id,
                patient_source_id: patient.to_owned(),
                provider_source_id: provider,
                status: "completed".to_owned(),
                encounter_class: row.cell("ENCOUNTERCLASS")?.to_owned(),
                reason,
                notes: String::new(),
                started_at,
                ended_at,
            });
            Ok(())
        })?;
        Ok(consultations)
    }

    fn medications(
        &mut self,
        encounters: &HashMap<String, String>,
    ) -> Result<Vec<NewPrescription>, ImportError> {
        let mut prescriptions = Vec::new();
        self.for_each_row("medications.csv", |row| {
            let (patient, encounter) = encounter_of(row, encounters)?;
            let description = row.cell("DESCRIPTION")?.to_owned();
            let lower = description.to_lowercase();
            let dispenses = match row.optional("DISPENSES")? {
                Some(value) => value
                    .parse()
                    .map_err(|_| row.error("column DISPENSES is not a whole number"))?,
                None => 0,
            };
            // NOTE: medication rows with STOP before START are accepted, because Synthea exports
            // such rows (two in the sample set). The stop time is stored as exported.
            prescriptions.push(NewPrescription {
                patient_source_id: patient,
                consultation_source_id: encounter,
                code: row.required("CODE")?.to_owned(),
                controlled: CONTROLLED_SUBSTANCES.iter().any(|s| lower.contains(s)),
                description,
                dispenses,
                started_at: row.instant("START")?,
                stopped_at: row.optional_instant("STOP")?,
            });
            Ok(())
        })?;
        Ok(prescriptions)
    }

    fn history(
        &mut self,
        encounters: &HashMap<String, String>,
    ) -> Result<Vec<NewHistoryEntry>, ImportError> {
        let sources: [(&str, &'static str, &str); 5] = [
            ("conditions.csv", "condition", "START"),
            ("allergies.csv", "allergy", "START"),
            ("immunizations.csv", "immunization", "DATE"),
            ("procedures.csv", "procedure", "START"),
            ("careplans.csv", "care_plan", "START"),
        ];
        let mut entries = Vec::new();
        for (file, kind, start) in sources {
            self.for_each_row(file, |row| {
                let (patient, encounter) = encounter_of(row, encounters)?;
                let started_at = row.instant(start)?;
                let stopped_at = row.optional_instant("STOP")?;
                if stopped_at.is_some_and(|stop| stop < started_at) {
                    return Err(row.error(format!("column STOP is earlier than {start}")));
                }
                entries.push(NewHistoryEntry {
                    patient_source_id: patient,
                    consultation_source_id: encounter,
                    kind,
                    code: row.required("CODE")?.to_owned(),
                    description: row.cell("DESCRIPTION")?.to_owned(),
                    started_at,
                    stopped_at,
                });
                Ok(())
            })?;
        }
        Ok(entries)
    }
}

/// Resolves a row's PATIENT and ENCOUNTER, checking that the encounter belongs to the patient.
fn encounter_of(
    row: &Row<'_>,
    encounters: &HashMap<String, String>,
) -> Result<(String, Option<String>), ImportError> {
    let patient = row.required("PATIENT")?.to_owned();
    let Some(encounter) = row.optional("ENCOUNTER")? else {
        return Err(
            row.error("column ENCOUNTER is empty; every record must belong to an encounter")
        );
    };
    match encounters.get(&encounter) {
        None => {
            Err(row.error("column ENCOUNTER references an encounter that is not in encounters.csv"))
        }
        Some(owner) if *owner != patient => {
            Err(row.error("column ENCOUNTER references another patient's encounter"))
        }
        Some(_) => Ok((patient, Some(encounter))),
    }
}
