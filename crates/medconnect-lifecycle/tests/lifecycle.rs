//! Lifecycle behaviour on real stores of both backends: retention edges, holds,
//! cross-tenant protection, receipts and idempotence.

use chrono::{DateTime, Utc};
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{
    Category, HoldScope, ImportBatch, NewConsultation, NewPatientProfile, Tenant,
};
use medconnect_domain::policy::{Policy, DEFAULT_POLICY_TOML};
use medconnect_domain::time::parse_instant;
use medconnect_domain::PatientId;
use medconnect_lifecycle::{plan, run, Decision, RunOptions, RunReport, SkipKind};
use medconnect_store::backend_tests;
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{
    DisposalContext, DisposalOutcome, NewUser, Role, SessionTimes, SkipReason, UserRef,
};

const ACTOR: &str = "test";

backend_tests!(
    retention_edges_table,
    tenant_override_lengthens_retention,
    new_encounter_extends_retention,
    older_encounter_does_not_shorten_retention,
    patient_hold_covers_every_category,
    whole_tenant_hold_spares_only_that_tenant,
    released_hold_purges_on_next_run,
    hold_placed_after_plan_wins,
    encounter_after_plan_wins,
    shared_profile_outlives_first_tenant,
    held_link_keeps_shared_profile,
    both_links_expiring_write_one_profile_receipt,
    receipts_describe_what_was_destroyed,
    second_run_disposes_nothing,
    session_retention_starts_at_end_or_expiry,
    platform_sessions_purged_by_run,
    plan_uses_policy_in_force,
    run_rejects_unapplied_shortening,
    policy_for_unknown_tenant_is_rejected,
    mismatched_profile_is_not_linked,
    hold_on_purged_patient_is_rejected,
);

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

struct Fixture {
    store: TestStore,
    policy: Policy,
}

impl Fixture {
    fn new(backend: Backend) -> Self {
        Self::with_policy(backend, Policy::builtin())
    }

    fn with_policy(backend: Backend, policy: Policy) -> Self {
        let mut store = backend.create(Box::new(FixedClock(at("2020-01-01T00:00:00Z"))));
        store
            .set_master_keys(medconnect_crypto::MasterKey::generate(1).expect("master key"), None)
            .expect("keys");
        Fixture { store, policy }
    }

    fn tenant(&mut self, slug: &str) -> Tenant {
        self.store.create_tenant(slug, slug, ACTOR).expect("tenant created")
    }

    /// Imports one synthetic patient with one encounter ending at `last_encounter`. The same
    /// `source_id` in another tenant links the same core profile.
    fn patient(&mut self, tenant: &Tenant, source_id: &str, last_encounter: &str) -> PatientId {
        let end = at(last_encounter);
        let batch = ImportBatch {
            source_system: "test".into(),
            patients: vec![NewPatientProfile {
                source_system: "test".into(),
                source_id: source_id.into(),
                given_name: "Test1".into(),
                family_name: "Patient1".into(),
                birth_date: "1970-01-01".into(),
                sex: "F".into(),
                ..NewPatientProfile::default()
            }],
            consultations: vec![NewConsultation {
                source_id: format!("{source_id}-enc"),
                patient_source_id: source_id.into(),
                provider_source_id: None,
                status: "completed".into(),
                encounter_class: "virtual".into(),
                reason: "check-up".into(),
                notes: String::new(),
                started_at: end - chrono::Duration::minutes(20),
                ended_at: Some(end),
            }],
            ..ImportBatch::default()
        };
        let before: Vec<PatientId> =
            self.store.patient_links(tenant).expect("links").iter().map(|l| l.patient_id).collect();
        self.store.import(tenant, &batch, &self.policy, ACTOR).expect("import");
        self.store
            .patient_links(tenant)
            .expect("links")
            .into_iter()
            .map(|l| l.patient_id)
            .find(|id| !before.contains(id))
            .expect("imported link")
    }

    fn run(&mut self, as_of: &str) -> RunReport {
        let as_of = at(as_of);
        self.store.set_clock(Box::new(FixedClock(as_of)));
        let options = RunOptions { batch_size: 2, actor: ACTOR.into(), ..RunOptions::default() };
        run(&mut *self.store, &self.policy, as_of, &options, &mut |_, _| {}).expect("run")
    }

    fn planned(&self, as_of: &str, category: Category) -> u64 {
        let plan = plan(&*self.store, &self.policy, at(as_of)).expect("plan");
        plan.tally.purged[&category]
    }

    fn linked(&self, tenant: &Tenant, patient: PatientId) -> bool {
        self.store.patient_link(tenant, patient).is_ok()
    }

    fn receipts(&self) -> Vec<serde_json::Value> {
        self.store
            .audit_entries(0, 10_000)
            .expect("audit entries")
            .into_iter()
            .filter_map(|r| r.body.get("receipt").filter(|v| !v.is_null()).cloned())
            .collect()
    }
}

fn retention_edges_table(backend: Backend) {
    // (last encounter, as of, due)
    let cases = [
        ("2020-02-29T10:00:00Z", "2027-02-28T23:59:59Z", false),
        ("2020-02-29T10:00:00Z", "2027-03-01T09:59:59Z", false),
        ("2020-02-29T10:00:00Z", "2027-03-01T10:00:00Z", true),
        ("2019-12-31T23:59:59Z", "2026-12-31T23:59:58Z", false),
        ("2019-12-31T23:59:59Z", "2026-12-31T23:59:59Z", true),
        ("2019-06-30T20:00:00-05:00", "2026-07-01T00:59:59Z", false),
        ("2019-06-30T20:00:00-05:00", "2026-06-30T21:00:00-04:00", true),
        ("2019-07-01T09:30:00+09:00", "2026-07-01T00:29:59Z", false),
        ("2019-07-01T09:30:00+09:00", "2026-07-01T00:30:00Z", true),
    ];
    for (last, as_of, due) in cases {
        let mut fx = Fixture::new(backend);
        let tenant = fx.tenant("clinic");
        let patient = fx.patient(&tenant, "p1", last);
        let planned = fx.planned(as_of, Category::PatientRecords);
        assert_eq!(planned, u64::from(due), "plan: last {last}, as of {as_of}");
        let report = fx.run(as_of);
        assert_eq!(
            report.tally.purged[&Category::PatientRecords],
            u64::from(due),
            "run: last {last}, as of {as_of}"
        );
        assert_eq!(fx.linked(&tenant, patient), !due, "link present: last {last}, as of {as_of}");
    }
}

fn tenant_override_lengthens_retention(backend: Backend) {
    let text = format!("{DEFAULT_POLICY_TOML}\n[tenants.longer]\nphi_years = 10\n");
    let mut fx = Fixture::with_policy(backend, Policy::from_toml(&text).expect("policy"));
    let longer = fx.tenant("longer");
    let standard = fx.tenant("standard");
    fx.patient(&longer, "a", "2015-05-05T00:00:00Z");
    fx.patient(&standard, "b", "2015-05-05T00:00:00Z");
    let report = fx.run("2023-01-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::PatientRecords], 1);
    assert_eq!(
        fx.store.patient_links(&longer).expect("links").len(),
        1,
        "10-year tenant keeps its patient"
    );
    assert!(fx.store.patient_links(&standard).expect("links").is_empty());
}

fn new_encounter_extends_retention(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    let patient = fx.patient(&tenant, "p1", "2019-01-01T00:00:00Z");
    assert_eq!(fx.planned("2026-01-02T00:00:00Z", Category::PatientRecords), 1);

    let until = fx
        .store
        .record_encounter(&tenant, patient, at("2025-06-01T12:00:00Z"), &fx.policy, ACTOR)
        .expect("encounter");
    assert_eq!(until, at("2032-06-01T12:00:00Z"));
    assert_eq!(fx.planned("2026-01-02T00:00:00Z", Category::PatientRecords), 0);

    let report = fx.run("2026-01-02T00:00:00Z");
    assert_eq!(report.tally.receipts, 0);
    assert!(fx.linked(&tenant, patient));
}

fn older_encounter_does_not_shorten_retention(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    let patient = fx.patient(&tenant, "p1", "2024-01-01T00:00:00Z");
    let until = fx
        .store
        .record_encounter(&tenant, patient, at("2020-01-01T00:00:00Z"), &fx.policy, ACTOR)
        .expect("encounter");
    assert_eq!(until, at("2031-01-01T00:00:00Z"));
}

fn patient_hold_covers_every_category(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    let held = fx.patient(&tenant, "held", "2010-01-01T00:00:00Z");
    let free = fx.patient(&tenant, "free", "2010-01-01T00:00:00Z");
    for patient in [held, free] {
        fx.store
            .add_id_photo(&tenant, patient, b"synthetic", at("2016-01-01T00:00:00Z"), ACTOR)
            .expect("photo");
        fx.store
            .add_session(&tenant, Some(patient), ended("2016-01-01T00:00:00Z"))
            .expect("session");
    }
    fx.store
        .place_hold(&tenant, HoldScope::Patient(held), "m-1", "litigation", ACTOR)
        .expect("hold");

    // As of 2016-06: photos and sessions are due, PHI is not.
    let report = fx.run("2016-06-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::IdPhoto], 1);
    assert_eq!(report.tally.purged[&Category::Session], 1);
    assert_eq!(report.tally.skipped[&SkipKind::LegalHold][&Category::IdPhoto], 1);
    assert_eq!(report.tally.skipped[&SkipKind::LegalHold][&Category::Session], 1);

    let report = fx.run("2030-01-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::PatientRecords], 1);
    assert_eq!(report.tally.skipped[&SkipKind::LegalHold][&Category::PatientRecords], 1);
    assert!(fx.linked(&tenant, held));
    assert!(!fx.linked(&tenant, free));
}

fn whole_tenant_hold_spares_only_that_tenant(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let held = fx.tenant("held");
    let other = fx.tenant("other");
    let a = fx.patient(&held, "a", "2010-01-01T00:00:00Z");
    let b = fx.patient(&other, "b", "2010-01-01T00:00:00Z");
    for tenant in [&held, &other] {
        fx.store.add_session(tenant, None, ended("2016-01-01T00:00:00Z")).expect("staff session");
    }
    fx.store
        .place_hold(&held, HoldScope::WholeTenant, "m-2", "regulator request", ACTOR)
        .expect("hold");

    let report = fx.run("2030-01-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::PatientRecords], 1);
    assert_eq!(report.tally.purged[&Category::Session], 1, "the other tenant's staff session goes");
    assert_eq!(
        report.tally.skipped[&SkipKind::LegalHold][&Category::Session],
        1,
        "the held tenant's staff session stays"
    );
    assert!(fx.linked(&held, a));
    assert!(!fx.linked(&other, b));
}

fn released_hold_purges_on_next_run(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    let patient = fx.patient(&tenant, "p1", "2010-01-01T00:00:00Z");
    let hold = fx
        .store
        .place_hold(&tenant, HoldScope::Patient(patient), "m-3", "audit", ACTOR)
        .expect("hold");
    assert_eq!(fx.run("2020-01-01T00:00:00Z").tally.receipts, 0);

    fx.store.release_hold(None, hold.id, ACTOR).expect("release");
    let report = fx.run("2020-01-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::PatientRecords], 1);
    assert!(!fx.linked(&tenant, patient));
    let actions: Vec<String> = fx
        .store
        .audit_entries(0, 1000)
        .expect("audit")
        .into_iter()
        .filter_map(|r| r.body["action"].as_str().map(str::to_owned))
        .collect();
    assert!(actions.contains(&"hold.place".to_owned()), "{actions:?}");
    assert!(actions.contains(&"hold.release".to_owned()), "{actions:?}");
}

fn hold_placed_after_plan_wins(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    let patient = fx.patient(&tenant, "p1", "2010-01-01T00:00:00Z");
    let as_of = at("2020-01-01T00:00:00Z");
    let planned = plan(&*fx.store, &fx.policy, as_of).expect("plan");
    let disposals: Vec<_> = planned.actions.iter().filter_map(|a| a.disposal()).collect();
    assert_eq!(disposals.len(), 1);

    let hold = fx
        .store
        .place_hold(&tenant, HoldScope::Patient(patient), "m-4", "late hold", ACTOR)
        .expect("hold");
    let context = DisposalContext { policy: &fx.policy, as_of, actor: ACTOR, run_id: "manual" };
    let outcomes = fx.store.dispose(&disposals, &context).expect("dispose");
    assert_eq!(
        outcomes,
        vec![DisposalOutcome::Skipped(SkipReason::LegalHold { hold_id: hold.id })]
    );
    assert!(fx.linked(&tenant, patient));
    assert!(fx.receipts().is_empty());
}

fn encounter_after_plan_wins(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    let patient = fx.patient(&tenant, "p1", "2010-01-01T00:00:00Z");
    let as_of = at("2020-01-01T00:00:00Z");
    let planned = plan(&*fx.store, &fx.policy, as_of).expect("plan");
    let disposals: Vec<_> = planned.actions.iter().filter_map(|a| a.disposal()).collect();

    fx.store
        .record_encounter(&tenant, patient, at("2019-12-01T00:00:00Z"), &fx.policy, ACTOR)
        .expect("encounter");
    let context = DisposalContext { policy: &fx.policy, as_of, actor: ACTOR, run_id: "manual" };
    let outcomes = fx.store.dispose(&disposals, &context).expect("dispose");
    assert_eq!(
        outcomes,
        vec![DisposalOutcome::Skipped(SkipReason::NotExpired {
            retention_until: at("2026-12-01T00:00:00Z")
        })]
    );
    assert!(fx.linked(&tenant, patient));
}

fn shared_profile_outlives_first_tenant(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let first = fx.tenant("first");
    let second = fx.tenant("second");
    let patient = fx.patient(&first, "shared", "2010-01-01T00:00:00Z");
    let same = fx.patient(&second, "shared", "2015-01-01T00:00:00Z");
    assert_eq!(patient, same, "both tenants link one core profile");

    let planned = plan(&*fx.store, &fx.policy, at("2020-01-01T00:00:00Z")).expect("plan");
    let profile = planned
        .actions
        .iter()
        .find(|a| a.category == Category::PatientProfile)
        .expect("profile action");
    assert_eq!(profile.decision, Decision::Skip);
    assert_eq!(profile.skip_reason, Some(SkipKind::OtherTenantActive));
    assert_eq!(profile.blocked_by.len(), 1);
    assert_eq!(profile.blocked_by[0].tenant, "second");
    assert_eq!(profile.blocked_by[0].phi_retention_until, at("2022-01-01T00:00:00Z"));

    let report = fx.run("2020-01-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::PatientRecords], 1);
    assert_eq!(report.tally.purged[&Category::PatientProfile], 0);
    assert_eq!(report.tally.skipped[&SkipKind::OtherTenantActive][&Category::PatientProfile], 1);
    assert!(!fx.linked(&first, patient));
    assert_eq!(fx.store.links_of_patient(patient).expect("links").len(), 1);

    let report = fx.run("2022-01-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::PatientRecords], 1);
    assert_eq!(report.tally.purged[&Category::PatientProfile], 1);
    assert!(fx.store.links_of_patient(patient).expect("links").is_empty());
}

fn held_link_keeps_shared_profile(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let first = fx.tenant("first");
    let second = fx.tenant("second");
    let patient = fx.patient(&first, "shared", "2010-01-01T00:00:00Z");
    fx.patient(&second, "shared", "2010-01-01T00:00:00Z");
    let hold = fx
        .store
        .place_hold(&second, HoldScope::Patient(patient), "m-5", "dispute", ACTOR)
        .expect("hold");

    let planned = plan(&*fx.store, &fx.policy, at("2020-01-01T00:00:00Z")).expect("plan");
    let profile = planned
        .actions
        .iter()
        .find(|a| a.category == Category::PatientProfile)
        .expect("profile action");
    assert_eq!(profile.decision, Decision::Skip);
    assert_eq!(profile.blocked_by[0].hold_id, Some(hold.id));

    let report = fx.run("2020-01-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::PatientRecords], 1);
    assert_eq!(report.tally.purged[&Category::PatientProfile], 0);
    assert!(fx.linked(&second, patient));
}

fn both_links_expiring_write_one_profile_receipt(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let first = fx.tenant("first");
    let second = fx.tenant("second");
    fx.patient(&first, "shared", "2010-01-01T00:00:00Z");
    fx.patient(&second, "shared", "2011-01-01T00:00:00Z");
    assert_eq!(fx.planned("2020-01-01T00:00:00Z", Category::PatientProfile), 1);
    let report = fx.run("2020-01-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::PatientRecords], 2);
    assert_eq!(report.tally.purged[&Category::PatientProfile], 1);
    assert_eq!(report.tally.receipts, 3);
}

fn receipts_describe_what_was_destroyed(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    let patient = fx.patient(&tenant, "p1", "2018-01-01T00:00:00Z");
    let photo = fx
        .store
        .add_id_photo(&tenant, patient, &[7u8; 1000], at("2019-01-01T00:00:00Z"), ACTOR)
        .expect("photo");
    // PostgreSQL keeps the photo in its row; the embedded store writes a file.
    let photo_path = fx
        .store
        .data_dir()
        .map(|dir| dir.join(format!("blobs/id-photos/{}/{photo}.bin", tenant.id)));
    if let Some(path) = &photo_path {
        assert!(path.is_file(), "photo file written");
    }

    let report = fx.run("2019-06-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::IdPhoto], 1);
    if let Some(path) = &photo_path {
        assert!(!path.exists(), "photo file deleted");
    }
    let receipts = fx.receipts();
    assert_eq!(receipts.len(), 1);
    let receipt = &receipts[0];
    assert_eq!(receipt["category"], "id_photo");
    assert_eq!(receipt["record_id"], photo.to_string());
    assert_eq!(receipt["rule"], "id_photo_after_upload");
    assert_eq!(receipt["retention_until"], "2019-04-01T00:00:00Z");
    assert_eq!(receipt["policy_version"], fx.policy.version());
    assert_eq!(receipt["destroyed"]["rows"], 1);
    assert_eq!(receipt["destroyed"]["files"], 1);
    assert!(receipt["destroyed"]["bytes"].as_u64().expect("bytes") > 1000);
    assert_eq!(receipt["digest"].as_str().expect("digest").len(), 64);

    let report = fx.run("2030-01-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::PatientRecords], 1);
    let receipts = fx.receipts();
    let records =
        receipts.iter().find(|r| r["category"] == "patient_records").expect("records receipt");
    // link, consultation and nothing else.
    assert_eq!(records["destroyed"]["rows"], 2);
    assert_eq!(records["rule"], "phi_after_last_encounter");
    assert_eq!(records["retention_until"], "2025-01-01T00:00:00Z");
    assert!(fx.store.verify_audit().expect("verify").ok);
}

fn second_run_disposes_nothing(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    for index in 0..5 {
        let patient =
            fx.patient(&tenant, &format!("p{index}"), &format!("201{index}-01-01T00:00:00Z"));
        fx.store
            .add_session(&tenant, Some(patient), ended("2015-01-01T00:00:00Z"))
            .expect("session");
    }
    let first = fx.run("2030-01-01T00:00:00Z");
    assert_eq!(first.tally.purged[&Category::PatientRecords], 5);
    assert_eq!(first.tally.purged[&Category::PatientProfile], 5);
    let second = fx.run("2030-01-01T00:00:00Z");
    assert_eq!(second.tally.receipts, 0);
    assert_eq!(fx.receipts().len() as u64, first.tally.receipts);
}

fn session_retention_starts_at_end_or_expiry(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    // Never ended: retention runs from expiry.
    let open = SessionTimes {
        started_at: at("2020-01-01T00:00:00Z"),
        expires_at: at("2020-01-02T00:00:00Z"),
        ended_at: None,
    };
    fx.store.add_session(&tenant, None, open).expect("session");
    // 2020 is a leap year: 2 January plus 90 days is 1 April.
    assert_eq!(fx.planned("2020-03-31T23:59:59Z", Category::Session), 0);
    assert_eq!(fx.planned("2020-04-01T00:00:00Z", Category::Session), 1);
}

/// A password hash of the right form for accounts that never log in by password.
const UNUSED_PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g";

fn platform_sessions_purged_by_run(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    let operator = NewUser {
        tenant: None,
        username: "ops@example.test",
        role: Role::PlatformOperator,
        password_hash: UNUSED_PASSWORD_HASH,
        patient: None,
    };
    let id = fx.store.create_user(&operator, ACTOR).expect("platform operator");
    let operator = UserRef { id, tenant_id: None };
    // The fixture's clock is at 2020-01-01, so the logout ends the first session then.
    let logged_out = medconnect_crypto::SecretToken::generate().expect("token");
    let start = at("2020-01-01T00:00:00Z");
    let session = fx
        .store
        .create_session(operator, &logged_out.hash(), start, at("2020-01-02T00:00:00Z"))
        .expect("session");
    fx.store.end_session(None, session).expect("logout");
    let unended = medconnect_crypto::SecretToken::generate().expect("token");
    fx.store
        .create_session(operator, &unended.hash(), start, at("2020-02-01T00:00:00Z"))
        .expect("session");
    fx.store.add_session(&tenant, None, ended("2020-01-01T00:00:00Z")).expect("session");

    // 2020 is a leap year: 1 January plus 90 days is 31 March, 1 February plus 90 is 1 May.
    let early = plan(&*fx.store, &fx.policy, at("2020-03-30T23:59:59Z")).expect("plan");
    assert_eq!(early.platform_sessions_due, 0);
    let due = plan(&*fx.store, &fx.policy, at("2020-03-31T00:00:00Z")).expect("plan");
    assert_eq!(due.platform_sessions_due, 1);
    assert_eq!(due.tally.purged[&Category::Session], 1, "the tenant session");
    let json = serde_json::to_value(&due).expect("plan serializes");
    assert_eq!(json["platform_sessions_due"], 1);

    let first = fx.run("2020-03-31T00:00:00Z");
    assert_eq!(first.platform_sessions_purged, 1);
    assert_eq!(first.tally.purged[&Category::Session], 1, "the tenant session");
    assert_eq!(first.tally.receipts, 1, "platform sessions get no receipt");
    let json = serde_json::to_value(&first).expect("report serializes");
    assert_eq!(json["platform_sessions_purged"], 1);
    assert!(fx.store.session_by_token_hash(&logged_out.hash()).expect("lookup").is_none());
    assert!(fx.store.session_by_token_hash(&unended.hash()).expect("lookup").is_some());

    let later = plan(&*fx.store, &fx.policy, at("2020-05-01T00:00:00Z")).expect("plan");
    assert_eq!(later.platform_sessions_due, 1);
    let second = fx.run("2020-05-01T00:00:00Z");
    assert_eq!(second.platform_sessions_purged, 1);
    assert!(fx.store.session_by_token_hash(&unended.hash()).expect("lookup").is_none());
    let third = fx.run("2020-05-01T00:00:00Z");
    assert_eq!(third.platform_sessions_purged, 0);

    let entries = fx.store.audit_entries(0, 10_000).expect("audit entries");
    let purges: Vec<&serde_json::Value> =
        entries.iter().map(|e| &e.body).filter(|b| b["action"] == "session.purge").collect();
    assert_eq!(purges.len(), 2, "one entry per run that purged");
    for (body, report) in purges.iter().zip([&first, &second]) {
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(&format!("run {}: 1 platform sessions", report.run_id)));
        assert!(body["tenant_id"].is_null());
        assert_eq!(body["actor"], ACTOR);
    }
    let run_entry = entries
        .iter()
        .map(|e| &e.body)
        .find(|b| b["action"] == "lifecycle.run" && b["subjects"][0] == first.run_id.as_str())
        .expect("lifecycle.run entry of the first run");
    let detail = run_entry["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("1 platform sessions purged"), "{detail}");
    assert!(fx.store.verify_audit().expect("verify").ok);
}

fn ended(value: &str) -> SessionTimes {
    let end = at(value);
    SessionTimes {
        started_at: end - chrono::Duration::hours(1),
        expires_at: end + chrono::Duration::hours(1),
        ended_at: Some(end),
    }
}

/// Photo files exist only in the embedded store.
#[test]
fn unfinished_photo_upload_is_cleaned_up() {
    let mut fx = Fixture::new(Backend::Sqlite);
    let tenant = fx.tenant("clinic");
    fx.patient(&tenant, "p1", "2024-01-01T00:00:00Z");
    // A crash after the file was written but before its row committed leaves the file and
    // its queued path, and nothing else.
    let data_dir = fx.store.data_dir().expect("SQLite data directory");
    let relative = format!("id-photos/{}/orphan.bin", tenant.id);
    let path = data_dir.join("blobs").join(&relative);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    std::fs::write(&path, b"synthetic").expect("file");
    let db = rusqlite::Connection::open(data_dir.join("medconnect.db")).expect("db");
    db.execute("INSERT INTO pending_file_deletions (path) VALUES (?1)", [&relative])
        .expect("queue");

    let report = fx.run("2024-06-01T00:00:00Z");
    assert_eq!(report.resumed_file_deletions, 1);
    assert!(!path.exists(), "orphaned upload removed");
    let queued: i64 = db
        .query_row("SELECT count(*) FROM pending_file_deletions", [], |r| r.get(0))
        .expect("count");
    assert_eq!(queued, 0);
}

fn policy_with_tenant_years(slug: &str, years: u32) -> Policy {
    let text = format!("{DEFAULT_POLICY_TOML}\n[tenants.{slug}]\nphi_years = {years}\n");
    Policy::from_toml(&text).expect("policy")
}

fn plan_uses_policy_in_force(backend: Backend) {
    let mut fx = Fixture::with_policy(backend, policy_with_tenant_years("clinic", 10));
    let tenant = fx.tenant("clinic");
    let patient = fx.patient(&tenant, "p1", "2015-01-01T00:00:00Z");
    fx.run("2016-01-01T00:00:00Z");
    assert_eq!(
        fx.store.patient_link(&tenant, patient).expect("link").link.phi_retention_until,
        at("2025-01-01T00:00:00Z")
    );

    // Back to the 7-year default: the plan uses it at once, before anything is applied.
    fx.policy = Policy::builtin();
    assert_eq!(fx.planned("2023-06-01T00:00:00Z", Category::PatientRecords), 1);
}

fn run_rejects_unapplied_shortening(backend: Backend) {
    let mut fx = Fixture::with_policy(backend, policy_with_tenant_years("clinic", 10));
    let tenant = fx.tenant("clinic");
    let patient = fx.patient(&tenant, "p1", "2015-01-01T00:00:00Z");
    fx.run("2016-01-01T00:00:00Z");
    fx.policy = Policy::builtin();

    let as_of = at("2023-06-01T00:00:00Z");
    let options = RunOptions { batch_size: 10, actor: ACTOR.into(), ..RunOptions::default() };
    let err =
        run(&mut *fx.store, &fx.policy, as_of, &options, &mut |_, _| {}).expect_err("shortens");
    assert!(err.to_string().contains("--allow-shorter"), "{err}");
    let applied_before = policy_with_tenant_years("clinic", 10).version();
    assert!(err.to_string().contains(&applied_before), "names the policy in force: {err}");
    assert!(fx.linked(&tenant, patient), "nothing purged");

    let applied = fx.store.apply_policy(&fx.policy, ACTOR, true).expect("apply");
    assert_eq!(applied.shortened, 1);
    let report = fx.run("2023-06-01T00:00:00Z");
    assert_eq!(report.tally.purged[&Category::PatientRecords], 1);
}

fn policy_for_unknown_tenant_is_rejected(backend: Backend) {
    let mut fx = Fixture::with_policy(backend, policy_with_tenant_years("clinik", 10));
    let tenant = fx.tenant("clinic");
    fx.patient(&tenant, "p1", "2015-01-01T00:00:00Z");
    let err = fx.store.apply_policy(&fx.policy, ACTOR, false).expect_err("unknown slug");
    assert!(err.to_string().contains("\"clinik\""), "{err}");
}

fn mismatched_profile_is_not_linked(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let first = fx.tenant("first");
    let second = fx.tenant("second");
    fx.patient(&first, "shared-id", "2015-01-01T00:00:00Z");
    let other_person = ImportBatch {
        source_system: "test".into(),
        patients: vec![NewPatientProfile {
            source_system: "test".into(),
            source_id: "shared-id".into(),
            given_name: "Other2".into(),
            family_name: "Person2".into(),
            birth_date: "1990-05-05".into(),
            sex: "M".into(),
            ..NewPatientProfile::default()
        }],
        ..ImportBatch::default()
    };
    let err = fx.store.import(&second, &other_person, &fx.policy, ACTOR).expect_err("mismatch");
    assert!(err.to_string().contains("nothing was imported"), "{err}");
    assert!(fx.store.patient_links(&second).expect("links").is_empty());
}

fn hold_on_purged_patient_is_rejected(backend: Backend) {
    let mut fx = Fixture::new(backend);
    let tenant = fx.tenant("clinic");
    let patient = fx.patient(&tenant, "p1", "2010-01-01T00:00:00Z");
    fx.run("2020-01-01T00:00:00Z");
    let err = fx
        .store
        .place_hold(&tenant, HoldScope::Patient(patient), "m-9", "late", ACTOR)
        .expect_err("purged");
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(fx.store.holds(None, true).expect("holds").is_empty());
}
