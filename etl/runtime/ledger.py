"""The run ledger in any SQLAlchemy database: SQLite in the state directory by default; a shared
PostgreSQL URL lets several hosts see one history and one set of leases."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from etl.config import Config
from etl.errors import StateError
from etl.logs import redact
from etl.runtime.results import RunStatus

metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("activation", sa.String(100), nullable=False, index=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("duration_s", sa.Float),
    sa.Column("rows_extracted", sa.BigInteger),
    sa.Column("rows_rejected", sa.BigInteger),
    sa.Column("rows_duplicate", sa.BigInteger),
    sa.Column("rows_delivered", sa.BigInteger),
    sa.Column("file_name", sa.String(255)),
    sa.Column("sha256", sa.String(64)),
    sa.Column("error", sa.Text),
    sa.Column("details", sa.JSON),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("activation", sa.String(100), primary_key=True),
    #: the fencing token: one more at every acquisition, never reset
    sa.Column("token", sa.BigInteger, nullable=False),
    #: ``host:pid:store`` of the holder; empty once released
    sa.Column("owner", sa.String(200), nullable=False),
    #: the run that took the lease last
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("acquired_at", sa.DateTime, nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
)

#: one row per request in flight anywhere on a licence: (licence, slot number 0..N-1) is unique
licence_slots = sa.Table(
    "licence_slots",
    metadata,
    sa.Column("licence", sa.String(200), primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("acquired_at", sa.DateTime, nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
)

imports = sa.Table(
    "imports",
    metadata,
    sa.Column("reference", sa.String(120), primary_key=True),  # ours, unique across licences and sandboxes
    sa.Column("execution_id", sa.String(100), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("activation", sa.String(100), nullable=False),
    sa.Column("entity", sa.String(100), nullable=False),
    sa.Column("table_id", sa.String(100), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("status", sa.String(30), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("counts", sa.JSON),
)

slots = sa.Table(
    "slots",
    metadata,
    sa.Column("activation", sa.String(100), primary_key=True),
    sa.Column("slot", sa.String(40), primary_key=True),  # the scheduled local time, e.g. 2026-10-25T02:30
    sa.Column("claimed_by", sa.String(200), nullable=False),
    sa.Column("claimed_at", sa.DateTime, nullable=False),
)

#: an import's status when Actito never received it: it does not count against the daily budget
NOT_SENT = "NOT_SENT"


def utcnow() -> datetime:
    """Naive UTC: the same value round-trips through SQLite, PostgreSQL and MariaDB."""
    return datetime.now(UTC).replace(tzinfo=None)


#: the ledger database's own clock as naive UTC, per dialect; others fall back to this host's clock
_DATABASE_NOW = {
    "postgresql": "SELECT CAST(timezone('UTC', clock_timestamp()) AS timestamp)",
    "mysql": "SELECT UTC_TIMESTAMP(6)",
    "mariadb": "SELECT UTC_TIMESTAMP(6)",
    "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
}


def database_now(conn: sa.Connection) -> datetime:
    """Naive UTC on the database's clock: leases shared by hosts must be judged on one clock, or a
    host running ahead sees every live lease as expired."""
    query = _DATABASE_NOW.get(conn.dialect.name)
    if query is None:
        return utcnow()
    value: object = conn.execute(sa.text(query)).scalar_one()
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


class Fence(Protocol):
    """``check`` renews the lease inside the caller's transaction (or raises LeaseLost), so a fenced
    write and the proof of the lease commit together."""

    def check(self, conn: sa.Connection) -> None: ...


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    activation: str
    kind: str
    status: RunStatus
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    rows_extracted: int | None
    rows_rejected: int | None
    rows_duplicate: int | None
    rows_delivered: int | None
    file_name: str | None
    sha256: str | None
    error: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class ImportRecord:
    reference: str
    execution_id: str
    run_id: str
    activation: str
    entity: str
    table_id: str
    day: date
    status: str
    created_at: datetime
    counts: dict[str, int] | None


class StateStore:
    """One instance per process, safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
            _create_tables(self.engine)
        except SQLAlchemyError as exc:
            shown = redact(url)
            raise StateError(
                f"cannot open the state store: {first_line(exc)}",
                where=shown,
                hint="check settings.state_url / settings.state_dir",
            ) from None

    @classmethod
    def in_directory(cls, state_dir: Path) -> StateStore:
        ledger = state_dir / "state.db"
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # created private before SQLite opens it (it would use the umask). Only when missing:
            # closing any descriptor of the file drops this process's POSIX locks on it, SQLite's too
            if not ledger.exists():
                os.close(os.open(ledger, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600))
        except OSError as exc:
            raise StateError(f"cannot create the state directory: {exc.strerror}", where=str(state_dir)) from None
        return cls(f"sqlite:///{ledger}")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start_run(self, run_id: str, activation: str, kind: str, *, dry_run: bool, started_at: datetime) -> None:
        self._write(
            runs.insert().values(
                run_id=run_id,
                activation=activation,
                kind=kind,
                status=RunStatus.RUNNING,
                dry_run=dry_run,
                started_at=started_at,
                details={},
            )
        )

    def save_progress(self, run_id: str, details: dict[str, Any], *, fence: Fence | None = None, **values: Any) -> None:
        """Only while the run is still marked running: a successor that took it over has closed its row."""
        self._write(runs.update().where(runs.c.run_id == run_id, runs.c.status == RunStatus.RUNNING)
                    .values(details=details, **values), fence=fence)

    def unfinished_runs(self, activation: str) -> list[RunRecord]:
        return list(reversed(self.runs(activation, status=RunStatus.RUNNING, limit=1000)))

    def finish_run(self, run_id: str, status: RunStatus, *, fence: Fence | None = None, **values: Any) -> None:
        """With ``fence``, written only while the lease is held, so a run taken over never records success."""
        if status == RunStatus.LOCKED:
            raise ValueError(status)
        self._write(runs.update().where(runs.c.run_id == run_id).values(status=status, **values), fence=fence)

    def write_fenced(self, fence: Fence) -> None:
        self._write(None, fence=fence)

    def runs(
        self,
        activation: str | None = None,
        *,
        status: RunStatus | None = None,
        limit: int = 20,
        include_dry_runs: bool = True,
        since: date | None = None,
        with_parts: bool = False,
    ) -> list[RunRecord]:
        """``with_parts``: a fan-out's deliveries too (``NAME@destination``), which are runs of their own."""
        query = sa.select(runs).order_by(runs.c.started_at.desc(), runs.c.run_id.desc()).limit(limit)
        if activation is not None and with_parts:
            query = query.where(sa.or_(runs.c.activation == activation,
                                       runs.c.activation.startswith(f"{activation}@", autoescape=True)))
        elif activation is not None:
            query = query.where(runs.c.activation == activation)
        if status is not None:
            query = query.where(runs.c.status == status)
        if not include_dry_runs:
            query = query.where(runs.c.dry_run.is_(False))
        if since is not None:
            query = query.where(runs.c.started_at >= datetime.combine(since, datetime.min.time()))
        with self._connect() as conn:
            return [_record(row._mapping) for row in conn.execute(query)]

    def latest_runs(self) -> dict[str, RunRecord]:
        """Each activation's latest run: what `validate` compares with the configuration."""
        latest = (sa.select(runs.c.activation, sa.func.max(runs.c.started_at).label("at"))
                  .group_by(runs.c.activation).subquery())
        query = (sa.select(runs).join(latest, sa.and_(runs.c.activation == latest.c.activation,
                                                      runs.c.started_at == latest.c.at))
                 .order_by(runs.c.run_id))
        with self._connect() as conn:
            return {record.activation: record for record in (_record(row._mapping) for row in conn.execute(query))}

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
        return _record(row._mapping) if row else None

    def last_success(self, activation: str) -> RunRecord | None:
        found = self.runs(activation, status=RunStatus.SUCCEEDED, limit=1, include_dry_runs=False)
        return found[0] if found else None

    def intend_import(
        self, reference: str, run_id: str, activation: str, entity: str, table_id: str, day: date
    ) -> None:
        """Before the upload, so after a crash the next run looks the reference up instead of re-sending."""
        self._write(
            imports.insert().values(
                execution_id="", reference=reference, run_id=run_id, activation=activation,
                entity=entity, table_id=table_id, day=day, status="PENDING", created_at=utcnow(),
            )
        )

    def record_import(self, reference: str, execution_id: str) -> None:
        self._write(imports.update().where(imports.c.reference == reference)
                    .values(execution_id=execution_id, status="SUBMITTED"))

    def finish_import(self, reference: str, status: str, counts: dict[str, int]) -> None:
        self._write(imports.update().where(imports.c.reference == reference).values(status=status, counts=counts))

    def imports_on(self, entity: str, table_id: str, day: date) -> int:
        query = sa.select(sa.func.count()).where(
            imports.c.entity == entity, imports.c.table_id == table_id, imports.c.day == day,
            imports.c.status != NOT_SENT,
        )
        with self._connect() as conn:
            return int(conn.execute(query).scalar_one())

    def unfinished_imports(self, activation: str, *, excluding_run: str) -> list[ImportRecord]:
        query = (sa.select(imports)
                 .where(imports.c.activation == activation, imports.c.run_id != excluding_run,
                        imports.c.status.in_(("PENDING", "SUBMITTED")))
                 .order_by(imports.c.created_at, imports.c.reference))
        with self._connect() as conn:
            return [ImportRecord(**dict(row._mapping)) for row in conn.execute(query)]

    def import_outcomes(self, run_id: str) -> dict[str, tuple[str, str]]:
        """Reference -> (status, execution id) of each import a run started."""
        query = sa.select(imports.c.reference, imports.c.status, imports.c.execution_id).where(imports.c.run_id == run_id)
        with self._connect() as conn:
            return {row.reference: (row.status, row.execution_id) for row in conn.execute(query)}

    def claim_slot(self, activation: str, slot: str, claimed_by: str) -> bool:
        try:
            self._write(slots.insert().values(activation=activation, slot=slot, claimed_by=claimed_by,
                                              claimed_at=utcnow()))
        except StateError as exc:
            if "unique" in exc.what.lower() or "duplicate" in exc.what.lower():
                return False
            raise
        return True

    @contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StateError(f"state store failed: {first_line(exc)}", where=self.shown()) from None

    def _write(self, statement: sa.Executable | None, *, fence: Fence | None = None) -> None:
        with self._connect() as conn, conn.begin():
            if fence is not None:
                fence.check(conn)
            if statement is not None:
                conn.execute(statement)

    def shown(self) -> str:
        return redact(self.url)


def open_store(config: Config) -> StateStore:
    url = config.settings.state_url
    return StateStore(url.get_secret_value()) if url else StateStore.in_directory(config.state_dir)


def _create_tables(engine: sa.Engine, attempts: int = 4) -> None:
    """Retried while another process creates them at the same moment (PostgreSQL: "duplicate key";
    SQLite: "already exists")."""
    for attempt in range(1, attempts + 1):
        try:
            metadata.create_all(engine)
            return
        except (IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError) as exc:
            text = str(exc.orig)
            if attempt == attempts or ("duplicate key" not in text and "already exists" not in text):
                raise
            time.sleep(0.3 * attempt)


def _record(row: sa.RowMapping) -> RunRecord:
    values = dict(row)
    values["details"] = values.get("details") or {}
    values["status"] = RunStatus(values["status"])
    return RunRecord(**values)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
