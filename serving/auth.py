"""Token auth of the cloud processor protocol, for HTTP predict routes and gRPC calls.

With a token configured (service config `token`, `--token` or env SERVING_TOKEN), a request must carry
`Authorization: <token>`, or the signed form
`Authorization: EAS base64(HMAC-SHA1(token, METHOD + "\\n" + Content-MD5 + "\\n" + Content-Type + "\\n" +
Date + "\\n" + path))` whose `Content-MD5` (base64 or hex of the body's MD5) matches the body.
Anything else is UNAUTHENTICATED (HTTP 401). Health routes stay open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

from .errors import Code, ServingError


def _denied(message: str) -> ServingError:
    return ServingError(Code.UNAUTHENTICATED, message)


class TokenAuth:
    def __init__(self, token: str) -> None:
        self.token = token.encode()

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
        to_sign = b"\n".join([method.encode(), md5, headers.get(b"content-type", b""), headers.get(b"date", b""),
                              path.encode()])
        expected = base64.b64encode(hmac.new(self.token, to_sign, hashlib.sha1).digest())
        if not hmac.compare_digest(authorization[4:].strip(), expected):
            raise _denied("invalid Authorization signature")


def sign(token: str, method: str, path: str, body: bytes, content_type: str, date: str) -> dict[str, str]:
    """Headers of a signed request (what the cloud SDKs send; used by tests and tools)."""
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    to_sign = "\n".join([method, md5, content_type, date, path]).encode()
    signature = base64.b64encode(hmac.new(token.encode(), to_sign, hashlib.sha1).digest()).decode()
    return {"Authorization": f"EAS {signature}", "Content-MD5": md5, "Content-Type": content_type, "Date": date}
