"""The one progress parser: `[PROGRESS:<pct>:<message>]` lines and tqdm bars."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# The message may itself contain ':' (e.g. "Loss: 0.02"), so it runs to the last ']'.
PROGRESS_RE = re.compile(r"\[PROGRESS:\s*(?P<pct>[^:\]\s]+)\s*(?::(?P<msg>.*))?\]")
TQDM_RE = re.compile(r"(?P<pct>\d{1,3})%\|")


@dataclass(frozen=True)
class Progress:
    percent: float
    message: str | None


def _clamp(value: float) -> float:
    return min(100.0, max(0.0, value))


def parse_progress(line: str) -> Progress | None:
    """Progress carried by one output line (a `\\r`-separated segment counts as a line)."""
    match = PROGRESS_RE.search(line)
    if match:
        try:
            value = float(match.group("pct"))
        except ValueError:
            return None
        if math.isnan(value):
            return None
        msg = match.group("msg")
        return Progress(_clamp(value), msg.strip() if msg is not None else None)
    tqdm = TQDM_RE.search(line)
    if tqdm:
        desc = line[: tqdm.start()].strip().rstrip(":").strip()
        return Progress(_clamp(float(tqdm.group("pct"))), desc or None)
    return None


def clip_message(message: str | None, max_chars: int) -> str | None:
    """A progress message as stored and sent: at most ``max_chars`` characters, a cut
    marked with an ellipsis (a job may print megabytes on one progress line)."""
    if message is None or len(message) <= max_chars:
        return message
    return message[: max(max_chars - 1, 0)] + "…"
