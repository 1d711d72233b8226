"""One error model for the whole engine: a canonical (gRPC) code and a message.

Every front end maps `ServingError.code` through ONE table: gRPC uses the code as is, HTTP through
`HTTP_STATUS` (TF Serving's `ToHTTPStatusCode`), the cloud processor protocol through `CLOUD_STATUS`.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """The canonical status codes (google.rpc.Code / grpc.StatusCode numbering)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# TF Serving model_servers/http_server.cc ToHTTPStatusCode.
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

# The cloud processor protocol answers with its own codes where they differ.
CLOUD_STATUS: dict[Code, int] = {
    **HTTP_STATUS,
    Code.DEADLINE_EXCEEDED: 408,
    Code.UNAVAILABLE: 450,
    Code.RESOURCE_EXHAUSTED: 429,
}


def encodable(text: str) -> str:
    """`text` as it can be written in UTF-8: a lone surrogate (a file name that is not UTF-8, a client's
    `\\ud800` escape) becomes its `\\udXXX` escape instead of failing the encoder of an error answer."""
    if text.isascii():  # the usual message: one flag test
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


class ServingError(Exception):
    """An error with a canonical code; the message is what the client reads."""

    __slots__ = ("code", "message")

    def __init__(self, code: Code, message: str) -> None:
        message = encodable(message)  # once here, so every front end can write it (JSON, gRPC, logs)
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(Code.UNIMPLEMENTED, message)


def unavailable(message: str) -> ServingError:
    return ServingError(Code.UNAVAILABLE, message)


def internal(message: str) -> ServingError:
    return ServingError(Code.INTERNAL, message)
