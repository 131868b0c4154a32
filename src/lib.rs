//! agent-sts: a security token service for AI agents.
//!
//! An agent proves who it is with its workload identity (a JWT from a trusted issuer),
//! asks `POST /token` (RFC 8693 token exchange) for exactly one catalogue action, and
//! gets back a minutes-lived, one-audience JWT access token (RFC 9068) that downstream
//! services verify offline through `/.well-known/jwks.json`. The README's
//! "Architecture" section maps each folder to its concern and follows a `/token` and a
//! shim request through them.
//!
//! The two programs sit on top: [`sts`] (the token service) and [`shim`] (the
//! credential-injecting proxy); neither imports the other. Below them, the components:
//! [`identity`] (workload trust), [`catalogue`] (actions and who may have them),
//! [`keys`] (the signing keyring), [`store`] (durable secrets, Vault), [`audit`],
//! [`telemetry`]; and the leaves [`config`], [`secret`], [`runtime`]. [`dev`] wires a
//! whole demo on one machine.
#![forbid(unsafe_code)]

pub mod audit;
pub mod catalogue;
pub mod config;
pub mod control;
pub mod dev;
pub mod identity;
pub mod keys;
pub mod runtime;
pub mod secret;
pub mod shim;
pub mod store;
pub mod sts;
pub mod telemetry;
