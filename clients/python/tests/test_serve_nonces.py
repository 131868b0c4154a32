"""Server nonces against the real STS: ``agent-sts serve`` with ``[tokens] dpop_nonces =
true`` (which ``dev`` does not set). The workload issuer is played here: a P-256 key
whose JWKS the STS reads from a file (``trust[].jwks_file``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent_sts import AgentSts, DPoPKey
from conftest import ACTION, AGENT, BINARY, REPO, START_TIMEOUT, Recorder, child_env, jwt_part

K8S_ISSUER = "https://kubernetes.default.svc"
KID = "python-client-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def private_file(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


class NonceSts:
    def __init__(self, url: str, issuer: DPoPKey) -> None:
        self.url = url
        self.issuer = issuer

    def workload_token(self, sub: str = AGENT) -> str:
        now = int(time.time())
        claims = {"iss": K8S_ISSUER, "sub": sub, "aud": self.url, "iat": now, "nbf": now, "exp": now + 600}
        return self.issuer.sign({"alg": "ES256", "kid": KID, "typ": "JWT"}, claims)


@pytest.fixture(scope="module")
def nonce_sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NonceSts]:
    if not BINARY.is_file():
        pytest.skip(f"agent-sts binary not found at {BINARY}: run `cargo build` or set AGENT_STS_BIN")
    work = tmp_path_factory.mktemp("agent-sts-serve")
    issuer = DPoPKey(ec.generate_private_key(ec.SECP256R1()))
    jwk = {**issuer.public_jwk, "kid": KID, "alg": "ES256", "use": "sig"}
    (work / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    private_file(
        work / "secrets.toml",
        '[secret."integrations/github"]\nheader = "Authorization"\nvalue = "Bearer test"\n',
    )
    url = f"http://127.0.0.1:{free_port()}"
    # The example catalogue names these four trusts; all read the one test JWKS.
    trusts = "".join(
        f'\n[[trust]]\nname = "{name}"\nissuer = "{iss}"\njwks_file = "{work}/jwks.json"\n'
        f'algorithms = ["ES256"]\nspiffe_trust_domains = [{domains}]\n'
        for name, iss, domains in [
            ("k8s-prod", K8S_ISSUER, ""),
            ("spire", "https://spire.example.org", '"example.org"'),
            ("github-actions", "https://token.actions.githubusercontent.com", ""),
            ("corp-idp", "https://idp.example.org", ""),
        ]
    )
    (work / "sts.toml").write_text(
        f'[server]\nlisten = "{url[7:]}"\nissuer = "{url}"\nscopes_dir = "{REPO}/scopes"\n\n'
        '[tokens]\ndpop_nonces = true\n\n'
        f'[keys]\nstore = "file"\ndir = "{work}/keys"\n\n'
        f'[secrets]\nstore = "file"\nfile = "{work}/secrets.toml"\n\n'
        f'[audit]\npath = "{work}/audit.log"\n' + trusts
    )
    config = ["--config", str(work / "sts.toml")]
    subprocess.run(
        [str(BINARY), "keys", "rotate", *config],
        cwd=work,
        check=True,
        capture_output=True,
        env=child_env(),
    )
    log = open(work / "stderr.log", "w")
    proc = subprocess.Popen(
        [str(BINARY), "serve", *config], cwd=work, stdout=log, stderr=log, env=child_env()
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agent-sts serve did not start:\n" + (work / "stderr.log").read_text()[-2000:])
            time.sleep(0.1)
        yield NonceSts(url, issuer)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Split(httpx.BaseTransport):
    """The STS over real HTTP (recorded); any other host answers 200 here."""

    def __init__(self, sts: str) -> None:
        self.sts = httpx.URL(sts)
        self.recorder = Recorder()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.netloc == self.sts.netloc:
            return self.recorder.handle_request(request)
        return httpx.Response(200, json={"ok": True})


def test_real_sts_nonce_is_fetched_with_one_retry(nonce_sts: NonceSts) -> None:
    transport = Split(nonce_sts.url)
    key = DPoPKey()
    auth = AgentSts(nonce_sts.url, ACTION, token=nonce_sts.workload_token, key=key)
    with httpx.Client(auth=auth, transport=transport) as http:
        assert http.get("https://github-shim.internal/x").status_code == 200
        recorder = transport.recorder
        token_calls = [
            (req, resp)
            for req, resp in zip(recorder.calls, recorder.responses)
            if req.url.path == "/token"
        ]
        assert [resp.status_code for _, resp in token_calls] == [400, 200]
        refused, accepted = token_calls
        assert refused[1].json()["error"] == "use_dpop_nonce"
        nonce = refused[1].headers["DPoP-Nonce"]
        assert "nonce" not in jwt_part(refused[0].headers["DPoP"], 1)
        assert jwt_part(accepted[0].headers["DPoP"], 1)["nonce"] == nonce
        answer = accepted[1].json()
        assert answer["token_type"] == "DPoP"
        assert jwt_part(answer["access_token"], 1)["cnf"] == {"jkt": key.thumbprint}

        # The nonce the 200 carried is remembered: the next exchange needs no retry.
        auth.clear()
        assert http.get("https://github-shim.internal/x").status_code == 200
        statuses = [r.status_code for q, r in zip(recorder.calls, recorder.responses) if q.url.path == "/token"]
        assert statuses == [400, 200, 200]
