"""Service: the cadences a publication offers its readers, and a reader changing theirs.

The main cadence is `schedule.cron`, called `schedule.name`; `schedule.cadences` adds others. In
the database the main one is stored as "" (models.MAIN_CADENCE) and each other one by its name,
so renaming the main cadence in the config moves nothing. A reader whose cadence the config no
longer offers gets the main one's editions (editions.Readers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from digest.config import ScheduleSettings
from digest.content.editions import Readers
from digest.cron import Cron
from digest.errors import NotFound
from digest.store.models import MAIN_CADENCE, Subscriber, as_utc


@dataclass(frozen=True)
class Cadence:
    name: str  # as the config, the forms and `--cadence` call it
    key: str  # as stored: MAIN_CADENCE for the main one
    cron: Cron

    @property
    def main(self) -> bool:
        return self.key == MAIN_CADENCE


class Cadences:
    """The cadences on offer, the main one first."""

    def __init__(self, schedule: ScheduleSettings):
        crons = schedule.crons()
        self.all = tuple(
            Cadence(name, MAIN_CADENCE if name == schedule.name else name, cron) for name, cron in crons.items()
        )
        self.main = self.all[0]
        self._others = frozenset(c.key for c in self.all[1:])

    def __len__(self) -> int:
        return len(self.all)

    @property
    def choice(self) -> bool:
        """Whether readers have a choice (more than one cadence): only then do the forms ask."""
        return len(self.all) > 1

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.all]

    def named(self, name: str | None) -> Cadence:
        """The cadence called `name` (None or "": the main one); NotFound naming the choices."""
        if not name:
            return self.main
        for c in self.all:
            if c.name == name:
                return c
        raise NotFound(f"no cadence {name!r} (schedule.cadences offers: {', '.join(self.names)})")

    def of(self, key: str) -> Cadence:
        """The cadence stored as `key`; the main one for a key no longer offered."""
        for c in self.all:
            if c.key == key:
                return c
        return self.main

    def readers(self, cadence: Cadence) -> Readers:
        return Readers(cadence.key, self._others)


def choose(sub: Subscriber, cadence: Cadence, now: datetime) -> bool:
    """Make `cadence` the reader's (the caller commits); False when it already was. Their first
    edition in the new cadence starts where their last one ended (editions.catch_up_posts): what
    this records is only that they changed; the rest is read when that edition is built."""
    if sub.cadence == cadence.key:
        return False
    sub.cadence = cadence.key
    sub.cadence_changed_at = as_utc(now)
    return True
