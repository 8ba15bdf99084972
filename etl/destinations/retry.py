"""One retry policy for everything that talks to another machine: the HTTP APIs, the webhooks of
alerts and metrics, and the file transfer locations.

Which failures are worth another attempt is said by the errors themselves (`etl.errors.Retriable`);
how many attempts, and how long the pauses between them, by the policy. The pause function is part
of the policy, so a test passes a policy that does not wait rather than patch a module's clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from etl.errors import Retriable

_T = TypeVar("_T")

#: told before each pause: (the error that failed the attempt, its number, the pause in seconds)
OnRetry = Callable[[Retriable, int, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed attempt is made again. Pauses double from
    ``first_pause`` up to ``max_pause``; ``jitter`` is the share of each drawn at random (1: from
    nothing to the ceiling, 0: none), so that jobs failing together do not come back together. A
    server's Retry-After replaces the pause, up to ``retry_after_max`` (a server may ask for hours)."""

    attempts: int = 6
    first_pause: float = 0.5
    max_pause: float = 30.0
    retry_after_max: float = 120.0
    jitter: float = 1.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def exhausted(self, attempt: int) -> bool:
        """True when attempt number ``attempt`` (1-based) was the last one allowed."""
        return attempt >= self.attempts

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt``: the server's ``retry_after``
        (capped) when it gave one, else the jittered exponential pause."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        ceiling = min(self.max_pause, self.first_pause * 2 ** (attempt - 1))
        return random.uniform(ceiling * (1 - self.jitter), ceiling)

    def run(self, once: Callable[[], _T], on_retry: OnRetry = lambda exc, attempt, pause: None) -> _T:
        """``once()``'s result, calling it again after each `Retriable` error while attempts remain;
        the last error is raised as it is. ``on_retry`` is told before each pause."""
        attempt = 1
        while True:
            try:
                return once()
            except Retriable as exc:
                if self.exhausted(attempt):
                    raise
                pause = self.delay(attempt, getattr(exc, "retry_after", None))
                on_retry(exc, attempt, pause)
                self.sleep(pause)
                attempt += 1
