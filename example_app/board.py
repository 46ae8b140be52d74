"""The status board's own tables, in SQLite: the latest state of each resource, and activity.

Deliveries arrive late, out of order, or more than once. Each row therefore keeps the time of
the change it shows (``changed_at``: the event's ``occurred_at``, else the time the delivery was
received), and a write replaces a row only with an equal or newer change. An old delivery
arriving late never overwrites a newer status, and a repeated one writes the same values again.
The activity table is keyed by delivery id, so a delivery is counted once however often it runs.

Only identifiers, statuses and amounts are stored: no patient field ever reaches these tables.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS verifications (
    id TEXT PRIMARY KEY,
    status TEXT,
    coverage TEXT,
    copay TEXT,
    changed_at TEXT NOT NULL,  -- occurred_at, else received time: orders the deliveries
    updated_at TEXT NOT NULL   -- when this row was last written
);
CREATE TABLE IF NOT EXISTS authorizations (
    id TEXT PRIMARY KEY,
    status TEXT,
    outcome TEXT,
    changed_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS activity (
    delivery_id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    object_id TEXT,
    status TEXT,
    received_at TEXT NOT NULL
);
"""

SAVE_VERIFICATION = """
INSERT INTO verifications (id, status, coverage, copay, changed_at, updated_at)
VALUES (:id, :status, :coverage, :copay, :changed_at, :updated_at)
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status, coverage = excluded.coverage, copay = excluded.copay,
    changed_at = excluded.changed_at, updated_at = excluded.updated_at
WHERE excluded.changed_at >= verifications.changed_at
"""

SAVE_AUTHORIZATION = """
INSERT INTO authorizations (id, status, outcome, changed_at, updated_at)
VALUES (:id, :status, :outcome, :changed_at, :updated_at)
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status, outcome = excluded.outcome,
    changed_at = excluded.changed_at, updated_at = excluded.updated_at
WHERE excluded.changed_at >= authorizations.changed_at
"""

SAVE_ACTIVITY = """
INSERT OR IGNORE INTO activity (delivery_id, event, object_id, status, received_at)
VALUES (:delivery_id, :event, :object_id, :status, :received_at)
"""

# With MAX(), SQLite takes the bare columns (object_id, status) from the row holding the maximum.
ACTIVITY_BY_EVENT = """
SELECT event, COUNT(*) AS deliveries, MAX(received_at) AS last_received_at,
       object_id AS last_object_id, status AS last_status
FROM activity GROUP BY event ORDER BY event
"""


def timestamp(value: datetime) -> str:
    """A fixed-width UTC text timestamp, so SQLite's text comparison is time order."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now() -> str:
    return timestamp(datetime.now(timezone.utc))


@dataclass(frozen=True)
class Board:
    """The board's SQLite file; every method opens, commits and closes its own connection."""

    path: str

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            with conn:  # commit, or roll back on error
                yield conn
        finally:
            conn.close()

    def create_tables(self) -> None:
        """Create the file and tables if missing (safe when several workers start at once)."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with self.connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            conn.executescript(SCHEMA)

    def save_verification(
        self,
        id: str,
        *,
        status: str | None,
        coverage: str | None,
        copay: str | None,
        changed_at: datetime,
    ) -> None:
        row = {"id": id, "status": status, "coverage": coverage, "copay": copay}
        with self.connect() as conn:
            conn.execute(
                SAVE_VERIFICATION,
                {**row, "changed_at": timestamp(changed_at), "updated_at": now()},
            )

    def save_authorization(
        self, id: str, *, status: str | None, outcome: str | None, changed_at: datetime
    ) -> None:
        row = {"id": id, "status": status, "outcome": outcome}
        with self.connect() as conn:
            conn.execute(
                SAVE_AUTHORIZATION,
                {**row, "changed_at": timestamp(changed_at), "updated_at": now()},
            )

    def save_activity(
        self,
        delivery_id: str,
        *,
        event: str,
        object_id: str | None,
        status: str | None,
        received_at: datetime,
    ) -> None:
        row = {"delivery_id": delivery_id, "event": event, "object_id": object_id}
        with self.connect() as conn:
            conn.execute(
                SAVE_ACTIVITY, {**row, "status": status, "received_at": timestamp(received_at)}
            )

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Everything the board shows, newest first: plain values, ready for JSON or a template."""
        with self.connect() as conn:
            return {
                "verifications": _rows(
                    conn,
                    "SELECT id, status, coverage, copay, changed_at, updated_at"
                    " FROM verifications ORDER BY updated_at DESC, id",
                ),
                "authorizations": _rows(
                    conn,
                    "SELECT id, status, outcome, changed_at, updated_at"
                    " FROM authorizations ORDER BY updated_at DESC, id",
                ),
                "activity": _rows(conn, ACTIVITY_BY_EVENT),
            }


def _rows(conn: sqlite3.Connection, sql: str) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute(sql)]
