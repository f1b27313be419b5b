"""The outbox kind "admin test": the next edition as it stands, mailed to the admin who asked
("send a test to me"). Queued by the request, built and sent by the outbox's senders (the web
app's Relay, or `digest worker`), so the request never waits on SMTP. Built when it is sent, so
the mail shows the edition as it is then; nothing to send by then: the row is skipped."""

from __future__ import annotations

from sqlmodel import Session

from digest.clock import Clock
from digest.config import Settings
from digest.delivery import outbox
from digest.mail.mailer import Envelope
from digest.service import pipeline
from digest.store.models import Outbox

TEST_MAIL = "admin test"


def queue(session: Session, address: str, clock: Clock) -> Outbox:
    """Queue a test mail to `address` (the caller commits)."""
    return outbox.enqueue(session, TEST_MAIL, address, {}, clock())


class TestMail:
    def __init__(self, settings: Settings, clock: Clock):
        self.settings = settings
        self.clock = clock

    def envelope(self, session: Session, row: Outbox) -> Envelope | None:
        preview = pipeline.preview(session, self.settings, self.clock, fetch=False)
        if preview is None:
            return None
        return pipeline.preview_envelopes(preview, [row.recipient], self.settings, self.clock, tag=row.id)[0]

    def failed(self, session: Session, row: Outbox) -> None:
        """Nothing to undo: the admin sees the outcome on the page and may ask again."""


def outbox_kinds(settings: Settings, clock: Clock) -> dict[str, outbox.Kind]:
    return {TEST_MAIL: TestMail(settings, clock)}
