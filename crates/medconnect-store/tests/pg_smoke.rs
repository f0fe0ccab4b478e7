//! A store of each backend can be created, described and dropped.

use medconnect_domain::clock::SystemClock;
use medconnect_store::backend_tests;
use medconnect_store::testing::Backend;

backend_tests!(created_store_describes_itself);

fn created_store_describes_itself(backend: Backend) {
    let store = backend.create(Box::new(SystemClock));
    let info = store.info().expect("info");
    assert_eq!(info.backend, backend.name());
}
