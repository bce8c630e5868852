"""The tokens a node made (id, name, scopes, hash; never the token) and the revoked token ids.

Both live in the cluster dir as JSON. The node re-reads the revocation list when the file
changes, so `jobmesh token revoke` takes effect on this node at its next call.

Token commands leave a note of what they did (`note_action`) in the cluster dir's
`audit-inbox/`, one file each; the running node takes them (`take_actions`) into its audit
journal, so token actions are audited like the admin RPCs though they never reach the node.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path

from node.security import tokens
from node.security.cluster import ClusterFiles, write_private


class TokenRegistry:
    """Issued tokens and revocations of one data dir."""

    def __init__(self, files: ClusterFiles) -> None:
        self._files = files
        self.issued_path = files.dir / "tokens.json"
        self.revoked_path = files.dir / "revoked.json"
        self.inbox = files.dir / "audit-inbox"
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

    def note_action(self, action: str, request: str) -> None:
        """Leave a note of a token command for the node's audit journal (caller: this OS user)."""
        note = {
            "time_us": time.time_ns() // 1000,
            "caller": f"cli {_user()} (uid {os.getuid()})",
            "action": action,
            "request": request,
        }
        name = f"{time.time_ns():020d}-{os.getpid()}.json"
        write_private(self.inbox / name, json.dumps(note).encode())

    def take_actions(self) -> list[dict[str, str | int]]:
        """The notes token commands left, oldest first, each removed as it is returned."""
        try:
            names = sorted(n for n in os.listdir(self.inbox) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        notes = []
        for name in names:
            path = self.inbox / name
            try:
                note = json.loads(path.read_text())
                path.unlink()
            except (OSError, ValueError):
                continue
            if isinstance(note, dict):
                notes.append({k: v for k, v in note.items() if isinstance(v, str | int)})
        return notes


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "?"


def _read_list(path: Path) -> list[dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return data if isinstance(data, list) else []
