"""The database handle: SQLite in WAL mode with a busy timeout, one session per call.

Every method here blocks; the engine calls them through ``Database.run`` (or ``submit``) so
they run on one dedicated thread, off the event loop and in the order they were asked for
(SQLite has a single writer). A call that meets a locked database is retried until
``busy_retry_s`` passes: another process holding the lock delays our writes, it does not
change what they record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vrungpu_gateway.store.models import Base

log = logging.getLogger(__name__)

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
BUSY_RETRY_S = 600.0  # how long a locked database is waited for before a call fails


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
    return isinstance(exc, OperationalError) and ("locked" in message or "busy" in message)


class Database:
    def __init__(self, url: str, *, busy_retry_s: float = BUSY_RETRY_S) -> None:
        self.url = url
        self.busy_retry_s = busy_retry_s
        self.engine: Engine = create_engine(url, future=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vrungpu-db")
        self._retrying(self._create_schema)

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls(f"sqlite:///{path}")

    def _create_schema(self) -> None:
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added since a data dir was made (new columns only, each with a default)."""
        inspector = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                have = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name in have:
                        continue
                    kind = column.type.compile(self.engine.dialect)
                    default = getattr(column.default, "arg", None)
                    clause = f" DEFAULT {int(default)}" if isinstance(default, bool | int) else ""
                    conn.execute(
                        text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{clause}')
                    )
                    log.info("database: added column %s.%s", table.name, column.name)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def _retrying(self, fn: Callable[..., T], *args: Any) -> T:
        give_up = time.monotonic() + self.busy_retry_s
        delay = 0.05
        while True:
            try:
                return fn(*args)
            except OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= give_up:
                    raise
                log.warning("database busy (%s); retrying", getattr(exc, "orig", exc))
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue a blocking repository call now (calls run in the order submitted)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._retrying, fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking repository call on the database thread."""
        return await self.submit(fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()
