# For operators (or a CI job) running `agent-sts keys rotate` / `keys list` with
# keys.store = "transit" (Transit at transit/, key agent-sts): read the key, create it
# on the first rotate (Transit takes that write as an update: on an existing key it
# changes nothing), add a version. No sign, no export, no delete, no config (so no
# trimming: an operator's own token trims, see the README's Runbook).

path "transit/keys/agent-sts" {
  capabilities = ["create", "read", "update"]
}

path "transit/keys/agent-sts/rotate" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
