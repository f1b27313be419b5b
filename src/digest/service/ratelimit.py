"""A sliding-window rate limit per key (a client address), in memory: `digest serve` is one process."""

from __future__ import annotations

import threading
from collections import deque

from digest.clock import Clock


class RateLimiter:
    """At most `limit` hits per `window` seconds for each key; the clock decides what "now" is."""

    def __init__(self, limit: int, clock: Clock, window: float = 60.0, max_keys: int = 100_000):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> bool:
        """Count a hit for `key`; False when it is over the limit (the refused hit is not counted)."""
        now = self.clock().timestamp()
        start = now - self.window
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) >= self.max_keys:
                    self._prune(start)
                hits = self._hits[key] = deque()
            while hits and hits[0] <= start:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            return True

    def wait(self, key: str) -> float:
        """Seconds until `key` may hit again: until its oldest hit in the window leaves it (0: now)."""
        now = self.clock().timestamp()
        with self._lock:
            hits = self._hits.get(key)
            if not hits or len(hits) < self.limit:
                return 0.0
            return max(0.0, hits[-self.limit] + self.window - now)

    def _prune(self, start: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= start]:
            del self._hits[key]
        if len(self._hits) >= self.max_keys:  # still full of live keys: forget the oldest half
            for key in sorted(self._hits, key=lambda k: self._hits[k][-1])[: len(self._hits) // 2]:
                del self._hits[key]
