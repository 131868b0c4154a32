//! Control after issuance: stopping tokens that are already out, and the agents that
//! would be given more (README, "Stopping an agent").
//!
//! - [`deny_list`]: the kill switch's entries as the key store keeps them, and their
//!   edits (check-and-set, so two operators at once lose nothing);
//! - [`commands`]: `agent-sts deny add|list|remove`;
//! - [`store`]: where the list lives, beside the keyring (a file, or Vault KV);
//! - [`guard`]: each replica's copy, re-read every `deny.refresh_interval`, enforced at
//!   `/token`, and published as the signed feed (`GET /deny-list`) that shims and
//!   services read through `agent_sts_verifier` to refuse live tokens.
//!
//! May import `keys`, `store`, `config`, `audit`, `identity` and `telemetry`; never
//! `sts` or `shim`.

pub mod commands;
pub mod deny_list;
pub mod guard;
pub mod store;

pub use deny_list::{DenyEntry, DenyFormatError, StoredDenyList};
pub use guard::{DenyCheck, DenyGuard};
pub use store::{DenyStore, DenyStoreError, FileDenyStore, VaultDenyStore};
