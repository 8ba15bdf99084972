"""One retry policy for everything that talks to another machine. Which failures are retried is
said by the errors (`etl.errors.Retriable`); the sleep is part of the policy so tests need not patch a clock."""

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
    """Pauses double up to ``max_pause``; ``jitter`` (share drawn at random) keeps jobs failing together
    from coming back together. Retry-After is capped by ``retry_after_max``: a server may ask for hours."""

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
        """``attempt`` is 1-based."""
        return attempt >= self.attempts

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        ceiling = min(self.max_pause, self.first_pause * 2 ** (attempt - 1))
        return random.uniform(ceiling * (1 - self.jitter), ceiling)

    def run(self, once: Callable[[], _T], on_retry: OnRetry = lambda exc, attempt, pause: None) -> _T:
        """Calls ``once`` again after each `Retriable` error while attempts remain; the last is raised as is."""
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
