"""Token auth of the cloud processor protocol, for HTTP predict routes and gRPC calls.

With a token configured (service config `token`, `--token`, a token file or env SERVING_TOKEN), a request
must carry `Authorization: <token>`, or the signed form
`Authorization: EAS base64(HMAC-SHA1(token, METHOD + "\\n" + Content-MD5 + "\\n" + Content-Type + "\\n" +
Date + "\\n" + path))` whose `Content-MD5` (base64 or hex of the body's MD5) matches the body.
A signed request must also carry a `Date` header (an HTTP date, RFC 7231 IMF-fixdate; a date without a
zone counts as UTC) within `max_skew_s` of the server's clock, so a captured request cannot be replayed
later; the signature is checked first, so without the token the Date messages tell an attacker nothing.
Anything else is UNAUTHENTICATED (HTTP 401). Health routes stay open.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from datetime import UTC

from ..errors import Code, ServingError
from ..settings import Settings


def _denied(message: str) -> ServingError:
    return ServingError(Code.UNAUTHENTICATED, message)


def _http_date_seconds(value: bytes) -> float:
    """Seconds since the epoch of an HTTP `Date` header value."""
    text = value.decode("latin-1")
    try:
        sent = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError) as e:  # out-of-range fields raise ValueError/OverflowError
        raise _denied(f"Date header {text[:64]!r} is not an HTTP date (RFC 7231 IMF-fixdate)") from e
    if sent.tzinfo is None:  # "-0000" or no zone at all: RFC 5322 says UTC with no local-time information
        sent = sent.replace(tzinfo=UTC)
    return sent.timestamp()


class TokenAuth:
    """Checks requests against one token.

    `max_skew_s` bounds how far a signed request's `Date` may be from `clock()`, in either direction;
    `max_skew_s <= 0` turns the Date checks off (any Date, or none, is accepted, as before they existed).
    """

    def __init__(self, token: str, *, max_skew_s: float = 900.0, clock: Callable[[], float] = time.time) -> None:
        self.token = token.encode()
        self.max_skew_s = max_skew_s
        self.clock = clock

    def check(self, authorization: bytes | None) -> None:
        """The plain form only (gRPC `authorization` metadata)."""
        if not authorization:
            raise _denied("missing Authorization token")
        if not hmac.compare_digest(authorization.strip(), self.token):
            raise _denied("invalid Authorization token")

    def check_http(self, method: str, path: str, headers: Mapping[bytes, bytes], body: bytes) -> None:
        authorization = headers.get(b"authorization")
        if authorization is None or not authorization.startswith(b"EAS "):
            self.check(authorization)
            return
        md5 = headers.get(b"content-md5", b"")
        digest = hashlib.md5(body).digest()
        if md5 not in (base64.b64encode(digest), digest.hex().encode()):
            raise _denied("Content-MD5 does not match the request body")
        date = headers.get(b"date")
        to_sign = b"\n".join([method.encode(), md5, headers.get(b"content-type", b""), date or b"",
                              path.encode()])
        expected = base64.b64encode(hmac.new(self.token, to_sign, hashlib.sha1).digest())
        if not hmac.compare_digest(authorization[4:].strip(), expected):
            raise _denied("invalid Authorization signature")
        # Only after the signature: a client without the token learns nothing from the Date messages.
        self._check_date(date)

    def _check_date(self, date: bytes | None) -> None:
        if self.max_skew_s <= 0:
            return
        if not date:
            raise _denied("signed request without a Date header")
        if abs(_http_date_seconds(date) - self.clock()) > self.max_skew_s:
            raise _denied(f"Date header is outside the allowed clock skew of {self.max_skew_s:g} seconds")


def read_token_file(path: str) -> str:
    """The token in a file: its first line, stripped (unlike `--token`, it does not show in `ps`)."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the token file {path}: {e}") from e
    if not token:
        raise ValueError(f"the token file {path} is empty (the token is its first line)")
    return token


def tokens_from(settings: Settings) -> tuple[TokenAuth | None, TokenAuth | None]:
    """(the token of every call, the admin token of the calls that load, unload or reconfigure), each None
    when not set; with no admin token those calls take the first."""
    def one(token: str, path: str) -> TokenAuth | None:
        value = read_token_file(path) if path else token
        return TokenAuth(value, max_skew_s=settings.token_max_skew_seconds) if value else None
    return one(settings.token, settings.token_file), one(settings.admin_token, settings.admin_token_file)


def sign(token: str, method: str, path: str, body: bytes, content_type: str, date: str) -> dict[str, str]:
    """Headers of a signed request (what the cloud SDKs send; used by tests and tools)."""
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    to_sign = "\n".join([method, md5, content_type, date, path]).encode()
    signature = base64.b64encode(hmac.new(token.encode(), to_sign, hashlib.sha1).digest()).decode()
    return {"Authorization": f"EAS {signature}", "Content-MD5": md5, "Content-Type": content_type, "Date": date}
