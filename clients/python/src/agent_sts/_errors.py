"""The errors the client raises. None carries a token, a proof or a key: an exchange
error carries the STS's status, its RFC 6749 §5.2 ``error`` code and its
``error_description``, which agent-sts takes from a fixed table that never echoes input.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["AgentStsError", "ExchangeError"]


class AgentStsError(Exception):
    """The client could not obtain or use an access token."""


class ExchangeError(AgentStsError):
    """The STS refused the token exchange (or answered something unusable).

    ``status`` is the HTTP status, ``error`` the OAuth error code (``invalid_scope``,
    ``invalid_request``, ``temporarily_unavailable``, ...), ``description`` the STS's
    fixed description, ``retry_after`` its ``Retry-After`` in seconds when it sent one.
    """

    def __init__(
        self,
        status: int,
        error: str,
        description: str = "",
        retry_after: Optional[int] = None,
    ) -> None:
        self.status = status
        self.error = error
        self.description = description
        self.retry_after = retry_after
        text = f"token exchange refused: {status} {error}"
        if description:
            text += f": {description}"
        super().__init__(text)
