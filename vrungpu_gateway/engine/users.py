"""Who is asking: the users file (``--users-file``), its tokens, and who may see what.

The main token is the user ``admin`` with admin rights; without a token (``--no-auth``)
every request is that local admin. A non-admin sees only what it owns; rows from before
users existed (no owner) belong to the admin alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vrungpu_gateway import logmask

log = logging.getLogger(__name__)

ADMIN_NAME = "admin"
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
HEX_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False

    def owns(self, owner: str | None) -> bool:
        """Whether this user may see and act on what ``owner`` owns."""
        return self.admin or owner == self.name

    @property
    def scope(self) -> str | None:
        """The owner a listing is filtered to: None (all) for an admin."""
        return None if self.admin else self.name


ADMIN = User(ADMIN_NAME, admin=True)


class Watcher(Protocol):
    """A long-lived connection told after each reload (it re-checks its token)."""

    def users_reloaded(self) -> None: ...


@dataclass(frozen=True)
class UserEntry:
    user: User
    digest: bytes  # sha256 of the token
    token: str | None  # when the file holds it in clear (masked in logs)


def _entry(raw: Any, where: str) -> UserEntry:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: each user must be an object")
    unknown = set(raw) - {"name", "token", "token_sha256", "admin"}
    if unknown:
        raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{where}: name must be 1-64 characters of A-Z a-z 0-9 . _ -")
    admin = raw.get("admin", False)
    if not isinstance(admin, bool):
        raise ValueError(f"{where} ({name}): admin must be true or false")
    token, hashed = raw.get("token"), raw.get("token_sha256")
    if (token is None) == (hashed is None):
        raise ValueError(f"{where} ({name}): give exactly one of token and token_sha256")
    if token is not None:
        if not isinstance(token, str) or len(token) < 8 or token != token.strip():
            raise ValueError(f"{where} ({name}): token must be a string of at least 8 characters")
        return UserEntry(User(name, admin), hashlib.sha256(token.encode()).digest(), token)
    if not isinstance(hashed, str) or not HEX_RE.fullmatch(hashed.lower()):
        raise ValueError(f"{where} ({name}): token_sha256 must be 64 hex digits")
    return UserEntry(User(name, admin), bytes.fromhex(hashed), None)


def read_users_file(path: Path) -> list[UserEntry]:
    """The users of ``path``; ValueError, one line, when it is unreadable or invalid."""
    where = f"--users-file {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{where}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, list):
        raise ValueError(f'{where}: expected {{"users": [...]}}')
    entries = [_entry(raw, f"{where}: user {i + 1}") for i, raw in enumerate(users)]
    names, digests = set(), set()
    for entry in entries:
        if entry.user.name in names or entry.user.name == ADMIN_NAME:
            raise ValueError(f"{where}: user name {entry.user.name!r} is taken")
        if entry.digest in digests:
            raise ValueError(f"{where}: user {entry.user.name!r} shares another user's token")
        names.add(entry.user.name)
        digests.add(entry.digest)
    return entries


class UserBook:
    """Resolves a request's token to its user; ``reload()`` re-reads the users file."""

    def __init__(
        self,
        *,
        main_token: str | None,
        users_file: Path | None,
        entries: list[UserEntry] | None = None,
    ) -> None:
        """``entries``: the file's users when already read (read from it otherwise)."""
        self.main_token = main_token
        self.users_file = users_file
        self._entries: list[UserEntry] = []
        self._watchers: weakref.WeakSet[Any] = weakref.WeakSet()  # gone with their connection
        if users_file is not None:
            self._use(entries if entries is not None else read_users_file(users_file))

    def _use(self, entries: list[UserEntry]) -> None:
        logmask.register_secrets(e.token for e in entries)
        if self.main_token is not None and any(
            hmac.compare_digest(e.digest, _digest(self.main_token)) for e in entries
        ):
            raise ValueError(f"--users-file {self.users_file}: a user has the main token")
        self._entries = entries

    @property
    def names(self) -> list[str]:
        return [ADMIN_NAME, *(e.user.name for e in self._entries)]

    def resolve(self, token: str | None) -> User | None:
        """The user ``token`` belongs to, or None. Every entry is compared (constant time)."""
        if self.main_token is None:
            return ADMIN
        if token is None:
            return None
        digest = _digest(token)
        found = ADMIN if hmac.compare_digest(_digest(self.main_token), digest) else None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest) and found is None:
                found = entry.user
        return found

    def watch(self, watcher: Watcher) -> None:
        """Tell ``watcher`` after every reload that changed the users."""
        self._watchers.add(watcher)

    def reload(self) -> bool:
        """Re-read the users file; a bad one keeps the old users (one log line). True when
        the new users are in use."""
        if self.users_file is None:
            return False
        try:
            self._use(read_users_file(self.users_file))
        except ValueError as exc:
            log.warning("users file not reloaded, keeping %d user(s): %s", len(self._entries), exc)
            return False
        log.info("users file reloaded: %d user(s)", len(self._entries))
        for watcher in list(self._watchers):
            watcher.users_reloaded()
        return True


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
