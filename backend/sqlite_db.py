"""One SQLite transaction on a project's file, shared by the annotation index and the quality log: WAL journal
(the web workers and the RQ workers read and write the same file), the schema created if missing, errors re-raised
as the caller's exception class with the file named."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path


@contextmanager
def transaction(path: Path, schema: str, error: type[Exception], what: str) -> Iterator[sqlite3.Connection]:
    """A connection to ``path`` in one transaction (committed on success, rolled back on error).

    Raises:
        ``error``("<what> <path>: <sqlite message>"): the file cannot be opened, read or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with closing(sqlite3.connect(path, timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)
            with db:
                yield db
    except sqlite3.Error as exc:
        raise error(f"{what} {path}: {exc}") from exc
