"""Exceptions of the sans-IO SIP library, split by whose fault the problem is.

`RemoteProtocolError` is the only exception the parsers and the message accessors let out on
any input: the edge answers it with `status_hint` and the reason as reason phrase (or drops a
malformed response). `LocalProtocolError` means our own code misused the API. No I/O here.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "RemoteProtocolError", "SipError"]


class SipError(Exception):
    """Base class of every error raised by `edge.sip`."""


class RemoteProtocolError(SipError):
    """The peer sent something malformed; answer it with `status_hint` and `reason`."""

    def __init__(self, reason: str, status_hint: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_hint = status_hint

    def __repr__(self) -> str:
        return f"RemoteProtocolError({self.reason!r}, status_hint={self.status_hint})"


class LocalProtocolError(SipError):
    """Our own code used the API wrongly (for example built a response to a response)."""
