"""Token auth without a server: the signed form's Date freshness (replay protection), the plain form,
and reading the token from a file. The clock is injected so the skew edges are exact."""

import email.utils
import time

import pytest

from serving.errors import Code, ServingError
from serving.transport.auth import TokenAuth, read_token_file, sign

TOKEN = "s3cret-token"
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
PATH = "/api/predict/lin"
BODY = b"[[2.0]]"


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def signed(date: str | None, token: str = TOKEN) -> dict[bytes, bytes]:
    """Headers as the HTTP front end hands them over: lower-case bytes names; None drops the Date."""
    headers = sign(token, "POST", PATH, BODY, "application/json", date or "")
    if date is None:
        del headers["Date"]
    return {name.lower().encode(): value.encode() for name, value in headers.items()}


def refusal(auth: TokenAuth, headers: dict[bytes, bytes]) -> tuple[Code, str]:
    with pytest.raises(ServingError) as e:
        auth.check_http("POST", PATH, headers, BODY)
    return e.value.code, e.value.message


def test_signed_request_within_the_skew_is_accepted_both_ways():
    auth = TokenAuth(TOKEN, max_skew_s=900, clock=lambda: NOW)
    for offset in (-900, -1, 0, 1, 900):
        auth.check_http("POST", PATH, signed(http_date(NOW + offset)), BODY)


def test_signed_request_just_past_the_skew_is_refused_both_ways():
    auth = TokenAuth(TOKEN, max_skew_s=900, clock=lambda: NOW)
    expected = (Code.UNAUTHENTICATED, "Date header is outside the allowed clock skew of 900 seconds")
    assert refusal(auth, signed(http_date(NOW + 901))) == expected
    assert refusal(auth, signed(http_date(NOW - 901))) == expected


def test_replaying_a_request_signed_in_2001_is_refused():
    auth = TokenAuth(TOKEN, clock=lambda: NOW)
    old = signed("Mon, 01 Jan 2001 00:00:00 GMT")
    assert refusal(auth, old) == (Code.UNAUTHENTICATED,
                                  "Date header is outside the allowed clock skew of 900 seconds")
    # The same bytes were good when they were made: the signature is valid, only the Date is stale.
    TokenAuth(TOKEN, clock=lambda: 978307200.0).check_http("POST", PATH, old, BODY)


def test_signed_request_without_a_date_is_refused():
    auth = TokenAuth(TOKEN, clock=lambda: NOW)
    assert refusal(auth, signed(None)) == (Code.UNAUTHENTICATED, "signed request without a Date header")


def test_signed_request_with_a_garbage_date_is_refused_naming_the_header():
    auth = TokenAuth(TOKEN, clock=lambda: NOW)
    for garbage in ("yesterday", "Sun, 06 Nov 1994 99:49:37 GMT", "Sun, 06 Nov 99999999999999999999 08:49:37 GMT"):
        assert refusal(auth, signed(garbage)) == (
            Code.UNAUTHENTICATED, f"Date header {garbage!r} is not an HTTP date (RFC 7231 IMF-fixdate)")


def test_a_date_without_a_zone_counts_as_utc_not_local_time(monkeypatch):
    auth = TokenAuth(TOKEN, max_skew_s=10, clock=lambda: NOW)
    # A server whose local time is UTC+9: reading a zone-less date as local time would be 9 hours off.
    with monkeypatch.context() as m:
        m.setenv("TZ", "UTC-9")
        time.tzset()
        try:
            auth.check_http("POST", PATH, signed(http_date(NOW).removesuffix(" GMT")), BODY)
            auth.check_http("POST", PATH, signed(http_date(NOW).replace("GMT", "-0000")), BODY)
        finally:
            m.undo()
            time.tzset()
    # A zoned date is converted: the same wall time two hours east is two hours earlier.
    stale = http_date(NOW).replace("GMT", "+0200")
    assert refusal(auth, signed(stale))[1] == "Date header is outside the allowed clock skew of 10 seconds"


def test_the_signature_is_checked_before_the_date():
    auth = TokenAuth(TOKEN, clock=lambda: NOW)
    for date in (None, "yesterday", "Mon, 01 Jan 2001 00:00:00 GMT"):
        assert refusal(auth, signed(date, token="other-token")) == (
            Code.UNAUTHENTICATED, "invalid Authorization signature")


def test_skew_zero_or_less_turns_the_date_check_off():
    for skew in (0, -1):
        auth = TokenAuth(TOKEN, max_skew_s=skew, clock=lambda: NOW)
        for date in ("Mon, 01 Jan 2001 00:00:00 GMT", None, "yesterday"):
            auth.check_http("POST", PATH, signed(date), BODY)


def test_plain_form_ignores_the_date():
    auth = TokenAuth(TOKEN, max_skew_s=1, clock=lambda: NOW)
    stale = {b"authorization": TOKEN.encode(), b"date": b"Mon, 01 Jan 2001 00:00:00 GMT"}
    auth.check_http("POST", PATH, stale, BODY)
    auth.check_http("POST", PATH, {b"authorization": TOKEN.encode()}, BODY)
    assert refusal(auth, {b"authorization": b"wrong"}) == (Code.UNAUTHENTICATED, "invalid Authorization token")
    assert refusal(auth, {}) == (Code.UNAUTHENTICATED, "missing Authorization token")
    auth.check(TOKEN.encode())  # gRPC metadata


def test_read_token_file_takes_the_first_line_stripped(tmp_path):
    path = tmp_path / "token"
    path.write_text("  s3cret-token \nsecond line\n")
    assert read_token_file(str(path)) == "s3cret-token"


def test_read_token_file_refuses_an_empty_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("\n")
    with pytest.raises(ValueError) as e:
        read_token_file(str(path))
    assert str(e.value) == f"the token file {path} is empty (the token is its first line)"


def test_read_token_file_refuses_a_missing_file(tmp_path):
    path = tmp_path / "absent"
    with pytest.raises(ValueError) as e:
        read_token_file(str(path))
    assert str(e.value) == f"cannot read the token file {path}: [Errno 2] No such file or directory: '{path}'"
