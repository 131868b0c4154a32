//! Secrets are types. Every durable or bearer secret the STS touches lives in one of
//! these newtypes over `secrecy`: `Debug` prints `[redacted]`, none implements
//! `Serialize` or `Display`, and reading the value takes an explicit `expose()` call
//! whose doc carries a security warning, so a secret cannot reach a log line, an error
//! description or a response body by accident (README, "Security properties" 1).

use secrecy::{ExposeSecret, SecretString};

macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::from(value.into()))
            }

            /// The secret value.
            ///
            /// # Security Warning
            /// Never log, format, serialize or return what this gives; pass it only to
            /// the one place that needs it (a signature check, an HTTP header upstream).
            pub fn expose(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }
    };
}

secret_string!(
    /// A bearer token presented to the STS (`subject_token` or `actor_token`).
    SubjectToken
);
secret_string!(
    /// An integration credential from the secret store (the value the shim injects).
    Credential
);
secret_string!(
    /// A Vault client token.
    VaultToken
);
secret_string!(
    /// A PEM-encoded (PKCS#8) private signing key.
    PrivateKeyPem
);
secret_string!(
    /// A DPoP proof (RFC 9449) as received: replayable until checked, so never shown.
    DpopProof
);
secret_string!(
    /// A minted access token (compact JWS): a bearer credential until it expires, so
    /// it is handed to the client and to nothing else.
    MintedJwt
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret() {
        let canary = "canary-3f1e9c-secret";
        let printed = [
            format!("{:?}", SubjectToken::new(canary)),
            format!("{:?}", Credential::new(canary)),
            format!("{:?}", VaultToken::new(canary)),
            format!("{:?}", PrivateKeyPem::new(canary)),
            format!("{:?}", MintedJwt::new(canary)),
            format!("{:#?}", Some(SubjectToken::new(canary))),
        ];
        for p in printed {
            assert!(!p.contains(canary), "{p}");
            assert!(p.contains("[redacted]"), "{p}");
        }
        assert_eq!(SubjectToken::new(canary).expose(), canary);
    }
}
