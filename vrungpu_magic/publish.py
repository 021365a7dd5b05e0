"""A remote kernel's outputs published into the local notebook as if the cell ran here.

`OutputPublisher` applies the iopub messages of one remote execution to the local IPython:
stream text to ``sys.stdout``/``sys.stderr``, ``display_data`` / ``update_display_data``
through the display publisher with their whole mime bundles (a figure stays ``image/png``),
``execute_result`` through the displayhook (so ``Out[n]`` and ``_`` are set), ``clear_output``
honoured. A remote exception becomes a `RemoteError` named after the remote one, whose
traceback is the remote traceback (ANSI colours kept).
"""

from __future__ import annotations

import sys
from typing import Any

Message = dict[str, Any]
_REMOTE_ERRORS: dict[str, type[RemoteError]] = {}


class RemoteError(Exception):
    """The remote cell raised; ``ename``, ``evalue`` and ``traceback`` are the remote ones."""

    def __init__(self, ename: str, evalue: str, traceback: list[str]) -> None:
        super().__init__(evalue)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback

    def _render_traceback_(self) -> list[str]:
        return self.traceback or [f"{self.ename}: {self.evalue}"]


def remote_error(content: dict[str, Any]) -> RemoteError:
    """The local exception for a remote ``error`` content: a `RemoteError` subclass named like
    the remote exception (``ZeroDivisionError``), so the notebook shows the remote name."""
    ename = str(content.get("ename") or "RemoteError")
    cls = _REMOTE_ERRORS.get(ename)
    if cls is None:
        cls = type(ename, (RemoteError,), {"__module__": "vrungpu_magic.remote"})
        _REMOTE_ERRORS[ename] = cls
    traceback = [str(line) for line in content.get("traceback") or []]
    return cls(ename, str(content.get("evalue", "")), traceback)


class SessionInterrupted(KeyboardInterrupt):
    """The cell was interrupted: so was the remote kernel, whose session lives on."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


class RemoteValue:
    """The local stand-in for a remote cell's value: shown with the remote mime bundle."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.data = data
        self.metadata = metadata

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<remote value>"))


class OutputPublisher:
    """Applies one remote execution's iopub messages to the local shell, in order."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.error: dict[str, Any] | None = None

    def apply(self, msg: Message) -> None:
        kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
        content = msg.get("content") or {}
        handler = {
            "stream": self._stream,
            "display_data": self._display,
            "update_display_data": self._update_display,
            "execute_result": self._result,
            "clear_output": self._clear,
            "error": self._error,
        }.get(str(kind))
        if handler is not None:
            handler(content)

    def _stream(self, content: dict[str, Any]) -> None:
        target = sys.stderr if content.get("name") == "stderr" else sys.stdout
        target.write(str(content.get("text", "")))
        target.flush()

    def _publish(self, content: dict[str, Any], *, update: bool = False) -> None:
        data, metadata = content.get("data") or {}, content.get("metadata") or {}
        transient = content.get("transient") or {}
        if self.shell is None:  # plain Python: the text is all there is
            print(data.get("text/plain", ""))
            return
        options: dict[str, Any] = {"transient": transient} if transient else {}
        if update:
            options["update"] = True
        self.shell.display_pub.publish(data=data, metadata=metadata, **options)

    def _display(self, content: dict[str, Any]) -> None:
        sys.stdout.flush()  # text printed before a figure shows before it
        self._publish(content)

    def _update_display(self, content: dict[str, Any]) -> None:
        self._publish(content, update=True)

    def _result(self, content: dict[str, Any]) -> None:
        value = RemoteValue(content.get("data") or {}, content.get("metadata") or {})
        sys.stdout.flush()
        if self.shell is None:
            print(repr(value))
        else:
            self.shell.displayhook(value)

    def _clear(self, content: dict[str, Any]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if self.shell is not None:
            self.shell.display_pub.clear_output(wait=bool(content.get("wait")))

    def _error(self, content: dict[str, Any]) -> None:
        self.error = content  # raised once the execution is over
