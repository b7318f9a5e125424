"""Secrets never reach a log line, an error the CLI prints, or the status document.

Libraries put whatever they like into exception texts (a URL with its credentials, a peer's
answer that echoes a password), and cdm-sync logs reasons and shows them in ``status``. So
rather than trust every message, the values that are secret (passwords, transport URLs'
passwords, clouds.yaml secrets) are registered here as they are configured, and every log line
(through :class:`RedactingFormatter`), CLI error and status document is scrubbed of them.

Values shorter than :data:`MIN_SECRET` characters are not scrubbed: masking every occurrence of
a two-letter string would make logs unreadable, and such a password protects nothing anyway.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote

MASK = "***"
MIN_SECRET = 4
# The userinfo of a URL, ``scheme://user:password@host``; several hosts in oslo.messaging's
# ``rabbit://u1:p1@h1,u2:p2@h2/`` form.
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://([^/?#\s]*)@")


class Redactor:
    """The process's secrets and the function that masks them in a text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def protect(self, value: Any) -> None:
        """Mask ``value`` (a string; anything else is ignored) from now on, with its URL
        encoding, and the passwords of a URL's userinfo if it is a URL."""
        if not isinstance(value, str) or not value:
            return
        found = {value, *passwords_in_url(value)}
        found |= {quote(v, safe="") for v in found} | {unquote(v) for v in found}
        fresh = {v for v in found if len(v) >= MIN_SECRET}
        with self._lock:
            if fresh <= self._secrets:
                return
            self._secrets |= fresh
            # Longest first, so a secret containing another is masked whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def protect_url_passwords(self, text: str) -> None:
        """Mask the passwords in the URLs ``text`` holds (an ``auth_url`` with credentials)."""
        for password in passwords_in_url(text):
            self.protect(password)

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def document(self, value: Any) -> Any:
        """``value`` (JSON-shaped) with every string masked."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(k)): self.document(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.document(v) for v in value]
        return value


def passwords_in_url(text: str) -> list[str]:
    """The passwords of the userinfo parts of the URLs in ``text``."""
    found = []
    for match in _USERINFO.finditer(text):
        for credentials in match.group(1).split(","):
            _user, sep, password = credentials.partition(":")
            if sep and password:
                found.append(password.rsplit("@", 1)[0] if "@" in password else password)
    return found


REDACTOR = Redactor()
"""The process's redactor: :func:`cdm_sync.conf.load` and the Nova adapters register secrets."""


class RedactingFormatter(logging.Formatter):
    """Wraps a handler's formatter: the whole formatted line, traceback included, is
    scrubbed of every secret the redactor knows."""

    def __init__(self, inner: logging.Formatter | None, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor(self.inner.format(record))


def redact_handlers(handlers: Iterable[logging.Handler], redactor: Redactor = REDACTOR) -> None:
    """Make ``handlers`` (the root logger's, once oslo.log has set them up) scrub secrets."""
    for handler in handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter, redactor))


__all__ = ["MASK", "REDACTOR", "RedactingFormatter", "Redactor", "redact_handlers"]
