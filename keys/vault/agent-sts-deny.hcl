# For the security team (or an incident-response job) running `agent-sts deny add`,
# `deny list` and `deny remove` against KV v2 at secret/: read and check-and-set write
# of the deny list only. Every STS replica reads it with agent-sts.hcl.

path "secret/data/agent-sts/deny-list" {
  capabilities = ["create", "read", "update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
