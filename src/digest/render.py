"""Edition -> Message: Jinja2 templates (MJML for the HTML part, plain text for the other).

MJML is compiled once per edition variant. Per-subscriber values are left in the output as
placeholders (``PLACEHOLDERS``) and filled in by ``message.Message`` for each recipient.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
from mjml import mjml2html

from .editions import EditionView

# Placeholder -> the per-recipient field that replaces it. Plain ASCII letters, so neither
# Jinja's autoescape nor MJML alters them.
PLACEHOLDERS = {
    "XDIGESTUNSUBSCRIBEURLX": "unsubscribe_url",
    "XDIGESTPREFERENCESURLX": "preferences_url",
    "XDIGESTNAMEX": "name",
}
_FIELD_TO_PLACEHOLDER = {v: k for k, v in PLACEHOLDERS.items()}


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def bundled_templates_dir() -> Path:
    """Templates shipped with the package (wheel), else the source checkout's templates/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parents[1] / "templates"):
        if (candidate / "edition.mjml.j2").is_file():
            return candidate
    raise FileNotFoundError("bundled templates not found")


def environment(override_dir: Path | None = None) -> jinja2.Environment:
    dirs = [str(override_dir)] if override_dir else []
    dirs.append(str(bundled_templates_dir()))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "mjml", "html.j2", "mjml.j2"),
            default_for_string=False,
            default=False,
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["longdate"] = _longdate
    return env


def _longdate(value: datetime | None) -> str:
    return f"{value:%B} {value.day}, {value.year}" if value else ""


class Renderer:
    """Renders EditionViews with one template environment (compiled templates are cached)."""

    def __init__(self, *, newsletter_name: str, public_url: str, templates_dir: Path | None = None):
        self.env = environment(templates_dir)
        self.newsletter_name = newsletter_name
        self.public_url = public_url.rstrip("/")

    def render(self, view: EditionView, subject: str, *, personal: bool = True) -> Rendered:
        """personal=False renders the web/archive version: no personal links or names."""
        ctx = {
            "newsletter": {"name": self.newsletter_name, "public_url": self.public_url},
            "edition": view,
            "sections": view.sections,
            "subject": subject,
            "view_url": f"{self.public_url}/archive/{view.number}" if view.number else None,
            "personal": personal,
            "unsubscribe_url": _FIELD_TO_PLACEHOLDER["unsubscribe_url"] if personal else None,
            "preferences_url": _FIELD_TO_PLACEHOLDER["preferences_url"] if personal else None,
            "name": _FIELD_TO_PLACEHOLDER["name"] if personal else None,
        }
        mjml_source = self.env.get_template("edition.mjml.j2").render(ctx)
        html = compile_mjml(mjml_source)
        text = self.env.get_template("edition.txt.j2").render(ctx)
        return Rendered(subject=subject, html=html, text=text)


def compile_mjml(source: str) -> str:
    return mjml2html(source)
