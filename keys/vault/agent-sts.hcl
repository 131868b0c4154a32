# Least privilege for the token agent-sts `serve` runs with (AppRole or Kubernetes
# auth), with the KV v2 engine mounted at secret/. It can read its keyring and the
# integration credentials, and keep its own token alive; it cannot write anything.

path "secret/data/agent-sts/signing-keys" {
  capabilities = ["read"]
}

path "secret/data/integrations/*" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
