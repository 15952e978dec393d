"""Who may see the dashboard, and CSRF protection for its actions.

- With an admin token (``[server] admin_token`` / ``HEAPRELAY_ADMIN_TOKEN``): a request is let
  in with ``Authorization: Bearer TOKEN``, or with the session cookie that the login form
  sets once given the token. The cookie is signed (HMAC-SHA256 with a key derived from the
  token, so every relay with the same token accepts it, and changing the token ends every
  session), HttpOnly, SameSite=Strict, limited to ``/ui`` and to :data:`SESSION_SECONDS`;
  ``Secure`` when the request came over HTTPS.
- Without one: the dashboard is open, but only when the relay listens on loopback; on any
  other address every ``/ui`` request is refused (401), so nothing leaks.

Actions (POST) need a CSRF token bound to the session (a hidden form field) and, when the
browser sends an ``Origin``, that it is the relay's own; requests with a bearer token are not
cookie-borne and need neither.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from starlette.requests import Request

__all__ = ["SESSION_COOKIE", "SESSION_SECONDS", "Access", "Visitor", "is_loopback"]

SESSION_COOKIE: Final = "heaprelay_session"
SESSION_SECONDS: Final = 12 * 3600


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Visitor:
    """A request that was let in: how, and the CSRF token its forms must carry."""

    how: str  # "bearer", "session" or "open"
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Access:
    """The dashboard's access rules for one server (module doc)."""

    def __init__(self, token: str | None, host: str) -> None:
        self.token = token
        self.open = token is None and is_loopback(host)
        #: No token and not on loopback: the dashboard is not served at all.
        self.closed = token is None and not self.open
        seed = (token or secrets.token_hex(32)).encode()
        self._key = hmac.new(seed, b"heaprelay dashboard session", hashlib.sha256).digest()

    def describe(self) -> str:
        """One line for the startup log."""
        if self.closed:
            return (
                "dashboard /ui: refused (no admin_token, and not listening on loopback); set "
                "[server] admin_token or HEAPRELAY_ADMIN_TOKEN to serve it"
            )
        if self.open:
            return "dashboard /ui: open without login (no admin_token; listening on loopback only)"
        return "dashboard /ui: log in with the admin token (form, or Authorization: Bearer)"

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    # --- sessions ---------------------------------------------------------------------------

    def check_token(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def new_session(self, now: float) -> str:
        """A session cookie's value: ``expiry.nonce.signature``."""
        body = f"{int(now) + SESSION_SECONDS}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def session(self, value: str | None, now: float) -> str | None:
        """The nonce of a valid, unexpired session cookie (else ``None``)."""
        if not value or value.count(".") != 2:
            return None
        expiry, nonce, signature = value.split(".")
        if not hmac.compare_digest(signature, self._sign(f"{expiry}.{nonce}")):
            return None
        if not expiry.isdigit() or int(expiry) < now:
            return None
        return nonce

    def csrf(self, nonce: str) -> str:
        return self._sign(f"csrf:{nonce}")

    # --- requests ---------------------------------------------------------------------------

    def visitor(self, request: Request, now: float) -> Visitor | None:
        """The visitor, if this request may see the dashboard."""
        if self.closed:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return Visitor("bearer", "") if self.check_token(credentials.strip()) else None
        if self.open:
            return Visitor("open", self.csrf("open"))
        nonce = self.session(request.cookies.get(SESSION_COOKIE), now)
        return Visitor("session", self.csrf(nonce)) if nonce is not None else None

    def action_allowed(self, request: Request, visitor: Visitor, form_csrf: str | None) -> bool:
        """Whether a POST by ``visitor`` may act: bearer requests always; cookie-borne (and
        open) ones with the right CSRF token and no foreign ``Origin``."""
        if visitor.how == "bearer":
            return True
        origin = request.headers.get("origin")
        # The host only: behind a proxy that ends TLS the scheme seen here is not the page's.
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return False
        return form_csrf is not None and hmac.compare_digest(form_csrf, visitor.csrf)

    @staticmethod
    def secure(request: Request) -> bool:
        forwarded = request.headers.get("x-forwarded-proto", "")
        return request.url.scheme == "https" or forwarded.lower() == "https"
