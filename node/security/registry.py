"""The tokens a node made (id, name, scopes, hash; never the token) and the revoked token ids.

Both live in the cluster dir as JSON. The node re-reads the revocation list when the file
changes, so `jobmesh token revoke` takes effect on this node at its next call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from node.security import tokens
from node.security.cluster import ClusterFiles, write_private


class TokenRegistry:
    """Issued tokens and revocations of one data dir."""

    def __init__(self, files: ClusterFiles) -> None:
        self._files = files
        self.issued_path = files.dir / "tokens.json"
        self.revoked_path = files.dir / "revoked.json"
        self._revoked: frozenset[str] = frozenset()
        self._revoked_stamp: tuple[int, int] | None = None

    def create(
        self, name: str, scopes: list[str], topics: list[str], ttl_s: float
    ) -> tuple[str, tokens.Claims]:
        """Sign a new token with the CA key and record it (only its hash)."""
        claims = tokens.new_claims(name, scopes, topics, ttl_s)
        token = tokens.sign(claims, self._files.read_ca_key())
        rows = self.issued()
        rows.append({**claims.to_json(), "sha256": tokens.token_hash(token)})
        write_private(self.issued_path, json.dumps(rows, indent=1).encode())
        return token, claims

    def issued(self) -> list[dict[str, object]]:
        """Every recorded token (claims and hash)."""
        return _read_list(self.issued_path)

    def revoke(self, token_id: str) -> bool:
        """Revoke a token by id; False if no token with that id was issued here."""
        known = any(row.get("id") == token_id for row in self.issued())
        ids = sorted({*map(str, _read_list(self.revoked_path)), token_id})
        write_private(self.revoked_path, json.dumps(ids).encode())
        return known

    def add_revoked(self, ids: frozenset[str]) -> None:
        """Record revocations learnt from peers (the list only grows)."""
        merged = sorted(self.revoked() | ids)
        write_private(self.revoked_path, json.dumps(merged).encode())

    def revoked(self) -> frozenset[str]:
        """The revoked token ids (re-read when the file changes)."""
        try:
            stat = os.stat(self.revoked_path)
        except FileNotFoundError:
            return frozenset()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._revoked_stamp:
            self._revoked = frozenset(map(str, _read_list(self.revoked_path)))
            self._revoked_stamp = stamp
        return self._revoked


def _read_list(path: Path) -> list[dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return data if isinstance(data, list) else []
