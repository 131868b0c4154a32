"""DPoP proofs (RFC 9449 §4): the key that proves possession and the JWS it signs.

A proof is a compact JWS with header ``{"typ": "dpop+jwt", "alg": "EdDSA", "jwk": ...}``
and claims ``jti``, ``htm``, ``htu``, ``iat`` (plus ``ath`` next to an access token and
``nonce`` when a server asked for one). The JWS is assembled here with ``cryptography``
alone: it is a dozen lines, and it keeps a JOSE library's key-parsing and algorithm
choices out of the client.

Keys are Ed25519 (``EdDSA``, RFC 8037) by default: the server checks one proof per
request, and an Ed25519 signature costs it about two thirds of a P-256 one (measured
in the README's DPoP benchmark), with no per-signature randomness to get wrong. A P-256
key (``ES256``) is accepted too; its JWS signature is the raw 64 bytes ``r || s`` (RFC
7518 §3.4), not the DER that ``cryptography`` produces, hence the conversion.

The private key lives only in memory. :class:`DPoPKey` prints nothing of it and refuses
to be pickled or copied, so it cannot travel by accident (into a log, a cache, a
subprocess).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any, Dict, NoReturn, Optional, Union

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["DPoPKey", "access_token_hash", "b64url", "htu"]

#: The ``typ`` of a DPoP proof (RFC 9449 §4.2).
PROOF_TYPE = "dpop+jwt"

#: Bytes of a P-256 coordinate and of each half of an ES256 signature.
_P256_BYTES = 32


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def access_token_hash(access_token: str) -> str:
    """``ath`` for ``access_token``: base64url(SHA-256(ASCII(token))) (RFC 9449 §4.2)."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def htu(url: httpx.URL) -> str:
    """The ``htu`` of a request to ``url``: the URL without query and fragment (§4.2)."""
    return str(url.copy_with(query=None, fragment=None))


class DPoPKey:
    """A key that signs DPoP proofs: Ed25519 (EdDSA) by default, or P-256 (ES256). It
    exists only in memory.

    ``DPoPKey()`` generates a fresh Ed25519 key, which is what an agent wants: one key
    per process, so a token stolen from it is worth nothing elsewhere. Pass an existing
    ``cryptography`` Ed25519 or P-256 private key to reuse one.
    """

    __slots__ = ("_key", "_jwk", "_thumbprint", "_alg")

    def __init__(
        self,
        private_key: Optional[Union[ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey]] = None,
    ) -> None:
        if private_key is None:
            private_key = ed25519.Ed25519PrivateKey.generate()
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            raw = private_key.public_key().public_bytes_raw()
            self._alg = "EdDSA"
            self._jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        elif isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
            private_key.curve, ec.SECP256R1
        ):
            numbers = private_key.public_key().public_numbers()
            self._alg = "ES256"
            self._jwk = {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url(numbers.x.to_bytes(_P256_BYTES, "big")),
                "y": b64url(numbers.y.to_bytes(_P256_BYTES, "big")),
            }
        else:
            raise TypeError("a DPoP key must be an Ed25519 or a P-256 (secp256r1) private key")
        self._key = private_key
        # RFC 7638 §3: the required members, lexicographic order, no whitespace.
        self._thumbprint = b64url(hashlib.sha256(_json(self._jwk)).digest())

    @property
    def algorithm(self) -> str:
        """The JWS ``alg`` of its proofs: ``EdDSA`` or ``ES256``."""
        return self._alg

    @property
    def public_jwk(self) -> Dict[str, str]:
        """The public key as a JWK (RFC 7517), as proofs carry it."""
        return dict(self._jwk)

    @property
    def thumbprint(self) -> str:
        """The RFC 7638 SHA-256 thumbprint: the ``cnf.jkt`` tokens are bound to."""
        return self._thumbprint

    def sign(self, header: Dict[str, Any], claims: Dict[str, Any]) -> str:
        """A compact JWS of ``claims`` under ``header`` (``alg`` must be the key's)."""
        if header.get("alg") != self._alg:
            raise ValueError(f"this DPoP key signs {self._alg} only")
        signing_input = f"{b64url(_json(header))}.{b64url(_json(claims))}".encode("ascii")
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            signature = self._key.sign(signing_input)
        else:
            r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: Optional[str] = None,
        nonce: Optional[str] = None,
        now: Optional[float] = None,
    ) -> str:
        """A fresh proof for one request: ``method`` and ``url`` (no query or fragment),
        with ``ath`` when presented next to ``access_token`` and the server's ``nonce``
        when it asked for one. ``now`` (unix seconds) defaults to the wall clock."""
        if "?" in url or "#" in url:
            raise ValueError("htu is the URL without query and fragment (RFC 9449 §4.2)")
        claims: Dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": url,
            "iat": int(time.time() if now is None else now),
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        header = {"typ": PROOF_TYPE, "alg": self._alg, "jwk": self._jwk}
        return self.sign(header, claims)

    def __repr__(self) -> str:
        curve = "Ed25519" if self._alg == "EdDSA" else "P-256"
        return f"DPoPKey({self._alg}, {curve}, [private key not shown])"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a DPoPKey stays in memory: it cannot be pickled or copied")

    def __copy__(self) -> NoReturn:
        self.__reduce__()

    def __deepcopy__(self, memo: Any) -> NoReturn:
        self.__reduce__()
