# For operators (or a CI job) running `agent-sts keys rotate` / `keys list` against
# KV v2 at secret/: read and check-and-set write of the keyring only.

path "secret/data/agent-sts/signing-keys" {
  capabilities = ["create", "read", "update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
