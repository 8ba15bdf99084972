"""One set of limits per licence, because Actito counts them per *licence*, not per client.

In one process, `Licence` (from `licence_for`) holds the in-flight semaphore, minute window and token
cache every client shares. Across processes sharing a ledger, `LedgerSlots` leases numbered slots,
judging expiry on the database's clock so a host with a wrong clock cannot steal live slots. Only
concurrency is shared across processes: Actito refuses excess concurrent calls but merely slows excess
calls per minute.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from etl.errors import LicenceBusy, StateError
from etl.runtime.leases import dead_local_owner
from etl.runtime.ledger import database_now, licence_slots, open_store

if TYPE_CHECKING:
    from etl.config import Config

log = logging.getLogger("audience_sync.licence")

#: how long a request waits for a licence slot held by other processes before failing
WAIT_SECONDS = 900.0
#: the sleeps between two looks at the ledger when every slot is taken (jittered between the two)
POLL_MIN, POLL_MAX = 0.02, 0.2


def lease_seconds(connect_timeout: float, read_timeout: float) -> float:
    """Twice the longest wait without a byte moving; renewal keeps long uploads, so only a dead holder loses it."""
    return max(60.0, 2 * (connect_timeout + read_timeout))


class TokenCache:
    """One token per credential for every client of the licence; the lock is held during the fetch so
    the others wait for it. Keyed by a digest, never the credential."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}

    def get(self, credential: str, fetch: Callable[[], tuple[str, float]]) -> str:
        """``fetch()`` returns (token, seconds it may be used)."""
        key = _digest(credential)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and self._monotonic() < cached[1]:
                return cached[0]
            token, usable_for = fetch()
            self._tokens[key] = (token, self._monotonic() + usable_for)
            return token

    def forget(self, credential: str, token: str) -> None:
        """Drop ``token`` (refused with 401), unless another thread has already replaced it."""
        key = _digest(credential)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached[0] == token:
                del self._tokens[key]


@dataclass(frozen=True)
class Lease:

    slot: int
    owner: str


class LedgerSlots:
    """At most ``size`` requests in flight on one licence across every process sharing the ledger."""

    def __init__(
        self, engine: sa.Engine, licence: str, size: int, *, lease: float, wait_seconds: float = WAIT_SECONDS,
        sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.licence = licence
        self.size = size
        self._engine = engine
        self._ttl = timedelta(seconds=lease)
        self._wait = wait_seconds
        self._sleep = sleep
        self._monotonic = monotonic
        self._random = random.Random()
        self._held: set[Lease] = set()
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    @contextmanager
    def held(self) -> Iterator[Lease]:
        lease = self.acquire()
        try:
            yield lease
        finally:
            self.release(lease)

    def acquire(self) -> Lease:
        deadline = self._monotonic() + self._wait
        while True:
            lease = self._try_take()
            if lease is not None:
                with self._held_lock:
                    self._held.add(lease)
                    self._start_renewer()
                return lease
            if self._monotonic() >= deadline:
                raise LicenceBusy(
                    f"all {self.size} request slots of the licence stayed held by other processes "
                    f"for {self._wait:g} s",
                    where=self.licence,
                    hint="other audience-sync processes share this licence through the ledger (table "
                    "licence_slots); a crashed holder's slot frees itself within "
                    f"{self._ttl.total_seconds():g} s — run again later",
                )
            self._sleep(self._random.uniform(POLL_MIN, POLL_MAX))

    def release(self, lease: Lease) -> None:
        """Only if still ours. A ledger write failure does not fail the answered request: the lease expires."""
        with self._held_lock:
            self._held.discard(lease)
        try:
            self._write(lambda conn: conn.execute(licence_slots.delete().where(*self._is(lease))).rowcount)
        except StateError as exc:
            log.warning("licence slot not given back, it will expire: %s", exc.message(),
                        extra={"fields": {"licence": self.licence, "slot": lease.slot}})

    def _try_take(self) -> Lease | None:
        with self._connect() as conn:
            now = database_now(conn)
            rows = {row.slot: row for row in conn.execute(
                sa.select(licence_slots).where(licence_slots.c.licence == self.licence))}
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        numbers = list(range(self.size))
        self._random.shuffle(numbers)  # concurrent takers rarely race for the same number
        for number in numbers:
            row = rows.get(number)
            if row is None:
                if self._insert(Lease(number, owner)):
                    return Lease(number, owner)
            elif row.expires_at < now or dead_local_owner(row.owner):
                if self._take_over(Lease(number, owner), row.owner, row.expires_at):
                    log.warning("took over a licence slot whose holder stopped renewing it",
                                extra={"fields": {"licence": self.licence, "slot": number, "holder": row.owner}})
                    return Lease(number, owner)
        return None

    def _insert(self, lease: Lease) -> bool:
        try:
            with self._engine.begin() as conn:
                now = database_now(conn)
                conn.execute(licence_slots.insert().values(
                    licence=self.licence, slot=lease.slot, owner=lease.owner, acquired_at=now,
                    expires_at=now + self._ttl))
        except IntegrityError:
            return False
        except OperationalError as exc:
            if "database is locked" in str(exc.orig):  # a busy SQLite ledger: as if taken, look again
                return False
            raise self._error(exc) from None
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        return True

    def _take_over(self, lease: Lease, holder: str, expired_at: datetime) -> bool:
        """Compare-and-set on the holder seen, so of two takers of one expired slot one wins."""
        def update(conn: sa.Connection) -> int:
            now = database_now(conn)
            return conn.execute(licence_slots.update().where(
                licence_slots.c.licence == self.licence, licence_slots.c.slot == lease.slot,
                licence_slots.c.owner == holder, licence_slots.c.expires_at == expired_at,
            ).values(owner=lease.owner, acquired_at=now, expires_at=now + self._ttl)).rowcount

        return self._write(update) == 1

    def _start_renewer(self) -> None:
        """The caller holds ``_held_lock``, so the thread cannot end unseen between check and start."""
        if self._renewer is None:
            self._renewer = threading.Thread(target=self._renew_while_held, name=f"lease-renewer {self.licence}",
                                             daemon=True)
            self._renewer.start()

    def _renew_while_held(self) -> None:
        while True:
            time.sleep(self._ttl.total_seconds() / 4)
            with self._held_lock:
                if not self._held:
                    self._renewer = None
                    return
            try:
                self.renew()
            except StateError as exc:  # the next round tries again; the lease still has 3/4 of its life
                log.warning("licence slot leases not renewed: %s", exc.message())

    def renew(self) -> None:
        with self._held_lock:
            leases = list(self._held)
        for lease in leases:
            def update(conn: sa.Connection, lease: Lease = lease) -> int:
                now = database_now(conn)
                return conn.execute(licence_slots.update().where(*self._is(lease))
                                    .values(expires_at=now + self._ttl)).rowcount

            if self._write(update) == 0 and lease in self._held:
                log.warning("a licence slot lease was taken over while its request ran",
                            extra={"fields": {"licence": self.licence, "slot": lease.slot}})

    def _is(self, lease: Lease) -> tuple[sa.ColumnElement[bool], ...]:
        return (licence_slots.c.licence == self.licence, licence_slots.c.slot == lease.slot,
                licence_slots.c.owner == lease.owner)

    @contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        with self._said_as_state_error(), self._engine.connect() as conn:
            yield conn

    def _write(self, statement: Callable[[sa.Connection], int]) -> int:
        with self._said_as_state_error(), self._engine.begin() as conn:
            return statement(conn)

    @contextmanager
    def _said_as_state_error(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            raise self._error(exc) from None

    def _error(self, exc: SQLAlchemyError) -> StateError:
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return StateError(
            f"cannot share the licence's request slots through the ledger: {text[0] if text else type(exc).__name__}",
            where=self.licence, hint="check settings.state_url / settings.state_dir: the run ledger must be writable",
        )


@dataclass
class SlidingWindow:
    """At most ``limit`` call starts in any ``period`` seconds. Not a token bucket: that lets 2N calls
    through in the first minute. Callers reserve under the lock and sleep outside it."""

    limit: int
    period: float
    monotonic: Callable[[], float]
    sleep: Callable[[float], None]
    service: str
    _starts: deque[float] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self) -> None:
        with self._lock:
            now = self.monotonic()
            start = now
            if len(self._starts) >= self.limit:
                start = max(now, self._starts.popleft() + self.period)
            self._starts.append(start)
        if start > now:
            log.info(f"pacing {self.service} calls", extra={"fields": {"wait_s": round(start - now, 3)}})
            self.sleep(start - now)


class Licence:
    """The limits and tokens every client of one licence shares in this process. ``slot()`` takes the
    local place before the ledger slot, so waiting threads never hold a slot another process could use."""

    def __init__(
        self, *, service: str, name: str, max_in_flight: int, calls_per_minute: int, ledger: LedgerSlots | None = None,
        sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight < 1 or calls_per_minute < 1:
            raise ValueError("max_in_flight and calls_per_minute must be at least 1")
        self.service = service
        self.name = name
        self.max_in_flight = max_in_flight
        self.ledger = ledger
        self.tokens = TokenCache(monotonic)
        self._places = threading.BoundedSemaphore(max_in_flight)
        self._parked = ParkedSlots(ledger) if ledger is not None else None
        self._window = SlidingWindow(calls_per_minute, 60.0, monotonic, sleep, service)

    def __repr__(self) -> str:
        return f"Licence({self.name!r}, max_in_flight={self.max_in_flight})"

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._places, (self._parked.held() if self._parked is not None else nullcontext()):
            self._window.acquire()
            yield


#: a ledger slot its thread has not used again for this long is given back
IDLE_SECONDS = 0.25


class ParkedSlots:
    """Ledger slots kept between requests (each take/give-back is two committed writes) and given back
    after ``IDLE_SECONDS`` idle. A kept slot is still one request at most, so the limit holds."""

    def __init__(self, ledger: LedgerSlots, idle_seconds: float = IDLE_SECONDS) -> None:
        self._ledger = ledger
        self._idle = idle_seconds
        self._local = threading.local()
        #: lease -> when its thread last gave it back (monotonic)
        self._parked: dict[Lease, float] = {}
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        atexit.register(self.release_parked)

    def release_parked(self) -> None:
        """At exit, also waits for the reaper: a slot it has taken off the list but not yet given back
        would otherwise die with the daemon thread and stay taken until its lease expires."""
        with self._lock:
            parked = list(self._parked)
            self._parked.clear()
            reaper = self._reaper
        for lease in parked:
            self._ledger.release(lease)
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(timeout=5)

    @contextmanager
    def held(self) -> Iterator[Lease]:
        lease = self._reuse() or self._ledger.acquire()
        self._local.lease = lease
        try:
            yield lease
        finally:
            with self._lock:
                self._parked[lease] = time.monotonic()
                if self._reaper is None:
                    self._reaper = threading.Thread(target=self._reap, name=f"slot-reaper {self._ledger.licence}",
                                                    daemon=True)
                    self._reaper.start()

    def _reuse(self) -> Lease | None:
        """This thread's parked slot first, else any other: no thread waits on the ledger beside an idle slot."""
        own = getattr(self._local, "lease", None)
        with self._lock:
            if own is not None and self._parked.pop(own, None) is not None:
                return own
            if self._parked:
                lease = next(iter(self._parked))
                del self._parked[lease]
                return lease
            return None

    def _reap(self) -> None:
        while True:
            time.sleep(self._idle / 2)
            now = time.monotonic()
            with self._lock:
                idle = [lease for lease, since in self._parked.items() if now - since >= self._idle]
                for lease in idle:
                    del self._parked[lease]
                done = not self._parked
                if done:  # a later park starts a new reaper
                    self._reaper = None
            for lease in idle:
                self._ledger.release(lease)
            if done:
                return


# ---------------------------------------------------------------------------------------------- registry

_licences: dict[tuple[str, ...], Licence] = {}
_ledgers: dict[str, sa.Engine] = {}
_registry_lock = threading.Lock()


def licence_for(
    config: Config, *, service: str, url: str, account: str, max_in_flight: int, calls_per_minute: int,
    connect_timeout: float, read_timeout: float,
) -> Licence:
    """Created on first use; later calls get the same object, whatever limits they pass."""
    name = licence_name(service, url, account)
    ledger_url = _ledger_url(config)
    key = (name, ledger_url)
    with _registry_lock:
        licence = _licences.get(key)
        if licence is None:
            engine = _ledgers.get(ledger_url) or _open_ledger(config, ledger_url)
            slots = LedgerSlots(engine, name, max_in_flight, lease=lease_seconds(connect_timeout, read_timeout))
            licence = Licence(service=service, name=name, max_in_flight=max_in_flight,
                              calls_per_minute=calls_per_minute, ledger=slots)
            _licences[key] = licence
        return licence


def licence_name(service: str, url: str, account: str) -> str:
    """``actito:api.actito.com/entity``: no credentials, bounded to the column's size by a digest."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    name = f"{service.lower()}:{host}{parts.path.rstrip('/')}/{account}"
    return name if len(name) <= 200 else f"{name[:150]}~{_digest(name)}"


def _ledger_url(config: Config) -> str:
    url = config.settings.state_url
    return url.get_secret_value() if url else f"sqlite:///{config.state_dir / 'state.db'}"


def _open_ledger(config: Config, ledger_url: str) -> sa.Engine:
    engine = open_store(config).engine
    _ledgers[ledger_url] = engine
    return engine


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
