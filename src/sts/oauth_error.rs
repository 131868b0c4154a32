//! The one OAuth error type of the token endpoint.
//!
//! RFC 6749 §5.2 defines the error response: a JSON object with `error` (a code from a
//! short list, extended by RFC 8693 §2.2.2 with `invalid_target`) and an optional
//! human-readable `error_description`. A client learns the standard code and a
//! description taken from the fixed table below, never an echo of its input, a token, a
//! key or a secret (README, "Security properties" 1 and 10). What actually went wrong is a
//! component error (`JwtError`, `KeyError`, ...) that the handler logs before it is
//! reduced to a [`Rejection`] here: clients get the safe message, logs get the detail.
//! No HTTP framework here: [`crate::sts::http`] turns a rejection into a response.
//!
//! Every variant also names a stable `reason` code, used in the audit log and as the
//! `reason` label of the denial metric, so the label set is fixed at compile time.

use http::StatusCode;

/// Why a token request was refused. The variant chooses the HTTP status, the RFC error
/// code, a fixed description and the audit/metric reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `GET /token`, or any method but POST.
    MethodNotAllowed,
    /// Parameters in the URL query string: tokens are never read from URLs.
    ParametersInUrl,
    /// A body that is not `application/x-www-form-urlencoded`.
    UnsupportedMediaType,
    /// A body over the configured cap.
    BodyTooLarge,
    /// A body that does not parse as a form.
    MalformedBody,
    /// A parameter sent more than once (never "last value wins").
    RepeatedParameter,
    /// `grant_type` absent.
    MissingGrantType,
    /// A grant type other than token exchange and jwt-bearer.
    UnsupportedGrantType,
    /// jwt-bearer without `assertion`.
    MissingAssertion,
    /// The jwt-bearer assertion failed verification (signature, claims, an issuer that
    /// is not a trust or is this STS, an audience that is neither the issuer nor the
    /// token endpoint): RFC 7523 §3.1 `invalid_grant`.
    InvalidAssertion,
    /// A single-use assertion presented again within its lifetime, or without the
    /// `jti` its trust requires (RFC 7523 §3 item 7).
    AssertionReplayed,
    /// jwt-bearer with no `resource`, or more than one (RFC 8707 §2).
    ResourceNotOne,
    /// The set of spent single-use assertions is full of live entries.
    SpentAssertionsFull,
    /// `subject_token` absent.
    MissingSubjectToken,
    /// `subject_token_type` absent or not a JWT type.
    UnsupportedSubjectTokenType,
    /// `actor_token` without `actor_token_type` or the reverse.
    ActorTokenWithoutType,
    /// `actor_token_type` not a JWT type.
    UnsupportedActorTokenType,
    /// `requested_token_type` other than an access token.
    UnsupportedRequestedTokenType,
    /// A token over the size cap.
    TokenTooLarge,
    /// The subject token failed verification (signature, claims, issuer, ...).
    InvalidSubjectToken,
    /// The actor token failed verification.
    InvalidActorToken,
    /// `scope` absent, empty, or naming more than one action.
    ScopeNotOneAction,
    /// An action that is unknown or not granted to this caller (indistinguishable on
    /// purpose: the catalogue is not enumerable from outside).
    ActionNotPermitted,
    /// The action requires delegation but no `actor_token` was sent.
    DelegationRequired,
    /// The action forbids delegation but an `actor_token` was sent.
    DelegationForbidden,
    /// The subject token's `may_act` (RFC 8693 §4.4) does not name the actor.
    ActorNotAllowed,
    /// The action's integration credential is missing or disabled at the source, or
    /// the store's policy does not let the STS read it: the operator's to fix, so no
    /// retry is invited.
    CredentialUnavailable,
    /// `audience` or `resource` is not the action's audience.
    InvalidTarget,
    /// The DPoP proof is missing where the action requires one, repeated, or fails a
    /// check of RFC 9449 §4.3 (one fixed description for every reason).
    InvalidDpopProof,
    /// Server nonces are on and the proof lacks a current one (RFC 9449 §8): the
    /// answer carries a fresh `DPoP-Nonce`.
    UseDpopNonce,
    /// An identity of the request, or its action, is on the deny list (the kill
    /// switch): unacceptable by policy (RFC 8693 §2.2.2).
    Denied,
    /// The deny list could not be read for longer than `deny.max_stale`: no token.
    DenyListUnavailable,
    /// The client tried to authenticate (HTTP Basic, `client_secret`): not supported.
    ClientAuthentication,
    /// `/revoke`, `/introspect`: the caller's own token (or workload token) is missing,
    /// invalid, or not allowed here.
    InvalidClient,
    /// `/revoke`: the token was issued to another agent.
    NotYourToken,
    /// `/revoke`, `/introspect`: no `token` parameter.
    MissingTokenParameter,
    /// A sub-agent's request would make the `act` chain deeper than allowed.
    DelegationTooDeep,
    /// A sub-agent asked for an action its parent's action does not list in
    /// `delegable_to`.
    NotDelegable,
    /// The caller's identity is over its rate limit.
    RateLimited,
    /// No signing key can be used right now.
    SigningKeyUnavailable,
    /// The secret store cannot be read right now.
    SecretStoreUnavailable,
    /// A token's issuer keys cannot be fetched (and none are cached): ours, not the
    /// client's, to fix.
    IssuerKeysUnavailable,
    /// The audit log cannot be written: no record, no token.
    AuditUnavailable,
    /// The request did not finish within the server's deadline.
    RequestTimeout,
    /// A bug or an unexpected failure on our side.
    Internal,
}

/// Seconds a client should wait after a 429 or 503.
pub const RETRY_AFTER_SECONDS: u64 = 1;

impl Rejection {
    /// The HTTP status (RFC 6749 §5.2 uses 400 for all client errors but
    /// `invalid_client`).
    pub fn status(self) -> StatusCode {
        use Rejection::*;
        match self {
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ClientAuthentication | InvalidClient => StatusCode::UNAUTHORIZED,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            SigningKeyUnavailable
            | SecretStoreUnavailable
            | IssuerKeysUnavailable
            | DenyListUnavailable
            | AuditUnavailable
            | SpentAssertionsFull
            | RequestTimeout => StatusCode::SERVICE_UNAVAILABLE,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The RFC 6749 §5.2 / RFC 8693 §2.2.2 error code.
    pub fn code(self) -> &'static str {
        use Rejection::*;
        match self {
            UnsupportedGrantType => "unsupported_grant_type",
            ScopeNotOneAction | ActionNotPermitted | CredentialUnavailable | NotDelegable => {
                "invalid_scope"
            }
            InvalidTarget | ResourceNotOne => "invalid_target",
            InvalidAssertion | AssertionReplayed => "invalid_grant",
            InvalidDpopProof => "invalid_dpop_proof",
            UseDpopNonce => "use_dpop_nonce",
            ClientAuthentication | InvalidClient => "invalid_client",
            NotYourToken => "unauthorized_client",
            RateLimited
            | SigningKeyUnavailable
            | SecretStoreUnavailable
            | IssuerKeysUnavailable
            | DenyListUnavailable
            | AuditUnavailable
            | SpentAssertionsFull
            | RequestTimeout => "temporarily_unavailable",
            Internal => "server_error",
            _ => "invalid_request",
        }
    }

    /// The fixed, safe description shown to the client.
    pub fn description(self) -> &'static str {
        use Rejection::*;
        match self {
            MethodNotAllowed => "the token endpoint accepts only POST",
            ParametersInUrl => "parameters must be sent in the request body, never in the URL",
            UnsupportedMediaType => "the body must be application/x-www-form-urlencoded",
            BodyTooLarge => "the request body is too large",
            MalformedBody => "the request body is not a valid form",
            RepeatedParameter => "a request parameter is repeated",
            MissingGrantType => "grant_type is missing",
            UnsupportedGrantType => {
                "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange or urn:ietf:params:oauth:grant-type:jwt-bearer"
            }
            MissingAssertion => "assertion is missing",
            InvalidAssertion => "the assertion is invalid",
            AssertionReplayed => "the assertion was already used",
            ResourceNotOne => "resource must be sent once, naming the action's audience",
            SpentAssertionsFull => "too many single-use assertions in flight; retry later",
            MissingSubjectToken => "subject_token is missing",
            UnsupportedSubjectTokenType => {
                "subject_token_type must be urn:ietf:params:oauth:token-type:jwt"
            }
            ActorTokenWithoutType => "actor_token and actor_token_type must be sent together",
            UnsupportedActorTokenType => {
                "actor_token_type must be urn:ietf:params:oauth:token-type:jwt"
            }
            UnsupportedRequestedTokenType => {
                "requested_token_type must be urn:ietf:params:oauth:token-type:access_token"
            }
            TokenTooLarge => "a token exceeds the size limit",
            InvalidSubjectToken => "the subject_token is invalid",
            InvalidActorToken => "the actor_token is invalid",
            ScopeNotOneAction => "scope must name exactly one action",
            ActionNotPermitted => "the requested action is not permitted",
            DelegationRequired => "the requested action requires an actor_token (delegation)",
            DelegationForbidden => "the requested action does not allow delegation",
            ActorNotAllowed => "the subject_token does not allow this actor to act for it",
            CredentialUnavailable => "the requested action's credential is unavailable",
            InvalidTarget => "audience or resource does not match the requested action",
            InvalidDpopProof => "the DPoP proof is missing, repeated or invalid",
            UseDpopNonce => "a DPoP proof with the server's current nonce is required",
            Denied => "the request is refused by policy",
            InvalidClient => "the caller's credential is missing, invalid or not allowed here",
            NotYourToken => "the token was issued to another client",
            MissingTokenParameter => "token is missing",
            DelegationTooDeep => "the delegation chain would be deeper than allowed",
            NotDelegable => "the requested action cannot be delegated from the subject token's",
            DenyListUnavailable => "the deny list cannot be read; retry later",
            ClientAuthentication => {
                "client authentication is not supported: authenticate with the subject_token"
            }
            RateLimited => "too many requests for this identity; retry later",
            SigningKeyUnavailable => "no signing key is available; retry later",
            SecretStoreUnavailable => "the secret store is unavailable; retry later",
            IssuerKeysUnavailable => "the token issuer's keys cannot be fetched; retry later",
            AuditUnavailable => "the audit log is unavailable; no token was issued",
            RequestTimeout => "the request took too long; retry later",
            Internal => "internal error",
        }
    }

    /// Stable reason code for the audit log and the `reason` metric label.
    pub fn reason(self) -> &'static str {
        use Rejection::*;
        match self {
            MethodNotAllowed => "method_not_allowed",
            ParametersInUrl => "parameters_in_url",
            UnsupportedMediaType => "unsupported_media_type",
            BodyTooLarge => "body_too_large",
            MalformedBody => "malformed_body",
            RepeatedParameter => "repeated_parameter",
            MissingGrantType => "missing_grant_type",
            UnsupportedGrantType => "unsupported_grant_type",
            MissingAssertion => "missing_assertion",
            InvalidAssertion => "invalid_assertion",
            AssertionReplayed => "assertion_replayed",
            ResourceNotOne => "resource_not_one",
            SpentAssertionsFull => "spent_assertions_full",
            MissingSubjectToken => "missing_subject_token",
            UnsupportedSubjectTokenType => "unsupported_subject_token_type",
            ActorTokenWithoutType => "actor_token_without_type",
            UnsupportedActorTokenType => "unsupported_actor_token_type",
            UnsupportedRequestedTokenType => "unsupported_requested_token_type",
            TokenTooLarge => "token_too_large",
            InvalidSubjectToken => "invalid_subject_token",
            InvalidActorToken => "invalid_actor_token",
            ScopeNotOneAction => "scope_not_one_action",
            ActionNotPermitted => "action_not_permitted",
            DelegationRequired => "delegation_required",
            DelegationForbidden => "delegation_forbidden",
            ActorNotAllowed => "actor_not_allowed",
            CredentialUnavailable => "credential_unavailable",
            InvalidTarget => "invalid_target",
            InvalidDpopProof => "invalid_dpop_proof",
            UseDpopNonce => "use_dpop_nonce",
            Denied => "denied",
            InvalidClient => "invalid_client",
            NotYourToken => "not_your_token",
            MissingTokenParameter => "missing_token",
            DelegationTooDeep => "delegation_too_deep",
            NotDelegable => "not_delegable",
            DenyListUnavailable => "deny_list_unavailable",
            ClientAuthentication => "client_authentication",
            RateLimited => "rate_limited",
            SigningKeyUnavailable => "signing_key_unavailable",
            SecretStoreUnavailable => "secret_store_unavailable",
            IssuerKeysUnavailable => "issuer_keys_unavailable",
            AuditUnavailable => "audit_unavailable",
            RequestTimeout => "request_timeout",
            Internal => "internal",
        }
    }
}
