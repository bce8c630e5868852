"""Console credentials: sign-in with a bearer token, sessions in a cookie, CSRF tokens, scopes.

A token is verified exactly as the gRPC interceptor verifies it (the cluster CA's signature,
expiry, revocations). The session cookie is HttpOnly, SameSite=Strict and, over HTTPS, Secure;
it names a session kept in memory only (a node restart signs everyone out). Every form POST
carries the session's CSRF token. What a session may do is what its token's scopes allow for
the RPC an action maps to (`node.security.scopes.REQUIRED_SCOPE`).

With `--insecure` and no cluster CA there are no tokens to verify: the node writes a console
token of its own (`<data_dir>/console.token`, mode 0600) that signs in with the admin scope.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509

from node.security import tokens
from node.security.cluster import write_private
from node.security.scopes import REQUIRED_SCOPE, Principal

SESSION_COOKIE = "jobmesh_session"
SIGNIN_COOKIE = "jobmesh_signin"
CONSOLE_TOKEN_FILE = "console.token"
MAX_SESSIONS = 10_000


@dataclass
class Session:
    """One signed-in browser."""

    id: str
    principal: Principal
    csrf: str
    expires: float
    token_id: str = ""
    bearer: str = field(default="", repr=False)
    """The token the session signed in with (memory only): the console's actions call the API
    with it, so the node checks them, and audits them, as that token's."""


class Authenticator:
    """Verifies tokens and keeps the console's sessions."""

    def __init__(
        self,
        ca: Callable[[], x509.Certificate | None],
        revoked: Callable[[], frozenset[str]],
        data_dir: Path,
        secure_cookies: bool,
        session_ttl_s: float,
    ) -> None:
        self._ca = ca
        self._revoked = revoked
        self._data_dir = data_dir
        self.secure_cookies = secure_cookies
        self._ttl = session_ttl_s
        self._sessions: dict[str, Session] = {}
        self._console_token: str | None = None

    def prepare(self) -> None:
        """Without a cluster CA (`--insecure`): make the console token once."""
        if self._ca() is not None:
            return
        path = self._data_dir / CONSOLE_TOKEN_FILE
        if not path.exists():
            write_private(path, secrets.token_urlsafe(32).encode())
        self._console_token = path.read_text().strip()

    def verify(self, token: str) -> tuple[Principal, str]:
        """The principal of `token` and its id (InvalidToken if refused)."""
        token = token.strip()
        if self._console_token is not None and hmac.compare_digest(token, self._console_token):
            return Principal("console token", frozenset({"admin"})), ""
        ca = self._ca()
        if ca is None:
            raise tokens.InvalidToken(
                f"this node has no cluster; sign in with {self._data_dir / CONSOLE_TOKEN_FILE}"
            )
        claims = tokens.verify(token, ca)
        if claims.id in self._revoked():
            raise tokens.InvalidToken(f"the bearer token {claims.name!r} ({claims.id}) is revoked")
        return Principal(claims.name, claims.scopes, claims.topics), claims.id

    # --- sessions ---

    def open_session(self, principal: Principal, token_id: str, bearer: str = "") -> Session:
        """A new session for a verified token."""
        now = time.time()
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
        session = Session(
            secrets.token_urlsafe(32), principal, secrets.token_urlsafe(24), now + self._ttl, token_id, bearer
        )
        self._sessions[session.id] = session
        return session

    def session(self, request: web.Request) -> Session | None:
        """The request's live session, or None."""
        session = self._sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if session is None:
            return None
        if session.expires < time.time() or (session.token_id and session.token_id in self._revoked()):
            self._sessions.pop(session.id, None)
            return None
        return session

    def close_session(self, request: web.Request) -> None:
        """Sign out."""
        self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)

    def set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: float) -> None:
        """A cookie with the console's attributes (HttpOnly, SameSite=Strict, Secure over TLS)."""
        response.set_cookie(
            name,
            value,
            max_age=int(max_age),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.secure_cookies,
        )

    # --- checks ---

    @staticmethod
    def may(session: Session, method: str) -> bool:
        """True when the session's scopes allow the RPC `method` (`/pkg.Service/Method`)."""
        return session.principal.missing(REQUIRED_SCOPE.get(method, "admin")) is None

    @staticmethod
    def csrf_ok(session: Session, submitted: str) -> bool:
        """True when a form's CSRF token is the session's."""
        return hmac.compare_digest(session.csrf.encode(), submitted.encode())

    def bearer_refusal(self, request: web.Request, scope: str) -> web.Response | None:
        """None when the request's `Authorization: Bearer` token (or session) has `scope`, else
        the 401/403 response to send."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            try:
                principal, _ = self.verify(header.removeprefix("Bearer "))
            except tokens.InvalidToken as e:
                return web.Response(status=401, text=f"{e}\n")
        else:
            session = self.session(request)
            if session is None:
                return web.Response(
                    status=401, text="send `Authorization: Bearer <token>` (a token with the read scope)\n"
                )
            principal = session.principal
        missing = principal.missing(scope)
        if missing is not None:
            return web.Response(status=403, text=f"{principal.name} lacks {missing}\n")
        return None
