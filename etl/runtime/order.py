"""``after``: in one batch of runs (one ``run`` command, one scheduler slot), which activation waits for
which, in what order they start, and why one is skipped. Activations with no ``after`` between them keep
running as before: one after the other in a command, side by side in the scheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

from etl.config import Config
from etl.runtime.results import RunResults, RunStatus
from etl.runtime.runs import RunOutcome

T = TypeVar("T")

#: why a dependent is skipped, by the status its dependency ended with
_WHY: dict[str, str] = {RunStatus.FAILED: "failed", RunStatus.INTERRUPTED: "was interrupted", RunStatus.SKIPPED: "was skipped",
        RunStatus.LOCKED: "was running in another process (locked)"}


def dependencies(config: Config, names: Sequence[str]) -> dict[str, list[str]]:
    """Each name's ``after`` among ``names`` only: an activation that is not in the batch is not waited for."""
    chosen = set(names)
    return {name: [other for other in dict.fromkeys(config.activations[name].after) if other in chosen and other != name]
            for name in names}


def in_order(names: Sequence[str], after: Mapping[str, Sequence[str]]) -> list[str]:
    """The names as given, each moved after what it waits for (the configuration refuses cycles)."""
    pending, placed = list(dict.fromkeys(names)), []
    while pending:
        ready = next((n for n in pending if all(d in placed for d in after.get(n, ()))), pending[0])
        pending.remove(ready)
        placed.append(ready)
    return placed


def linked(names: Sequence[str], after: Mapping[str, Sequence[str]], name: str) -> list[str]:
    """``name`` and every activation tied to it by ``after`` in either direction, in order; linear in the
    names, as the scheduler asks at every fire."""
    ties: dict[str, set[str]] = {n: set() for n in names}
    for current in names:
        for other in after.get(current, ()):
            if other in ties:
                ties[current].add(other)
                ties[other].add(current)
    group, todo = {name}, [name]
    while todo:
        for other in ties.get(todo.pop(), ()):
            if other not in group:
                group.add(other)
                todo.append(other)
    return in_order([n for n in names if n in group], after)


def skip_reason(name: str, after: Mapping[str, Sequence[str]], statuses: Mapping[str, str]) -> str | None:
    """``after qualifio_profiles, which failed``, or None when every dependency succeeded."""
    for other in after.get(name, ()):
        status = statuses.get(other)
        if status != RunStatus.SUCCEEDED:
            return f"after {other}, which {_WHY.get(status or '', 'did not finish')}"
    return None


def run_in_order(names: Sequence[str], after: Mapping[str, Sequence[str]], run: Callable[[str], T],
                 skip: Callable[[str, str], T], status_of: Callable[[T], str], *, parallel: bool = False,
                 at_most: int | None = None, stop: threading.Event | None = None) -> list[T]:
    """Each name runs once what it waits for ended, or is skipped with the reason; ``parallel``: a thread per
    name, so that those with no ``after`` between them run side by side, at most ``at_most`` of them at once
    (``run --jobs``). Results in start order, whatever order they end in; with ``stop`` set, the names not
    started yet are left out."""
    order = in_order(names, after)
    statuses: dict[str, str] = {}
    results: dict[str, T] = {}
    ended = {name: threading.Event() for name in order}
    # taken only around ``run``, never while waiting for ``after``: a waiting thread holds no place
    places: AbstractContextManager[object] = (threading.BoundedSemaphore(at_most) if parallel and at_most
                                              else nullcontext())

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    def turn(name: str) -> None:
        try:
            for other in after.get(name, ()):
                ended[other].wait()
            if stopped():
                return
            reason = skip_reason(name, after, statuses)
            if reason:
                results[name] = skip(name, reason)
            else:
                with places:
                    if stopped():  # asked while it waited for a place: not started, as sequentially
                        return
                    results[name] = run(name)
            statuses[name] = status_of(results[name])
        finally:
            ended[name].set()

    if parallel:
        _in_threads(order, turn, stop)
    else:
        for name in order:
            if stopped():
                break
            turn(name)
    return [results[name] for name in order if name in results]


def _in_threads(order: Sequence[str], turn: Callable[[str], None], stop: threading.Event | None) -> None:
    """A thread per name. Ctrl-C reaches the main thread only: it asks the running ones to stop at their
    next chunk (as SIGTERM does) and still waits for them, so that each ends recorded. An error of a thread
    is raised here, in the caller's thread, as a sequential run would raise it."""
    failures: list[BaseException] = []

    def guarded(name: str) -> None:
        try:
            turn(name)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(name,), name=f"after-{name}") for name in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt:
                if stop is None:
                    raise
                stop.set()
    if failures:
        raise failures[0]


def skipped(activation: str, reason: str, *, dry_run: bool) -> RunOutcome:
    """What a command shows of an activation it did not start; nothing is recorded in the ledger."""
    return RunOutcome(activation, None, RunStatus.SKIPPED, dry_run, 0.0, RunResults(), {}, reason)
