"""The subject line of an edition: the `newsletter.subject` template and the fields it can name.

A leaf (it imports nothing from digest): the settings check the template when they load
(config imports this module) and the editions fill it in (content.editions imports it too)."""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime

SUBJECT_FIELDS = ("name", "n", "number", "date")  # what newsletter.subject can say, e.g. "{name} #{number}"


def subject_for(template: str, name: str, n: int, number: int | None, date: datetime) -> str:
    """The subject: the template (checked by check_subject when the settings load) filled in."""
    shown = number if number is not None else ""
    if n == 1:  # "{n} new posts" and "{n} posts" say "1 new post", "1 post"
        template = _N_POSTS.sub(r"\1post", template)
    subject = template.format(name=name, n=n, number=shown, date=date.strftime("%B %-d, %Y"))
    return " ".join(subject.split())  # one line, whatever the config says


_N_POSTS = re.compile(r"(\{n\}(?:\s+new)?\s+)posts\b")


def check_subject(template: str) -> None:
    """ValueError naming the problem when subject_for() could not fill the template in."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{exc} (write {{{{ or }}}} for a literal brace)") from None
    for f in fields:
        if f not in SUBJECT_FIELDS:
            raise ValueError(f"unknown field {{{f}}}: use " + ", ".join(f"{{{k}}}" for k in SUBJECT_FIELDS))
    sample = datetime(2026, 1, 1, tzinfo=UTC)
    for number in (1, None):  # a preview of the newest posts has no edition number
        try:
            subject_for(template, "Name", 1, number, sample)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cannot be filled in: {exc}") from None
