"""Join tokens: made on an admitting node, redeemed once (or N times) for a node certificate.

A token is `jmj1.<ca fingerprint>.<id>.<secret>.<bootstrap certificate>` (base64url parts). Every
connection to a node needs a certificate of the cluster CA, so the token carries a short-lived
bootstrap client certificate (SAN `jobmesh:join:<id>`) whose private key is derived from the
secret: the joining node can connect, and proves the secret by holding that key and by an HMAC
over its certificate request. The admitting node keeps, per token, only a hash of the secret,
its expiry and its remaining uses (`join.json`, mode 0600).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node.errors import JobmeshError
from node.security import pki
from node.security.cluster import ClusterFiles, write_private

PREFIX = "jmj1"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


BOOTSTRAP_GRACE = datetime.timedelta(days=1)


class JoinRefused(JobmeshError):
    """A join token is malformed, unknown, expired or used up, or its proof is wrong."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bootstrap_key(secret: bytes) -> ec.EllipticCurvePrivateKey:
    """The bootstrap certificate's key, derived from the token's secret."""
    digest = hashlib.sha256(b"jobmesh join key\0" + secret).digest()
    return ec.derive_private_key(int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1())


def proof(secret: bytes, csr_pem: bytes) -> bytes:
    """HMAC-SHA256 of a certificate request, keyed with the secret (sent instead of the secret)."""
    return hmac.new(hashlib.sha256(b"jobmesh join proof\0" + secret).digest(), csr_pem, "sha256").digest()


@dataclass(frozen=True)
class JoinToken:
    """A parsed join token, as the joining node holds it."""

    ca_fingerprint: str
    id: str
    secret: bytes
    bootstrap_cert: x509.Certificate

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """Parse a token from `jobmesh cluster token create` (JoinRefused if malformed)."""
        parts = text.strip().split(".")
        if len(parts) != 5 or parts[0] != PREFIX:
            raise JoinRefused("the join token is malformed (expected jmj1.<five parts>); copy it whole")
        try:
            cert = x509.load_der_x509_certificate(_unb64(parts[4]))
            return cls(_unb64(parts[1]).hex(), parts[2], _unb64(parts[3]), cert)
        except (ValueError, binascii.Error) as e:
            raise JoinRefused("the join token is malformed; copy it whole") from e

    def bootstrap_material(self) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) of the bootstrap client certificate."""
        return pki.key_pem(bootstrap_key(self.secret)), pki.cert_pem(self.bootstrap_cert)


class JoinTokens:
    """The join tokens of an admitting node."""

    def __init__(self, files: ClusterFiles) -> None:
        self._files = files
        self.path = files.dir / "join.json"

    def _load(self) -> dict[str, dict[str, float | str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, rows: dict[str, dict[str, float | str]]) -> None:
        write_private(self.path, json.dumps(rows, indent=1).encode())

    def create(self, ttl_s: float, uses: int) -> str:
        """A new join token valid for `ttl_s` seconds and `uses` joins."""
        if ttl_s <= 0 or uses < 1:
            raise JoinRefused("a join token needs --ttl > 0 and --uses >= 1")
        ca_key, ca = self._files.read_ca_key(), self._files.read_ca()
        token_id, secret = secrets.token_hex(8), secrets.token_bytes(16)
        cert = pki.issue(
            ca_key,
            ca,
            bootstrap_key(secret).public_key(),
            pki.JOIN_URI_PREFIX + token_id,
            (),
            # Longer than the token: an expired token then gets its clear refusal from
            # redeem() rather than an anonymous handshake failure.
            datetime.timedelta(seconds=ttl_s) + BOOTSTRAP_GRACE,
        )
        rows = {k: v for k, v in self._load().items() if float(v["expires"]) > time.time()}
        rows[token_id] = {
            "expires": time.time() + ttl_s,
            "uses": uses,
            "proof_key": hashlib.sha256(b"jobmesh join proof\0" + secret).hexdigest(),
        }
        self._save(rows)
        der = cert.public_bytes(serialization.Encoding.DER)
        return ".".join([PREFIX, _b64(bytes.fromhex(pki.fingerprint(ca))), token_id, _b64(secret), _b64(der)])

    def redeem(self, token_id: str, csr_pem: bytes, given_proof: bytes) -> None:
        """Check a join request's token and proof and count one use (JoinRefused otherwise)."""
        rows = self._load()
        row = rows.get(token_id)
        if row is None:
            raise JoinRefused(f"join token {token_id} is unknown here (wrong cluster, or a typo)")
        if float(row["expires"]) < time.time():
            raise JoinRefused(
                f"join token {token_id} has expired; make a new one (jobmesh cluster token create)"
            )
        if int(row["uses"]) < 1:
            raise JoinRefused(
                f"join token {token_id} is used up; make a new one (jobmesh cluster token create)"
            )
        expected = hmac.new(bytes.fromhex(str(row["proof_key"])), csr_pem, "sha256").digest()
        if not hmac.compare_digest(expected, given_proof):
            raise JoinRefused(f"wrong secret for join token {token_id}")
        row["uses"] = int(row["uses"]) - 1
        self._save(rows)
