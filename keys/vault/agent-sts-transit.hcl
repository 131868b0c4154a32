# Least privilege for agent-sts `serve` with keys.store = "transit" (the signing key
# never leaves Vault), Transit mounted at transit/ with the key agent-sts, KV v2 at
# secret/. It can read the key's public versions and sign with it (nothing else of
# Transit: no export, no rotate, no config), read the deny list and the integration
# credentials, and keep its own token alive (renew-self) and checked (lookup-self).

path "transit/keys/agent-sts" {
  capabilities = ["read"]
}

path "transit/sign/agent-sts" {
  capabilities = ["update"]
}

path "secret/data/agent-sts/deny-list" {
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
