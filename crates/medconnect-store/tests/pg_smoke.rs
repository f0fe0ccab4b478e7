use medconnect_domain::clock::SystemClock;
use medconnect_store::{ClockMode, PgConfig, PgStore, Store};

#[test]
fn create_open_and_drop() {
    let admin = "postgres://postgres@127.0.0.1:5432/test";
    let mut config = PgConfig::new("postgres://127.0.0.1:5432/test");
    config.schema = format!("mc_smoke_{}", std::process::id());
    let store = PgStore::create(&config, admin, ClockMode::Simulated, Box::new(SystemClock)).expect("create");
    let info = store.info().expect("info");
    assert_eq!(info.backend, "postgres");
    drop(store);
    PgStore::drop_schema(admin, &config.schema).expect("drop");
}
