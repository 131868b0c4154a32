#!/usr/bin/env bash
# Regenerates the test-only issuer keys (PKCS#8 PEM). Never use them outside tests.
set -euo pipefail
cd "$(dirname "$0")"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out k8s-rs256.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ci-rs256.pem
for name in spire-es256 idp-es256 attacker-es256; do
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.pem"
done
# The CA certificate OpenBao's Kubernetes auth is configured with (it must have one;
# the fake TokenReview API of the tests is plain http, so it is never used to verify).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
  -subj "/CN=fake-kubernetes-api-ca" -days 36500 -out k8s-api-ca.crt
echo "regenerated: $(ls ./*.pem | tr '\n' ' ')"
