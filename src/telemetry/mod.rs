//! What the programs tell operators: Prometheus metrics ([`metrics`]) whose labels come
//! only from closed sets, so no client can grow them or plant a secret in them; the
//! log format and filter ([`logs`]); and the process's own figures ([`process`]).
//!
//! A leaf: imports nothing of the crate's.

pub mod logs;
pub mod metrics;
pub mod process;

pub use metrics::{Metrics, ShimMetrics};
