//! Single-use assertions: the `jti`s of jwt-bearer assertions (RFC 7523 §3, item 7)
//! from trusts configured with `single_use_assertions`, each remembered until the
//! assertion it came from expires, so the same assertion is accepted once.
//!
//! Only verified assertions from a verified, rate-limited agent enter (the caller's
//! order, see [`crate::sts::exchange`]), and each entry is keyed by the SHA-256 of
//! the trust's name and the `jti`, so memory never grows with unverified input and
//! no `jti` is kept in clear. The set is bounded: expired entries are dropped as new
//! ones come in (oldest expiry first), and when it is full of live entries a new
//! assertion is refused ([`ReplayError::Full`]) rather than an old one forgotten,
//! which would let that one be replayed. A plain mutex guards it: the critical
//! section is a few map operations, and only single-use trusts ever take it.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

/// Why an assertion could not be spent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("trust {trust}: the assertion has no jti and its trust requires one")]
    MissingJti { trust: String },
    #[error("the assertion's jti was seen before within its lifetime")]
    Replayed,
    #[error("the single-use assertion set is full of live entries")]
    Full,
}

/// Spent `jti`s and when each may be forgotten.
#[derive(Debug, Default)]
struct Spent {
    keys: HashSet<[u8; 32]>,
    /// `(forget_at, key)`, oldest first.
    by_expiry: BTreeSet<(u64, [u8; 32])>,
}

/// The `jti`s of single-use assertions seen while they live.
#[derive(Debug)]
pub struct SpentAssertions {
    capacity: usize,
    spent: Mutex<Spent>,
}

/// How many spent `jti`s are kept at most (~100 bytes each).
pub const DEFAULT_CAPACITY: usize = 100_000;

impl SpentAssertions {
    pub fn new(capacity: usize) -> Self {
        SpentAssertions {
            capacity,
            spent: Mutex::new(Spent::default()),
        }
    }

    /// Spends `jti` of `trust` at `now`, remembering it until `forget_at` (the
    /// assertion's `exp` plus the trust's leeway): refused if it was spent before.
    pub fn spend(
        &self,
        trust: &str,
        jti: &str,
        forget_at: u64,
        now: u64,
    ) -> Result<(), ReplayError> {
        let key = digest(trust, jti);
        let mut spent = self.spent.lock().map_err(|_| ReplayError::Full)?;
        while let Some(&(at, old)) = spent.by_expiry.first() {
            if at >= now {
                break;
            }
            spent.by_expiry.pop_first();
            spent.keys.remove(&old);
        }
        if spent.keys.contains(&key) {
            return Err(ReplayError::Replayed);
        }
        if spent.keys.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        spent.keys.insert(key);
        spent.by_expiry.insert((forget_at, key));
        Ok(())
    }

    /// How many `jti`s are remembered now.
    pub fn len(&self) -> usize {
        self.spent.lock().map(|s| s.keys.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SHA-256 of the trust name, a separator no name contains, and the `jti`.
fn digest(trust: &str, jti: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(trust.as_bytes());
    ctx.update(&[0]);
    ctx.update(jti.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_jti_is_spent_once_while_it_lives_and_per_trust() {
        let set = SpentAssertions::new(10);
        set.spend("k8s", "a", 100, 10).unwrap();
        assert_eq!(set.spend("k8s", "a", 100, 20), Err(ReplayError::Replayed));
        // The same jti from another trust is another assertion.
        set.spend("ci", "a", 100, 20).unwrap();
        // Once its assertion expired, it is forgotten (and would fail `exp` anyway).
        set.spend("k8s", "a", 200, 101).unwrap();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn a_full_set_refuses_rather_than_forgets() {
        let set = SpentAssertions::new(2);
        set.spend("t", "1", 100, 0).unwrap();
        set.spend("t", "2", 100, 0).unwrap();
        assert_eq!(set.spend("t", "3", 100, 50), Err(ReplayError::Full));
        assert_eq!(set.spend("t", "1", 100, 50), Err(ReplayError::Replayed));
        // Expired entries make room.
        set.spend("t", "3", 300, 101).unwrap();
    }
}
