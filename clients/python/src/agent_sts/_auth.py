"""``AgentSts``: an ``httpx.Auth`` that turns the agent's workload identity into one
DPoP-bound access token per action and presents it, with a fresh proof, on every call.

Every request the flow needs (the STS metadata, the token exchange, the retries) is
*yielded* from ``auth_flow`` rather than sent by it, so the same code serves
``httpx.Client`` and ``httpx.AsyncClient``: httpx sends what the flow yields with the
client's own transport. The one exception is ``http=``: a sync client of its own for
the STS, driven directly (sync clients only).

What is cached, and for how long: the access token until ``margin`` seconds before it
expires (at most half its lifetime early), on a monotonic clock; the token endpoint
once discovered; the last ``DPoP-Nonce`` each server sent. The workload token is not
cached: it is read at every exchange, so a rotated token file is picked up by the next
one. The state sits behind one lock, never held across I/O: two threads (or tasks)
that find the cache empty at once may both exchange, and the later answer is kept.

What is never done: log, ``repr`` or raise with a token, a proof or the key. The
workload token goes only to the token endpoint the STS's own metadata names, over
https (plain http only to a loopback host).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from pathlib import Path
from typing import (
    Any,
    AsyncGenerator,
    Callable,
    Dict,
    Generator,
    Optional,
    Tuple,
    Union,
)

import httpx

from ._dpop import DPoPKey, htu
from ._errors import AgentStsError, ExchangeError

__all__ = ["AgentSts"]

log = logging.getLogger("agent_sts")

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_TYPE_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"

#: Where RFC 8414 metadata lives under the STS URL.
METADATA_PATH = "/.well-known/oauth-authorization-server"

#: Largest workload token file read; a JWT is a few kilobytes.
MAX_TOKEN_FILE_BYTES = 64 * 1024

#: Longest server nonce kept (agent-sts refuses proofs with longer ones).
MAX_NONCE_CHARS = 256

#: Timeout of the STS requests when the request being authorised carries none.
DEFAULT_TIMEOUT = httpx.Timeout(10.0)

#: Marks the requests the flow makes for itself (metadata, exchange): their bodies are
#: read inside the flow; the caller's own response is left unread, for streaming.
_INTERNAL = "agent_sts.internal"

_ERROR_PARAM = re.compile(r'\berror\s*=\s*(?:"([^"]*)"|([A-Za-z0-9_.-]+))')
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")

Flow = Generator[httpx.Request, httpx.Response, Any]


class _Issued:
    """An access token and the monotonic time to stop using it."""

    __slots__ = ("access_token", "refresh_at")

    def __init__(self, access_token: str, refresh_at: float) -> None:
        self.access_token = access_token
        self.refresh_at = refresh_at

    def __repr__(self) -> str:
        return f"_Issued([redacted], refresh_at={self.refresh_at:.0f})"


class AgentSts(httpx.Auth):
    """Authorises httpx requests for one action of an agent-sts catalogue.

    ``sts_url`` is the STS (its issuer URL); ``action`` the one catalogue action the
    token is for (the exchange's ``scope``). The workload token comes from
    ``token_file`` (read at each exchange, so rotation is followed) or from ``token``,
    a callable returning it. ``audience`` is sent when given. With ``resource`` (the
    resource server's RFC 8707 identifier, e.g. the ``resource`` of its RFC 9728
    metadata) the token is asked for with the RFC 7523 jwt-bearer grant instead, as MCP
    clients with workload identity do: the workload token is the ``assertion``.
    ``key`` defaults to a
    fresh in-memory P-256 key. ``margin``: seconds before expiry at which a new token
    is exchanged (capped at half the token's lifetime). ``http``: a sync client to reach
    the STS with (otherwise the client being authorised sends those requests too).
    ``token_endpoint`` skips discovery through the STS metadata. ``clock`` is the
    monotonic clock the cache runs on (for tests); proofs always carry the wall time.

    >>> auth = AgentSts("https://sts.example.org", "github.issues.create",
    ...                 token_file="/var/run/secrets/tokens/agent")
    >>> httpx.Client(auth=auth).post("https://github-shim.internal/repos/o/r/issues", json={})
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(
        self,
        sts_url: str,
        action: str,
        *,
        token_file: Union[str, Path, None] = None,
        token: Optional[Callable[[], str]] = None,
        audience: Optional[str] = None,
        resource: Optional[str] = None,
        key: Optional[DPoPKey] = None,
        margin: float = 30,
        http: Optional[httpx.Client] = None,
        token_endpoint: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (token_file is None) == (token is None):
            raise ValueError("give exactly one of token_file= and token=")
        if not action or any(c.isspace() for c in action):
            raise ValueError("action must be one catalogue action name")
        if margin < 0:
            raise ValueError("margin must not be negative")
        if resource is not None and audience is not None:
            raise ValueError("give at most one of audience= (token exchange) and resource= (jwt-bearer)")
        self._sts = _checked_url(sts_url, "sts_url").rstrip("/")
        self._action = action
        self._token_file = Path(token_file) if token_file is not None else None
        self._token = token
        self._audience = audience
        self._resource = resource
        self._key = key if key is not None else DPoPKey()
        self._margin = float(margin)
        self._http = http
        self._clock = clock
        self._lock = threading.Lock()
        self._token_endpoint = (
            _checked_url(token_endpoint, "token_endpoint") if token_endpoint else None
        )
        self._issued: Optional[_Issued] = None
        self._nonces: Dict[Tuple[str, str, Optional[int]], str] = {}

    # -- public ---------------------------------------------------------------------

    @property
    def action(self) -> str:
        return self._action

    @property
    def key(self) -> DPoPKey:
        """The key the tokens are bound to (``cnf.jkt`` is its thumbprint)."""
        return self._key

    def clear(self) -> None:
        """Forgets the cached access token: the next request exchanges again."""
        with self._lock:
            self._issued = None

    def __repr__(self) -> str:
        return (
            f"AgentSts(action={self._action!r}, sts={self._sts!r}, "
            f"token_endpoint={self._token_endpoint!r})"
        )

    # -- the httpx.Auth flows -------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Flow:
        # Before sending: a streamed body is consumed by the first send (a transport
        # may read it into memory, but that is no promise).
        replayable = _replayable(request)
        issued = self._current()
        if issued is None:
            issued = yield from self._obtain(request)
        response = yield self._authorize(request, issued)
        retried_nonce = retried_token = False
        while response.status_code == 401 and replayable:
            error = _challenge_error(response)
            fresh_nonce = self._remember_nonce(request.url, response)
            if error == "use_dpop_nonce" and fresh_nonce and not retried_nonce:
                log.debug("resource server asked for a DPoP nonce; retrying once")
                retried_nonce = True
            elif error == "invalid_token" and not retried_token:
                # Revoked, expired early, or signed by a key the server no longer
                # trusts: one fresh exchange, one retry.
                log.debug("access token refused (invalid_token); exchanging again")
                retried_token = True
                self._forget(issued)
                issued = yield from self._obtain(request)
            else:
                break
            response = yield self._authorize(request, issued)
        self._remember_nonce(request.url, response)

    def sync_auth_flow(self, request: httpx.Request) -> Flow:
        flow = self.auth_flow(request)
        outgoing = next(flow)
        while True:
            response = yield outgoing
            if outgoing.extensions.get(_INTERNAL):
                response.read()
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._http is not None:
            raise AgentStsError(
                "http= is a sync httpx.Client; with an AsyncClient leave it out and "
                "the STS is reached through the AsyncClient"
            )
        flow = self.auth_flow(request)
        outgoing = next(flow)
        while True:
            response = yield outgoing
            if outgoing.extensions.get(_INTERNAL):
                await response.aread()
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return

    # -- the access token -----------------------------------------------------------

    def _current(self) -> Optional[_Issued]:
        with self._lock:
            issued = self._issued
        if issued is not None and self._clock() < issued.refresh_at:
            return issued
        return None

    def _forget(self, issued: _Issued) -> None:
        with self._lock:
            if self._issued is issued:
                self._issued = None

    def _authorize(self, request: httpx.Request, issued: _Issued) -> httpx.Request:
        """Sets ``Authorization: DPoP`` and a fresh proof for this very request."""
        proof = self._key.proof(
            request.method,
            htu(request.url),
            access_token=issued.access_token,
            nonce=self._nonce_for(request.url),
        )
        request.headers["Authorization"] = f"DPoP {issued.access_token}"
        request.headers["DPoP"] = proof
        return request

    def _obtain(self, request: httpx.Request) -> Flow:
        """A new access token: through the client being authorised, or ``http``."""
        timeout = request.extensions.get("timeout") or DEFAULT_TIMEOUT.as_dict()
        exchange = self._exchange(timeout)
        if self._http is None:
            return (yield from exchange)
        return _drive(exchange, self._http)

    def _exchange(self, timeout: Dict[str, Any]) -> Flow:
        """RFC 8693 token exchange (or the RFC 7523 jwt-bearer grant, with
        ``resource``) with a DPoP proof (RFC 9449 §5), one retry on ``use_dpop_nonce``."""
        extensions = {"timeout": timeout, _INTERNAL: True}
        endpoint = self._token_endpoint
        if endpoint is None:
            response = yield httpx.Request(
                "GET",
                self._sts + METADATA_PATH,
                headers={"Accept": "application/json"},
                extensions=extensions,
            )
            endpoint = self._read_metadata(response)
        url = httpx.URL(endpoint)
        if self._resource is not None:
            form = {
                "grant_type": GRANT_TYPE_JWT_BEARER,
                "assertion": self._subject_token(),
                "scope": self._action,
                "resource": self._resource,
            }
        else:
            form = {
                "grant_type": GRANT_TYPE,
                "subject_token": self._subject_token(),
                "subject_token_type": TOKEN_TYPE_JWT,
                "scope": self._action,
            }
        if self._audience is not None:
            form["audience"] = self._audience
        log.debug("exchanging the workload token for %s", self._action)
        for attempt in (1, 2):
            started = self._clock()
            proof = self._key.proof("POST", htu(url), nonce=self._nonce_for(url))
            response = yield httpx.Request(
                "POST",
                url,
                data=form,
                headers={"DPoP": proof, "Accept": "application/json"},
                extensions=extensions,
            )
            fresh_nonce = self._remember_nonce(url, response)
            if (
                attempt == 1
                and response.status_code == 400
                and fresh_nonce
                and _oauth_error(response)[0] == "use_dpop_nonce"
            ):
                log.debug("the STS asked for a DPoP nonce; retrying once")
                continue
            return self._accept(response, started)
        raise AssertionError("unreachable")  # pragma: no cover

    def _accept(self, response: httpx.Response, started: float) -> _Issued:
        if response.status_code != 200:
            error, description = _oauth_error(response)
            retry_after = response.headers.get("Retry-After", "")
            raise ExchangeError(
                response.status_code,
                error or "unexpected_response",
                description,
                int(retry_after) if retry_after.isdigit() else None,
            )
        try:
            body = response.json()
        except ValueError:
            raise AgentStsError("the STS answered 200 without a JSON body") from None
        if not isinstance(body, dict):
            raise AgentStsError("the STS answered 200 without a JSON object")
        access_token = body.get("access_token")
        token_type = body.get("token_type")
        expires_in = body.get("expires_in")
        if not isinstance(access_token, str) or not access_token.isascii() or not access_token:
            raise AgentStsError("the STS answer has no usable access_token")
        if not isinstance(token_type, str) or token_type.lower() != "dpop":
            # The proof was ignored: the token would be a bearer token, worth as much
            # to a thief as to us. Refuse rather than downgrade silently.
            raise AgentStsError(
                "the STS issued a token not bound to the DPoP key "
                f"(token_type {str(token_type)[:20]!r}); refusing to use it"
            )
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
            raise AgentStsError("the STS answer has no usable expires_in")
        early = min(self._margin, expires_in / 2)
        issued = _Issued(access_token, started + expires_in - early)
        with self._lock:
            self._issued = issued
        log.debug("got a %ss DPoP-bound token for %s", expires_in, self._action)
        return issued

    def _read_metadata(self, response: httpx.Response) -> str:
        """The token endpoint from RFC 8414 metadata, after checking its ``issuer``
        is the STS we were given (§3.3)."""
        where = self._sts + METADATA_PATH
        if response.status_code != 200:
            raise AgentStsError(f"{where}: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise AgentStsError(f"{where}: not JSON") from None
        issuer = data.get("issuer") if isinstance(data, dict) else None
        endpoint = data.get("token_endpoint") if isinstance(data, dict) else None
        if not isinstance(issuer, str) or issuer.rstrip("/") != self._sts:
            raise AgentStsError(f"{where}: the metadata's issuer is not {self._sts}")
        if not isinstance(endpoint, str):
            raise AgentStsError(f"{where}: no token_endpoint")
        endpoint = _checked_url(endpoint, "token_endpoint")
        with self._lock:
            self._token_endpoint = endpoint
        return endpoint

    def _subject_token(self) -> str:
        """The workload token, read fresh (the file may have been rotated)."""
        if self._token is not None:
            value = self._token()
            where = "token()"
        else:
            assert self._token_file is not None
            where = str(self._token_file)
            try:
                with open(self._token_file, "rb") as f:
                    raw = f.read(MAX_TOKEN_FILE_BYTES + 1)
            except OSError as e:
                raise AgentStsError(
                    f"cannot read the workload token file {where}: {e.strerror}"
                ) from None
            if len(raw) > MAX_TOKEN_FILE_BYTES:
                raise AgentStsError(f"{where}: larger than a workload token can be")
            try:
                value = raw.decode("ascii")
            except UnicodeDecodeError:
                raise AgentStsError(f"{where}: not a JWT (non-ASCII bytes)") from None
        if not isinstance(value, str):
            raise AgentStsError(f"{where}: did not give a string")
        value = value.strip()
        if value.count(".") != 2 or any(c.isspace() for c in value):
            raise AgentStsError(f"{where}: not a compact JWT")
        return value

    # -- server nonces (RFC 9449 §8, §9) --------------------------------------------

    def _nonce_for(self, url: httpx.URL) -> Optional[str]:
        with self._lock:
            return self._nonces.get(_origin(url))

    def _remember_nonce(self, url: httpx.URL, response: httpx.Response) -> bool:
        """Keeps the ``DPoP-Nonce`` a response carries, for the next proof to its
        origin. True when there was one."""
        nonce = response.headers.get("DPoP-Nonce")
        if not nonce or len(nonce) > MAX_NONCE_CHARS or not _PRINTABLE.match(nonce):
            return False
        with self._lock:
            self._nonces[_origin(url)] = nonce
        return True


def _drive(flow: Flow, client: httpx.Client) -> Any:
    """Runs ``flow`` to completion with ``client``, reading each response."""
    try:
        request = next(flow)
        while True:
            # Not the client's own auth (it may be this one), and no redirects: the
            # workload token goes to the token endpoint and nowhere else.
            response = client.send(request, auth=None, follow_redirects=False)
            try:
                response.read()
            finally:
                response.close()
            request = flow.send(response)
    except StopIteration as done:
        return done.value


def _checked_url(url: str, name: str) -> str:
    """``url`` if it is https, or http to a loopback host: the workload token goes
    there."""
    parsed = httpx.URL(url)
    if parsed.query or parsed.fragment or parsed.userinfo:
        raise ValueError(f"{name} must not carry a query, a fragment or credentials")
    if parsed.scheme == "https":
        return url
    if parsed.scheme == "http" and _is_loopback(parsed.host):
        return url
    raise ValueError(f"{name} must be https (plain http only to a loopback host)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: httpx.URL) -> Tuple[str, str, Optional[int]]:
    return (url.scheme, url.host, url.port)


def _replayable(request: httpx.Request) -> bool:
    """Whether the request's body can be sent again (it is not a consumed stream)."""
    try:
        request.content
    except httpx.RequestNotRead:
        return False
    return True


def _challenge_error(response: httpx.Response) -> Optional[str]:
    """The ``error`` of a 401's ``WWW-Authenticate`` challenge (RFC 6750 §3,
    RFC 9449 §7.1), whatever the scheme."""
    for value in response.headers.get_list("WWW-Authenticate"):
        match = _ERROR_PARAM.search(value)
        if match:
            return match.group(1) if match.group(1) is not None else match.group(2)
    return None


def _oauth_error(response: httpx.Response) -> Tuple[str, str]:
    """``error`` and ``error_description`` of an RFC 6749 §5.2 answer; empty strings
    when absent. Only short printable text is kept."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""

    def text(name: str, limit: int) -> str:
        value = body.get(name)
        if isinstance(value, str) and len(value) <= limit and _PRINTABLE.match(value):
            return value
        return ""

    return text("error", 64), text("error_description", 200)
