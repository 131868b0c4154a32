"""Fixtures: the real ``agent-sts dev`` (STS, dev workload issuer, demo shim in front of
the echo upstream) started once per session on free ports, and helpers the tests share.

The binary is ``$AGENT_STS_BIN``, else ``target/debug/agent-sts`` at the repository
root; tests that need it are skipped, saying so, when it is not built.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
BINARY = Path(os.environ.get("AGENT_STS_BIN", REPO / "target" / "debug" / "agent-sts"))


def child_env() -> "dict[str, str]":
    """The environment for an ``agent-sts`` process: this one's, without
    ``AGENT_STS_BIN`` (the binary refuses ``AGENT_STS_*`` names that are not settings)."""
    return {k: v for k, v in os.environ.items() if k != "AGENT_STS_BIN"}

#: The demo action and the agent the dev catalogue grants it to (scopes/github.toml).
ACTION = "github.issues.create"
TRUST = "k8s-prod"
AGENT = "system:serviceaccount:agents:triage"
#: Another agent the same action allows (`agents:release-*`).
OTHER_AGENT = "system:serviceaccount:agents:release-bot"
ISSUE_PATH = "/repos/example-owner/example-repo/issues"

#: How long the dev server may take to print its URLs and become ready.
START_TIMEOUT = 30.0


@dataclass
class Dev:
    sts: str
    shim: str
    workdir: Path

    @property
    def issue_url(self) -> str:
        return self.shim + ISSUE_PATH

    def workload_token(self, sub: str = AGENT, trust: str = TRUST) -> str:
        """A fresh workload token from the dev issuer."""
        r = httpx.post(f"{self.sts}/dev/issuers/{trust}/token", data={"sub": sub})
        r.raise_for_status()
        return r.text.strip()


def _read_lines(stream: Any, out: "queue.Queue[Optional[str]]") -> None:
    for line in iter(stream.readline, ""):
        out.put(line)
    out.put(None)


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    if not BINARY.is_file():
        pytest.skip(
            f"agent-sts binary not found at {BINARY}: run `cargo build` at the "
            "repository root or set AGENT_STS_BIN"
        )
    workdir = tmp_path_factory.mktemp("agent-sts-dev")
    stderr = open(workdir / "stderr.log", "w")
    proc = subprocess.Popen(
        [
            str(BINARY),
            "dev",
            "--listen", "127.0.0.1:0",
            "--shim-listen", "127.0.0.1:0",
            "--scopes", str(REPO / "scopes"),
            "--keys", str(workdir / "keys"),
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**child_env(), "AGENT_STS_LOG": "info"},
    )
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        sts = shim = None
        deadline = time.monotonic() + START_TIMEOUT
        while sts is None or shim is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None or time.monotonic() > deadline:
                raise RuntimeError(
                    "agent-sts dev did not print its URLs; stderr:\n"
                    + (workdir / "stderr.log").read_text()[-2000:]
                )
            # "agent-sts dev: STS at http://127.0.0.1:PORT (issuer ...)"
            if line.startswith("agent-sts dev: STS at "):
                sts = line.split()[4]
            # "  demo shim: http://127.0.0.1:PORT for https://... -> ..."
            elif line.strip().startswith("demo shim: "):
                shim = line.split()[2]
        while True:
            try:
                if httpx.get(f"{sts}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("agent-sts dev did not become ready")
            time.sleep(0.1)
        yield Dev(sts=sts, shim=shim, workdir=workdir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()


@dataclass
class Recorder(httpx.BaseTransport):
    """A transport that records every request and response (bodies read)."""

    inner: httpx.BaseTransport = field(default_factory=httpx.HTTPTransport)
    calls: List[httpx.Request] = field(default_factory=list)
    responses: List[httpx.Response] = field(default_factory=list)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # Requests retried by the flow are the same object with new headers: a copy.
        self.calls.append(
            httpx.Request(
                request.method, request.url, headers=request.headers.copy(), content=request.read()
            )
        )
        response = self.inner.handle_request(request)
        response.read()
        self.responses.append(response)
        return response

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.calls if r.method == method and r.url.path == path)

    def token_answers(self) -> List[Dict[str, Any]]:
        return [
            json.loads(resp.content)
            for req, resp in zip(self.calls, self.responses)
            if req.url.path == "/token" and resp.status_code == 200
        ]

    def form(self, index: int = -1) -> Dict[str, str]:
        """The form of the `index`-th token request."""
        token_requests = [r for r in self.calls if r.url.path == "/token"]
        return dict(httpx.QueryParams(token_requests[index].content.decode()))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def jwt_part(token: str, index: int) -> Dict[str, Any]:
    """The decoded header (0) or payload (1) of a compact JWS, unverified."""
    part = token.split(".")[index]
    decoded: Dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def write_token(path: Path, token: str) -> None:
    path.write_text(token + "\n")


TokenFactory = Callable[..., str]
