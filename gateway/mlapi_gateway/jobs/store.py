"""Jobs persisted in SQLite, shared safely by every worker and replica that opens the same file.

Workers claim jobs with an atomic UPDATE inside ``BEGIN IMMEDIATE`` and hold a lease they renew
while working; each claim gets its own lease token, so two workers of one process never both
hold a job. A job whose worker died (its lease expired) is claimed again and resumes after its
last finished input; a worker that cannot go on (Triton away too long, the gateway stopping)
releases the job back to the queue. Finishing is conditional on still holding the lease and the
job still running, so each job finishes exactly once (``finish_count`` records it).

The database and its -wal/-shm files are private to the gateway's user (0600): SQLite gives the
side files the mode of the database file, which is created 0600 before SQLite opens it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
FINAL = ("succeeded", "failed", "cancelled")
log = logging.getLogger(__name__)


class StoreUnavailableError(Exception):
    """The job store cannot be reached now (Redis down, SQLite locked or failing); transient."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT,
    status TEXT NOT NULL,
    inputs TEXT NOT NULL,
    results TEXT NOT NULL DEFAULT '[]',
    total INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    lease_owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    finish_count INTEGER NOT NULL DEFAULT 0,
    webhook_url TEXT,
    webhook_state TEXT NOT NULL DEFAULT 'none',
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_outcome TEXT,
    webhook_lease_until REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
"""


@dataclass(frozen=True)
class Job:
    """One job as stored: its inputs, progress, results, lease and webhook state."""

    id: str
    owner: str
    model: str
    version: str | None
    status: str
    inputs: list[dict[str, Any]]
    results: list[dict[str, Any]]
    total: int
    created_at: float
    finished_at: float | None
    expires_at: float | None
    webhook_url: str | None
    webhook_state: str
    webhook_attempts: int
    webhook_outcome: str | None
    finish_count: int
    # Claims so far (this one included), and the token of the claim that returned this Job.
    attempts: int = 0
    lease: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row | Mapping[str, Any]) -> Job:
        return cls(
            row["id"], row["owner"], row["model"], row["version"], row["status"],
            json.loads(row["inputs"]), json.loads(row["results"]), row["total"],
            row["created_at"], row["finished_at"], row["expires_at"], row["webhook_url"],
            row["webhook_state"], row["webhook_attempts"], row["webhook_outcome"], row["finish_count"],
            int(row["attempts"] or 0), row["lease_owner"] or None,
        )  # fmt: skip

    def view(self) -> dict[str, Any]:
        done = len(self.results)
        failed = sum(1 for r in self.results if r.get("status", 200) >= 400)
        view: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "status": self.status,
            "progress": {"done": done, "total": self.total, "failed": failed},
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "expires_at": self.expires_at,
            "results": self.results if self.status in FINAL else None,
        }
        if self.webhook_url:
            view["webhook"] = {
                "url": self.webhook_url,
                "state": self.webhook_state,
                "attempts": self.webhook_attempts,
                "outcome": self.webhook_outcome,
            }
        return view


def _switch_to_wal(db: sqlite3.Connection, patience_s: float = 10.0) -> None:
    """Enable WAL, retrying while the database is locked.

    Several workers opening a new database at once race for the lock that the journal-mode
    switch needs, and SQLite answers "locked" at once instead of waiting.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def create_private(path: Path) -> None:
    """Create ``path`` as an empty 0600 file (parents 0700), or make an existing one 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    try:
        os.chmod(path, 0o600)
    except PermissionError:  # another user's file: SQLite still opens it if allowed to
        log.warning("cannot make %s private (0600): it belongs to another user", path)


class JobStore:
    """The job store in SQLite: every process that opens the file shares the jobs."""

    def __init__(self, path: Path, result_ttl_s: float, lease_s: float) -> None:
        create_private(path)
        self.result_ttl_s = result_ttl_s
        self.lease_s = lease_s
        self.worker_id = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        _switch_to_wal(self._db)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return work(self._db)

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.OperationalError as exc:  # locked past the timeout, disk I/O errors
            raise StoreUnavailableError(f"the jobs database failed: {exc}") from exc

    async def close(self) -> None:
        with self._lock:
            self._db.close()

    async def create(
        self,
        owner: str,
        model: str,
        version: str | None,
        inputs: list[dict[str, Any]],
        webhook_url: str | None,
    ) -> Job:
        job_id = uuid.uuid4().hex
        now = time.time()

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO jobs (id, owner, model, version, status, inputs, total, created_at, webhook_url)"
                " VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (job_id, owner, model, version, json.dumps(inputs), len(inputs), now, webhook_url),
            )

        await self._run(insert)
        job = await self.get(job_id)
        assert job is not None
        return job

    async def get(self, job_id: str) -> Job | None:
        def select(db: sqlite3.Connection) -> Job | None:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else Job.from_row(row)

        job = await self._run(select)
        if job is not None and job.expires_at is not None and job.expires_at < time.time():
            return None
        return job

    def _token(self) -> str:
        return f"{self.worker_id}.{uuid.uuid4().hex[:12]}"

    async def claim(self) -> Job | None:
        """Take the oldest queued job, or a running one whose worker's lease expired."""
        now = time.time()
        token = self._token()

        def take(db: sqlite3.Connection) -> Job | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT id FROM jobs WHERE status = 'queued'"
                    " OR (status = 'running' AND lease_until < ?) ORDER BY created_at LIMIT 1",
                    (now,),
                ).fetchone()
                if row is None:
                    return None
                db.execute(
                    "UPDATE jobs SET status = 'running', lease_owner = ?, lease_until = ?,"
                    " attempts = attempts + 1, started_at = coalesce(started_at, ?) WHERE id = ?",
                    (token, now + self.lease_s, now, row["id"]),
                )
                job = db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
                return Job.from_row(job)
            finally:
                db.execute("COMMIT")

        return await self._run(take)

    async def progress(self, job: Job, results: list[dict[str, Any]]) -> bool:
        """Record finished inputs and renew the lease; False if the job was cancelled or lost."""
        return await self._update(
            "UPDATE jobs SET results = ?, lease_until = ? WHERE id = ? AND lease_owner = ?"
            " AND status = 'running'",
            (json.dumps(results), time.time() + self.lease_s, job.id, job.lease),
        )

    async def renew(self, job: Job) -> bool:
        return await self._update(
            "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
            (time.time() + self.lease_s, job.id, job.lease),
        )

    async def release(self, job: Job) -> bool:
        """Put a job this claim holds back in the queue (finished inputs kept)."""
        return await self._update(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL"
            " WHERE id = ? AND lease_owner = ? AND status = 'running'",
            (job.id, job.lease),
        )

    async def finish(self, job: Job, status: str, results: list[dict[str, Any]]) -> bool:
        now = time.time()
        return await self._update(
            "UPDATE jobs SET status = ?, results = ?, finished_at = ?, expires_at = ?,"
            " finish_count = finish_count + 1, lease_owner = NULL,"
            " webhook_state = CASE WHEN webhook_url IS NULL THEN 'none' ELSE 'pending' END"
            " WHERE id = ? AND lease_owner = ? AND status = 'running'",
            (status, json.dumps(results), now, now + self.result_ttl_s, job.id, job.lease),
        )

    async def cancel(self, job_id: str) -> bool:
        now = time.time()
        return await self._update(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?, expires_at = ?,"
            " finish_count = finish_count + 1, lease_owner = NULL,"
            " webhook_state = CASE WHEN webhook_url IS NULL THEN 'none' ELSE 'pending' END"
            " WHERE id = ? AND status IN ('queued', 'running')",
            (now, now + self.result_ttl_s, job_id),
        )

    async def claim_webhook(self) -> Job | None:
        now = time.time()

        def take(db: sqlite3.Connection) -> Job | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT id FROM jobs WHERE webhook_state = 'pending'"
                    " AND (webhook_lease_until IS NULL OR webhook_lease_until < ?) LIMIT 1",
                    (now,),
                ).fetchone()
                if row is None:
                    return None
                db.execute(
                    "UPDATE jobs SET webhook_lease_until = ? WHERE id = ?",
                    (now + self.lease_s * 20, row["id"]),
                )
                return Job.from_row(
                    db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
                )
            finally:
                db.execute("COMMIT")

        return await self._run(take)

    async def webhook_done(self, job_id: str, delivered: bool, attempts: int, outcome: str) -> None:
        await self._update(
            "UPDATE jobs SET webhook_state = ?, webhook_attempts = webhook_attempts + ?,"
            " webhook_outcome = ? WHERE id = ?",
            ("delivered" if delivered else "failed", attempts, outcome, job_id),
        )

    async def expire(self) -> int:
        def delete(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM jobs WHERE expires_at < ? AND webhook_state != 'pending'",
                (time.time(),),
            ).rowcount

        return await self._run(delete)

    async def _update(self, sql: str, args: tuple[Any, ...]) -> bool:
        return await self._run(lambda db: db.execute(sql, args).rowcount == 1)
