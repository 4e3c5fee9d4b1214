"""Credentials out of text that is printed or logged: the one place URLs are redacted.

A tracking URI, an API URL or an endpoint may carry a secret: ``http://user:password@host`` (user info),
or a query parameter such as ``?token=...`` or a presigned S3 URL's ``X-Amz-Signature``. :func:`redact`
replaces each with ``***``. The command line prints through consoles that redact every string
(:mod:`cxr.cli.console`) and installs :func:`install_log_redaction` for the log records of the libraries
it drives (Prefect, MLflow).
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://userinfo@ : everything between "//" and the last "@" before the path, query or fragment
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/\s?#@]+(?:@[^/\s?#@]+)*)@")
_SECRET_PARAMS = (
    "token|access_token|id_token|refresh_token|api_key|apikey|key|secret|client_secret|password|passwd|pwd|"
    "auth|authorization|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token"
)
_QUERY_SECRET = re.compile(rf"(?P<name>[?&;](?:{_SECRET_PARAMS})=)[^&;#\s\"'<>]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the user info of every URL and the values of secret-looking query parameters masked."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", text)


def install_log_redaction() -> None:
    """Redact every log record this process creates, whichever logger or handler it goes to (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a malformed call: logging reports it when it emits
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
