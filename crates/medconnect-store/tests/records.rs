//! Tenants, imports, reads, encounters, ID photos, sessions, legal holds and key rotation,
//! through the `Store` trait on every backend.

use std::sync::{Arc, Barrier};

use chrono::{DateTime, Utc};
use medconnect_crypto::MasterKey;
use medconnect_domain::clock::FixedClock;
use medconnect_domain::model::{
    HoldScope, ImportBatch, ImportCounts, NewConsultation, NewHistoryEntry, NewPatientProfile,
    NewPrescription, NewProvider, Tenant,
};
use medconnect_domain::policy::Policy;
use medconnect_domain::time::parse_instant;
use medconnect_domain::{HoldId, PatientId, PhotoId};
use medconnect_store::testing::{Backend, TestStore};
use medconnect_store::{backend_tests, PgStore, SessionTimes, SqliteStore, Store, StoreError};

const ACTOR: &str = "test";
const MASTER: [u8; 32] = [7; 32];

fn at(value: &str) -> DateTime<Utc> {
    parse_instant(value).expect("test instant parses")
}

/// A store with a fixed clock and master key version 1.
fn store(backend: Backend) -> TestStore {
    let mut store = backend.create(Box::new(FixedClock(at("2024-01-01T00:00:00Z"))));
    store.set_master_keys(MasterKey::from_bytes(1, &MASTER), None).expect("master key");
    store
}

fn person(source_id: &str, given_name: &str) -> NewPatientProfile {
    NewPatientProfile {
        source_system: "test".into(),
        source_id: source_id.into(),
        given_name: given_name.into(),
        family_name: "Family1".into(),
        birth_date: "1970-01-01".into(),
        sex: "F".into(),
        ssn: Some("999-00-0001".into()),
        phone: Some("555-0100".into()),
        email: Some("person1@example.test".into()),
        address_line: "1 Main Street".into(),
        city: "Lincoln".into(),
        state: "NE".into(),
        postal_code: "68501".into(),
        ..NewPatientProfile::default()
    }
}

fn batch_of(patients: Vec<NewPatientProfile>) -> ImportBatch {
    ImportBatch { source_system: "test".into(), patients, ..ImportBatch::default() }
}

fn consultation(id: &str, patient: &str, provider: Option<&str>, end: &str) -> NewConsultation {
    NewConsultation {
        source_id: id.into(),
        patient_source_id: patient.into(),
        provider_source_id: provider.map(Into::into),
        status: "completed".into(),
        encounter_class: "virtual".into(),
        reason: "Migraine follow-up".into(),
        notes: "Reports relief".into(),
        started_at: at(end) - chrono::Duration::minutes(20),
        ended_at: Some(at(end)),
    }
}

/// Two patients, one provider, three consultations, two prescriptions, one history entry.
fn full_batch() -> ImportBatch {
    ImportBatch {
        providers: vec![NewProvider {
            source_id: "prov-1".into(),
            name: "Doctor1 Provider1".into(),
            specialty: "GENERAL PRACTICE".into(),
            organization: "Clinic1".into(),
            license_number: Some("LIC-1".into()),
            license_state: "NE".into(),
            dea_number: None,
        }],
        consultations: vec![
            consultation("e-1", "s-1", Some("prov-1"), "2015-03-01T10:00:00Z"),
            consultation("e-2", "s-1", None, "2016-05-01T10:00:00Z"),
            consultation("e-3", "s-2", Some("prov-1"), "2014-01-01T10:00:00Z"),
        ],
        prescriptions: vec![
            NewPrescription {
                patient_source_id: "s-1".into(),
                consultation_source_id: Some("e-1".into()),
                code: "313782".into(),
                description: "Acetaminophen 325 MG".into(),
                dispenses: 2,
                controlled: false,
                started_at: at("2015-03-01T10:00:00Z"),
                stopped_at: None,
            },
            NewPrescription {
                patient_source_id: "s-2".into(),
                consultation_source_id: None,
                code: "1049221".into(),
                description: "Oxycodone 5 MG".into(),
                dispenses: 1,
                controlled: true,
                started_at: at("2014-01-01T10:00:00Z"),
                stopped_at: Some(at("2014-02-01T10:00:00Z")),
            },
        ],
        history: vec![NewHistoryEntry {
            patient_source_id: "s-1".into(),
            consultation_source_id: Some("e-2".into()),
            kind: "condition",
            code: "37796009".into(),
            description: "Migraine".into(),
            started_at: at("2016-05-01T10:00:00Z"),
            stopped_at: None,
        }],
        ..batch_of(vec![person("s-1", "Alpha1"), person("s-2", "Bravo2")])
    }
}

fn import_one(store: &mut TestStore, tenant: &Tenant, source_id: &str, name: &str) -> PatientId {
    let batch = batch_of(vec![person(source_id, name)]);
    store.import(tenant, &batch, &Policy::builtin(), ACTOR).expect("import");
    store.find_patient(tenant, "test", source_id).expect("find").expect("imported patient")
}

fn is_patient_not_found<T>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::PatientNotFound { .. }))
}

backend_tests!(
    tenants_create_and_list,
    import_writes_every_row,
    import_twice_is_rejected,
    import_of_other_person_is_rejected,
    profile_decrypts,
    find_patient_by_source_id,
    encounter_moves_retention,
    id_photo_round_trip,
    sessions_listed_with_link,
    holds_place_release_list,
    person_shared_between_tenants,
    concurrent_imports_share_profile,
    concurrent_imports_into_one_tenant,
    concurrent_same_import_runs_once,
    tenant_reads_stay_in_tenant,
    master_rotation_keeps_profiles,
    tenant_rotation_adds_versions,
    second_node_reads_same_keys,
);

fn tenants_create_and_list(backend: Backend) {
    let mut store = store(backend);
    let beta = store.create_tenant("beta", "Beta Clinic", ACTOR).expect("beta");
    let alpha = store.create_tenant("alpha", "Alpha Clinic", ACTOR).expect("alpha");
    assert_eq!(alpha.created_at, at("2024-01-01T00:00:00Z"));

    let slugs: Vec<String> =
        store.tenants().expect("tenants").into_iter().map(|t| t.slug).collect();
    assert_eq!(slugs, ["alpha", "beta"], "ordered by slug");
    assert_eq!(store.tenant_by_slug("beta").expect("by slug"), beta);
    assert_eq!(store.tenant(alpha.id).expect("by id"), alpha);

    let err = store.create_tenant("beta", "Again", ACTOR).expect_err("slug taken");
    assert!(matches!(&err, StoreError::TenantExists(slug) if slug == "beta"), "{err}");
    let err = store.create_tenant("Not A Slug", "Bad", ACTOR).expect_err("invalid slug");
    assert!(matches!(err, StoreError::InvalidSlug(_)), "{err}");
    let err = store.tenant_by_slug("gamma").expect_err("unknown slug");
    assert!(matches!(err, StoreError::TenantNotFound(_)), "{err}");
    let err = store.tenant(medconnect_domain::TenantId::new()).expect_err("unknown id");
    assert!(matches!(err, StoreError::TenantNotFound(_)), "{err}");
    assert_eq!(store.tenants().expect("tenants").len(), 2, "failed creations wrote nothing");
}

fn import_writes_every_row(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let policy = Policy::builtin();

    let counts = store.import(&tenant, &full_batch(), &policy, ACTOR).expect("import");
    let expected = ImportCounts {
        profiles_created: 2,
        profiles_linked: 0,
        links_created: 2,
        providers: 1,
        consultations: 3,
        prescriptions: 2,
        history_entries: 1,
    };
    assert_eq!(counts, expected);

    let links = store.patient_links(&tenant).expect("links");
    assert_eq!(links.len(), 2);
    let mut ids: Vec<PatientId> = links.iter().map(|l| l.patient_id).collect();
    ids.sort_by_key(|id| id.to_string());
    assert_eq!(links.iter().map(|l| l.patient_id).collect::<Vec<_>>(), ids, "ordered by id");

    let first = store.find_patient(&tenant, "test", "s-1").expect("find").expect("s-1");
    let detail = store.patient_link(&tenant, first).expect("link");
    assert_eq!(detail.link.tenant_slug, "clinic");
    assert_eq!(detail.link.created_at, at("2024-01-01T00:00:00Z"));
    let last = at("2016-05-01T10:00:00Z");
    assert_eq!(detail.link.last_medical_encounter_at, Some(last), "latest encounter end");
    assert_eq!(detail.link.phi_retention_until, policy.phi_retention_until("clinic", last));
    assert!(detail.link.phi_retention_until > last);
    assert_eq!(detail.counts.consultations, 2);
    assert_eq!(detail.counts.prescriptions, 1);
    assert_eq!(detail.counts.history_entries, 1);
    assert_eq!(detail.counts.id_photos, 0);
    assert_eq!(detail.counts.sessions, 0);

    let second = store.find_patient(&tenant, "test", "s-2").expect("find").expect("s-2");
    let detail = store.patient_link(&tenant, second).expect("link");
    assert_eq!(detail.counts.consultations, 1);
    assert_eq!(detail.counts.prescriptions, 1);
    assert_eq!(detail.counts.history_entries, 0);

    let providers = store.providers(&tenant).expect("providers");
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0].name, "Doctor1 Provider1");
    assert_eq!(providers[0].specialty, "GENERAL PRACTICE");
    assert_eq!(providers[0].license_state, "NE");
}

fn import_twice_is_rejected(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let policy = Policy::builtin();
    store.import(&tenant, &full_batch(), &policy, ACTOR).expect("first import");
    let first = store.find_patient(&tenant, "test", "s-1").expect("find").expect("s-1");

    let err = store.import(&tenant, &full_batch(), &policy, ACTOR).expect_err("second import");
    assert!(matches!(&err, StoreError::AlreadyImported { count: 2, .. }), "{err}");
    assert_eq!(store.patient_links(&tenant).expect("links").len(), 2);
    let detail = store.patient_link(&tenant, first).expect("link");
    assert_eq!(detail.counts.consultations, 2, "the failed import wrote no rows");
    assert_eq!(store.providers(&tenant).expect("providers").len(), 1);
}

fn import_of_other_person_is_rejected(backend: Backend) {
    let mut store = store(backend);
    let first = store.create_tenant("first", "First", ACTOR).expect("tenant");
    let second = store.create_tenant("second", "Second", ACTOR).expect("tenant");
    let policy = Policy::builtin();
    import_one(&mut store, &first, "shared-id", "Alpha1");

    // Same source id, another name: a second tenant must not attach itself to the profile.
    let batch = batch_of(vec![person("shared-id", "Other2"), person("s-9", "Fresh9")]);
    let err = store.import(&second, &batch, &policy, ACTOR).expect_err("mismatch");
    assert!(matches!(err, StoreError::ProfileMismatch { count: 1 }), "{err}");
    assert!(store.patient_links(&second).expect("links").is_empty(), "nothing imported");
    assert_eq!(store.find_patient(&second, "test", "s-9").expect("find"), None);
}

fn profile_decrypts(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patient = import_one(&mut store, &tenant, "s-1", "Zelda7");

    let profile = store.patient_profile(&tenant, patient).expect("profile");
    let expected = person("s-1", "Zelda7");
    assert_eq!(profile.patient_id, patient);
    assert_eq!(profile.given_name, expected.given_name);
    assert_eq!(profile.family_name, expected.family_name);
    assert_eq!(profile.birth_date, expected.birth_date);
    assert_eq!(profile.death_date, None);
    assert_eq!(profile.sex, expected.sex);
    assert_eq!(profile.ssn, expected.ssn);
    assert_eq!(profile.phone, expected.phone);
    assert_eq!(profile.email, expected.email);
    assert_eq!(profile.address_line, expected.address_line);
    assert_eq!(profile.city, expected.city);
    assert_eq!(profile.state, expected.state);
    assert_eq!(profile.postal_code, expected.postal_code);
}

fn find_patient_by_source_id(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let other = store.create_tenant("other", "Other", ACTOR).expect("tenant");
    let patient = import_one(&mut store, &tenant, "s-1", "Alpha1");

    assert_eq!(store.find_patient(&tenant, "test", "s-1").expect("find"), Some(patient));
    // Blind indexes ignore the case and surrounding whitespace of a source id.
    assert_eq!(store.find_patient(&tenant, "test", " S-1 ").expect("find"), Some(patient));
    assert_eq!(store.find_patient(&tenant, "test", "s-2").expect("find"), None);
    assert_eq!(store.find_patient(&tenant, "other-system", "s-1").expect("find"), None);
    assert_eq!(store.find_patient(&other, "test", "s-1").expect("find"), None, "not linked");

    let mut keyless = store.open_again();
    let err = keyless.find_patient(&tenant, "test", "s-1").expect_err("no master key");
    assert!(matches!(err, StoreError::MasterKeyRequired), "{err}");
    let err = keyless.import(&tenant, &batch_of(vec![]), &Policy::builtin(), ACTOR);
    assert!(matches!(err, Err(StoreError::MasterKeyRequired)));
}

fn encounter_moves_retention(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let policy = Policy::builtin();
    let batch = ImportBatch {
        consultations: vec![consultation("e-1", "s-1", None, "2015-01-01T00:20:00Z")],
        ..batch_of(vec![person("s-1", "Alpha1")])
    };
    store.import(&tenant, &batch, &policy, ACTOR).expect("import");
    let patient = store.find_patient(&tenant, "test", "s-1").expect("find").expect("s-1");
    let before = store.patient_link(&tenant, patient).expect("link");
    assert_eq!(before.link.last_medical_encounter_at, Some(at("2015-01-01T00:20:00Z")));

    let encounter = at("2024-06-01T12:00:00Z");
    let until = store.record_encounter(&tenant, patient, encounter, &policy, ACTOR).expect("rec");
    assert_eq!(until, policy.phi_retention_until("clinic", encounter));
    assert!(until > before.link.phi_retention_until, "retention moved later");
    let after = store.patient_link(&tenant, patient).expect("link");
    assert_eq!(after.link.last_medical_encounter_at, Some(encounter));
    assert_eq!(after.link.phi_retention_until, until);
    assert_eq!(after.counts.consultations, 2);

    // An encounter older than the last one is recorded but does not move retention back.
    let older = at("2020-01-01T00:00:00Z");
    let unchanged = store.record_encounter(&tenant, patient, older, &policy, ACTOR).expect("older");
    assert_eq!(unchanged, until);
    let after = store.patient_link(&tenant, patient).expect("link");
    assert_eq!(after.link.last_medical_encounter_at, Some(encounter));
    assert_eq!(after.counts.consultations, 3);

    let unknown = PatientId::new();
    let result = store.record_encounter(&tenant, unknown, encounter, &policy, ACTOR);
    assert!(is_patient_not_found(result));
}

fn id_photo_round_trip(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let other = store.create_tenant("other", "Other", ACTOR).expect("tenant");
    let patient = import_one(&mut store, &tenant, "s-1", "Alpha1");
    let uploaded = at("2024-02-01T09:00:00Z");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();

    let photo = store.add_id_photo(&tenant, patient, &bytes, uploaded, ACTOR).expect("photo");
    assert_eq!(store.read_id_photo(&tenant, photo).expect("read"), bytes);
    let detail = store.patient_link(&tenant, patient).expect("link");
    assert_eq!(detail.counts.id_photos, 1);
    assert_eq!(detail.id_photos.len(), 1);
    assert_eq!(detail.id_photos[0].id, photo.to_string());
    assert_eq!(detail.id_photos[0].since, uploaded);
    assert_eq!(detail.id_photos[0].patient_id, Some(patient));

    let err = store.read_id_photo(&other, photo).expect_err("other tenant");
    assert!(matches!(err, StoreError::PhotoNotFound { .. }), "{err}");
    let err = store.read_id_photo(&tenant, PhotoId::new()).expect_err("unknown photo");
    assert!(matches!(err, StoreError::PhotoNotFound { .. }), "{err}");
    let result = store.add_id_photo(&tenant, PatientId::new(), b"x", uploaded, ACTOR);
    assert!(is_patient_not_found(result));
}

fn sessions_listed_with_link(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patient = import_one(&mut store, &tenant, "s-1", "Alpha1");
    let ended = SessionTimes {
        started_at: at("2024-01-02T10:00:00Z"),
        expires_at: at("2024-01-02T12:00:00Z"),
        ended_at: Some(at("2024-01-02T10:30:00Z")),
    };
    let open = SessionTimes { ended_at: None, ..ended };

    let first = store.add_session(&tenant, Some(patient), ended).expect("ended session");
    let second = store.add_session(&tenant, Some(patient), open).expect("open session");
    store.add_session(&tenant, None, open).expect("staff session");
    assert_ne!(first, second);

    let detail = store.patient_link(&tenant, patient).expect("link");
    assert_eq!(detail.counts.sessions, 2, "the staff session belongs to no patient");
    let listed: Vec<(String, DateTime<Utc>)> =
        detail.sessions.iter().map(|s| (s.id.clone(), s.since)).collect();
    let expected = vec![
        (first.to_string(), at("2024-01-02T10:30:00Z")),
        (second.to_string(), at("2024-01-02T12:00:00Z")),
    ];
    assert_eq!(listed, expected, "ordered by end, or expiry while open");

    let result = store.add_session(&tenant, Some(PatientId::new()), open);
    assert!(is_patient_not_found(result));
}

fn holds_place_release_list(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let other = store.create_tenant("other", "Other", ACTOR).expect("tenant");
    let patient = import_one(&mut store, &tenant, "s-1", "Alpha1");

    let on_patient = store
        .place_hold(&tenant, HoldScope::Patient(patient), "M-1", "litigation", ACTOR)
        .expect("patient hold");
    assert_eq!(on_patient.tenant_id, tenant.id);
    assert_eq!(on_patient.scope, HoldScope::Patient(patient));
    assert_eq!(on_patient.placed_at, at("2024-01-01T00:00:00Z"));
    assert!(on_patient.is_active());
    let on_tenant =
        store.place_hold(&tenant, HoldScope::WholeTenant, "M-2", "audit", ACTOR).expect("hold");
    let elsewhere =
        store.place_hold(&other, HoldScope::WholeTenant, "M-3", "audit", ACTOR).expect("hold");
    let result =
        store.place_hold(&other, HoldScope::Patient(patient), "M-4", "not linked here", ACTOR);
    assert!(is_patient_not_found(result));

    let ids = |holds: Vec<medconnect_domain::model::LegalHold>| -> Vec<HoldId> {
        holds.into_iter().map(|h| h.id).collect()
    };
    // Both holds were placed at the same instant, so the id orders them.
    let mut expected = vec![on_patient.clone(), on_tenant.clone()];
    expected.sort_by_key(|hold| hold.id.to_string());
    assert_eq!(store.holds(Some(tenant.id), false).expect("holds"), expected);
    assert_eq!(ids(store.holds(None, false).expect("all")).len(), 3);
    assert_eq!(ids(store.holds(Some(other.id), false).expect("other")), [elsewhere.id]);

    let err = store.release_hold(Some(other.id), on_patient.id, ACTOR).expect_err("other tenant");
    assert!(matches!(err, StoreError::HoldNotFound(_)), "{err}");
    assert!(store.holds(Some(tenant.id), false).expect("holds").contains(&on_patient));
    let released = store.release_hold(Some(tenant.id), on_patient.id, "releaser").expect("release");
    assert_eq!(released.released_at, Some(at("2024-01-01T00:00:00Z")));
    assert_eq!(released.released_by.as_deref(), Some("releaser"));
    assert!(!released.is_active());
    assert_eq!(ids(store.holds(Some(tenant.id), false).expect("active")), [on_tenant.id]);
    let mut expected = vec![released, on_tenant];
    expected.sort_by_key(|hold| hold.id.to_string());
    assert_eq!(store.holds(Some(tenant.id), true).expect("with released"), expected);

    let err = store.release_hold(None, on_patient.id, ACTOR).expect_err("second release");
    assert!(matches!(err, StoreError::HoldAlreadyReleased(_)), "{err}");
    let err = store.release_hold(None, HoldId::new(), ACTOR).expect_err("unknown hold");
    assert!(matches!(err, StoreError::HoldNotFound(_)), "{err}");
}

fn person_shared_between_tenants(backend: Backend) {
    let mut store = store(backend);
    let first = store.create_tenant("first", "First", ACTOR).expect("tenant");
    let second = store.create_tenant("second", "Second", ACTOR).expect("tenant");
    let policy = Policy::builtin();
    let batch = batch_of(vec![person("s-1", "Alpha1")]);

    let counts = store.import(&first, &batch, &policy, ACTOR).expect("first import");
    assert_eq!((counts.profiles_created, counts.profiles_linked), (1, 0));
    let counts = store.import(&second, &batch, &policy, ACTOR).expect("second import");
    assert_eq!((counts.profiles_created, counts.profiles_linked), (0, 1));
    assert_eq!(counts.links_created, 1);

    let in_first = store.find_patient(&first, "test", "s-1").expect("find").expect("first");
    let in_second = store.find_patient(&second, "test", "s-1").expect("find").expect("second");
    assert_eq!(in_first, in_second, "one core profile");
    let links = store.links_of_patient(in_first).expect("links of patient");
    let slugs: Vec<&str> = links.iter().map(|l| l.tenant_slug.as_str()).collect();
    assert_eq!(slugs, ["first", "second"]);
    for tenant in [&first, &second] {
        let profile = store.patient_profile(tenant, in_first).expect("profile");
        assert_eq!(profile.given_name, "Alpha1");
    }
}

/// Opens another handle on the same store in a thread of its own, as another node would.
fn open_in_thread(store: &TestStore) -> impl Fn() -> Box<dyn Store> + Send + Clone {
    let data_dir = store.data_dir();
    let pg_config = store.pg_config().cloned();
    move || -> Box<dyn Store> {
        let mut opened: Box<dyn Store> = match (&data_dir, &pg_config) {
            (Some(dir), _) => Box::new(SqliteStore::open(dir).expect("open SQLite store")),
            (None, Some(config)) => Box::new(PgStore::open(config).expect("open PgStore")),
            (None, None) => unreachable!("a test store has a folder or a schema"),
        };
        opened.set_master_keys(MasterKey::from_bytes(1, &MASTER), None).expect("master key");
        opened
    }
}

/// Runs each import on a node of its own, all starting at once. Returns their results in
/// the order given.
fn import_at_once(
    store: &TestStore,
    imports: Vec<(Tenant, ImportBatch)>,
) -> Vec<Result<ImportCounts, StoreError>> {
    let open = open_in_thread(store);
    let barrier = Arc::new(Barrier::new(imports.len()));
    let handles: Vec<_> = imports
        .into_iter()
        .map(|(tenant, batch)| {
            let (open, barrier) = (open.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut node = open();
                barrier.wait();
                node.import(&tenant, &batch, &Policy::builtin(), ACTOR)
            })
        })
        .collect();
    handles.into_iter().map(|handle| handle.join().expect("import thread")).collect()
}

fn people(prefix: &str, count: usize) -> Vec<NewPatientProfile> {
    (0..count).map(|i| person(&format!("{prefix}-{i}"), &format!("Given{i}"))).collect()
}

fn concurrent_imports_share_profile(backend: Backend) {
    let mut store = store(backend);
    let tenants = [
        store.create_tenant("first", "First", ACTOR).expect("tenant"),
        store.create_tenant("second", "Second", ACTOR).expect("tenant"),
    ];
    let imports = tenants.iter().map(|t| (t.clone(), batch_of(people("s", 20)))).collect();

    let mut created = 0;
    for result in import_at_once(&store, imports) {
        let counts = result.expect("concurrent import");
        assert_eq!(counts.links_created, 20);
        assert_eq!(counts.profiles_created + counts.profiles_linked, 20);
        created += counts.profiles_created;
    }

    assert_eq!(created, 20, "each person's profile was created once");
    for i in 0..20 {
        let source = format!("s-{i}");
        let first = store.find_patient(&tenants[0], "test", &source).expect("find");
        let second = store.find_patient(&tenants[1], "test", &source).expect("find");
        assert!(first.is_some(), "{source} linked to the first tenant");
        assert_eq!(first, second, "{source} has one core profile");
    }
}

fn concurrent_imports_into_one_tenant(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    // Both imports need the tenant key, which neither finds, so both create it at once.
    let with_provider = |prefix: &str| ImportBatch {
        providers: vec![NewProvider {
            source_id: format!("prov-{prefix}"),
            name: format!("Doctor {prefix}"),
            specialty: "GENERAL PRACTICE".into(),
            license_state: "NE".into(),
            ..NewProvider::default()
        }],
        ..batch_of(people(prefix, 10))
    };
    let imports = vec![(tenant.clone(), with_provider("a")), (tenant.clone(), with_provider("b"))];

    for result in import_at_once(&store, imports) {
        let counts = result.expect("concurrent import");
        assert_eq!(counts.links_created, 10);
        assert_eq!(counts.providers, 1);
    }
    assert_eq!(store.patient_links(&tenant).expect("links").len(), 20);
    let mut names: Vec<String> =
        store.providers(&tenant).expect("providers").into_iter().map(|p| p.name).collect();
    names.sort();
    assert_eq!(names, ["Doctor a", "Doctor b"], "both sealed under the one tenant key");
    assert_eq!(store.rotate_tenant_key(&tenant, ACTOR).expect("rotate"), 2, "one version 1");
}

fn concurrent_same_import_runs_once(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let imports = vec![(tenant.clone(), full_batch()), (tenant.clone(), full_batch())];

    let results = import_at_once(&store, imports);
    let succeeded: Vec<&ImportCounts> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(succeeded.len(), 1, "one import wins");
    assert_eq!(succeeded[0].links_created, 2);
    let failed = results.iter().find_map(|r| r.as_ref().err()).expect("one import fails");
    assert!(matches!(failed, StoreError::AlreadyImported { .. }), "{failed}");
    assert_eq!(store.patient_links(&tenant).expect("links").len(), 2);
    let first = store.find_patient(&tenant, "test", "s-1").expect("find").expect("s-1");
    let detail = store.patient_link(&tenant, first).expect("link");
    assert_eq!(detail.counts.consultations, 2, "the losing import wrote no rows");
}

fn tenant_reads_stay_in_tenant(backend: Backend) {
    let mut store = store(backend);
    let a = store.create_tenant("tenant-a", "A", ACTOR).expect("tenant");
    let b = store.create_tenant("tenant-b", "B", ACTOR).expect("tenant");
    let policy = Policy::builtin();
    import_one(&mut store, &a, "a-1", "Alpha1");
    store.import(&b, &full_batch(), &policy, ACTOR).expect("import into B");
    let theirs = store.find_patient(&b, "test", "s-1").expect("find").expect("B's patient");
    let photo = store
        .add_id_photo(&b, theirs, b"b photo", at("2024-01-01T00:00:00Z"), ACTOR)
        .expect("photo");

    assert!(is_patient_not_found(store.patient_profile(&a, theirs)));
    assert!(is_patient_not_found(store.patient_link(&a, theirs)));
    let when = at("2024-03-01T00:00:00Z");
    assert!(is_patient_not_found(store.record_encounter(&a, theirs, when, &policy, ACTOR)));
    assert!(is_patient_not_found(store.add_id_photo(&a, theirs, b"x", when, ACTOR)));
    let times = SessionTimes { started_at: when, expires_at: when, ended_at: None };
    assert!(is_patient_not_found(store.add_session(&a, Some(theirs), times)));
    let hold = store.place_hold(&a, HoldScope::Patient(theirs), "M", "r", ACTOR);
    assert!(is_patient_not_found(hold));
    let err = store.read_id_photo(&a, photo).expect_err("B's photo");
    assert!(matches!(err, StoreError::PhotoNotFound { .. }), "{err}");
    assert_eq!(store.find_patient(&a, "test", "s-1").expect("find"), None);
    let a_links = store.patient_links(&a).expect("links");
    assert_eq!(a_links.len(), 1);
    assert!(a_links.iter().all(|l| l.tenant_id == a.id && l.patient_id != theirs));
    assert!(store.providers(&a).expect("providers").is_empty(), "providers are B's");

    // B still reads all of its records, unchanged by A's failed writes.
    let detail = store.patient_link(&b, theirs).expect("B's link");
    assert_eq!(detail.counts.consultations, 2);
    assert_eq!(detail.counts.id_photos, 1);
    assert_eq!(detail.counts.sessions, 0);
}

fn master_rotation_keeps_profiles(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let first = import_one(&mut store, &tenant, "s-0", "Zero0");
    store.import(&tenant, &full_batch(), &Policy::builtin(), ACTOR).expect("import");
    let next = [9u8; 32];
    assert_eq!(store.master_key_version().expect("version"), 1);
    assert_eq!(store.master_rotation_target().expect("target"), None);

    store.begin_master_rotation(2, ACTOR).expect("begin");
    assert_eq!(store.master_rotation_target().expect("target"), Some(2));
    let err = store.rewrap_data_keys(10).expect_err("no next key yet");
    assert!(matches!(err, StoreError::NoRotation), "{err}");
    let both = || (MasterKey::from_bytes(1, &MASTER), Some(MasterKey::from_bytes(2, &next)));
    let (master, next_key) = both();
    store.set_master_keys(master, next_key).expect("both keys");
    let err = store.finish_master_rotation(ACTOR).expect_err("keys not re-wrapped");
    assert!(matches!(err, StoreError::RotationIncomplete { .. }), "{err}");

    let mut batches = 0;
    let mut remaining = store.rewrap_data_keys(2).expect("batch");
    while remaining > 0 {
        let after = store.rewrap_data_keys(2).expect("batch");
        assert!(after < remaining, "each batch re-wraps some keys");
        remaining = after;
        batches += 1;
    }
    assert!(batches > 0, "the keys took more than one batch of two");
    assert_eq!(store.finish_master_rotation(ACTOR).expect("finish"), 2);
    assert_eq!(store.master_key_version().expect("version"), 2);
    assert_eq!(store.master_rotation_target().expect("target"), None);

    // Another node with only the new key reads every profile and finds patients by source.
    let mut node = store.open_again();
    node.set_clock(Box::new(FixedClock(at("2024-01-01T00:00:00Z"))));
    node.set_master_keys(MasterKey::from_bytes(2, &next), None).expect("new key only");
    assert_eq!(node.patient_profile(&tenant, first).expect("profile").given_name, "Zero0");
    let second = node.find_patient(&tenant, "test", "s-2").expect("find").expect("s-2");
    assert_eq!(node.patient_profile(&tenant, second).expect("profile").given_name, "Bravo2");
    assert_eq!(node.providers(&tenant).expect("providers")[0].name, "Doctor1 Provider1");

    let mut stale = store.open_again();
    let err = stale.set_master_keys(MasterKey::from_bytes(1, &MASTER), None).expect_err("old");
    assert!(matches!(err, StoreError::Crypto(_)), "{err}");
}

fn tenant_rotation_adds_versions(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let other = store.create_tenant("other", "Other", ACTOR).expect("tenant");
    let policy = Policy::builtin();
    let provider = |name: &str| ImportBatch {
        providers: vec![NewProvider {
            source_id: format!("prov-{name}"),
            name: name.into(),
            specialty: "GENERAL PRACTICE".into(),
            license_state: "NE".into(),
            ..NewProvider::default()
        }],
        ..batch_of(vec![])
    };

    store.import(&tenant, &provider("Early1 Doctor1"), &policy, ACTOR).expect("import");
    assert_eq!(store.rotate_tenant_key(&tenant, ACTOR).expect("rotate"), 2);
    store.import(&tenant, &provider("Later2 Doctor2"), &policy, ACTOR).expect("import");
    assert_eq!(store.rotate_tenant_key(&tenant, ACTOR).expect("rotate"), 3);
    assert_eq!(store.rotate_tenant_key(&other, ACTOR).expect("other tenant"), 1);

    let mut names: Vec<String> =
        store.providers(&tenant).expect("providers").into_iter().map(|p| p.name).collect();
    names.sort();
    assert_eq!(names, ["Early1 Doctor1", "Later2 Doctor2"]);
}

fn second_node_reads_same_keys(backend: Backend) {
    let mut store = store(backend);
    let tenant = store.create_tenant("clinic", "Clinic", ACTOR).expect("tenant");
    let patient = import_one(&mut store, &tenant, "s-1", "Alpha1");

    let mut node = store.open_again();
    node.set_clock(Box::new(FixedClock(at("2024-01-01T00:00:00Z"))));
    node.set_master_keys(MasterKey::from_bytes(1, &MASTER), None).expect("master key");
    assert_eq!(node.find_patient(&tenant, "test", "s-1").expect("find"), Some(patient));
    assert_eq!(node.patient_profile(&tenant, patient).expect("profile").given_name, "Alpha1");
    let when = at("2024-02-01T00:00:00Z");
    let photo = node.add_id_photo(&tenant, patient, b"from node two", when, ACTOR).expect("photo");
    assert_eq!(store.read_id_photo(&tenant, photo).expect("read"), b"from node two");
}
