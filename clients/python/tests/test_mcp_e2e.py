"""End to end with the official MCP Python SDK (issue 12, item 4): an MCP server
(``MCPServer``, streamable HTTP, ``tests/mcp_server.py``) that takes only calls
carrying its API key, behind ``agent-sts shim``; an MCP client (``ClientSession``
over ``streamable_http_client``) that finds the STS through the shim's RFC 9728
metadata, gets its token with the RFC 7523 jwt-bearer grant (its workload token as
the assertion, the shim as ``resource``), and calls a tool whose progress streams as
SSE and a tool that echoes the API key. The client gets the results, never the key;
the shim's audit chain verifies (``agent-sts audit verify``).

Needs the ``mcp`` extra (``pip install -e 'clients/python[test,mcp]'``, pinned) and
the binary; skipped without them, except under CI, where it fails instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from conftest import BINARY, REPO, child_env

if os.environ.get("CI"):
    import mcp  # noqa: F401  (CI installs the pinned extra: never skip there)
else:
    pytest.importorskip("mcp", reason="the mcp extra is not installed")

import httpx2  # noqa: E402  (the HTTP client of mcp 2.x)
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

import mcp_server  # noqa: E402

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ACTION = "mcp.tools.call"
AUDIENCE = "https://mcp-shim.internal"
AGENT = "system:serviceaccount:agents:triage"
#: Every wait in this test is bounded by this.
TIMEOUT = 30.0

MCP_SCOPES = f"""
[[action]]
name = "{ACTION}"
description = "Call the tools of the demo MCP server"
audience = "{AUDIENCE}"
ttl = "5m"
agents = ["k8s-prod:{AGENT}"]
delegation = "forbidden"
credential = "integrations/mcp-demo"

[action.request]
method = "POST"
path = "/mcp"
headers = ["mcp-protocol-version", "mcp-session-id", "last-event-id"]
"""


class Child:
    """A child process whose stderr (or stdout) lines are collected by a thread."""

    def __init__(self, args: List[str], env: Dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.text: List[str] = []
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log, "w") as out:
            for line in iter(self.proc.stdout.readline, ""):
                out.write(line)
                out.flush()
                self.text.append(line)
                self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str) -> "re.Match[str]":
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is not None:
                found = re.search(pattern, line)
                if found:
                    return found
            if line is None and self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no line matching {pattern!r}; output:\n{''.join(self.text)[-3000:]}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return "".join(self.text)


def wait_until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            value = check()
            if value:
                return value
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Dict[str, Any]]:
    if not BINARY.is_file():
        if os.environ.get("CI"):
            raise RuntimeError(f"agent-sts binary not found at {BINARY}")
        pytest.skip(f"agent-sts binary not found at {BINARY}")
    api_key = "mcp-demo-key-" + secrets.token_hex(16)
    scopes = tmp_path / "scopes"
    shutil.copytree(REPO / "scopes", scopes)
    (scopes / "mcp.toml").write_text(MCP_SCOPES)
    keys = tmp_path / "keys"
    keys.mkdir()
    dev_secrets = keys / "dev-secrets.toml"
    dev_secrets.write_text(
        f'[secret."integrations/mcp-demo"]\nheader = "X-API-Key"\nvalue = "{api_key}"\n'
    )
    dev_secrets.chmod(0o600)
    env = {**child_env(), "AGENT_STS_LOG": "info"}
    children: List[Child] = []
    with mcp_server.Running(api_key) as upstream:
        try:
            dev = Child(
                [str(BINARY), "dev", "--listen", "127.0.0.1:0", "--shim-listen", "127.0.0.1:0",
                 "--scopes", str(scopes), "--keys", str(keys)],
                env, tmp_path, tmp_path / "dev.log",
            )
            children.append(dev)
            found = dev.wait_for(r"agent-sts dev: STS at (\S+) \(issuer (\S+)\)")
            sts, issuer = found.group(1), found.group(2)
            wait_until(lambda: httpx.get(f"{sts}/readyz").status_code == 200, "the STS")
            audit = tmp_path / "shim-audit.log"
            config = tmp_path / "shim.toml"
            config.write_text(
                f"""[shim]
listen = "127.0.0.1:0"
audience = "{AUDIENCE}"
upstream = "{upstream.url}"
issuer = "{issuer}"
jwks_uri = "{sts}/.well-known/jwks.json"
scopes_dir = "{scopes}"
stream_idle_timeout = "20s"

[secrets]
store = "file"
file = "{dev_secrets}"

[audit]
path = "{audit}"
"""
            )
            shim_proc = Child(
                [str(BINARY), "shim", "--config", str(config)],
                {**env, "AGENT_STS_LOG_FORMAT": "json"}, tmp_path, tmp_path / "shim.log",
            )
            children.append(shim_proc)
            line = shim_proc.wait_for(r'\{.*"agent-sts shim serving".*\}')
            shim = "http://" + json.loads(line.group(0))["listen"]
            wait_until(lambda: httpx.post(f"{shim}/mcp").status_code == 401, "the shim")
            yield {
                "sts": sts,
                "shim": shim,
                "api_key": api_key,
                "audit": audit,
                "children": children,
                "upstream": upstream,
            }
        finally:
            for child in children:
                child.stop()


def discover_and_get_token(world: Dict[str, Any]) -> Tuple[str, str]:
    """What an MCP client with workload identity does: the shim's 401 names its RFC 9728
    metadata, that names the STS, whose RFC 8414 metadata names the token endpoint; the
    jwt-bearer grant with the workload token and ``resource`` gives the access token."""
    shim, sts = world["shim"], world["sts"]
    challenge = httpx.post(f"{shim}/mcp").headers["www-authenticate"]
    metadata_url = re.search(r'resource_metadata="([^"]+)"', challenge).group(1)
    # The metadata URL names shim.public_url; ask the shim itself for the document.
    path = httpx.URL(metadata_url).path
    resource = httpx.get(f"{shim}{path}").json()
    assert resource["resource"] == AUDIENCE
    assert ACTION in resource["scopes_supported"]
    authorization_server = resource["authorization_servers"][0]
    assert authorization_server.rstrip("/") == sts.rstrip("/")
    server = httpx.get(f"{sts}/.well-known/oauth-authorization-server").json()
    assert JWT_BEARER in server["grant_types_supported"]
    workload = httpx.post(f"{sts}/dev/issuers/k8s-prod/token", data={"sub": AGENT})
    workload.raise_for_status()
    answer = httpx.post(
        server["token_endpoint"],
        data={
            "grant_type": JWT_BEARER,
            "assertion": workload.text.strip(),
            "scope": ACTION,
            "resource": resource["resource"],
        },
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"], resource["resource"]


async def run_client(shim: str, token: str) -> Dict[str, Any]:
    progress: List[Tuple[float, float, Optional[str]]] = []
    notes: List[Optional[str]] = []

    async def on_progress(done: float, total: Optional[float], message: Optional[str]) -> None:
        progress.append((time.monotonic(), done, message))

    async def on_note(done: float, total: Optional[float], message: Optional[str]) -> None:
        notes.append(message)

    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx2.Timeout(TIMEOUT, read=TIMEOUT)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with streamable_http_client(f"{shim}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                counted = await session.call_tool("count", {"n": 5}, progress_callback=on_progress)
                counted_at = time.monotonic()
                whoami = await session.call_tool("whoami", {}, progress_callback=on_note)
    return {
        "tools": sorted(t.name for t in tools.tools),
        "count": counted,
        "count_at": counted_at,
        "progress": progress,
        "whoami": whoami,
        "notes": notes,
    }


def test_an_mcp_client_calls_tools_through_the_shim_and_never_sees_the_key(
    world: Dict[str, Any],
) -> None:
    token, _ = discover_and_get_token(world)
    out = asyncio.run(asyncio.wait_for(run_client(world["shim"], token), TIMEOUT * 2))
    key = world["api_key"]

    assert out["tools"] == ["count", "whoami"]
    assert not out["count"].is_error
    assert out["count"].content[0].text == "counted to 5"
    # The progress streamed: five notifications, the first well before the result
    # (the tool takes 1 s; a buffering proxy would deliver them all at the end).
    steps = [p[1] for p in out["progress"]]
    assert steps == [1, 2, 3, 4, 5], out["progress"]
    assert out["count_at"] - out["progress"][0][0] > 0.5, out["progress"]

    # The server echoed the key it got (in a progress message and the result); the
    # agent sees only that it was there.
    answer = out["whoami"].content[0].text
    assert answer == "my api key is [redacted]", answer
    assert out["notes"] == ["request carried x-api-key=[redacted]"], out["notes"]
    everything = json.dumps([answer, out["notes"], [p[2] for p in out["progress"]]])
    assert key not in everything
    assert key[13:] not in everything

    # Stop the processes, then the chain: every call audited, the streams' ends too.
    logs = "".join(child.stop() for child in world["children"])
    assert key not in logs and token not in logs
    verify = subprocess.run(
        [str(BINARY), "audit", "verify", "--json", str(world["audit"])],
        capture_output=True, text=True, timeout=TIMEOUT, env=child_env(),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    lines = [json.loads(l) for l in world["audit"].read_text().splitlines()]
    assert key not in world["audit"].read_text()
    calls = [l for l in lines if l.get("reason") == "proxied"]
    ends = [l for l in lines if l.get("event") == "stream_end"]
    assert calls and all(c["action"] == ACTION for c in calls)
    streamed = {c["stream"] for c in calls if "stream" in c}
    assert streamed == {e["stream"] for e in ends}
    # The SDK's client closes a POST's SSE stream once it holds the answer, which may
    # be before the server's end of stream arrives: either way is an audited end.
    assert all(e["ended"] in ("complete", "client_gone") for e in ends), ends
    # The key came back in the progress message and the result (text and structured
    # content), and went no further.
    scrubbed = sum(e["bytes_scrubbed"] for e in ends)
    assert scrubbed >= 2 * len(key) and scrubbed % len(key) == 0, ends
