//! One function per top-level command.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use medconnect_domain::model::HoldScope;
use medconnect_domain::time::parse_instant;
use medconnect_domain::{HoldId, PatientId};
use medconnect_lifecycle::RunOptions;
use medconnect_store::{ClockMode, SqliteStore, Store};

use crate::cli::{
    AuditCommand, EncounterCommand, HoldCommand, ImportCommand, LifecycleCommand, PatientCommand,
    PolicyCommand, TenantCommand,
};
use crate::output::{self, print_json};
use crate::{as_of_or_now, destructive_as_of, load_policy_file, Context, CLI_ACTOR};

pub fn init(context: &Context, simulated_clock: bool) -> Result<ExitCode> {
    let mode = if simulated_clock { ClockMode::Simulated } else { ClockMode::Production };
    let store = SqliteStore::create(
        &context.data_dir,
        mode,
        Box::new(medconnect_domain::clock::SystemClock),
    )?;
    context.write_default_policy()?;
    context.load_policy()?;
    drop(store);
    outln!("created a {} store in {}", mode.as_str(), context.data_dir.display());
    outln!("policy: {}", context.policy_path().display());
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
            outln!("{}: valid, version {}", file.display(), policy.version());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn tenant(context: &Context, command: TenantCommand) -> Result<ExitCode> {
    let mut store = context.open_store()?;
    match command {
        TenantCommand::Create { slug, name } => {
            let name = name.unwrap_or_else(|| slug.clone());
            let tenant = store.create_tenant(&slug, &name, CLI_ACTOR)?;
            outln!("created tenant {} ({})", tenant.slug, tenant.id);
        }
        TenantCommand::List { json } => {
            let tenants = store.tenants()?;
            if json {
                print_json(&tenants)?;
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
    let store = context.open_store()?;
    let PatientCommand::List { tenant, json } = command;
    let tenant = store.tenant_by_slug(&tenant)?;
    let links = store.patient_links(&tenant)?;
    if json {
        print_json(&links)?;
    } else {
        outln!("{:<36}  {:<20}  {:<20}", "patient", "last encounter", "phi retention until");
        for link in links {
            let last = link
                .last_medical_encounter_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "-".into());
            outln!(
                "{:<36}  {:<20}  {}",
                link.patient_id,
                &last[..last.len().min(20)],
                link.phi_retention_until.format("%Y-%m-%dT%H:%M:%SZ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(context: &Context, command: ImportCommand) -> Result<ExitCode> {
    let ImportCommand::Synthea { dir, tenant, json } = command;
    let mut store = context.open_store()?;
    let policy = context.load_policy()?;
    let tenant = store.tenant_by_slug(&tenant)?;
    let started = std::time::Instant::now();
    let (counts, files) =
        medconnect_import::synthea::import_dir(&mut store, &tenant, &dir, &policy, CLI_ACTOR)?;
    if json {
        print_json(
            &serde_json::json!({ "tenant": tenant.slug, "counts": counts, "files": files.rows }),
        )?;
    } else {
        output::print_import(&tenant.slug, &counts, started.elapsed());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn encounter(context: &Context, command: EncounterCommand) -> Result<ExitCode> {
    let EncounterCommand::Record { tenant, patient, at } = command;
    let mut store = context.open_store()?;
    let policy = context.load_policy()?;
    let tenant = store.tenant_by_slug(&tenant)?;
    let patient = PatientId::parse(&patient)?;
    let now = as_of_or_now(None)?;
    let at = match at {
        Some(value) => parse_instant(&value)?,
        None => now,
    };
    if at > now && store.clock_mode() == ClockMode::Production {
        bail!(
            "--at {} is in the future: a production store records only encounters that happened",
            output::instant(at)
        );
    }
    let until = store.record_encounter(&tenant, patient, at, &policy, CLI_ACTOR)?;
    outln!("recorded encounter; phi retention until {}", until.format("%Y-%m-%dT%H:%M:%SZ"));
    Ok(ExitCode::SUCCESS)
}

pub fn lifecycle(context: &Context, command: LifecycleCommand) -> Result<ExitCode> {
    match command {
        LifecycleCommand::Plan { as_of, json } => {
            let store = context.open_store()?;
            let policy = context.load_policy()?;
            let as_of = as_of_or_now(as_of.as_of.as_deref())?;
            let plan = medconnect_lifecycle::plan(&store, &policy, as_of)?;
            if json {
                print_json(&plan)?;
            } else {
                output::print_plan(&plan);
            }
        }
        LifecycleCommand::Explain { tenant, patient, as_of, json } => {
            let store = context.open_store()?;
            let policy = context.load_policy()?;
            let as_of = as_of_or_now(as_of.as_of.as_deref())?;
            let tenant = store.tenant_by_slug(&tenant)?;
            let patient = PatientId::parse(&patient)?;
            let explanation =
                medconnect_lifecycle::explain(&store, &policy, &tenant, patient, as_of)?;
            if json {
                print_json(&explanation)?;
            } else {
                output::print_explanation(&explanation);
            }
        }
        LifecycleCommand::Run { as_of, batch_size, json } => {
            let mut store = context.open_store()?;
            let policy = context.load_policy()?;
            let as_of = destructive_as_of(&mut store, as_of.as_of.as_deref())?;
            let options =
                RunOptions { batch_size: batch_size as usize, actor: CLI_ACTOR.to_owned() };
            let mut progress = output::Progress::new("disposing", !json);
            let report = medconnect_lifecycle::run(
                &mut store,
                &policy,
                as_of,
                &options,
                &mut |done, total| progress.update(done, total),
            )?;
            progress.finish();
            if json {
                print_json(&report)?;
            } else {
                output::print_run(&report);
            }
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
            let hold = store.place_hold(&tenant, scope, &matter, &reason, CLI_ACTOR)?;
            outln!("placed legal hold {} on {}", hold.id, output::hold_scope(&hold, &tenant.slug));
        }
        HoldCommand::Release { id } => {
            let id = HoldId::parse(&id)?;
            let hold = store.release_hold(id, CLI_ACTOR)?;
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
            } else {
                let tenants = store.tenants()?;
                output::print_holds(&holds, &tenants);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn audit(context: &Context, command: AuditCommand) -> Result<ExitCode> {
    let store = context.open_store()?;
    match command {
        AuditCommand::Verify { json } => {
            let report = store.verify_audit()?;
            if json {
                print_json(&report)?;
            } else {
                outln!("{}", report.message);
            }
            Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        AuditCommand::Log { after, limit } => {
            for record in store.audit_entries(after, limit)? {
                let line = serde_json::to_string(&record).context("serializing an audit entry")?;
                outln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
