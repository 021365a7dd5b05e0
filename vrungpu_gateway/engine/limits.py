"""The size limits of a run request (``code``, env, args) and of a progress message, checked
before anything of the request is written to disk."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vrungpu_gateway.errors import TooLarge

if TYPE_CHECKING:
    from vrungpu_gateway.config import GatewayConfig


@dataclass(frozen=True)
class RequestLimits:
    max_code_bytes: int = 1024 * 1024
    max_env_vars: int = 256
    max_env_bytes: int = 256 * 1024  # all names and values together
    max_args: int = 1024
    max_args_bytes: int = 256 * 1024  # all args together
    max_progress_chars: int = 1000

    @classmethod
    def from_config(cls, config: GatewayConfig) -> RequestLimits:
        return cls(
            max_code_bytes=config.max_code_kb * 1024,
            max_env_vars=config.max_env_vars,
            max_env_bytes=config.max_env_kb * 1024,
            max_args=config.max_args,
            max_args_bytes=config.max_args_kb * 1024,
            max_progress_chars=config.max_progress_chars,
        )

    def check_code(self, code: str) -> None:
        size = _utf8_len(code)
        if size > self.max_code_bytes:
            raise TooLarge(
                f'"code" is {size:,} bytes, over {_kb(self.max_code_bytes)} KB '
                "(--max-code-kb); upload a project instead",
                code="code_too_large",
            )

    def check_env(self, env: Mapping[str, str]) -> None:
        if len(env) > self.max_env_vars:
            raise TooLarge(
                f"env sets {len(env)} variables, more than {self.max_env_vars} (--max-env-vars)",
                code="env_too_large",
            )
        size = sum(_utf8_len(k) + _utf8_len(v) for k, v in env.items())
        if size > self.max_env_bytes:
            raise TooLarge(
                f"env is {size:,} bytes, over {_kb(self.max_env_bytes)} KB (--max-env-kb)",
                code="env_too_large",
            )

    def check_args(self, args: Sequence[str]) -> None:
        if len(args) > self.max_args:
            raise TooLarge(
                f"{len(args)} args, more than {self.max_args} (--max-args)", code="args_too_large"
            )
        size = sum(_utf8_len(a) for a in args)
        if size > self.max_args_bytes:
            raise TooLarge(
                f"args are {size:,} bytes, over {_kb(self.max_args_bytes)} KB (--max-args-kb)",
                code="args_too_large",
            )


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _kb(size: int) -> str:
    return f"{size / 1024:g}"
