"""Who may call memmgr: its own workers' sessions and the operator.

- The internal token (mesh key `internal_token`, MUXSERVE_INTERNAL_TOKEN; `muxserve up` makes one per launch
  when none is set): every RPC but the read-only Stats and CheckIntegrity must carry it as metadata
  `muxserve-internal-token`. Missing: UNAUTHENTICATED; wrong: PERMISSION_DENIED. No token configured: open
  (logged once at start), as memmgr listens on the unit's loopback by default.
- Session keys, token or not: OpenSession answers a `session_key`, an HMAC of the session id under a secret
  of this memmgr process; every RPC naming a session (RegisterLLM, Lease, Release, Heartbeat, CloseSession)
  must carry that session's key as `muxserve-session-key`, else PERMISSION_DENIED. So a caller can lease and
  release only in the session it opened; the operator (the token alone) may set quotas and adapt them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from services.memmgr.errors import PermissionDeniedError, UnauthenticatedError

log = logging.getLogger(__name__)
TOKEN_KEY = "muxserve-internal-token"
SESSION_KEY = "muxserve-session-key"


class InternalAuth:
    """Checks the token and session keys of incoming calls (metadata as (key, value) pairs)."""

    def __init__(self, token: str | None):
        self.token = token or None
        self._secret = secrets.token_bytes(32)  # session keys die with this process, as its sessions do
        if self.token is None:
            log.warning("no internal_token (MUXSERVE_INTERNAL_TOKEN): memmgr's lease and quota RPCs are open to "
                        "any client that reaches it; each session still needs its own key")

    def session_key(self, session_id: str) -> str:
        return hmac.new(self._secret, session_id.encode(), hashlib.sha256).hexdigest()

    def check_token(self, metadata) -> None:
        """Raise UnauthenticatedError / PermissionDeniedError unless the call carries the token (if any)."""
        if self.token is None:
            return
        got = _get(metadata, TOKEN_KEY)
        if got is None:
            raise UnauthenticatedError(f"memmgr: this RPC needs the internal token (metadata {TOKEN_KEY}; "
                                       "config internal_token or MUXSERVE_INTERNAL_TOKEN)")
        if not hmac.compare_digest(got.encode(), self.token.encode()):
            raise PermissionDeniedError("memmgr: wrong internal token")

    def check_session(self, metadata, session_id: str) -> None:
        """Raise PermissionDeniedError unless the call carries `session_id`'s own key."""
        got = _get(metadata, SESSION_KEY) or ""
        if not hmac.compare_digest(got.encode(), self.session_key(session_id).encode()):
            raise PermissionDeniedError(f"memmgr: session {session_id!r} is not this caller's "
                                        f"({'wrong' if got else 'no'} {SESSION_KEY} metadata)")


def _get(metadata, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


def call_metadata(token: str | None, session_key: str = "") -> tuple[tuple[str, str], ...]:
    """The metadata a client sends: the token (when set) and its session's key (when it has one)."""
    return tuple((k, v) for k, v in ((TOKEN_KEY, token), (SESSION_KEY, session_key)) if v)
