//! One function per top-level command.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use medconnect_crypto::{AuditSigner, KeyFileProvider, KeyProvider};
use medconnect_domain::model::HoldScope;
use medconnect_domain::time::parse_instant;
use medconnect_domain::{HoldId, PatientId};
use medconnect_lifecycle::RunOptions;
use medconnect_store::{ClockMode, PgStore, SqliteStore, Store, StoreError};

use crate::cli::{
    AuditCommand, DbCommand, EncounterCommand, HoldCommand, ImportCommand, LifecycleCommand,
    PatientCommand, PolicyCommand, TenantCommand,
};
use crate::config::StoreLocation;
use crate::output::{self, print_json};
use crate::{
    as_of_or_now, destructive_as_of, load_policy_file, public_key_of, read_public_key, Context,
};

pub fn init(context: &Context, simulated_clock: bool, admin_url: Option<&str>) -> Result<ExitCode> {
    let mode = if simulated_clock { ClockMode::Simulated } else { ClockMode::Production };
    let clock = Box::new(medconnect_domain::clock::SystemClock);
    let (place, keys) = match &context.location {
        StoreLocation::Embedded => {
            SqliteStore::create(&context.data_dir, mode, clock)?;
            context.write_default_policy()?;
            context.load_policy()?;
            (context.data_dir.display().to_string(), prepare_init_keys(context)?)
        }
        StoreLocation::Postgres(config) => {
            // The keys and the policy come first: a store in a shared database without its
            // master key could not be opened, and `init` would refuse to create it again.
            std::fs::create_dir_all(&context.data_dir)
                .with_context(|| format!("creating {}", context.data_dir.display()))?;
            context.write_default_policy()?;
            load_policy_file(&context.policy_path())?;
            let keys = prepare_init_keys(context)?;
            let admin = admin_url_or_default(&config.database_url, admin_url)?;
            PgStore::create(config, &admin, mode, clock)?;
            let place = format!(
                "PostgreSQL schema {} (keys and policy in {})",
                config.schema,
                context.data_dir.display()
            );
            (place, keys)
        }
    };
    outln!("created a {} store in {place}", mode.as_str());
    outln!("policy: {}", context.policy_path().display());
    for line in keys {
        outln!("{line}");
    }
    outln!(
        "audit public key: {} (hand it to auditors to verify exports)",
        context.audit_public_key_path().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Creates the master key and the audit signing key of a new store unless they exist, and
/// returns lines that say which were created.
fn prepare_init_keys(context: &Context) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let key_path = context.master_key_path();
    if std::env::var_os(crate::MASTER_KEY_ENV).is_some() {
        lines.push(format!("master key: from {}", crate::MASTER_KEY_ENV));
    } else if key_path.exists() {
        KeyFileProvider::new(&key_path).master_key()?;
        lines.push(format!("master key: {} (existing)", key_path.display()));
    } else {
        create_key_file(&key_path)?;
        lines.push(format!("master key: {} (new)", key_path.display()));
        lines.push(
            "keep a copy of the master key apart from the data: without it the data is unreadable"
                .to_owned(),
        );
    }
    let (signing_key, created) = context.ensure_signing_key()?;
    let state = if created { "new" } else { "existing" };
    lines.push(format!("audit signing key: {} ({state})", signing_key.path().display()));
    Ok(lines)
}

/// Returns the admin URL given, else `database_url` with the user `postgres`.
fn admin_url_or_default(database_url: &str, given: Option<&str>) -> Result<String> {
    if let Some(url) = given {
        return Ok(url.to_owned());
    }
    let Some(rest) = database_url
        .strip_prefix("postgres://")
        .or_else(|| database_url.strip_prefix("postgresql://"))
    else {
        bail!(
            "pass --admin-url postgres://USER@HOST:PORT/DATABASE, naming a role that may \
             create roles and schemas (database_url is not in URL form, so no default can be \
             derived from it)"
        );
    };
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    Ok(format!("postgres://postgres@{host}"))
}

pub fn db(context: &Context, command: DbCommand) -> Result<ExitCode> {
    match command {
        DbCommand::Status { json } => {
            let store = context.open_store()?;
            let info = store.info()?;
            if json {
                print_json(&serde_json::json!({
                    "backend": info.backend,
                    "schema_version": info.schema_version,
                    "clock": info.clock,
                    "created_at": info.created_at,
                    "location": info.location,
                    "applied_policy_version": store.applied_policy_version()?,
                }))?;
            } else {
                outln!("backend: {}", info.backend);
                outln!("location: {}", info.location);
                outln!("schema version: {}", info.schema_version);
                outln!("clock: {}", info.clock.as_str());
            }
        }
        DbCommand::Migrate { admin_url } => match &context.location {
            StoreLocation::Embedded => {
                let store = SqliteStore::open(&context.data_dir)?;
                outln!(
                    "the embedded store migrates itself when opened: schema version {}",
                    store.info()?.schema_version
                );
            }
            StoreLocation::Postgres(config) => {
                let admin = admin_url_or_default(&config.database_url, admin_url.as_deref())?;
                let (before, after) = PgStore::migrate(config, &admin)?;
                if before == after {
                    outln!("schema {} is at version {after}: nothing to do", config.schema);
                } else {
                    outln!("schema {} migrated from version {before} to {after}", config.schema);
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

pub fn policy(context: &Context, command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::Show { json } => {
            let policy = context.load_policy()?;
            if json {
                print_json(&serde_json::json!({
                    "file": context.policy_path(),
                    "version": policy.version(),
                    "policy": policy,
                }))?;
            } else {
                output::print_policy(&policy, &context.policy_path());
            }
        }
        PolicyCommand::Check { file } => {
            let policy = load_policy_file(&file)?;
            if let Ok(store) = context.open_store() {
                let tenants: Vec<String> = store.tenants()?.into_iter().map(|t| t.slug).collect();
                if let Some(unknown) = policy.tenants.keys().find(|slug| !tenants.contains(slug)) {
                    return Err(StoreError::PolicyUnknownTenant(unknown.clone()).into());
                }
            }
            outln!("{}: valid, version {}", file.display(), policy.version());
        }
        PolicyCommand::Apply { allow_shorter } => {
            let mut store = context.open_store()?;
            let policy = context.load_policy()?;
            let applied = store.apply_policy(&policy, &context.actor, allow_shorter)?;
            outln!(
                "policy {} in force: retention of {} patient links lengthened, {} shortened",
                policy.version(),
                applied.lengthened,
                applied.shortened
            );
        }
        PolicyCommand::Default => {
            outln!("{}", medconnect_domain::policy::DEFAULT_POLICY_TOML.trim_end());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn tenant(context: &Context, command: TenantCommand) -> Result<ExitCode> {
    let mut store = context.open_store()?;
    match command {
        TenantCommand::Create { slug, name } => {
            let name = name.unwrap_or_else(|| slug.clone());
            let tenant = store.create_tenant(&slug, &name, &context.actor)?;
            outln!("created tenant {} ({})", tenant.slug, tenant.id);
        }
        TenantCommand::List { json } => {
            let tenants = store.tenants()?;
            if json {
                print_json(&tenants)?;
            } else if tenants.is_empty() {
                outln!("no tenants: create one with `medconnect tenant create SLUG`");
            } else {
                for tenant in tenants {
                    outln!("{:<20} {}  {}", tenant.slug, tenant.id, tenant.name);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn patient(context: &Context, command: PatientCommand) -> Result<ExitCode> {
    match command {
        PatientCommand::Show { tenant, patient, json } => {
            let store = context.open_store_with_key()?;
            let tenant = store.tenant_by_slug(&tenant)?;
            let profile = store.patient_profile(&tenant, PatientId::parse(&patient)?)?;
            if json {
                print_json(&profile)?;
            } else {
                output::print_profile(&profile);
            }
        }
        PatientCommand::Find { tenant, source, source_id } => {
            let store = context.open_store_with_key()?;
            let tenant = store.tenant_by_slug(&tenant)?;
            match store.find_patient(&tenant, &source, &source_id)? {
                Some(patient) => outln!("{patient}"),
                None => bail!(
                    "no patient of tenant {:?} has that {source} id: check the id, or the \
                     patient's records were purged (`medconnect audit log` lists disposals)",
                    tenant.slug
                ),
            }
        }
        PatientCommand::List { tenant, json } => {
            let store = context.open_store()?;
            let policy = context.load_policy()?;
            let tenant = store.tenant_by_slug(&tenant)?;
            let mut links = store.patient_links(&tenant)?;
            for link in &mut links {
                link.phi_retention_until =
                    policy.phi_retention_until(&link.tenant_slug, link.retention_basis());
            }
            if json {
                print_json(&links)?;
            } else {
                output::print_links(&links, &policy.version());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(context: &Context, command: ImportCommand) -> Result<ExitCode> {
    let ImportCommand::Synthea { dir, tenant, json } = command;
    let mut store = context.open_store_with_key()?;
    let policy = context.load_policy()?;
    let tenant = store.tenant_by_slug(&tenant)?;
    let started = std::time::Instant::now();
    // A production store accepts only encounters that happened; a simulated one may hold
    // encounters ahead of the real clock.
    let not_after =
        (store.info()?.clock == ClockMode::Production).then(|| as_of_or_now(None)).transpose()?;
    let options = medconnect_import::synthea::ReadOptions { not_after };
    let (counts, files) = medconnect_import::synthea::import_dir(
        &mut *store,
        &tenant,
        &dir,
        &options,
        &policy,
        &context.actor,
    )?;
    let now = as_of_or_now(None)?;
    let past_retention = store
        .patient_links(&tenant)?
        .iter()
        .filter(|l| policy.phi_retention_until(&l.tenant_slug, l.retention_basis()) <= now)
        .count();
    if json {
        print_json(&serde_json::json!({
            "tenant": tenant.slug,
            "counts": counts,
            "files": files.rows,
            "past_retention": past_retention,
        }))?;
    } else {
        output::print_import(&tenant.slug, &counts, started.elapsed());
    }
    if past_retention > 0 {
        eprintln!(
            "warning: {past_retention} patients of tenant {} are already past retention; the \
             next `medconnect lifecycle run` purges them unless a legal hold covers them",
            tenant.slug
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn encounter(context: &Context, command: EncounterCommand) -> Result<ExitCode> {
    let EncounterCommand::Record { tenant, patient, at } = command;
    let mut store = context.open_store_with_key()?;
    let policy = context.load_policy()?;
    let tenant = store.tenant_by_slug(&tenant)?;
    let patient = PatientId::parse(&patient)?;
    let now = as_of_or_now(None)?;
    let at = match at {
        Some(value) => parse_instant(&value)?,
        None => now,
    };
    if at > now && store.info()?.clock == ClockMode::Production {
        bail!(
            "--at {} is in the future: a production store records only encounters that happened",
            output::instant(at)
        );
    }
    let until = store.record_encounter(&tenant, patient, at, &policy, &context.actor)?;
    outln!("recorded encounter; phi retention until {}", until.format("%Y-%m-%dT%H:%M:%SZ"));
    Ok(ExitCode::SUCCESS)
}

pub fn lifecycle(context: &Context, command: LifecycleCommand) -> Result<ExitCode> {
    match command {
        LifecycleCommand::Plan { as_of, json } => {
            let store = context.open_store()?;
            let policy = context.load_policy()?;
            let as_of = as_of_or_now(as_of.as_of.as_deref())?;
            let plan = medconnect_lifecycle::plan(&*store, &policy, as_of)?;
            if json {
                print_json(&plan)?;
            } else {
                output::print_plan(&plan);
            }
            if store.applied_policy_version()?.as_deref() != Some(plan.policy_version.as_str()) {
                eprintln!(
                    "note: policy {} is not yet applied to the stored retention instants; the \
                     next run applies it (or run `medconnect policy apply`)",
                    plan.policy_version
                );
            }
        }
        LifecycleCommand::Explain { tenant, patient, as_of, json } => {
            let store = context.open_store()?;
            let policy = context.load_policy()?;
            let as_of = as_of_or_now(as_of.as_of.as_deref())?;
            let tenant = store.tenant_by_slug(&tenant)?;
            let patient = PatientId::parse(&patient)?;
            let explanation =
                match medconnect_lifecycle::explain(&*store, &policy, &tenant, patient, as_of) {
                    Err(medconnect_lifecycle::LifecycleError::Store(
                        StoreError::PatientNotFound { .. },
                    )) => return explain_disposed(&*store, &tenant, patient, json),
                    other => other?,
                };
            if json {
                print_json(&explanation)?;
            } else {
                output::print_explanation(&explanation);
            }
        }
        LifecycleCommand::Run { as_of, batch_size, json } => {
            let mut store = context.open_store()?;
            let policy = context.load_policy()?;
            let as_of = destructive_as_of(&mut *store, as_of.as_of.as_deref())?;
            let options = RunOptions {
                batch_size: batch_size as usize,
                actor: context.actor.clone(),
                ..RunOptions::default()
            };
            let signer = context.signing_key_or_warn(
                "this run neither removes audit entries past retention nor signs a checkpoint",
            );
            let mut progress = output::Progress::new("disposing", !json);
            let report = medconnect_lifecycle::run_with_signer(
                &mut *store,
                &policy,
                as_of,
                &options,
                signer.as_ref().map(|key| key as &dyn AuditSigner),
                &mut |done, total| progress.update(done, total),
            )?;
            progress.finish();
            if json {
                print_json(&report)?;
            } else {
                output::print_run(&report);
            }
            crate::backup::sync_ledger_after_run(context, &*store)?;
        }
        LifecycleCommand::Status { limit, json } => {
            let store = context.open_store()?;
            let runs = store.runs(limit)?;
            if json {
                print_json(&runs)?;
            } else {
                output::print_runs(&runs);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn hold(context: &Context, command: HoldCommand) -> Result<ExitCode> {
    let mut store = context.open_store()?;
    match command {
        HoldCommand::Place { tenant, patient, whole_tenant, matter, reason } => {
            let tenant = store.tenant_by_slug(&tenant)?;
            let scope = match (patient, whole_tenant) {
                (Some(patient), false) => HoldScope::Patient(PatientId::parse(&patient)?),
                (None, true) => HoldScope::WholeTenant,
                _ => bail!("pass exactly one of --patient ID and --whole-tenant"),
            };
            if matter.trim().is_empty() || reason.trim().is_empty() {
                bail!("--matter and --reason must not be empty: an auditor needs both");
            }
            let hold = store.place_hold(&tenant, scope, &matter, &reason, &context.actor)?;
            outln!("placed legal hold {} on {}", hold.id, output::hold_scope(&hold, &tenant.slug));
        }
        HoldCommand::Release { id } => {
            let id = HoldId::parse(&id)?;
            let hold = store.release_hold(None, id, &context.actor)?;
            outln!(
                "released legal hold {}; the next run purges what it protected if expired",
                hold.id
            );
        }
        HoldCommand::List { tenant, all, json } => {
            let tenant = tenant.map(|slug| store.tenant_by_slug(&slug)).transpose()?;
            let holds = store.holds(tenant.map(|t| t.id), all)?;
            if json {
                print_json(&holds)?;
            } else if holds.is_empty() && !all {
                outln!("no active legal holds (--all includes released ones)");
            } else {
                let tenants = store.tenants()?;
                output::print_holds(&holds, &tenants);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn audit(context: &Context, command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify { export: Some(file), public_key, json } => {
            let key_file = public_key.context("--export needs --public-key FILE")?;
            let key = read_public_key(&key_file)?;
            // TODO: the whole export is read into memory; a log of many millions of entries
            // needs a streaming reader.
            let bytes = std::fs::read(&file)
                .with_context(|| format!("reading export file {}", file.display()))?;
            let report = medconnect_domain::checkpoint::verify_export(&bytes, &key);
            print_verify(&report, json)
        }
        AuditCommand::Verify { export: None, public_key, json } => {
            let store = context.open_store()?;
            let default_path = context.audit_public_key_path();
            let key = match public_key {
                Some(path) => Some(read_public_key(&path)?),
                None if default_path.exists() => Some(read_public_key(&default_path)?),
                None => None,
            };
            let report = store.verify_audit_with_key(key.as_ref())?;
            if key.is_none() {
                eprintln!(
                    "note: checkpoint signatures were not checked: {} does not exist; pass \
                     --public-key FILE",
                    default_path.display()
                );
            }
            print_verify(&report, json)
        }
        AuditCommand::Checkpoint { json } => {
            let signer = context.load_signing_key()?;
            let mut store = context.open_store()?;
            let signed = store.sign_audit_checkpoint(&signer)?;
            if json {
                print_json(&signed)?;
            } else {
                let checkpoint = &signed.checkpoint;
                let verb = if signed.created { "signed" } else { "already signed, at" };
                outln!(
                    "audit entry {} {verb} {} ({} entries in the log up to it, public key {})",
                    checkpoint.seq,
                    checkpoint.at,
                    checkpoint.entries,
                    checkpoint.public_key
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { out, json } => export(context, &out, json),
        AuditCommand::Keygen => {
            let path = context.audit_signing_key_path();
            if path.exists() {
                bail!(
                    "audit signing key {} already exists: keep it, since its public key verifies \
                     the checkpoints signed so far",
                    path.display()
                );
            }
            context.open_store()?;
            let (key, _) = context.ensure_signing_key()?;
            outln!("audit signing key: {} (new)", key.path().display());
            outln!(
                "audit public key: {} (hand it to auditors to verify exports)",
                context.audit_public_key_path().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Log { after, tail, limit } => {
            let store = context.open_store()?;
            let after = match tail {
                Some(count) => store.audit_tail_start(count)?,
                None => after,
            };
            for record in store.audit_entries(after, limit)? {
                let line = serde_json::to_string(&record).context("serializing an audit entry")?;
                outln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_verify(report: &medconnect_domain::audit::VerifyReport, json: bool) -> Result<ExitCode> {
    if json {
        print_json(report)?;
    } else {
        outln!("{}", report.message);
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `audit export`: signs the head when the key is available, then writes the log.
fn export(context: &Context, out: &Path, json: bool) -> Result<ExitCode> {
    let mut store = context.open_store()?;
    let signer = context.signing_key_or_warn("the head of the exported log is not signed now");
    let public_key = match &signer {
        Some(signer) => {
            store.sign_audit_checkpoint(signer)?;
            Some(public_key_of(signer))
        }
        None if context.audit_public_key_path().exists() => {
            Some(read_public_key(&context.audit_public_key_path())?)
        }
        None => None,
    };
    let file =
        std::fs::OpenOptions::new().write(true).create_new(true).open(out).with_context(|| {
            format!("creating export file {} (an existing file is never replaced)", out.display())
        })?;
    let mut writer = std::io::BufWriter::new(file);
    let io_error = |source| StoreError::Io { path: out.to_owned(), source };
    let written = store
        .export_audit(public_key.as_ref(), &mut |line| {
            writeln!(writer, "{}", line.to_json()).map_err(io_error)
        })
        .map_err(anyhow::Error::from)
        .and_then(|summary| {
            let file = writer.into_inner().map_err(|err| io_error(err.into_error()))?;
            file.sync_all().map_err(io_error)?;
            Ok(summary)
        });
    let summary = match written {
        Ok(summary) => summary,
        Err(err) => {
            // A partial export would only fail verification later; remove it now.
            let _ = std::fs::remove_file(out);
            return Err(err);
        }
    };
    if json {
        print_json(&serde_json::json!({ "file": out, "export": summary }))?;
    } else {
        outln!(
            "exported {} audit entries (seq {} to {}) and {} checkpoints to {}",
            summary.entries,
            summary.first_seq.unwrap_or(0),
            summary.head_seq.unwrap_or(0),
            summary.checkpoints,
            out.display()
        );
    }
    if summary.signed_seq != summary.head_seq {
        eprintln!(
            "warning: the last entries of the export are not covered by a signed checkpoint, \
             so `audit verify --export` fails on it: export again with the audit signing key"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Explains a patient that is not linked to the tenant: purged, with its receipts, or never
/// linked.
fn explain_disposed(
    store: &dyn Store,
    tenant: &medconnect_domain::model::Tenant,
    patient: PatientId,
    json: bool,
) -> Result<ExitCode> {
    let tenant_id = tenant.id.to_string();
    let receipts: Vec<_> = store
        .receipts_for(&patient.to_string())?
        .into_iter()
        .filter(|r| {
            let category = r.body["receipt"]["category"].as_str();
            r.body["tenant_id"].as_str() == Some(tenant_id.as_str())
                || category == Some("patient_profile")
        })
        .collect();
    if !receipts.iter().any(|r| r.body["tenant_id"].as_str() == Some(tenant_id.as_str())) {
        return Err(StoreError::PatientNotFound {
            tenant: tenant.slug.clone(),
            patient: patient.to_string(),
        }
        .into());
    }
    if json {
        print_json(&serde_json::json!({
            "patient_id": patient,
            "tenant": tenant.slug,
            "disposed": receipts,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "patient {patient} is no longer linked to tenant {}: its records were purged",
        tenant.slug
    );
    for record in receipts {
        let receipt = &record.body["receipt"];
        let field = |value: &serde_json::Value| value.as_str().unwrap_or("?").to_owned();
        outln!(
            "  audit entry {}: {} disposed at {} by rule {} (retention until {}, policy {})",
            record.seq,
            field(&receipt["category"]),
            field(&record.body["at"]),
            field(&receipt["rule"]),
            field(&receipt["retention_until"]),
            field(&receipt["policy_version"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates a master key file with mode 0600 in a folder with mode 0700.
pub fn create_key_file(path: &Path) -> Result<()> {
    prepare_key_folder(path)?;
    KeyFileProvider::create(path)?;
    Ok(())
}

/// Creates the folder of a key file, if needed, and restricts it to mode 0700.
pub fn prepare_key_folder(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;

    if let Some(folder) = path.parent().filter(|folder| !folder.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", folder.display()))?;
    }
    Ok(())
}
