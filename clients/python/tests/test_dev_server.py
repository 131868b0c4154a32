"""The client against the real ``agent-sts dev``: STS, dev workload issuer and the demo
shim in front of the echo upstream, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest

from agent_sts import AgentSts, DPoPKey, ExchangeError, access_token_hash
from conftest import (
    ACTION,
    AGENT,
    OTHER_AGENT,
    Dev,
    FakeClock,
    Recorder,
    jwt_part,
    write_token,
)

ISSUE = {"title": "hello from the python client"}


def token_file(dev: Dev, tmp_path: Path, sub: str = AGENT) -> Path:
    path = tmp_path / "workload-token"
    write_token(path, dev.workload_token(sub))
    return path


def shim_requests(recorder: Recorder, dev: Dev) -> list[httpx.Request]:
    return [r for r in recorder.calls if str(r.url).startswith(dev.shim)]


def test_call_through_the_shim(dev: Dev, tmp_path: Path, recorder: Recorder) -> None:
    key = DPoPKey()
    auth = AgentSts(dev.sts, ACTION, token_file=token_file(dev, tmp_path), key=key)
    with httpx.Client(auth=auth, transport=recorder) as http:
        r = http.post(dev.issue_url, json=ISSUE)
    assert r.status_code == 200, r.text
    echoed = r.json()
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/repos/example-owner/example-repo/issues"
    assert json.loads(echoed["body"]) == ISSUE
    # The upstream got the injected credential; the agent sees only that it was there.
    assert echoed["headers"]["authorization"] == ["[redacted]"]
    # The proof is the shim's business and is not forwarded.
    assert "dpop" not in echoed["headers"]

    (answer,) = recorder.token_answers()
    assert answer["token_type"] == "DPoP"
    assert answer["scope"] == ACTION
    access = answer["access_token"]
    claims = jwt_part(access, 1)
    assert claims["cnf"] == {"jkt": key.thumbprint}
    assert claims["scope"] == ACTION
    assert claims["sub"] == AGENT

    (call,) = shim_requests(recorder, dev)
    assert call.headers["Authorization"] == f"DPoP {access}"
    proof = call.headers["DPoP"]
    assert jwt_part(proof, 0)["jwk"] == key.public_jwk
    assert jwt_part(proof, 0)["typ"] == "dpop+jwt"
    proof_claims = jwt_part(proof, 1)
    assert proof_claims["htm"] == "POST"
    assert proof_claims["htu"] == dev.issue_url
    assert proof_claims["ath"] == access_token_hash(access)
    # The exchange's own proof named the token endpoint the metadata gave.
    exchange = next(r for r in recorder.calls if r.url.path == "/token")
    assert jwt_part(exchange.headers["DPoP"], 1)["htu"] == f"{dev.sts}/token"
    assert "ath" not in jwt_part(exchange.headers["DPoP"], 1)


def test_call_through_the_shim_with_the_jwt_bearer_grant(
    dev: Dev, tmp_path: Path, recorder: Recorder
) -> None:
    auth = AgentSts(
        dev.sts,
        ACTION,
        token_file=token_file(dev, tmp_path),
        resource="https://github-shim.internal",
    )
    with httpx.Client(auth=auth, transport=recorder) as http:
        r = http.post(dev.issue_url, json=ISSUE)
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["authorization"] == ["[redacted]"]
    (answer,) = recorder.token_answers()
    assert answer["token_type"] == "DPoP"
    assert jwt_part(answer["access_token"], 1)["aud"] == "https://github-shim.internal"


def test_query_is_left_out_of_htu(dev: Dev, tmp_path: Path, recorder: Recorder) -> None:
    auth = AgentSts(dev.sts, ACTION, token_file=token_file(dev, tmp_path))
    with httpx.Client(auth=auth, transport=recorder) as http:
        r = http.post(dev.issue_url, params={"x": "1"}, json=ISSUE)
    assert r.status_code == 200, r.text
    (call,) = shim_requests(recorder, dev)
    assert jwt_part(call.headers["DPoP"], 1)["htu"] == dev.issue_url


def test_async_client(dev: Dev, tmp_path: Path) -> None:
    auth = AgentSts(dev.sts, ACTION, token_file=token_file(dev, tmp_path))

    async def main() -> list[int]:
        async with httpx.AsyncClient(auth=auth) as http:
            return [(await http.post(dev.issue_url, json=ISSUE)).status_code for _ in range(3)]

    assert asyncio.run(main()) == [200, 200, 200]


def test_separate_sts_client(dev: Dev, tmp_path: Path, recorder: Recorder) -> None:
    """``http=``: the STS is reached with its own client, the shim with the caller's."""
    with httpx.Client(transport=recorder) as sts_http:
        auth = AgentSts(dev.sts, ACTION, token_file=token_file(dev, tmp_path), http=sts_http)
        with httpx.Client(auth=auth) as http:
            assert http.post(dev.issue_url, json=ISSUE).status_code == 200
    assert recorder.count("POST", "/token") == 1
    assert not shim_requests(recorder, dev)


def test_token_is_cached_until_the_margin(
    dev: Dev, tmp_path: Path, recorder: Recorder, clock: FakeClock
) -> None:
    auth = AgentSts(dev.sts, ACTION, token_file=token_file(dev, tmp_path), margin=60, clock=clock)
    with httpx.Client(auth=auth, transport=recorder) as http:
        for _ in range(5):
            assert http.post(dev.issue_url, json=ISSUE).status_code == 200
        assert recorder.count("POST", "/token") == 1
        assert recorder.count("GET", "/.well-known/oauth-authorization-server") == 1
        expires_in = recorder.token_answers()[0]["expires_in"]
        clock.advance(expires_in - 60 - 1)  # just inside the margin's edge
        assert http.post(dev.issue_url, json=ISSUE).status_code == 200
        assert recorder.count("POST", "/token") == 1
        clock.advance(2)  # now within `margin` of exp
        assert http.post(dev.issue_url, json=ISSUE).status_code == 200
        assert recorder.count("POST", "/token") == 2
        # Discovery happened once; every call carried its own proof.
        assert recorder.count("GET", "/.well-known/oauth-authorization-server") == 1
        jtis = {jwt_part(r.headers["DPoP"], 1)["jti"] for r in shim_requests(recorder, dev)}
        assert len(jtis) == 7


def test_margin_is_capped_at_half_the_lifetime(
    dev: Dev, tmp_path: Path, recorder: Recorder, clock: FakeClock
) -> None:
    auth = AgentSts(dev.sts, ACTION, token_file=token_file(dev, tmp_path), margin=10**6, clock=clock)
    with httpx.Client(auth=auth, transport=recorder) as http:
        http.post(dev.issue_url, json=ISSUE)
        http.post(dev.issue_url, json=ISSUE)
        assert recorder.count("POST", "/token") == 1
        clock.advance(recorder.token_answers()[0]["expires_in"] / 2 + 1)
        http.post(dev.issue_url, json=ISSUE)
        assert recorder.count("POST", "/token") == 2


def test_rotated_token_file_is_read_at_the_next_exchange(
    dev: Dev, tmp_path: Path, recorder: Recorder, clock: FakeClock
) -> None:
    path = token_file(dev, tmp_path)
    first = path.read_text().strip()
    auth = AgentSts(dev.sts, ACTION, token_file=path, clock=clock)
    with httpx.Client(auth=auth, transport=recorder) as http:
        assert http.post(dev.issue_url, json=ISSUE).status_code == 200
        # The kubelet rewrites a projected token; here, another agent's token.
        rotated = dev.workload_token(OTHER_AGENT)
        write_token(path, rotated)
        clock.advance(3600)
        assert http.post(dev.issue_url, json=ISSUE).status_code == 200
    assert [recorder.form(i)["subject_token"] for i in (0, 1)] == [first, rotated]
    subjects = [jwt_part(a["access_token"], 1)["sub"] for a in recorder.token_answers()]
    assert subjects == [AGENT, OTHER_AGENT]


def test_unreadable_token_file_fails_without_a_request(tmp_path: Path, dev: Dev) -> None:
    auth = AgentSts(dev.sts, ACTION, token_file=tmp_path / "missing")
    with httpx.Client(auth=auth) as http, pytest.raises(Exception, match="cannot read"):
        http.post(dev.issue_url, json=ISSUE)


def test_refused_exchange_raises_the_oauth_error(dev: Dev, tmp_path: Path) -> None:
    """An action the agent is not granted: the STS's code, not a token, in the error."""
    auth = AgentSts(dev.sts, "github.pulls.read", token_file=token_file(dev, tmp_path))
    with httpx.Client(auth=auth) as http, pytest.raises(ExchangeError) as refused:
        http.post(dev.issue_url, json=ISSUE)
    assert refused.value.status == 400
    assert refused.value.error == "invalid_scope"


def stolen(dev: Dev, tmp_path: Path, recorder: Recorder) -> httpx.Request:
    """A call the agent made, as a thief on the wire would have seen it."""
    auth = AgentSts(dev.sts, ACTION, token_file=token_file(dev, tmp_path))
    with httpx.Client(auth=auth, transport=recorder) as http:
        assert http.post(dev.issue_url, json=ISSUE).status_code == 200
    (call,) = shim_requests(recorder, dev)
    return call


def test_stolen_token_and_proof_replayed(dev: Dev, tmp_path: Path, recorder: Recorder) -> None:
    call = stolen(dev, tmp_path, recorder)
    headers = {"Authorization": call.headers["Authorization"], "DPoP": call.headers["DPoP"]}
    r = httpx.post(dev.issue_url, headers=headers, json=ISSUE)
    assert r.status_code == 401
    assert 'error="invalid_dpop_proof"' in r.headers["WWW-Authenticate"]


def test_stolen_token_with_the_thiefs_key(dev: Dev, tmp_path: Path, recorder: Recorder) -> None:
    call = stolen(dev, tmp_path, recorder)
    access = call.headers["Authorization"].removeprefix("DPoP ")
    thief = DPoPKey()
    proof = thief.proof("POST", dev.issue_url, access_token=access)
    r = httpx.post(
        dev.issue_url, headers={"Authorization": f"DPoP {access}", "DPoP": proof}, json=ISSUE
    )
    assert r.status_code == 401
    assert "invalid_dpop_proof" in r.headers["WWW-Authenticate"]


def test_stolen_token_as_bearer(dev: Dev, tmp_path: Path, recorder: Recorder) -> None:
    call = stolen(dev, tmp_path, recorder)
    access = call.headers["Authorization"].removeprefix("DPoP ")
    r = httpx.post(dev.issue_url, headers={"Authorization": f"Bearer {access}"}, json=ISSUE)
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_nothing_secret_in_logs_or_repr(
    dev: Dev, tmp_path: Path, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from agent_sts._dpop import b64url

    private = ec.generate_private_key(ec.SECP256R1())
    key = DPoPKey(private)
    path = token_file(dev, tmp_path)
    workload = path.read_text().strip()
    caplog.set_level(logging.DEBUG)
    auth = AgentSts(dev.sts, ACTION, token_file=path, key=key)
    with httpx.Client(auth=auth, transport=recorder) as http:
        assert http.post(dev.issue_url, json=ISSUE).status_code == 200
        # And a refusal: its error must not carry the workload token either.
        bad = AgentSts(dev.sts, "github.pulls.read", token_file=path, key=key)
        with pytest.raises(ExchangeError) as refused:
            http.post(dev.issue_url, json=ISSUE, auth=bad)

    access = recorder.token_answers()[0]["access_token"]
    proofs = [r.headers["DPoP"] for r in recorder.calls if "DPoP" in r.headers]
    d = private.private_numbers().private_value.to_bytes(32, "big")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    secrets = [workload, access, *proofs, b64url(d), d.hex(), pem.splitlines()[1]]
    # Signatures and payloads alone, too: any piece of a JWT is a leak.
    secrets += [part for s in [workload, access, *proofs] for part in s.split(".")[1:]]

    assert any(r.name.startswith("httpx") for r in caplog.records), "httpx logged nothing"
    assert any(r.name == "agent_sts" for r in caplog.records), "agent_sts logged nothing"
    said = "\n".join(
        [
            caplog.text,
            *(r.getMessage() for r in caplog.records),
            repr(auth),
            str(auth),
            repr(bad),
            repr(key),
            repr(auth._issued),
            str(refused.value),
            repr(refused.value),
        ]
    )
    for secret in secrets:
        assert secret not in said
    assert ACTION in repr(auth) and dev.sts in repr(auth)
