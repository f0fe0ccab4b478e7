//! The HTTPS API of MedConnect. It holds the TLS listener (TLS 1.2 and 1.3 only, through
//! rustls with the `ring` provider), the axum routes, a pool of opened stores for the blocking
//! store calls, Prometheus metrics, and the scheduler that runs the lifecycle in the server.
//!
//! This crate handles HTTP. The binary opens stores, loads the policy and runs the lifecycle,
//! and passes those steps to [`Server`] as closures through [`Services`]. Only this crate
//! turns errors into HTTP statuses, in [`error`].

pub mod audit;
pub mod auth;
pub mod body;
pub mod clinical;
pub mod consultations;
pub mod encounters;
pub mod error;
pub mod holds;
pub mod id_photos;
pub mod intake_forms;
pub mod lifecycle;
pub mod limiter;
pub mod login;
pub mod metrics;
pub mod openapi;
mod patient_path;
pub mod patients;
pub mod pool;
pub mod prescriptions;
mod query;
pub mod reads;
pub mod routes;
pub mod scheduler;
pub mod server;
pub mod tls;

#[cfg(feature = "testing")]
pub mod testing;

pub use auth::{Caller, Credential};
pub use error::{ApiError, ErrorCode};
pub use limiter::LoginLimits;
pub use metrics::Metrics;
pub use openapi::ApiDoc;
pub use pool::{PoolError, StorePool};
pub use reads::PatientReads;
pub use routes::{AuditKeySource, PolicyInForce, PolicySource};
pub use scheduler::{LifecycleJob, LifecycleRunner, RunError};
pub use server::{BoundServer, Server, ServerConfig, ServerError, Services};
pub use tls::{ClientCertificate, TlsError, TlsFiles, TlsSource};

/// An error from a closure the binary supplies, such as opening a store or loading the
/// policy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Formats an error with its chain of causes, `outer: inner: innermost`, for log lines.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
