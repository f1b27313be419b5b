"""End to end: `digest send` to several subscribers through a real SMTP server."""

from __future__ import annotations

import pytest

from conftest import run_digest


@pytest.mark.slow
def test_send_delivers_each_subscriber_once_with_headers(config_path, smtp_server):
    for addr in ("ann@example.com", "bob@example.com", "cy@example.com"):
        run_digest(config_path, "subscribers", "add", addr, "--name", addr.split("@")[0].title(), check=True)
    first = run_digest(config_path, "send", check=True)
    assert "Edition 1: 5 posts, 3 delivered, 0 failed" in first.stdout
    assert sorted(r.recipients[0] for r in smtp_server.received) == ["ann@example.com", "bob@example.com", "cy@example.com"]

    again = run_digest(config_path, "send", check=True)
    assert "Nothing new to send." in again.stdout
    assert len(smtp_server.received) == 3
