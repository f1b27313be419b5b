"""Write small Atom feeds for tests, so a test can make a new post appear."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape


def write_feed(path: Path, posts: list[int], *, published: datetime | None = None) -> Path:
    """An Atom feed at `path` with posts numbered `posts` ("News: Post N", https://blog.test/N)."""
    when = (published or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    entries = "".join(
        f"<entry><id>urn:test:post:{n}</id><title>{escape(f'News: Post {n}')}</title>"
        f"<link rel='alternate' href='https://blog.test/{n}'/>"
        f"<published>{when}</published><updated>{when}</updated>"
        f"<summary>Body of post {n}.</summary><author><name>Ann</name></author></entry>"
        for n in posts
    )
    path.write_text(
        "<?xml version='1.0' encoding='UTF-8'?><feed xmlns='http://www.w3.org/2005/Atom'>"
        f"<id>urn:test:blog</id><title>Test blog</title><updated>{when}</updated>"
        f"<link rel='alternate' href='https://blog.test/'/>{entries}</feed>",
        encoding="utf-8",
    )
    return path
