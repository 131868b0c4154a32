//! Token requests: from a form body to one checked, normalized request, whichever the
//! grant.
//!
//! This module knows nothing of HTTP. It takes the raw `application/x-www-form-urlencoded`
//! body (RFC 6749 Appendix B) of either grant the STS takes, and returns either an
//! [`ExchangeRequest`] whose every field has been checked, or the [`Rejection`] that
//! explains why not. Both grants come out as the same request, so one pipeline
//! ([`crate::sts::exchange`]) decides them: the jwt-bearer `assertion` is the subject
//! token of a token exchange without an actor, and [`ExchangeRequest::grant`] says
//! which rules its identity is verified under. Rules, in the order they are applied:
//! - at most [`MAX_PARAMETERS`] parameters; any known parameter sent twice is refused
//!   (never "last value wins"), except `audience` and `resource`, which RFC 8693
//!   §2.1 allows to repeat (each must then name the action's audience);
//! - a parameter with an empty value counts as absent (RFC 6749 §3.1); unknown
//!   parameters are ignored (RFC 6749 §3.2), and so are the other grant's;
//! - `grant_type` must be token exchange or jwt-bearer; client authentication
//!   parameters are refused (the workload token is the authentication);
//! - token exchange (RFC 8693 §2.1): `subject_token` with a JWT `subject_token_type`,
//!   or an access token of ours (`...:access_token`, a parent agent's, handed to a
//!   sub-agent: then `actor_token` is required); `actor_token` and `actor_token_type`
//!   together or not at all;
//! - jwt-bearer (RFC 7523 §2.1, as the MCP workload-identity extension profiles it):
//!   one `assertion`, and exactly one `resource` (RFC 8707 §2; none or several is
//!   `invalid_target`);
//! - tokens within the size cap;
//! - `scope` names exactly one action (RFC 6749 §3.3: space-delimited).

use crate::secret::{DpopProof, SubjectToken};
use crate::sts::oauth_error::Rejection;

pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const GRANT_TYPE_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Most parameters a request may carry.
pub const MAX_PARAMETERS: usize = 32;

/// Which grant a request came in as: it decides how the identity token is verified
/// and which error code a bad one gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    /// RFC 8693: `subject_token` (audience: the issuer); a bad one is
    /// `invalid_request` (RFC 8693 §2.2.2).
    TokenExchange,
    /// RFC 7523 §2.1: `assertion` (audience: the issuer or the token endpoint), possibly
    /// single-use; a bad one is `invalid_grant` (RFC 7523 §3.1).
    JwtBearer,
}

impl GrantType {
    /// Short name for the audit log and the decision event.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::TokenExchange => "token-exchange",
            GrantType::JwtBearer => "jwt-bearer",
        }
    }
}

/// What the subject token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectType {
    /// A workload (or user) JWT from a configured trust.
    Workload,
    /// An access token this STS minted (`...:token-type:access_token`): a parent
    /// agent's, handed to a sub-agent, which must send its own `actor_token`.
    AccessToken,
}

/// A checked token request, either grant (see the module docs).
#[derive(Debug)]
pub struct ExchangeRequest {
    pub grant: GrantType,
    pub subject_type: SubjectType,
    /// The subject token, or the jwt-bearer assertion.
    pub subject_token: SubjectToken,
    pub actor_token: Option<SubjectToken>,
    /// The one catalogue action asked for (not yet known to exist).
    pub action: String,
    /// `audience` values (each must be the action's audience).
    pub audiences: Vec<String>,
    /// `resource` values (each must be the action's audience).
    pub resources: Vec<String>,
    /// The `DPoP` header (RFC 9449 §4), when the client sent one.
    pub dpop: Option<DpopProof>,
}

#[derive(Default)]
struct Seen {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    actor_token: Option<String>,
    actor_token_type: Option<String>,
    requested_token_type: Option<String>,
    scope: Option<String>,
    assertion: Option<String>,
    client_auth: bool,
    audiences: Vec<String>,
    resources: Vec<String>,
}

fn once(slot: &mut Option<String>, value: String, seen: &mut bool) -> Result<(), Rejection> {
    if *seen {
        return Err(Rejection::RepeatedParameter);
    }
    *seen = true;
    if !value.is_empty() {
        *slot = Some(value);
    }
    Ok(())
}

/// Subject and actor token types we accept: JWTs.
fn is_jwt_type(t: &str) -> bool {
    t == TOKEN_TYPE_JWT || t == TOKEN_TYPE_ID_TOKEN
}

/// Parses and checks a token-exchange form body.
pub fn parse(body: &[u8], max_token_bytes: usize) -> Result<ExchangeRequest, Rejection> {
    if std::str::from_utf8(body).is_err() {
        return Err(Rejection::MalformedBody);
    }
    let mut s = Seen::default();
    let mut flags = [false; 8];
    for (count, (name, value)) in form_urlencoded::parse(body).enumerate() {
        if count >= MAX_PARAMETERS {
            return Err(Rejection::MalformedBody);
        }
        let value = value.into_owned();
        match name.as_ref() {
            "grant_type" => once(&mut s.grant_type, value, &mut flags[0])?,
            "subject_token" => once(&mut s.subject_token, value, &mut flags[1])?,
            "subject_token_type" => once(&mut s.subject_token_type, value, &mut flags[2])?,
            "actor_token" => once(&mut s.actor_token, value, &mut flags[3])?,
            "actor_token_type" => once(&mut s.actor_token_type, value, &mut flags[4])?,
            "requested_token_type" => once(&mut s.requested_token_type, value, &mut flags[5])?,
            "scope" => once(&mut s.scope, value, &mut flags[6])?,
            "assertion" => once(&mut s.assertion, value, &mut flags[7])?,
            "audience" if !value.is_empty() => s.audiences.push(value),
            "resource" if !value.is_empty() => s.resources.push(value),
            "client_secret" | "client_assertion" | "client_assertion_type" => s.client_auth = true,
            _ => {} // RFC 6749 §3.2: unknown parameters are ignored
        }
    }

    let grant = match s.grant_type.as_deref() {
        None => return Err(Rejection::MissingGrantType),
        Some(GRANT_TYPE_TOKEN_EXCHANGE) => GrantType::TokenExchange,
        Some(GRANT_TYPE_JWT_BEARER) => GrantType::JwtBearer,
        Some(_) => return Err(Rejection::UnsupportedGrantType),
    };
    if s.client_auth {
        return Err(Rejection::ClientAuthentication);
    }
    let action = one_action(s.scope.as_deref());
    if grant == GrantType::JwtBearer {
        let assertion = s.assertion.ok_or(Rejection::MissingAssertion)?;
        if assertion.len() > max_token_bytes {
            return Err(Rejection::TokenTooLarge);
        }
        if s.resources.len() != 1 {
            return Err(Rejection::ResourceNotOne);
        }
        return Ok(ExchangeRequest {
            grant,
            subject_type: SubjectType::Workload,
            subject_token: SubjectToken::new(assertion),
            actor_token: None,
            action: action?,
            audiences: s.audiences,
            resources: s.resources,
            dpop: None,
        });
    }
    let subject_token = s.subject_token.ok_or(Rejection::MissingSubjectToken)?;
    let subject_type = match s.subject_token_type.as_deref() {
        Some(t) if is_jwt_type(t) => SubjectType::Workload,
        Some(TOKEN_TYPE_ACCESS_TOKEN) => SubjectType::AccessToken,
        _ => return Err(Rejection::UnsupportedSubjectTokenType),
    };
    let actor_token = match (s.actor_token, s.actor_token_type.as_deref()) {
        (None, None) => None,
        (Some(t), Some(ty)) if is_jwt_type(ty) => Some(t),
        (Some(_), Some(_)) => return Err(Rejection::UnsupportedActorTokenType),
        _ => return Err(Rejection::ActorTokenWithoutType),
    };
    if let Some(t) = s.requested_token_type.as_deref()
        && t != TOKEN_TYPE_ACCESS_TOKEN
        && t != TOKEN_TYPE_JWT
    {
        return Err(Rejection::UnsupportedRequestedTokenType);
    }
    if subject_token.len() > max_token_bytes
        || actor_token
            .as_ref()
            .is_some_and(|t| t.len() > max_token_bytes)
    {
        return Err(Rejection::TokenTooLarge);
    }
    if subject_type == SubjectType::AccessToken && actor_token.is_none() {
        return Err(Rejection::DelegationRequired);
    }
    Ok(ExchangeRequest {
        grant,
        subject_type,
        action: action?,
        subject_token: SubjectToken::new(subject_token),
        actor_token: actor_token.map(SubjectToken::new),
        audiences: s.audiences,
        resources: s.resources,
        dpop: None,
    })
}

/// The one action `scope` names (RFC 6749 §3.3: space-delimited), or the refusal.
fn one_action(scope: Option<&str>) -> Result<String, Rejection> {
    let mut actions = scope.unwrap_or("").split(' ').filter(|a| !a.is_empty());
    match (actions.next(), actions.next()) {
        (Some(one), None) => Ok(one.to_string()),
        _ => Err(Rejection::ScopeNotOneAction),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=a.b.c&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&scope=docs.read";

    fn p(body: &str) -> Result<ExchangeRequest, Rejection> {
        parse(body.as_bytes(), 100)
    }

    #[test]
    fn good_request_parses() {
        let r = p(GOOD).unwrap();
        assert_eq!(r.action, "docs.read");
        assert_eq!(r.subject_token.expose(), "a.b.c");
        assert!(r.actor_token.is_none());
        let r = p(&format!("{GOOD}&audience=x&audience=x&resource=y&foo=bar")).unwrap();
        assert_eq!(r.audiences, vec!["x", "x"]);
        assert_eq!(r.resources, vec!["y"]);
    }

    #[test]
    fn each_rule_has_its_rejection() {
        use Rejection::*;
        let cases: Vec<(String, Rejection)> = vec![
            (
                GOOD.replace(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&",
                    "",
                ),
                MissingGrantType,
            ),
            (format!("{GOOD}&grant_type=password"), RepeatedParameter),
            (
                GOOD.replace(
                    "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange",
                    "password",
                ),
                UnsupportedGrantType,
            ),
            (
                GOOD.replace(
                    "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange",
                    "client_credentials",
                ),
                UnsupportedGrantType,
            ),
            (format!("{GOOD}&scope=docs.read"), RepeatedParameter),
            (format!("{GOOD}&subject_token=x.y.z"), RepeatedParameter),
            (GOOD.replace("scope=docs.read", "scope="), ScopeNotOneAction),
            (GOOD.replace("&scope=docs.read", ""), ScopeNotOneAction),
            (
                GOOD.replace("scope=docs.read", "scope=docs.read+github.issues.create"),
                ScopeNotOneAction,
            ),
            (
                GOOD.replace("subject_token=a.b.c&", ""),
                MissingSubjectToken,
            ),
            (
                GOOD.replace("token-type%3Ajwt", "token-type%3Asaml2"),
                UnsupportedSubjectTokenType,
            ),
            (
                format!("{GOOD}&actor_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt"),
                ActorTokenWithoutType,
            ),
            (format!("{GOOD}&actor_token=a.b.c"), ActorTokenWithoutType),
            (
                format!("{GOOD}&actor_token=a.b.c&actor_token_type=urn%3Ax"),
                UnsupportedActorTokenType,
            ),
            (
                format!("{GOOD}&requested_token_type=urn%3Ax"),
                UnsupportedRequestedTokenType,
            ),
            (format!("{GOOD}&client_secret=s"), ClientAuthentication),
            (GOOD.replace("a.b.c", &"a".repeat(101)), TokenTooLarge),
            (format!("{GOOD}{}", "&x=1".repeat(40)), MalformedBody),
        ];
        for (body, want) in cases {
            assert_eq!(p(&body).unwrap_err(), want, "{body}");
        }
        assert_eq!(parse(b"\xff\xfe", 100).unwrap_err(), MalformedBody);
    }

    const BEARER: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c&scope=docs.read&resource=https%3A%2F%2Fdocs.test";

    #[test]
    fn jwt_bearer_is_the_same_request_with_the_assertion_as_subject() {
        let r = p(BEARER).unwrap();
        assert_eq!(r.grant, GrantType::JwtBearer);
        assert_eq!(r.subject_token.expose(), "a.b.c");
        assert!(r.actor_token.is_none());
        assert_eq!(r.action, "docs.read");
        assert_eq!(r.resources, vec!["https://docs.test"]);
        // The other grant's parameters are ignored (RFC 6749 §3.2).
        let r = p(&format!("{BEARER}&actor_token=x.y.z&subject_token=q.r.s")).unwrap();
        assert!(r.actor_token.is_none());
        assert_eq!(r.subject_token.expose(), "a.b.c");
        assert_eq!(p(GOOD).unwrap().grant, GrantType::TokenExchange);
    }

    #[test]
    fn jwt_bearer_rules_have_their_rejections() {
        use Rejection::*;
        let cases: Vec<(String, Rejection)> = vec![
            (BEARER.replace("assertion=a.b.c&", ""), MissingAssertion),
            (
                BEARER.replace("assertion=a.b.c", "assertion="),
                MissingAssertion,
            ),
            (format!("{BEARER}&assertion=d.e.f"), RepeatedParameter),
            (
                BEARER.replace("&resource=https%3A%2F%2Fdocs.test", ""),
                ResourceNotOne,
            ),
            (
                format!("{BEARER}&resource=https%3A%2F%2Fdocs.test"),
                ResourceNotOne,
            ),
            (
                format!("{BEARER}&resource=https%3A%2F%2Fother.test"),
                ResourceNotOne,
            ),
            (BEARER.replace("&scope=docs.read", ""), ScopeNotOneAction),
            (
                BEARER.replace("scope=docs.read", "scope=docs.read+docs.write"),
                ScopeNotOneAction,
            ),
            (format!("{BEARER}&client_assertion=x"), ClientAuthentication),
            (BEARER.replace("a.b.c", &"a".repeat(101)), TokenTooLarge),
        ];
        for (body, want) in cases {
            assert_eq!(p(&body).unwrap_err(), want, "{body}");
        }
    }

    proptest! {
        /// Any byte string parses to a request or a rejection, never a panic.
        #[test]
        fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body, 64);
        }

        /// Duplicating any known single-valued parameter is always refused.
        #[test]
        fn duplicates_always_refused(idx in 0usize..4, extra in "[a-z]{0,8}") {
            let names = ["grant_type", "subject_token", "subject_token_type", "scope"];
            let body = format!("{GOOD}&{}={extra}", names[idx]);
            prop_assert_eq!(p(&body).unwrap_err(), Rejection::RepeatedParameter);
        }

        /// A scope of one well-formed name, with any surrounding spaces, is that action.
        #[test]
        fn one_action_round_trips(name in "[a-z][a-z0-9._-]{0,30}", pad in 0usize..3) {
            let spaces = "+".repeat(pad);
            let body = GOOD.replace("scope=docs.read", &format!("scope={spaces}{name}{spaces}"));
            prop_assert_eq!(p(&body).unwrap().action, name);
        }
    }
}
