//! Logging in to Vault with the STS's own workload identity, against OpenBao's real
//! auth methods: JWT auth (`vault.auth = "jwt"`) verifying the STS's token with a
//! JWKS this test serves, and Kubernetes auth (`vault.auth = "kubernetes"`) asking a
//! fake TokenReview endpoint this test serves, as it would ask a cluster's API
//! server. The STS then serves with the shipped `agent-sts` policy; a login token
//! that is expired, for the wrong role or no longer reviewed as valid fails closed
//! with a clear error that never carries the token.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use agent_sts::config::{VaultAuth, VaultConfig};
use agent_sts::store::vault::{Vault, VaultError};

use crate::harness::*;
use crate::openbao::OpenBao;
use crate::vault::{plant_credentials, vault_sts_with};

/// The audience the STS's workload token is minted for (Vault's, not the STS's).
const VAULT_AUDIENCE: &str = "https://vault.example.test";
const STS_SUBJECT: &str = "system:serviceaccount:agent-sts:agent-sts";
/// What OpenBao presents to the TokenReview API as its own credential.
const REVIEWER_JWT: &str = "reviewer-jwt-CANARY-0123456789";

/// A `[vault]` configuration for `vault` with `auth`, for a client built directly.
fn vault_config(vault: &OpenBao, auth: VaultAuth) -> VaultConfig {
    VaultConfig {
        address: vault.addr.clone(),
        kv_mount: "secret".into(),
        kv_version: 2,
        auth,
        timeout: Duration::from_secs(2),
        max_stale: Duration::from_secs(60),
        env_token: None,
    }
}

/// Asserts that `e` (its message and its `Debug`) never carries `secret`.
fn assert_clean(e: &VaultError, secret: &str) {
    assert!(!e.to_string().contains(secret), "{e}");
    assert!(!format!("{e:?}").contains(secret), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_logs_in_with_the_sts_workload_token_rereads_it_and_fails_closed() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    // The platform's issuer of the STS's own token (a cluster's OIDC issuer, a CI
    // provider): its JWKS is served here, and OpenBao fetches it.
    let platform = TestIssuer::start(
        "https://oidc.platform.example.test",
        "ci-rs256.pem",
        Algorithm::RS256,
        VAULT_AUDIENCE,
    )
    .await;
    vault.enable_auth("jwt", "jwt").await;
    vault
        .root(
            reqwest::Method::POST,
            "auth/jwt/config",
            json!({"jwks_url": platform.jwks_uri, "bound_issuer": platform.iss}),
        )
        .await;
    for (role, subject) in [
        ("agent-sts", STS_SUBJECT),
        ("other", "system:serviceaccount:other:other"),
    ] {
        vault
            .root(
                reqwest::Method::POST,
                &format!("auth/jwt/role/{role}"),
                json!({
                    "role_type": "jwt",
                    "user_claim": "sub",
                    "bound_subject": subject,
                    "bound_audiences": [VAULT_AUDIENCE],
                    "token_policies": ["agent-sts"],
                    "token_ttl": "1h",
                }),
            )
            .await;
    }
    let good = platform.token_for(STS_SUBJECT);
    let n = now();
    let expired = platform.token(&json!({
        "iss": platform.iss, "sub": STS_SUBJECT, "aud": [VAULT_AUDIENCE],
        "iat": n - 1200, "nbf": n - 1200, "exp": n - 600,
    }));
    // A projected token is mounted by the platform, often world-readable: not checked.
    let token_file = vault.dir().join("workload-token");
    std::fs::write(&token_file, &good).unwrap();

    // The STS serves with it: keys and credentials read under the `agent-sts` policy.
    let auth = format!(
        "auth = \"jwt\"\njwt_role = \"agent-sts\"\njwt_token_file = \"{}\"",
        token_file.display()
    );
    let sts = vault_sts_with(&vault, &issuers, &auth, |c| c).await;
    let r = sts
        .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(vault.count("auth/jwt/login") >= 1);

    // The file is read at every login: a rotated token is picked up, and one that
    // expired is refused, with a clear error that does not carry it.
    let jwt = |role: &str| VaultAuth::Jwt {
        mount: "jwt".into(),
        role: role.into(),
        token_file: token_file.clone(),
    };
    let client = Vault::new(&vault_config(&vault, jwt("agent-sts")), None).unwrap();
    client.login(0).await.unwrap();
    assert!(client.health().ok);
    std::fs::write(&token_file, &expired).unwrap();
    let e = client.login(1).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("vault refused the jwt login at auth/jwt/login for role agent-sts"),
        "{text}"
    );
    assert_clean(&e, &expired);
    assert_clean(&e, &good);

    // The right token for the wrong role.
    std::fs::write(&token_file, &good).unwrap();
    let wrong = Vault::new(&vault_config(&vault, jwt("other")), None).unwrap();
    let e = wrong.login(0).await.unwrap_err();
    assert!(e.to_string().contains("for role other"), "{e}");
    assert_clean(&e, &good);
    assert!(!wrong.health().ok, "no session: not ready");

    // A missing token file names the file, not a token.
    let missing = VaultAuth::Jwt {
        mount: "jwt".into(),
        role: "agent-sts".into(),
        token_file: vault.dir().join("no-such-token"),
    };
    let e = Vault::new(&vault_config(&vault, missing), None)
        .unwrap()
        .login(0)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no-such-token"), "{e}");

    // The login that works again after the token was replaced (another client: the
    // first is in its 5 s cooldown after the failure).
    let again = Vault::new(&vault_config(&vault, jwt("agent-sts")), None).unwrap();
    again.login(0).await.unwrap();
}

/// A fake Kubernetes API server answering TokenReview as the API server does
/// (`POST /apis/authentication.k8s.io/v1/tokenreviews`, authenticated by the
/// reviewer's bearer token): the tokens in `valid` are authenticated as the STS's
/// service account, anything else is not.
#[derive(Clone, Default)]
struct TokenReviews {
    valid: Arc<Mutex<HashSet<String>>>,
    reviewed: Arc<Mutex<Vec<(String, String)>>>,
}

async fn token_review(
    State(reviews): State<TokenReviews>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let token = body["spec"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    reviews
        .reviewed
        .lock()
        .unwrap()
        .push((bearer.clone(), token.clone()));
    if bearer != format!("Bearer {REVIEWER_JWT}") {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized", "code": 401}),
            ),
        );
    }
    let authenticated = reviews.valid.lock().unwrap().contains(&token);
    let status = if authenticated {
        json!({
            "authenticated": true,
            "user": {"username": STS_SUBJECT, "uid": "sa-uid-1", "groups": ["system:serviceaccounts"]},
            "audiences": body["spec"]["audiences"],
        })
    } else {
        json!({"authenticated": false})
    };
    (
        axum::http::StatusCode::CREATED,
        Json(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": body["spec"],
            "status": status,
        })),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_logs_in_through_token_review_and_fails_closed() {
    let vault = OpenBao::start().await;
    plant_credentials(&vault).await;
    let issuers = Issuers::start().await;
    let reviews = TokenReviews::default();
    let api = spawn_router(
        axum::Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                axum::routing::post(token_review),
            )
            .with_state(reviews.clone()),
    )
    .await;
    vault.enable_auth("kubernetes", "kubernetes").await;
    vault
        .root(
            reqwest::Method::POST,
            "auth/kubernetes/config",
            json!({
                "kubernetes_host": api,
                "token_reviewer_jwt": REVIEWER_JWT,
                // Required with no in-cluster CA file; unused over plain http.
                "kubernetes_ca_cert": String::from_utf8(fixture("k8s-api-ca.crt")).unwrap(),
                "disable_local_ca_jwt": true,
            }),
        )
        .await;
    vault
        .root(
            reqwest::Method::POST,
            "auth/kubernetes/role/agent-sts",
            json!({
                "bound_service_account_names": ["agent-sts"],
                "bound_service_account_namespaces": ["agent-sts"],
                "token_policies": ["agent-sts"],
                "token_ttl": "1h",
            }),
        )
        .await;
    // A projected service-account token, as the kubelet mounts it.
    let projected = |uid: &str| {
        let n = now();
        issuers.k8s.token(&json!({
            "iss": issuers.k8s.iss, "sub": STS_SUBJECT, "aud": [VAULT_AUDIENCE],
            "iat": n, "nbf": n, "exp": n + 3600,
            "kubernetes.io": {
                "namespace": "agent-sts",
                "serviceaccount": {"name": "agent-sts", "uid": uid},
                "pod": {"name": "agent-sts-0", "uid": "pod-uid-1"},
            },
        }))
    };
    let sa_token = projected("sa-uid-1");
    reviews.valid.lock().unwrap().insert(sa_token.clone());
    let token_file = vault.dir().join("sa-token");
    std::fs::write(&token_file, &sa_token).unwrap();

    let auth = format!(
        "auth = \"kubernetes\"\nkubernetes_role = \"agent-sts\"\nkubernetes_token_file = \"{}\"",
        token_file.display()
    );
    let sts = vault_sts_with(&vault, &issuers, &auth, |c| c).await;
    let r = sts
        .exchange_for(&issuers.k8s_token("triage"), "github.issues.create")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    {
        let reviewed = reviews.reviewed.lock().unwrap();
        assert!(
            !reviewed.is_empty(),
            "OpenBao never asked the TokenReview API"
        );
        assert!(
            reviewed.iter().all(
                |(bearer, token)| bearer == &format!("Bearer {REVIEWER_JWT}") && token == &sa_token
            ),
            "OpenBao reviews the STS's token with its reviewer credential"
        );
    }

    let k8s = |role: &str| VaultAuth::Kubernetes {
        mount: "kubernetes".into(),
        role: role.into(),
        token_file: token_file.clone(),
    };
    // The API server no longer authenticates the token (service account deleted,
    // token revoked): the login is refused, the error carries no token.
    reviews.valid.lock().unwrap().clear();
    let client = Vault::new(&vault_config(&vault, k8s("agent-sts")), None).unwrap();
    let e = client.login(0).await.unwrap_err();
    assert_clean(&e, &sa_token);
    assert!(e.to_string().contains("login"), "{e}");
    assert!(!client.health().ok);

    // A token for another service account than the role binds: refused before any
    // review; and a role that does not exist.
    reviews.valid.lock().unwrap().insert(sa_token.clone());
    let other = Vault::new(&vault_config(&vault, k8s("no-such-role")), None).unwrap();
    let e = other.login(0).await.unwrap_err();
    assert!(
        e.to_string().contains(
            "vault refused the kubernetes login at auth/kubernetes/login for role no-such-role"
        ),
        "{e}"
    );
    assert_clean(&e, &sa_token);

    // Reviewed as valid again: the next login works.
    let again = Vault::new(&vault_config(&vault, k8s("agent-sts")), None).unwrap();
    again.login(0).await.unwrap();
}
