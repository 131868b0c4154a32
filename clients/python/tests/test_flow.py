"""The flow against scripted servers (httpx.MockTransport): the retries a real dev
server does not provoke (server nonces, a revoked token), the refusals, and the proofs
themselves, each checked with its own embedded key."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import pickle
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent_sts import AgentSts, AgentStsError, DPoPKey, ExchangeError, access_token_hash

STS = "https://sts.test"
RESOURCE = "https://api.test/repos/o/r/issues"
WORKLOAD = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl"

Answer = Callable[[httpx.Request], httpx.Response]


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_proof(proof: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Header and claims of a proof whose signature verifies with its own jwk (EdDSA
    with an Ed25519 jwk, or ES256 with a P-256 one, raw r||s)."""
    h, c, s = proof.split(".")
    header = json.loads(b64decode(h))
    signature = b64decode(s)
    assert header["typ"] == "dpop+jwt"
    if header["alg"] == "EdDSA":
        assert header["jwk"] == {"kty": "OKP", "crv": "Ed25519", "x": header["jwk"]["x"]}
        public = ed25519.Ed25519PublicKey.from_public_bytes(b64decode(header["jwk"]["x"]))
        public.verify(signature, f"{h}.{c}".encode())
        return header, json.loads(b64decode(c))
    assert header["alg"] == "ES256"
    assert set(header["jwk"]) == {"kty", "crv", "x", "y"}
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(b64decode(header["jwk"]["x"]), "big"),
        int.from_bytes(b64decode(header["jwk"]["y"]), "big"),
        ec.SECP256R1(),
    )
    assert len(signature) == 64, "ES256 in a JWS is raw r||s"
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    numbers.public_key().verify(der, f"{h}.{c}".encode(), ec.ECDSA(hashes.SHA256()))
    return header, json.loads(b64decode(c))


def oauth_error(status: int, error: str, headers: Optional[Dict[str, str]] = None) -> Answer:
    body = {"error": error, "error_description": "a fixed description"}
    return lambda _: httpx.Response(status, json=body, headers=headers or {})


def issued(access: str, token_type: str = "DPoP", expires_in: int = 300) -> Answer:
    body = {
        "access_token": access,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": token_type,
        "expires_in": expires_in,
        "scope": "github.issues.create",
    }
    return lambda _: httpx.Response(200, json=body, headers={"Cache-Control": "no-store"})


def challenge(error: str, scheme: str = 'DPoP algs="ES256 EdDSA",', nonce: Optional[str] = None) -> Answer:
    headers = {"WWW-Authenticate": f'{scheme} error="{error}", error_description="x"'}
    if nonce:
        headers["DPoP-Nonce"] = nonce
    return lambda _: httpx.Response(401, json={"error": error}, headers=headers)


def ok(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


class Server:
    """A scripted STS and resource server; records what it received."""

    def __init__(
        self,
        token: List[Answer],
        resource: Optional[List[Answer]] = None,
        issuer: str = STS,
    ) -> None:
        self.token_script = iter(token)
        self.resource_script: Iterator[Answer] = iter(resource or [])
        self.issuer = issuer
        self.token_calls: List[httpx.Request] = []
        self.resource_calls: List[httpx.Request] = []
        self.metadata_calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        # The flow sends the same Request object again with new headers: keep a copy.
        request = httpx.Request(
            request.method, request.url, headers=request.headers.copy(), content=request.read()
        )
        url = str(request.url)
        if url == f"{STS}/.well-known/oauth-authorization-server":
            self.metadata_calls += 1
            return httpx.Response(
                200, json={"issuer": self.issuer, "token_endpoint": f"{STS}/token"}
            )
        if url == f"{STS}/token":
            self.token_calls.append(request)
            return next(self.token_script)(request)
        self.resource_calls.append(request)
        return next(self.resource_script)(request)

    def client(self, auth: AgentSts) -> httpx.Client:
        return httpx.Client(auth=auth, transport=httpx.MockTransport(self))

    def proof(self, request: httpx.Request) -> Dict[str, Any]:
        return verify_proof(request.headers["DPoP"])[1]

    def form(self, index: int) -> Dict[str, str]:
        return dict(httpx.QueryParams(self.token_calls[index].content.decode()))


def agent(**kwargs: Any) -> AgentSts:
    kwargs.setdefault("token", lambda: WORKLOAD)
    return AgentSts(STS, "github.issues.create", **kwargs)


# -- the exchange ------------------------------------------------------------------------


def test_exchange_request_and_proof() -> None:
    key = DPoPKey()
    server = Server(token=[issued("at-1")], resource=[ok])
    with server.client(agent(key=key, audience="https://github-shim.internal")) as http:
        assert http.post(RESOURCE, json={}).status_code == 200
    (call,) = server.token_calls
    assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in call.headers
    assert server.form(0) == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": WORKLOAD,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "scope": "github.issues.create",
        "audience": "https://github-shim.internal",
    }
    header, claims = verify_proof(call.headers["DPoP"])
    assert header["jwk"] == key.public_jwk
    assert claims["htm"] == "POST" and claims["htu"] == f"{STS}/token"
    assert "ath" not in claims and "nonce" not in claims
    assert isinstance(claims["iat"], int) and len(claims["jti"]) >= 16


def test_jwt_bearer_grant_with_resource() -> None:
    key = DPoPKey()
    server = Server(token=[issued("at-1")], resource=[ok])
    with server.client(agent(key=key, resource="https://github-shim.internal")) as http:
        assert http.post(RESOURCE, json={}).status_code == 200
    assert server.form(0) == {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": WORKLOAD,
        "scope": "github.issues.create",
        "resource": "https://github-shim.internal",
    }
    assert verify_proof(server.token_calls[0].headers["DPoP"])[1]["htu"] == f"{STS}/token"
    with pytest.raises(ValueError):
        agent(audience="https://a.test", resource="https://a.test")


def test_token_endpoint_nonce_is_retried_once_with_the_nonce() -> None:
    server = Server(
        token=[oauth_error(400, "use_dpop_nonce", {"DPoP-Nonce": "n-1"}), issued("at-1")],
        resource=[ok, ok],
    )
    auth = agent()
    with server.client(auth) as http:
        assert http.post(RESOURCE, json={}).status_code == 200
        assert len(server.token_calls) == 2
        first, second = (server.proof(c) for c in server.token_calls)
        assert "nonce" not in first and second["nonce"] == "n-1"
        assert first["jti"] != second["jti"]
        # Remembered: the next exchange carries it from the start.
        auth.clear()
        server.token_script = iter([issued("at-2")])
        assert http.post(RESOURCE, json={}).status_code == 200
    assert len(server.token_calls) == 3
    assert server.proof(server.token_calls[2])["nonce"] == "n-1"
    # A nonce belongs to the server that sent it.
    assert all("nonce" not in server.proof(c) for c in server.resource_calls)


def test_token_endpoint_nonce_retry_happens_only_once() -> None:
    server = Server(
        token=[
            oauth_error(400, "use_dpop_nonce", {"DPoP-Nonce": "n-1"}),
            oauth_error(400, "use_dpop_nonce", {"DPoP-Nonce": "n-2"}),
        ]
    )
    with server.client(agent()) as http, pytest.raises(ExchangeError) as refused:
        http.post(RESOURCE, json={})
    assert refused.value.error == "use_dpop_nonce"
    assert len(server.token_calls) == 2
    assert not server.resource_calls


def test_use_dpop_nonce_without_a_nonce_is_not_retried() -> None:
    server = Server(token=[oauth_error(400, "use_dpop_nonce")])
    with server.client(agent()) as http, pytest.raises(ExchangeError):
        http.post(RESOURCE, json={})
    assert len(server.token_calls) == 1


# -- the resource call -------------------------------------------------------------------


def test_resource_call_carries_token_and_proof() -> None:
    key = DPoPKey()
    server = Server(token=[issued("at-1")], resource=[ok])
    with server.client(agent(key=key)) as http:
        http.get(RESOURCE + "?page=2#frag")
    (call,) = server.resource_calls
    assert call.headers["Authorization"] == "DPoP at-1"
    header, claims = verify_proof(call.headers["DPoP"])
    assert header["jwk"] == key.public_jwk
    assert claims["htm"] == "GET"
    assert claims["htu"] == RESOURCE
    assert claims["ath"] == access_token_hash("at-1")
    expected = base64.urlsafe_b64encode(hashlib.sha256(b"at-1").digest()).rstrip(b"=").decode()
    assert claims["ath"] == expected


def test_resource_nonce_is_retried_once_with_the_nonce() -> None:
    server = Server(
        token=[issued("at-1")],
        resource=[challenge("use_dpop_nonce", nonce="r-1"), ok],
    )
    with server.client(agent()) as http:
        r = http.post(RESOURCE, content=b'{"a":1}')
    assert r.status_code == 200
    assert len(server.token_calls) == 1
    first, second = server.resource_calls
    assert "nonce" not in server.proof(first)
    assert server.proof(second)["nonce"] == "r-1"
    assert server.proof(first)["jti"] != server.proof(second)["jti"]
    assert second.content == b'{"a":1}'
    # The STS's proofs do not carry the resource server's nonce.
    assert "nonce" not in server.proof(server.token_calls[0])


def test_resource_nonce_retry_happens_only_once() -> None:
    server = Server(
        token=[issued("at-1")],
        resource=[challenge("use_dpop_nonce", nonce="r-1"), challenge("use_dpop_nonce", nonce="r-2")],
    )
    with server.client(agent()) as http:
        r = http.post(RESOURCE, json={})
    assert r.status_code == 401
    assert len(server.resource_calls) == 2


def test_async_client_retries_the_same_way() -> None:
    server = Server(
        token=[oauth_error(400, "use_dpop_nonce", {"DPoP-Nonce": "n-1"}), issued("at-1")],
        resource=[challenge("use_dpop_nonce", nonce="r-1"), ok],
    )

    async def main() -> int:
        transport = httpx.MockTransport(server)
        async with httpx.AsyncClient(auth=agent(), transport=transport) as http:
            return (await http.post(RESOURCE, json={})).status_code

    assert asyncio.run(main()) == 200
    assert [server.proof(c).get("nonce") for c in server.token_calls] == [None, "n-1"]
    assert [server.proof(c).get("nonce") for c in server.resource_calls] == [None, "r-1"]


def test_invalid_token_means_one_fresh_exchange() -> None:
    server = Server(
        token=[issued("at-1"), issued("at-2")],
        resource=[challenge("invalid_token", scheme="Bearer"), ok, ok],
    )
    with server.client(agent()) as http:
        assert http.post(RESOURCE, json={}).status_code == 200
        assert [c.headers["Authorization"] for c in server.resource_calls] == [
            "DPoP at-1",
            "DPoP at-2",
        ]
        # The fresh token is the cached one now.
        assert http.post(RESOURCE, json={}).status_code == 200
    assert len(server.token_calls) == 2
    assert server.resource_calls[-1].headers["Authorization"] == "DPoP at-2"


def test_invalid_token_twice_is_returned() -> None:
    server = Server(
        token=[issued("at-1"), issued("at-2")],
        resource=[challenge("invalid_token", scheme="Bearer")] * 2,
    )
    with server.client(agent()) as http:
        assert http.post(RESOURCE, json={}).status_code == 401
    assert len(server.token_calls) == 2 and len(server.resource_calls) == 2


@pytest.mark.parametrize("error", ["invalid_dpop_proof", "insufficient_scope"])
def test_other_refusals_are_returned_as_they_are(error: str) -> None:
    server = Server(token=[issued("at-1")], resource=[challenge(error)])
    with server.client(agent()) as http:
        assert http.post(RESOURCE, json={}).status_code == 401
    assert len(server.resource_calls) == 1


def test_a_streamed_body_is_not_sent_twice() -> None:
    server = Server(token=[issued("at-1")], resource=[challenge("use_dpop_nonce", nonce="r-1")])
    with server.client(agent()) as http:
        r = http.post(RESOURCE, content=iter([b"chunk"]))
    assert r.status_code == 401
    assert len(server.resource_calls) == 1


# -- refusals ----------------------------------------------------------------------------


def test_exchange_error_carries_the_oauth_answer() -> None:
    server = Server(token=[oauth_error(503, "temporarily_unavailable", {"Retry-After": "5"})])
    with server.client(agent()) as http, pytest.raises(ExchangeError) as refused:
        http.get(RESOURCE)
    e = refused.value
    assert (e.status, e.error, e.description, e.retry_after) == (
        503,
        "temporarily_unavailable",
        "a fixed description",
        5,
    )
    assert WORKLOAD not in str(e) and WORKLOAD not in repr(e)


def test_a_bearer_token_is_refused() -> None:
    """An STS that ignored the proof would hand out a bearer token: not used."""
    server = Server(token=[issued("at-1", token_type="Bearer")])
    with server.client(agent()) as http, pytest.raises(AgentStsError, match="not bound"):
        http.get(RESOURCE)
    assert not server.resource_calls


def test_metadata_of_another_issuer_is_refused() -> None:
    server = Server(token=[], issuer="https://evil.test")
    with server.client(agent()) as http, pytest.raises(AgentStsError, match="issuer"):
        http.get(RESOURCE)
    assert not server.token_calls


def test_configured_token_endpoint_skips_discovery() -> None:
    server = Server(token=[issued("at-1")], resource=[ok])
    with server.client(agent(token_endpoint=f"{STS}/token")) as http:
        http.get(RESOURCE)
    assert server.metadata_calls == 0 and len(server.token_calls) == 1


@pytest.mark.parametrize("value", ["", "not a jwt", "a.b", "a.b.c d"])
def test_a_token_source_that_is_not_a_jwt(value: str) -> None:
    server = Server(token=[])
    with server.client(agent(token=lambda: value)) as http, pytest.raises(AgentStsError):
        http.get(RESOURCE)
    assert not server.token_calls


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://sts.example.org", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("http://[::1]:8080", True),
        ("http://sts.example.org", False),
        ("http://10.0.0.1:8080", False),
        ("https://user:pw@sts.example.org", False),
        ("https://sts.example.org?x=1", False),
    ],
)
def test_where_the_workload_token_may_go(url: str, allowed: bool) -> None:
    if allowed:
        AgentSts(url, "a.b", token=lambda: WORKLOAD)
    else:
        with pytest.raises(ValueError):
            AgentSts(url, "a.b", token=lambda: WORKLOAD)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        AgentSts(STS, "a.b")
    with pytest.raises(ValueError):
        AgentSts(STS, "a.b", token=lambda: WORKLOAD, token_file="/x")
    with pytest.raises(ValueError):
        AgentSts(STS, "a.b c.d", token=lambda: WORKLOAD)


# -- the key -----------------------------------------------------------------------------


def test_key_thumbprint_is_rfc7638() -> None:
    key = DPoPKey()
    assert key.algorithm == "EdDSA", "Ed25519 is the default"
    jwk = key.public_jwk
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % jwk["x"]
    digest = hashlib.sha256(canonical.encode()).digest()
    assert key.thumbprint == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    p256 = DPoPKey(ec.generate_private_key(ec.SECP256R1()))
    jwk = p256.public_jwk
    canonical = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (jwk["x"], jwk["y"])
    digest = hashlib.sha256(canonical.encode()).digest()
    assert p256.thumbprint == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_key_signs_verifiable_raw_signatures() -> None:
    for key in [DPoPKey(), DPoPKey(ec.generate_private_key(ec.SECP256R1()))]:
        for _ in range(20):  # r or s with leading zero bytes must still be 32 bytes each
            header, claims = verify_proof(key.proof("GET", RESOURCE, access_token="t", nonce="n"))
            assert header["alg"] == key.algorithm
            assert claims["ath"] == access_token_hash("t") and claims["nonce"] == "n"
        h, c, s = key.proof("GET", RESOURCE).split(".")
        tampered = f"{h}.{c[:-2]}AA.{s}"
        with pytest.raises(InvalidSignature):
            verify_proof(tampered)


def test_key_stays_in_memory() -> None:
    key = DPoPKey()
    assert "private" in repr(key) and key.public_jwk["x"] not in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.deepcopy(key)
    with pytest.raises(TypeError):
        DPoPKey(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError):
        key.proof("GET", RESOURCE + "?q=1")
