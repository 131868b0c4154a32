//! Per-identity rate limiting for `/token`.
//!
//! Each verified agent identity (`trust:subject`) gets its own GCRA limiter from the
//! `governor` crate. Limiters live in a bounded moka cache that forgets identities idle
//! for [`IDLE_FORGET`], so memory is capped however many identities appear; and only
//! verified identities ever get a limiter (README, "Security properties" 7).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Idle time after which an identity's limiter is dropped (it starts full again).
pub const IDLE_FORGET: Duration = Duration::from_secs(600);

/// Most identities tracked at once.
pub const MAX_IDENTITIES: u64 = 100_000;

pub struct IdentityRateLimiter {
    quota: Quota,
    limiters: moka::sync::Cache<String, Arc<DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for IdentityRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityRateLimiter")
            .field("quota", &self.quota)
            .finish()
    }
}

impl IdentityRateLimiter {
    /// `per_second` sustained, bursts of `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        IdentityRateLimiter {
            quota: Quota::per_second(rate).allow_burst(burst),
            limiters: moka::sync::Cache::builder()
                .max_capacity(MAX_IDENTITIES)
                .time_to_idle(IDLE_FORGET)
                .build(),
        }
    }

    /// True when `identity` may make one more request now.
    pub fn allow(&self, identity: &str) -> bool {
        let quota = self.quota;
        let limiter = match self.limiters.get(identity) {
            Some(l) => l,
            None => self.limiters.get_with(identity.to_string(), || {
                Arc::new(RateLimiter::direct(quota))
            }),
        };
        limiter.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_per_identity() {
        let limiter = IdentityRateLimiter::new(1, 3);
        assert!((0..3).all(|_| limiter.allow("k8s:a")));
        assert!(!limiter.allow("k8s:a"));
        assert!(limiter.allow("k8s:b"), "identities are independent");
    }
}
