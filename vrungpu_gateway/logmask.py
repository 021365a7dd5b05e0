"""Secrets kept out of the gateway's log: one filter on the root handlers masks them all.

Every token the gateway accepts is registered here (``register_secret``: the main token at
start, users' tokens by the users registry), and each log record, its arguments, its
traceback and its stack text, is rewritten before any handler formats it: a registered
secret becomes ``***``, and so does the value of any ``token=`` query parameter (tornado's
access log and its 500 report name the request URI, ``?token=`` included).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

MASK = "***"
_QUERY_TOKEN = re.compile(r"(?i)((?:^|[?&;\s'\"(])token=)[^&\s'\"#;)]+")
_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_pattern: re.Pattern[str] | None = None


def register_secret(secret: str | None) -> None:
    """Mask ``secret`` in every later log line (empty or None: nothing to mask)."""
    register_secrets([secret] if secret else [])


def register_secrets(secrets: Iterable[str | None]) -> None:
    """Mask each of ``secrets`` (e.g. the tokens of a users file just read)."""
    global _secrets, _pattern
    with _lock:
        _secrets = _secrets | {s for s in secrets if s}
        ordered = sorted(_secrets, key=len, reverse=True)  # a longer secret before its prefix
        _pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None


def forget_secrets() -> None:
    """Drop every registered secret (tests; a users file re-read registers its tokens again)."""
    global _secrets, _pattern
    with _lock:
        _secrets, _pattern = frozenset(), None


def mask(text: str) -> str:
    """``text`` with every registered secret and every ``token=`` value replaced by ***."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _QUERY_TOKEN.sub(lambda m: m.group(1) + MASK, text)


class MaskSecrets(logging.Filter):
    """Rewrites a record in place: its message (arguments merged), traceback and stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it as it would
            return True
        record.msg, record.args = mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of ``logger`` (default: the root logger), once."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, MaskSecrets) for f in handler.filters):
            handler.addFilter(MaskSecrets())
