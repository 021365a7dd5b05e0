"""The database handle: SQLite (WAL, busy timeout) or PostgreSQL, one session per call.

Every method here blocks; the engine calls them through ``Database.run`` (or ``submit``) so
they run on one dedicated thread, off the event loop and in the order they were asked for
(SQLite has a single writer). A call that meets a locked database is retried until
``busy_retry_s`` passes: another process holding the lock delays our writes, it does not
change what they record. Any other storage error leaves here as ``Unavailable`` (503,
``storage_unavailable``) with one line and no SQL; at start (``Database.open``) it is a
``StoreStartError``, one line that stops the gateway.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from vrungpu_gateway.errors import Unavailable
from vrungpu_gateway.store import migrate
from vrungpu_gateway.store.models import LeaseRow

log = logging.getLogger(__name__)

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
BUSY_RETRY_S = 600.0  # how long a locked database is waited for before a call fails
BUSY_WORDS = ("locked", "busy", "deadlock detected", "could not serialize")
LOCK_KEY = 0x76_72_75_6E_67_70_75  # "vrungpu": the PostgreSQL advisory lock of the gateway
LEASE_ID = 1
LOCK_CHECK_S = 5.0  # how often the PostgreSQL lock's connection is checked while serving


class StoreStartError(ValueError):
    """The database cannot be used at start (garbage, read-only, newer, held): one line."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def is_busy(exc: BaseException) -> bool:
    """A lock held by another connection or process: worth another try."""
    message = str(getattr(exc, "orig", exc)).lower()
    return isinstance(exc, OperationalError) and any(word in message for word in BUSY_WORDS)


def reason(exc: BaseException) -> str:
    """What went wrong, in one line and without the statement: the driver's first line."""
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (first[0] if first else type(exc).__name__)[:200]


class Database:
    def __init__(self, url: str, *, busy_retry_s: float = BUSY_RETRY_S) -> None:
        """StoreStartError when ``url`` is no database URL or names a driver not installed."""
        try:
            self.url = make_url(url)
            options: dict[str, Any] = {"pool_pre_ping": True} if self.is_postgres else {}
            self.engine: Engine = create_engine(self.url, **options)
        except (ArgumentError, ImportError) as exc:  # NoSuchModuleError is an ArgumentError
            missing = isinstance(exc, ImportError) and exc.name == "psycopg"
            hint = " (pip install 'vrungpu[gateway,postgres]')" if missing else ""
            raise StoreStartError(f"--db-url: {reason(exc)}{hint}") from None
        self.busy_retry_s = busy_retry_s
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vrungpu-db")
        self._lock: Connection | None = None  # PostgreSQL: holds the advisory lock
        self._lock_wanted = False  # PostgreSQL: it was taken, and must be held while serving
        self._lock_checked = 0.0  # time.monotonic() of the last check
        self._file_lock: int | None = None  # SQLite: an flock on the database file

    @classmethod
    def sqlite_url(cls, path: Path) -> str:
        return f"sqlite:///{path}"

    @classmethod
    def open(cls, url: str, *, version: str, **kwargs: Any) -> Database:
        """The gateway's database: upgraded to this code's schema, held by this gateway
        (a lease row, and on PostgreSQL an advisory lock); StoreStartError otherwise."""
        db = cls(url, **kwargs)
        try:
            db.hold()  # before the upgrade: a second gateway migrates nothing
            db.upgrade()
            db._starting(db._write_lease, version)
        except BaseException:
            db.close()
            raise
        return db

    def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to this code's head: (revision before, revision now)."""
        return self._starting(migrate.upgrade, self.engine)

    def revision(self) -> str | None:
        return self._starting(migrate.current, self.engine)

    @property
    def is_postgres(self) -> bool:
        return self.url.get_backend_name() == "postgresql"

    @property
    def where(self) -> str:
        """The database as shown to people: the SQLite file, or the URL without password."""
        if self.url.get_backend_name() == "sqlite":
            return self.url.database or ":memory:"
        return self.url.render_as_string(hide_password=True)

    # -- the lease: one gateway per database ---------------------------------------------------
    def hold(self) -> None:
        """Take the database for this process (StoreStartError, naming the holder, when a
        gateway has it): an advisory lock on PostgreSQL, an flock on a SQLite file."""
        self._starting(self._take_lock)

    def _take_lock(self) -> None:
        if not (self._lock_postgres() if self.is_postgres else self._lock_file()):
            raise StoreStartError(
                f"the database {self.where} is in use by another gateway "
                f"({self._holder()}); one gateway per database"
            )

    def _write_lease(self, version: str) -> None:
        with self.session() as session:  # on SQLite also the proof that it takes writes
            session.merge(
                LeaseRow(
                    lease_id=LEASE_ID,
                    host=socket.gethostname()[:255],
                    pid=os.getpid(),
                    version=version[:32],
                    started_at=datetime.now(UTC),
                )
            )

    def _lock_postgres(self) -> bool:
        """A session advisory lock, on a connection kept for the gateway's life."""
        conn = self.engine.connect()
        held = conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY})
        conn.commit()
        if not held:
            conn.close()
            return False
        self._lock, self._lock_wanted = conn, True
        self._lock_checked = time.monotonic()
        return True

    def _check_lock(self) -> None:
        """The advisory lock lives as long as its connection: after a lost connection (a
        server restart) it is taken again, or, when another gateway took the database
        meanwhile, every call is refused (Unavailable)."""
        if not self._lock_wanted:
            return
        if self._lock is not None:
            if time.monotonic() < self._lock_checked + LOCK_CHECK_S:
                return
            try:
                self._lock.exec_driver_sql("SELECT 1")
                self._lock.rollback()
                self._lock_checked = time.monotonic()
                return
            except DBAPIError as exc:
                log.warning("database: the gateway lock's connection is lost (%s)", reason(exc))
                self._lock.invalidate()
                self._lock.close()
                self._lock = None
        if not self._lock_postgres():
            raise Unavailable(
                f"another gateway took the database while this one lost it "
                f"({self._holder()}): stop this gateway",
                code="storage_unavailable",
            )
        log.warning("database: the gateway lock is held again")

    def _lock_file(self) -> bool:
        """An flock on the SQLite file (SQLite's own locks are fcntl locks: no clash)."""
        if self.url.database in (None, "", ":memory:"):
            return True
        try:  # an empty file is an empty SQLite database
            fd = os.open(self.url.database, os.O_RDONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreStartError(f"the database {self.where}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._file_lock = fd
        return True

    def _holder(self) -> str:
        try:
            with self.session() as session:
                row = session.get(LeaseRow, LEASE_ID)
        except DBAPIError:  # the holder is still making its tables
            return "host and pid unknown"
        if row is None:
            return "host and pid unknown"
        return f"host {row.host}, pid {row.pid}, since {row.started_at:%Y-%m-%d %H:%M} UTC"

    # -- calls ---------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def _retry_busy(self, fn: Callable[..., T], *args: Any) -> T:
        give_up = time.monotonic() + self.busy_retry_s
        delay = 0.05
        while True:
            try:
                return fn(*args)
            except OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= give_up:
                    raise
                log.warning("database busy (%s); retrying", reason(exc))
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _retrying(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            self._check_lock()
            return self._retry_busy(fn, *args)
        except (DBAPIError, PoolTimeout) as exc:  # not ORM misuse: that is a bug, a 500
            log.error("database error in %s: %s", getattr(fn, "__name__", fn), reason(exc))
            raise Unavailable(
                f"the database is unavailable: {reason(exc)}", code="storage_unavailable"
            ) from exc

    def _starting(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return self._retry_busy(fn, *args)
        except DBAPIError as exc:
            where = self.where
            raise StoreStartError(f"the database {where} cannot be used: {reason(exc)}") from None

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue a blocking repository call now (calls run in the order submitted)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._retrying, fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking repository call on the database thread."""
        return await self.submit(fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._lock is not None:
            try:
                self._lock.execute(text("SELECT pg_advisory_unlock_all()"))
                self._lock.close()
            except DBAPIError as exc:  # the server went away: the lock went with it
                log.warning("database: releasing the gateway lock: %s", reason(exc))
            self._lock = None
        if self._file_lock is not None:
            os.close(self._file_lock)
            self._file_lock = None
        self.engine.dispose()
