"""Bearer tokens for clients and workers: claims signed with the cluster CA key.

Any node verifies a token with the CA certificate it already holds, so a token made on one node
works on every node of the cluster. A token is `jm1.<claims>.<signature>` (base64url); nodes keep
only its id and a hash (the token list), never the token itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from node.errors import InvalidArgument, JobmeshError

PREFIX = "jm1"
SCOPES = ("read", "submit", "work", "admin")
"""read: look; submit: add jobs (within topic patterns) plus read; work: WorkerService (within
topic patterns); admin: everything."""


class InvalidToken(JobmeshError):
    """A bearer token is malformed, not signed by this cluster, expired or revoked."""


@dataclass(frozen=True)
class Claims:
    """What a token grants."""

    id: str
    name: str
    scopes: frozenset[str]
    topics: tuple[str, ...] = ()
    """Topic patterns limiting submit and work (empty: all topics)."""
    expires: float = 0.0
    """Unix time after which the token is refused; 0: never."""
    issued: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        """The claims as a JSON object (also the token list's row, without the secret)."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "topics": list(self.topics),
            "expires": self.expires,
            "issued": self.issued,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Claims:
        """Claims from `to_json` output (InvalidToken if malformed)."""
        try:
            scopes = frozenset(str(s) for s in data["scopes"])  # type: ignore[attr-defined]
            return cls(
                id=str(data["id"]),
                name=str(data["name"]),
                scopes=scopes,
                topics=tuple(str(t) for t in data["topics"]),  # type: ignore[attr-defined]
                expires=float(data["expires"]),  # type: ignore[arg-type]
                issued=float(data["issued"]),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidToken("the token's claims are malformed") from e


def new_claims(name: str, scopes: list[str], topics: list[str], ttl_s: float) -> Claims:
    """Claims for a new token (InvalidArgument on an unknown scope or a negative ttl)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidArgument(f"scope {', '.join(unknown) or '(none)'} unknown; use {', '.join(SCOPES)}")
    if ttl_s < 0:
        raise InvalidArgument("the token's ttl must be >= 0 (0: never expires)")
    now = time.time()
    return Claims(
        id=secrets.token_hex(8),
        name=name,
        scopes=frozenset(scopes),
        topics=tuple(topics),
        expires=now + ttl_s if ttl_s else 0.0,
        issued=now,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(claims: Claims, ca_key: ec.EllipticCurvePrivateKey) -> str:
    """The bearer token for `claims`, signed with the CA key."""
    body = _b64(json.dumps(claims.to_json(), sort_keys=True).encode())
    signature = ca_key.sign(f"{PREFIX}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    return f"{PREFIX}.{body}.{_b64(signature)}"


def token_hash(token: str) -> str:
    """SHA-256 of a token (what the token list stores)."""
    return hashlib.sha256(token.encode()).hexdigest()


def verify(token: str, ca_cert: x509.Certificate, now: float | None = None) -> Claims:
    """The claims of a token signed by this cluster's CA and not expired (InvalidToken otherwise)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise InvalidToken("the bearer token is malformed (expected jm1.<claims>.<signature>)")
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise InvalidToken("the cluster CA has no ECDSA key")
    try:
        public_key.verify(_unb64(parts[2]), f"{PREFIX}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256()))
        claims = Claims.from_json(json.loads(_unb64(parts[1])))
    except (InvalidSignature, binascii.Error, ValueError) as e:
        raise InvalidToken("the bearer token is not signed by this cluster's CA") from e
    if claims.expires and claims.expires < (time.time() if now is None else now):
        raise InvalidToken(f"the bearer token {claims.name!r} ({claims.id}) has expired")
    return claims
