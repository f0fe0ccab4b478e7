//! Domain types of MedConnect: ids, records, retention policy, calendar rules, the audit
//! entry model and the PHI sanitizer.
//!
//! This crate does no I/O. Everything here is a pure function of its inputs (the clock is a
//! trait so callers can inject a fixed one), which is what lets the retention rules be tested
//! as tables of cases.

pub mod audit;
pub mod checkpoint;
pub mod clock;
pub mod ids;
pub mod model;
pub mod policy;
pub mod sanitize;
pub mod time;

pub use ids::{
    ConsultationId, HoldId, PatientId, PhotoId, ProviderId, ServiceTokenId, SessionId, TenantId,
    UserId,
};
