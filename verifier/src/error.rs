//! Why a JWT or a key set was refused. Every variant carries only configuration (the
//! issuer's configured name) and fixed words, never token content, so an error can be
//! logged, counted or shown without leaking what the caller presented.

/// Why a token was not accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token has a crit header; no JWS extension is supported")]
    CriticalHeader,
    #[error("token header has a parameter that changes processing and is not implemented")]
    UnsupportedHeader,
    #[error("token issuer is not a configured trust")]
    UnknownIssuer,
    #[error("token issuer is refused here")]
    RefusedIssuer,
    #[error("trust {trust}: algorithm not allowed")]
    AlgorithmNotAllowed { trust: String },
    #[error("trust {trust}: no key in the JWKS matches the token's kid")]
    UnknownKid { trust: String },
    #[error("trust {trust}: no usable key for the token")]
    NoUsableKey { trust: String },
    #[error("trust {trust}: bad signature")]
    BadSignature { trust: String },
    #[error("trust {trust}: claim {claim}: {problem}")]
    Claim {
        trust: String,
        claim: &'static str,
        problem: &'static str,
    },
    #[error("trust {trust}: JWKS unavailable: {reason}")]
    JwksUnavailable { trust: String, reason: JwksError },
}

/// Why a JWKS could not be loaded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("request failed or timed out")]
    Transport,
    #[error("larger than the size limit")]
    TooLarge,
    #[error("not a JWK set")]
    Parse,
    #[error("cannot read file")]
    File,
    #[error("not fetched: the last attempt failed within the refetch cooldown")]
    Cooldown,
}

impl JwksError {
    /// `404 Not Found` or `410 Gone`: the issuer says there is nothing at that URL any
    /// more (a removed tenant's JWKS or deny-list feed). An answer, not an outage.
    pub fn withdrawn(&self) -> bool {
        matches!(self, JwksError::Status(404 | 410))
    }
}
