"""agent_sts: the agent side of agent-sts, as an ``httpx.Auth``.

``AgentSts`` exchanges the agent's workload token for a minutes-lived access token for
one action (RFC 8693), bound to an in-memory P-256 key (DPoP, RFC 9449), caches it until
shortly before it expires, and signs a fresh proof for every request::

    import httpx
    from agent_sts import AgentSts

    auth = AgentSts("https://sts.example.org", "github.issues.create",
                    token_file="/var/run/secrets/tokens/agent-sts")
    with httpx.Client(auth=auth) as http:
        http.post("https://github-shim.internal/repos/o/r/issues", json={"title": "hi"})
"""

from ._auth import AgentSts
from ._dpop import DPoPKey, access_token_hash
from ._errors import AgentStsError, ExchangeError

__all__ = ["AgentSts", "AgentStsError", "DPoPKey", "ExchangeError", "access_token_hash"]
__version__ = "0.1.0"
