"""`vrungpu-gateway db upgrade|current`: the store's schema, by hand (the gateway also
upgrades it at start)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vrungpu_gateway.store import migrate
from vrungpu_gateway.store.db import Database


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vrungpu-gateway db",
        description="The database schema: upgrade it to this gateway's newest revision, or "
        "show its revision. The gateway upgrades it at start too.",
    )
    p.add_argument("action", choices=("upgrade", "current"), help="what to do")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--data-dir",
        type=Path,
        help="the gateway's data dir: its SQLite database (default: VRUNGPU_DATA_DIR, ./data)",
    )
    where.add_argument(
        "--db-url",
        help="SQLAlchemy URL of the store, e.g. postgresql+psycopg://user@host/db "
        "(default: VRUNGPU_DB_URL)",
    )
    return p


def url_of(args: argparse.Namespace) -> str:
    """The database the gateway with these flags (and VRUNGPU_* variables) would use."""
    url = args.db_url or (None if args.data_dir else os.environ.get("VRUNGPU_DB_URL"))
    if url:
        return str(url)
    data_dir = args.data_dir or Path(os.environ.get("VRUNGPU_DATA_DIR") or "./data")
    path = data_dir / "vrungpu.db"
    if not path.is_file():  # never create a database where none was
        raise ValueError(f"no database at {path} (give --data-dir or --db-url)")
    return Database.sqlite_url(path.resolve())


def run(args: argparse.Namespace) -> str:
    db = Database(url_of(args))
    try:
        if args.action == "upgrade":
            db.hold()  # never under a running gateway
            before, after = db.upgrade()
            if before == after:
                return f"{db.where}: at revision {after}, the newest"
            return f"{db.where}: upgraded from {before or 'nothing'} to revision {after}"
        current, head = db.revision(), migrate.head()
        if current is None:
            return f"{db.where}: no revision (made before migrations, or empty); newest {head}"
        newest = "the newest" if current == head else f"newest {head}"
        return f"{db.where}: revision {current} ({newest})"
    finally:
        db.close()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(run(args))
    except ValueError as exc:
        print(f"vrungpu-gateway db: {exc}", file=sys.stderr)
        return 2
    return 0
