"""What a log line, page or event may say about an identity provider's failed answer.

A provider's answer can hold what the gateway sent it: an `error_description`
that repeats the code, the refresh token or the client secret it refused, or a
malformed HTTP answer whose bytes aiohttp's parser quotes. So these never pass
on the provider's text as such: an OAuth error code only when it is a short
token and none of the values sent, a transport error by its kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import aiohttp

UNRECOGNISED = "unrecognised"
# RFC 6749 5.2 allows printable ASCII but `"` and `\`; every registered code is a
# short word of these (invalid_grant, unmet_authentication_requirements), and a
# description or an echoed value is not.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,48}")


def oauth_error(value: object, sent: Iterable[str | None] = ()) -> str:
    """The provider's OAuth `error` code, or ``unrecognised``: when it isn't a short
    token, or holds (or is part of) one of the values sent to the provider."""
    if not isinstance(value, str) or not _ERROR_CODE.fullmatch(value):
        return UNRECOGNISED
    for secret in sent:
        if secret and (secret in value or value in secret):
            return UNRECOGNISED
    return value


def transport_error(error: BaseException) -> str:
    """Why a request to the provider failed. A connection that could not be made
    (host, port and the OS error: the gateway's own view) or a timeout is
    described; any other error came after the provider answered and may quote
    its bytes, so only its kind is named."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"{type(error).__name__}: {error}"
    return type(error).__name__
