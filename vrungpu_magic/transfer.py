"""Moving variables between the local notebook and a remote kernel: ``%vrungpu push`` and
``%vrungpu pull``.

Values travel as pickles, base64 in chunks of silent execute requests (each well under the
server's WebSocket message limit): a push appends chunks to a temporary remote variable and
then loads them all at once, so either every variable arrives or none; a pull pickles the
remote variables into a temporary string and reads it back through ``user_expressions``.
Both are capped (``--max-push-mb``): a push is refused before anything is sent, a pull before
anything is read. Unpickling what a session sends back trusts that session, as running a cell
there does.
"""

from __future__ import annotations

import base64
import contextlib
import math
import pickle
from typing import Any

from vrungpu_magic.kernels import KernelChannel
from vrungpu_magic.render import fmt_bytes

CHUNK_CHARS = 4 * 1024 * 1024  # base64 characters per request
TEMP = "__vrungpu_transfer__"  # the temporary remote variable
PUSH_LOAD = f"""\
def _vrungpu_load(parts):
    import base64, pickle
    return {{k: pickle.loads(base64.b64decode("".join(v))) for k, v in parts.items()}}
try:
    globals().update(_vrungpu_load({TEMP}))
finally:
    del _vrungpu_load, {TEMP}
"""
PULL_DUMP = f"""\
def _vrungpu_dump(names):
    import base64, pickle
    values = {{}}
    for name in names:
        if name not in globals():
            raise NameError(f"name {{name!r}} is not defined")
        try:
            values[name] = pickle.dumps(globals()[name], protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(f"cannot pickle {{name}}: {{exc}}") from None
    return base64.b64encode(pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)).decode()
try:
    {TEMP} = _vrungpu_dump(%r)
finally:
    del _vrungpu_dump
"""


class TransferError(Exception):
    """A push or pull that could not be done (the message is one line)."""


class _CappedSink:
    """A pickle's bytes, kept while under the cap, counted always."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self.size = 0
        self.parts: list[bytes] = []

    def write(self, data: bytes | pickle.PickleBuffer) -> int:
        # Protocol 5 hands large buffers (numpy arrays) over as PickleBuffer: no len()
        size = memoryview(data).nbytes
        self.size += size
        if self.size <= self.cap_bytes:
            self.parts.append(bytes(data))
        else:
            self.parts = []
        return size


def pickle_values(namespace: dict[str, Any], names: list[str], max_mb: float) -> dict[str, bytes]:
    """Each named variable pickled; `TransferError` for a missing or unpicklable one, or when
    together they pickle to more than ``max_mb`` MB (the message names the size)."""
    if not math.isfinite(max_mb) or max_mb <= 0:
        raise TransferError(f"the size cap must be a positive number of MB, not {max_mb}")
    cap = int(max_mb * 1024 * 1024)
    sinks: dict[str, _CappedSink] = {}
    for name in names:
        if name not in namespace:
            raise TransferError(f"{name} is not defined here")
        sink = _CappedSink(cap - sum(s.size for s in sinks.values()))
        try:
            pickle.Pickler(sink, protocol=pickle.HIGHEST_PROTOCOL).dump(namespace[name])
        except Exception as exc:
            raise TransferError(f"cannot pickle {name}: {exc}") from None
        sinks[name] = sink
    total = sum(s.size for s in sinks.values())
    if total > cap:
        raise TransferError(_over_cap(names, total, max_mb))
    return {name: b"".join(sink.parts) for name, sink in sinks.items()}


def _over_cap(names: list[str], size: int, max_mb: float) -> str:
    return (
        f"{', '.join(names)} pickle to {fmt_bytes(size)}, over the limit of {max_mb:g} MB "
        "(--max-push-mb)"
    )


def push(channel: KernelChannel, values: dict[str, bytes]) -> None:
    """Send pickled values; the remote kernel gets all of them or none."""
    _run(channel, f"{TEMP} = {{}}")
    try:
        for name, data in values.items():
            text = base64.b64encode(data).decode()
            for start in range(0, max(len(text), 1), CHUNK_CHARS):
                chunk = text[start : start + CHUNK_CHARS]
                _run(channel, f"{TEMP}.setdefault({name!r}, []).append({chunk!r})")
        _run(channel, PUSH_LOAD)
    except BaseException:
        with contextlib.suppress(Exception):
            _run(channel, f"globals().pop({TEMP!r}, None)")
        raise


def pull(channel: KernelChannel, names: list[str], max_mb: float) -> dict[str, Any]:
    """The named remote variables, unpickled here; refused over ``max_mb`` MB."""
    size = _run(channel, PULL_DUMP % (names,), {"size": f"len({TEMP})"})["size"]
    try:
        length = int(size)
        if length // 4 * 3 > max_mb * 1024 * 1024:
            raise TransferError(_over_cap(names, length // 4 * 3, max_mb))
        text = "".join(
            _literal(_run(channel, "", {"chunk": f"{TEMP}[{start}:{start + CHUNK_CHARS}]"}))
            for start in range(0, length, CHUNK_CHARS)
        )
    finally:
        with contextlib.suppress(Exception):
            _run(channel, f"globals().pop({TEMP!r}, None)")
    pickles: dict[str, bytes] = pickle.loads(base64.b64decode(text))
    values = {}
    for name, data in pickles.items():
        try:
            values[name] = pickle.loads(data)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise TransferError(f"cannot unpickle {name} here: {why}") from None
    return values


def _literal(values: dict[str, str]) -> str:
    text = values["chunk"]
    if len(text) < 2 or text[0] != "'" or text[-1] != "'":
        raise TransferError("the session sent back something that is not a chunk")
    return text[1:-1]  # base64 needs no escapes in a repr


def _run(
    channel: KernelChannel, code: str, expressions: dict[str, str] | None = None
) -> dict[str, str]:
    """Execute silently; the ``text/plain`` of each user expression. `TransferError` on a
    remote error."""
    execution = channel.execute(
        code, silent=True, store_history=False, user_expressions=expressions
    )
    for _ in execution.messages():
        pass
    assert execution.reply is not None
    content = execution.reply.get("content") or {}
    if content.get("status") != "ok":
        raise TransferError(f"{content.get('ename')}: {content.get('evalue')}")
    out = {}
    for key, result in (content.get("user_expressions") or {}).items():
        if result.get("status") != "ok":
            raise TransferError(f"{result.get('ename')}: {result.get('evalue')}")
        out[key] = str(result.get("data", {}).get("text/plain", ""))
    return out
