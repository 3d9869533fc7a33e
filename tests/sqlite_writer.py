"""A process that keeps inserting rows into a SQLite database, for capture-under-load tests.

    python -m tests.sqlite_writer DB JOURNAL_MODE READY_FILE STOP_FILE PAUSE_SECONDS

It creates READY_FILE once the table exists and stops when STOP_FILE appears.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(db_path: str, mode: str, ready: str, stop: str, pause: float) -> None:
    db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=" + mode)
    db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, kind TEXT, body TEXT)")
    open(ready, "w").close()
    i = 0
    while not os.path.exists(stop):
        db.execute("BEGIN")
        for _ in range(20):
            db.execute("INSERT INTO events (kind, body) VALUES (?, ?)", ("step", f"event {i} " + "x" * (i % 400)))
            i += 1
        db.execute("COMMIT")
        time.sleep(pause)


def start(tmp_path, db_path, mode: str = "wal", pause: float = 0.0):
    """Start a writer and wait until it writes; returns (process, stop file to create)."""
    ready, stop = tmp_path / f"ready-{mode}", tmp_path / f"stop-{mode}"
    proc = subprocess.Popen([sys.executable, "-m", "tests.sqlite_writer", str(db_path), mode, str(ready),
                             str(stop), str(pause)], cwd=ROOT)
    deadline = time.time() + 20
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "writer did not start"
        time.sleep(0.01)
    time.sleep(0.2)
    return proc, stop


if __name__ == "__main__":
    main(*sys.argv[1:5], float(sys.argv[5]))
