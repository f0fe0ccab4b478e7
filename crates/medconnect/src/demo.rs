//! `medconnect demo`: builds a simulated-clock store from the Synthea sample data, gives every
//! lifecycle job some work, and runs the lifecycle today and eight years after the latest
//! encounter, ending with audit verification.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Duration, Utc};
use medconnect_crypto::AuditSigningKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{HoldScope, Tenant};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::{add_years, truncate_to_second};
use medconnect_domain::PatientId;
use medconnect_import::synthea::ReadOptions;
use medconnect_lifecycle::{RunOptions, SkipKind};
use medconnect_store::{ClockMode, LinkSummary, SessionTimes, SqliteStore, Store, StoreError};

use crate::cli::DemoArgs;
use crate::output::{self, instant};
use crate::Context;

/// Every third patient of the data set is also a patient of the second tenant.
const SHARED_EVERY: usize = 3;

/// Shared patients who see the second tenant again recently, so their core profile must
/// outlive the first tenant's purge.
const RETURNING_PATIENTS: usize = 8;

pub fn run(context: &Context, args: DemoArgs) -> Result<ExitCode> {
    if let crate::config::StoreLocation::Postgres(_) = context.location {
        anyhow::bail!(
            "the demo builds an embedded store in the data directory, but the configuration \
             selects PostgreSQL: run it with another --data-dir and without \
             MEDCONNECT_DATABASE_URL"
        );
    }
    let synthea = find_synthea(args.synthea)?;
    prepare_data_dir(&context.data_dir, args.fresh)?;
    let today = truncate_to_second(Utc::now());

    step("creating a simulated-clock store", || {
        let store = SqliteStore::create(
            &context.data_dir,
            ClockMode::Simulated,
            Box::new(FixedClock(today)),
        )?;
        let marker = context.data_dir.join(DEMO_MARKER);
        fs::write(&marker, "created by `medconnect demo`\n")
            .with_context(|| format!("writing {}", marker.display()))?;
        context.write_default_policy()?;
        drop(store);
        Ok(format!("in {}", context.data_dir.display()))
    })?;
    let mut store = SqliteStore::open(&context.data_dir)?;
    let key_path = context.master_key_path();
    if std::env::var_os(crate::MASTER_KEY_ENV).is_none() && !key_path.exists() {
        crate::commands::create_key_file(&key_path)?;
    }
    context.load_keys(&mut store)?;
    let (signing_key, _) = context.ensure_signing_key()?;
    store.set_clock(Box::new(FixedClock(today)));
    let policy = context.load_policy()?;

    let northwind = store.create_tenant("northwind", "Northwind Telehealth", &context.actor)?;
    let prairie = store.create_tenant("prairie", "Prairie Family Clinic", &context.actor)?;

    step("importing the Synthea data into tenant northwind", || {
        let (counts, _) = medconnect_import::synthea::import_dir(
            &mut store,
            &northwind,
            &synthea,
            &ReadOptions::default(),
            &policy,
            &context.actor,
        )?;
        Ok(format!(
            "{} patients, {} consultations, {} prescriptions",
            counts.links_created, counts.consultations, counts.prescriptions
        ))
    })?;
    step("importing every third patient into tenant prairie", || {
        let subset = context.data_dir.join("demo-import");
        write_subset(&synthea, &subset)?;
        let result = medconnect_import::synthea::import_dir(
            &mut store,
            &prairie,
            &subset,
            &ReadOptions::default(),
            &policy,
            &context.actor,
        );
        // The subset contains plaintext PHI, so it must not outlive the import.
        fs::remove_dir_all(&subset).with_context(|| format!("removing {}", subset.display()))?;
        let (counts, _) = result?;
        Ok(format!(
            "{} patients, {} of them linked to existing core profiles",
            counts.links_created, counts.profiles_linked
        ))
    })?;

    let northwind_links = store.patient_links(&northwind)?;
    let prairie_links = store.patient_links(&prairie)?;
    let latest = northwind_links
        .iter()
        .filter_map(|l| l.last_medical_encounter_at)
        .max()
        .context("the data set has no encounters")?;

    step("recording recent visits for returning prairie patients", || {
        for (index, link) in prairie_links.iter().take(RETURNING_PATIENTS).enumerate() {
            let at = today - Duration::days(30 + index as i64);
            store.record_encounter(&prairie, link.patient_id, at, &policy, &context.actor)?;
        }
        Ok(format!(
            "{RETURNING_PATIENTS} encounters; their prairie retention now runs to {}",
            instant(add_years(today, policy.defaults.phi_years))
        ))
    })?;

    let held = northwind_links
        .iter()
        .find(|l| !prairie_links.iter().any(|p| p.patient_id == l.patient_id))
        .context("no northwind-only patient to hold")?
        .clone();
    step("adding synthetic ID photos and sessions of varied ages", || {
        let actor = context.actor.as_str();
        add_photos_and_sessions(
            &mut store,
            [&northwind, &prairie],
            &northwind_links,
            &held,
            today,
            actor,
        )
    })?;

    let hold = store.place_hold(
        &northwind,
        HoldScope::Patient(held.patient_id),
        "demo-matter-001",
        "litigation hold for the demo",
        &context.actor,
    )?;
    outln!("- placed legal hold {} on northwind patient {}", hold.id, held.patient_id);

    let later = add_years(latest, 8);
    report_run(&mut store, &policy, today, "today", &signing_key, &context.actor)?;
    report_run(
        &mut store,
        &policy,
        later,
        "eight years after the latest encounter",
        &signing_key,
        &context.actor,
    )?;

    let verify = store.verify_audit_with_key(Some(&crate::public_key_of(&signing_key)))?;
    outln!("\naudit verify: {}", verify.message);
    let returning = prairie_links.first().map(|l| l.patient_id);
    print_next_steps(context, &held, returning, later);
    Ok(if verify.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn report_run(
    store: &mut SqliteStore,
    policy: &Policy,
    as_of: DateTime<Utc>,
    label: &str,
    signer: &AuditSigningKey,
    actor: &str,
) -> Result<()> {
    store.set_clock(Box::new(FixedClock(as_of)));
    let started = Instant::now();
    let options = RunOptions { batch_size: 500, actor: actor.to_owned(), ..RunOptions::default() };
    let mut progress = output::Progress::new("disposing", true);
    let report = medconnect_lifecycle::run_with_signer(
        store,
        policy,
        as_of,
        &options,
        Some(signer),
        &mut |done, total| progress.update(done, total),
    )?;
    progress.finish();
    outln!(
        "\nlifecycle run as of {label} ({}), {} ms:",
        instant(as_of),
        started.elapsed().as_millis()
    );
    output::print_tally(&report.tally, "purged");
    outln!(
        "  purged {}, held {}, kept for another tenant {}, receipts written {}",
        report.tally.purged_total(),
        report.tally.skipped_total(SkipKind::LegalHold),
        report.tally.skipped_total(SkipKind::OtherTenantActive),
        report.tally.receipts
    );
    if let Some(seq) = report.audit_checkpoint_seq {
        outln!("  audit checkpoint signed at entry {seq}");
    }
    Ok(())
}

fn print_next_steps(
    context: &Context,
    held: &LinkSummary,
    returning: Option<PatientId>,
    later: DateTime<Utc>,
) {
    let dir = context.data_dir.display();
    outln!("\nnext, try:");
    outln!("  medconnect --data-dir {dir} lifecycle explain --tenant northwind --patient {} --as-of {}", held.patient_id, instant(later));
    if let Some(patient) = returning {
        outln!(
            "  medconnect --data-dir {dir} lifecycle explain --tenant prairie --patient {patient}"
        );
        outln!("  medconnect --data-dir {dir} patient show --tenant prairie --patient {patient}");
    }
    outln!("  medconnect --data-dir {dir} hold list");
    outln!("  medconnect --data-dir {dir} audit log --limit 5");
    outln!("  medconnect --data-dir {dir} audit verify");
    outln!("  medconnect --data-dir {dir} audit export --out audit-export.jsonl");
    outln!(
        "  medconnect audit verify --export audit-export.jsonl --public-key {dir}/{}",
        crate::AUDIT_PUBLIC_KEY_FILE
    );
}

fn add_photos_and_sessions(
    store: &mut SqliteStore,
    [northwind, prairie]: [&Tenant; 2],
    links: &[LinkSummary],
    held: &LinkSummary,
    today: DateTime<Utc>,
    actor: &str,
) -> Result<String> {
    let (mut photos, mut sessions) = (0, 0);
    for (index, link) in links.iter().take(24).enumerate() {
        let uploaded = today - Duration::days(index as i64 * 10);
        store.add_id_photo(
            northwind,
            link.patient_id,
            &synthetic_photo(index as u64),
            uploaded,
            actor,
        )?;
        photos += 1;
    }
    store.add_id_photo(
        northwind,
        held.patient_id,
        &synthetic_photo(999),
        today - Duration::days(200),
        actor,
    )?;
    photos += 1;
    for (index, link) in links.iter().take(40).enumerate() {
        store.add_session(
            northwind,
            Some(link.patient_id),
            ended_session(today, index as i64 * 5),
        )?;
        sessions += 1;
    }
    store.add_session(northwind, Some(held.patient_id), ended_session(today, 150))?;
    sessions += 1;
    for tenant in [northwind, prairie] {
        for index in 0..20 {
            store.add_session(tenant, None, ended_session(today, index * 10))?;
            sessions += 1;
        }
        let active = SessionTimes {
            started_at: today - Duration::hours(1),
            expires_at: today + Duration::hours(11),
            ended_at: None,
        };
        store.add_session(tenant, None, active)?;
        sessions += 1;
    }
    Ok(format!("{photos} photos, {sessions} sessions"))
}

fn ended_session(today: DateTime<Utc>, days_ago: i64) -> SessionTimes {
    let ended = today - Duration::days(days_ago);
    SessionTimes {
        started_at: ended - Duration::hours(1),
        expires_at: ended + Duration::hours(11),
        ended_at: Some(ended),
    }
}

/// Bytes that stand in for a scanned ID: a plain marker and a deterministic pseudo-random body.
fn synthetic_photo(seed: u64) -> Vec<u8> {
    let mut bytes = b"SYNTHETIC ID PHOTO - DEMO DATA, NOT A REAL DOCUMENT\n".to_vec();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..4096 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.push(state as u8);
    }
    bytes
}

/// Copies the CSV rows of every third patient into `target`; files without a PATIENT column
/// are copied whole.
fn write_subset(source: &Path, target: &Path) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let mut keep: HashSet<String> = HashSet::new();
    let mut reader = csv::Reader::from_path(source.join("patients.csv"))?;
    for (index, record) in reader.records().enumerate() {
        let record = record?;
        if index % SHARED_EVERY == 0 {
            keep.insert(record.get(0).unwrap_or_default().to_owned());
        }
    }
    for entry in fs::read_dir(source)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "csv") {
            continue;
        }
        let mut reader = csv::Reader::from_path(&path)?;
        let headers = reader.headers()?.clone();
        let key = if path.file_name().is_some_and(|n| n == "patients.csv") {
            Some(0)
        } else {
            headers.iter().position(|h| h == "PATIENT")
        };
        let mut writer = csv::Writer::from_path(target.join(path.file_name().unwrap_or_default()))?;
        writer.write_record(&headers)?;
        for record in reader.records() {
            let record = record?;
            if key.is_none_or(|k| keep.contains(record.get(k).unwrap_or_default())) {
                writer.write_record(&record)?;
            }
        }
        writer.flush()?;
    }
    Ok(())
}

fn find_synthea(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    let candidates =
        [PathBuf::from("../shared/data/synthea"), PathBuf::from("shared/data/synthea")];
    candidates.iter().find(|c| c.join("patients.csv").is_file()).cloned().with_context(|| {
        "Synthea sample data not found in ../shared/data/synthea or shared/data/synthea: pass --synthea DIR".to_owned()
    })
}

/// Marks a data directory as created by the demo, so that `--fresh` may replace it.
const DEMO_MARKER: &str = ".medconnect-demo";

/// Entries of a data directory that the demo creates and `--fresh` removes. Anything else
/// in the directory is left alone.
const DEMO_ENTRIES: [&str; 8] = [
    "medconnect.db",
    "medconnect.db-wal",
    "medconnect.db-shm",
    "policy.toml",
    "blobs",
    "keys",
    crate::AUDIT_PUBLIC_KEY_FILE,
    DEMO_MARKER,
];

fn prepare_data_dir(dir: &Path, fresh: bool) -> Result<()> {
    let is_demo = dir.join(DEMO_MARKER).is_file();
    match SqliteStore::open(dir) {
        Err(StoreError::NotInitialized(_)) => Ok(()),
        Ok(store) if fresh && is_demo && store.clock_mode() == ClockMode::Simulated => {
            drop(store);
            remove_demo_entries(dir)
        }
        Ok(store) if fresh && store.clock_mode() == ClockMode::Simulated => bail!(
            "{} contains a simulated store that the demo did not create, so --fresh leaves it \
             alone: pass another --data-dir",
            dir.display()
        ),
        Ok(store) if store.clock_mode() == ClockMode::Production => bail!(
            "{} contains a production store, which the demo never modifies: pass another --data-dir",
            dir.display()
        ),
        Ok(_) => bail!(
            "{} already contains a demo store: pass --fresh to replace it, or another --data-dir",
            dir.display()
        ),
        Err(err) => Err(err.into()),
    }
}

fn remove_demo_entries(dir: &Path) -> Result<()> {
    for entry in DEMO_ENTRIES {
        let path = dir.join(entry);
        let removed =
            if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        match removed {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

fn step(label: &str, work: impl FnOnce() -> Result<String>) -> Result<()> {
    step_value(label, || work().map(|message| ((), message)))
}

fn step_value<T>(label: &str, work: impl FnOnce() -> Result<(T, String)>) -> Result<T> {
    let started = Instant::now();
    outln!("- {label} ...");
    let (value, message) = work()?;
    outln!("  done in {} ms: {message}", started.elapsed().as_millis());
    Ok(value)
}
