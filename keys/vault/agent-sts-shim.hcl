# Least privilege for the token an `agent-sts shim` runs with, with the KV v2 engine
# mounted at secret/: it reads the integration credentials it injects and keeps its
# own token alive. It verifies tokens through the STS's JWKS: no keyring access.

path "secret/data/integrations/*" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
