//! What the programs tell operators: Prometheus metrics ([`metrics`]) whose labels come
//! only from closed sets, so no client can grow them or plant a secret in them; the
//! log format and filter ([`logs`]); the process's own figures ([`process`]); and
//! OpenTelemetry traces, off unless configured ([`traces`]).
//!
//! A leaf: imports nothing of the crate's.

pub mod logs;
pub mod metrics;
pub mod process;
pub mod traces;

pub use metrics::{Metrics, ShimMetrics};
