"""Awaited ``%%vrungpu`` cells: in a Jupyter kernel the cell waits on the event loop.

A cell that blocks the kernel's event loop also blocks widget messages, so a panel's Cancel
button could not work while its cell waits. With panels on, an IPython post-transformer
rewrites ``%%vrungpu`` cells (and ``%vrungpu attach`` / ``%vrungpu --dir`` lines that are the
whole cell) into ``await run_magic_async(...)``; ipykernel runs such a cell as a coroutine
and keeps dispatching widget messages meanwhile. Anywhere else the magic runs as written.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any

from IPython.utils.text import DollarFormatter

if TYPE_CHECKING:
    from vrungpu_magic.magic import VrunGPUMagics


def install_await_rewriter(shell: Any, magics: VrunGPUMagics) -> None:
    """Make ``%%vrungpu`` cells awaited in a Jupyter kernel when panels are on.

    A cell that blocks the kernel's event loop also blocks widget messages, so the panel's
    Cancel button could not work while the cell waits. Rewritten as ``await ...`` the cell
    waits on the loop, and ipykernel keeps dispatching widget messages meanwhile.
    """
    transforms = getattr(shell, "input_transformers_post", None)
    if transforms is None:
        return
    transforms[:] = [t for t in transforms if not isinstance(t, _AwaitRewriter)]
    transforms.append(_AwaitRewriter(magics))


class _AwaitRewriter:
    """IPython post-transformer: ``get_ipython().run_cell_magic('vrungpu', ...)`` becomes
    ``await`` of `run_magic_async`, when the kernel runs async cells on asyncio."""

    def __init__(self, magics: VrunGPUMagics) -> None:
        self.magics = magics

    def applies(self) -> bool:
        from IPython.core.async_helpers import _asyncio_runner

        shell = self.magics.shell
        return (
            getattr(shell, "kernel", None) is not None
            and bool(getattr(shell, "autoawait", False))
            and getattr(shell, "loop_runner", None) is _asyncio_runner
            and self.magics.use_widgets()
        )

    def __call__(self, lines: list[str]) -> list[str]:
        if len(lines) != 1 or "vrungpu" not in lines[0] or not self.applies():
            return lines
        call = _magic_call(lines[0])
        if call is None:
            return lines
        line, cell = call
        return [
            "await __import__('vrungpu_magic.awaited').awaited.run_magic_async("
            f"get_ipython(), {line!r}, {cell!r})\n"
        ]


def _magic_call(source: str) -> tuple[str, str | None] | None:
    """(line, cell) of a one-line ``get_ipython().run_{cell,line}_magic('vrungpu', ...)``
    call that starts a run or an attach; None for anything else."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("run_cell_magic", "run_line_magic")
        and ast.unparse(node.func.value) == "get_ipython()"
        and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
        and not node.keywords
    ):
        return None
    values = [a.value for a in node.args]  # type: ignore[attr-defined]
    if len(values) > 1 and any(word.startswith("--session") for word in values[1].split()):
        return None  # a session cell has no panel, and it must see SIGINT as KeyboardInterrupt
    if node.func.attr == "run_cell_magic" and len(values) == 3 and values[0] == "vrungpu":
        return values[1], values[2]
    if node.func.attr == "run_line_magic" and len(values) == 2 and values[0] == "vrungpu":
        first = values[1].split()[:1]
        if first and (first[0] == "attach" or first[0].startswith("-")):
            return values[1], None
    return None


async def run_magic_async(shell: Any, line: str, cell: str | None = None) -> Any:
    """What a rewritten ``%%vrungpu`` cell awaits."""
    magics: VrunGPUMagics = shell.magics_manager.registry["VrunGPUMagics"]
    return await magics.vrungpu_async(_expand(shell, line), cell)


def _expand(shell: Any, line: str) -> str:
    """``$name`` / ``{expr}`` in the magic's line, as IPython expands them for magics."""
    try:
        return DollarFormatter().vformat(line, args=[], kwargs=shell.user_ns)
    except Exception:  # as IPython does: a line it cannot expand is used as written
        return line
