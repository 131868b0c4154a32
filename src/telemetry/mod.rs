//! What the programs tell operators: Prometheus metrics ([`metrics`]) whose labels come
//! only from closed sets, so no client can grow them or plant a secret in them.
//!
//! A leaf: imports nothing of the crate's.

pub mod metrics;

pub use metrics::{Metrics, ShimMetrics};
