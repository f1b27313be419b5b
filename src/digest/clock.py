"""The clock every service reads: a callable returning the current time as an aware UTC datetime.
Tests pass a fixed or moving one (tests/conftest.py FixedClock)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], datetime]  # returns an aware UTC datetime: every service relies on it


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
