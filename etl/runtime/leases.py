"""Activation leases: one run of an activation at a time, across hosts, with fencing.

A ledger row, not an OS lock, so it holds across hosts and survives a crashed holder. Taking it is a
compare-and-swap on a fencing token that is never reset; expiry is judged on the database's clock;
every irreversible step first renews it (`Lease.fence`), so a run taken over after a stall stops with
`LeaseLost` instead of delivering over its successor.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from etl.errors import LeaseLost, LockBusy, StateError
from etl.runtime.ledger import StateStore, database_now, first_line, leases

log = logging.getLogger("audience_sync.lease")

#: how many times a take-over that lost a race looks at the row again before giving up
_ATTEMPTS = 5
#: the heartbeat renews at most this long apart, whatever the lease (a lost lease is noticed sooner)
_MAX_BEAT_SECONDS = 60.0


class Lease:

    def __init__(self, store: StateStore, activation: str, owner: str, run_id: str, token: int, ttl: timedelta):
        self.store = store
        self.activation = activation
        self.owner = owner
        self.run_id = run_id
        self.token = token
        self.ttl = ttl
        #: set once the heartbeat or a fence found the lease taken over
        self.lost = threading.Event()
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def check(self, conn: sa.Connection) -> None:
        """Renew inside ``conn``'s transaction, or LeaseLost. An expired lease nobody took is still ours."""
        now = database_now(conn)
        renewed = conn.execute(
            leases.update()
            .where(leases.c.activation == self.activation, leases.c.token == self.token,
                   leases.c.owner == self.owner)
            .values(expires_at=now + self.ttl)
        ).rowcount
        if renewed != 1:
            self.lost.set()
            taker = conn.execute(sa.select(leases.c.run_id).where(leases.c.activation == self.activation)).scalar()
            raise self.lost_error(taker)

    def fence(self) -> None:
        if self.lost.is_set():
            raise self.lost_error(None)
        self.store.write_fenced(self)

    def lost_error(self, taker: str | None) -> LeaseLost:
        by = f"run {taker}" if taker and taker != self.run_id else "another run"
        return LeaseLost(
            f"lost the lock to {by}; nothing more delivered",
            where=self.activation,
            hint="this run stalled longer than its lease (settings.lock_ttl_minutes) and was taken over; "
                 "what the other run delivered stands. See docs/deploy.md, 'Leases'",
        )

    def start_heartbeat(self) -> None:
        interval = min(_MAX_BEAT_SECONDS, max(0.5, self.ttl.total_seconds() / 3))
        self._heartbeat = threading.Thread(target=self._beat, args=(interval,), daemon=True,
                                           name=f"lease-{self.activation}")
        self._heartbeat.start()

    def _beat(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            try:
                self.store.write_fenced(self)
            except LeaseLost:
                log.error("lease of %s lost to another run", self.activation,
                          extra={"fields": {"activation": self.activation, "run_id": self.run_id}})
                return
            except StateError as exc:  # briefly unreachable: the lease may still be ours
                log.warning("could not renew the lease: %s", exc.message(),
                            extra={"fields": {"activation": self.activation, "run_id": self.run_id}})

    def stop_heartbeat(self) -> None:
        self._stopping.set()
        if self._heartbeat is not None:
            self._heartbeat.join()

    def release(self) -> None:
        """Keeps the row (and token) so the next holder's token is higher."""
        self.stop_heartbeat()
        try:
            with self.store.engine.begin() as conn:
                conn.execute(
                    leases.update()
                    .where(leases.c.activation == self.activation, leases.c.token == self.token,
                           leases.c.owner == self.owner)
                    .values(owner="", expires_at=database_now(conn))
                )
        except SQLAlchemyError as exc:  # it will expire by itself
            log.warning("could not release the lease of %s: %s", self.activation, first_line(exc))


@contextmanager
def hold(store: StateStore, activation: str, run_id: str, ttl: timedelta) -> Iterator[Lease]:
    lease = acquire(store, activation, run_id, ttl)
    lease.start_heartbeat()
    try:
        yield lease
    finally:
        lease.release()


def acquire(store: StateStore, activation: str, run_id: str, ttl: timedelta) -> Lease:
    owner = f"{socket.gethostname()}:{os.getpid()}:{id(store):x}"
    try:
        for _ in range(_ATTEMPTS):
            token = _take(store, activation, owner, run_id, ttl)
            if token is not None:
                return Lease(store, activation, owner, run_id, token, ttl)
    except SQLAlchemyError as exc:
        raise StateError(
            f"cannot take the lock: {first_line(exc)}",
            where=activation,
            hint=f"nothing was run: the run ledger {store.shown()} cannot be written (a full disk, "
            "permissions, or its database is down)",
        ) from None
    raise LockBusy("already running (the lock changed hands while this run tried to take it)", where=activation,
                   hint="another process started the same activation at the same moment; it is running it")


def _take(store: StateStore, activation: str, owner: str, run_id: str, ttl: timedelta) -> int | None:
    """None after losing a race (look again)."""
    try:
        with store.engine.begin() as conn:
            now = database_now(conn)
            row = conn.execute(sa.select(leases).where(leases.c.activation == activation)).first()
            values = {"owner": owner, "run_id": run_id, "acquired_at": now, "expires_at": now + ttl}
            if row is None:
                conn.execute(leases.insert().values(activation=activation, token=1, **values))
                return 1
            if row.owner and row.expires_at >= now and not dead_local_owner(row.owner):
                raise _busy(activation, row)
            taken = conn.execute(
                leases.update()
                .where(leases.c.activation == activation, leases.c.token == row.token)
                .values(token=row.token + 1, **values)
            ).rowcount
            return row.token + 1 if taken == 1 else None
    except IntegrityError:  # another process inserted the first row at the same moment
        return None


def _busy(activation: str, row: sa.Row) -> LockBusy:
    return LockBusy(
        f"already running (run {row.run_id}, lock held by {row.owner} since {row.acquired_at:%Y-%m-%d %H:%M:%S} "
        f"UTC, renewed until {row.expires_at:%Y-%m-%d %H:%M:%S} UTC)",
        where=activation,
        hint="wait for that run to end; a crashed holder's lock expires by itself (settings.lock_ttl_minutes)",
    )


def dead_local_owner(owner: str) -> bool:
    """``host:pid:tag`` names an ended process of this host; another host's must wait for expiry."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False  # ours, or a previous container incarnation with the same pid: cannot tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, owned by someone else
    return False
