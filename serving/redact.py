"""Secrets kept out of what the server shows: credentials in URLs and framework text in load errors.

A base path or endpoint can carry a secret: `https://user:password@host/...`, a presigned URL's
`X-Amz-Signature=...`, a SAS `sig=...`, a `?token=...`. `redact()` replaces the user-info of every URL in a
text and the value of every query parameter of it with `***` (the fragment, where a `#sha256=` checksum
sits, stays), wherever a path, endpoint or error message is shown: the model list and status routes, the
repository index, the status page, logs and load errors. Query values go whole, not by a list of names:
a list misses the next provider's parameter.

A framework's load error can quote the file it failed on (XGBoost's JSON parser prints the bytes around
the fault: a load pointed at `/etc/shadow` answered with its first line) and native stack addresses:
`load_failed()` makes the client's message from our words and the exception's type only, and puts the
framework's own text in the server log.
"""

from __future__ import annotations

import logging
import re

from .errors import Code, ServingError

log = logging.getLogger("serving.load")

#: A URL in free text: a scheme, `://`, then anything up to white space or a quote.
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`]+")
#: The user-info part of a URL (`user:password@`), up to the first `/`, `?` or `#`.
USER_INFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
#: `name=value` pairs of a query string.
PARAM = re.compile(r"([?&;][^=&;#]*=)[^&;#]*")
MASK = "***"


def _url(m: re.Match[str]) -> str:
    url = USER_INFO.sub(rf"\1{MASK}@", m[0])
    query = url.find("?")
    if query < 0:
        return url
    fragment = url.find("#", query)
    end = len(url) if fragment < 0 else fragment
    return url[:query] + PARAM.sub(rf"\1{MASK}", url[query:end]) + url[end:]


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it masked (user-info, query values)."""
    if "://" not in text:  # the usual case: a local path or a message naming none
        return text
    return URL.sub(_url, text)


#: Where a framework's message turns into its native stack: XGBoost's and dmlc's `Stack trace:` with `[bt]`
#: frames, PyTorch's c10 `Exception raised from ...` with `frame #0:` lines.
NATIVE_TRACE = re.compile(r"\s*(?:Stack trace:|Exception raised from |frame #0:|\[bt\] \(0\))")


def without_native_trace(text: str) -> str:
    """A framework's message without the native stack it may end with (addresses of the server's libraries
    are for its log, not for a client)."""
    m = NATIVE_TRACE.search(text)
    return text if m is None else text[:m.start()] + " (native stack trace in the server log)"


def type_name(e: BaseException) -> str:
    """`module.Class` of an exception (builtins without the module)."""
    kind = type(e)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def load_failed(what: str, path: object, e: BaseException) -> ServingError:
    """The error a client reads when a framework cannot load a model file: what, where and the exception's
    type; the framework's message and traceback go to the server log only."""
    log.error("cannot load %s %s: %s: %s", what, redact(str(path)), type_name(e), e, exc_info=e)
    return ServingError(Code.FAILED_PRECONDITION,
                        f"cannot load {what} {redact(str(path))}: {type_name(e)} (the server log has the details)")
