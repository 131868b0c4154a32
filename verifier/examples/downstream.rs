//! A downstream service that accepts agent-sts access tokens: one axum route guarded
//! by the verifier's tower layer.
//!
//! ```text
//! STS_ISSUER=https://sts.example.org \
//! STS_JWKS_URI=https://sts.example.org/.well-known/jwks.json \
//! AUDIENCE=https://reports.internal LISTEN=127.0.0.1:7070 \
//!   cargo run -p agent-sts-verifier --example downstream
//! ```
//!
//! The agent-sts integration tests serve this same `app` against a running STS.

use std::sync::Arc;

use agent_sts_verifier::{AccessToken, RequireAccessToken, Verifier};
use axum::routing::get;
use axum::{Extension, Router};

/// The action this service serves.
pub const ACTION: &str = "docs.read";

/// The service: `GET /reports` answers for a valid `docs.read` token, and says who
/// called; everything else about the token was checked by the layer.
pub fn app(verifier: Arc<Verifier>) -> Router {
    Router::new()
        .route("/reports", get(reports))
        .layer(RequireAccessToken::new(verifier).for_actions([ACTION]))
}

async fn reports(Extension(token): Extension<AccessToken>) -> String {
    format!("reports for {} ({})", token.client_id, token.action)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let verifier = Verifier::new(
        &var("STS_ISSUER")?,
        &var("AUDIENCE")?,
        &var("STS_JWKS_URI")?,
    )?;
    let listener = tokio::net::TcpListener::bind(var("LISTEN")?).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(Arc::new(verifier))).await?;
    Ok(())
}
