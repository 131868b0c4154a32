# Least privilege for the token agent-sts `serve` runs with (AppRole or Kubernetes
# auth), with the KV v2 engine mounted at secret/. It can read its keyring and the
# integration credentials, read the deny list and add to it (POST /revoke puts a
# revoked token's jti there, with check-and-set), and keep its own token alive
# (renew-self) and checked (lookup-self: on a 403 it tells an expired token from a
# path the policy denies). It writes nothing else. Exactly the paths the code uses.

path "secret/data/agent-sts/signing-keys" {
  capabilities = ["read"]
}

path "secret/data/agent-sts/deny-list" {
  capabilities = ["create", "read", "update"]
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
