"""The HTTP API at /api/v1: keys made and revoked with the real `digest api-key` command, every
endpoint through the real app (FastAPI's TestClient, and `digest serve` on uvicorn for the keys),
a real database (SQLite, or PostgreSQL with DIGEST_TEST_DATABASE_URL) and a real SMTP server
(aiosmtpd) receiving the confirmation mails."""

from __future__ import annotations

import hashlib
import re
import time
import warnings
from datetime import timedelta

import httpx
import pytest
from sqlmodel import select

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx's successor
    from fastapi.testclient import TestClient

import test_serve as serving
from conftest import one_line_error, run_digest
from digest.mail.mailer import SMTPMailer
from digest.service import apikeys
from digest.service import pipeline as jobs
from digest.service import subscribers as subs
from digest.service.web import create_app
from digest.store.models import ApiKey, Delivery, Outbox, OutboxStatus, Subscriber, SubscriberStatus

CONFIRM_LINK = re.compile(r"https?://[^\s\"<>]+/confirm/[A-Za-z0-9._-]+")
ERROR_CODES = {"unauthorized", "rate_limited", "not_found", "method_not_allowed", "validation_failed",
               "invalid_email", "unknown_topic", "unknown_cadence", "subscriber_exists", "internal_error"}


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def client(settings, clock, db):
    with TestClient(create_app(settings, clock=clock)) as c:
        yield c


@pytest.fixture
def key(db, clock) -> str:
    _, key = apikeys.create(db, "test", clock)
    return key


@pytest.fixture
def api(client, key):
    """The client, sending the key with every request, at /api/v1."""
    return Api(client, key)


class Api:
    def __init__(self, client: TestClient, key: str):
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    def __getattr__(self, method: str):
        def call(path: str, headers: dict[str, str] | None = None, **kw):
            return self.client.request(method.upper(), f"/api/v1{path}", headers={**self.headers, **(headers or {})}, **kw)
        return call


@pytest.fixture
def posts(db, settings, clock):
    """The fixture blog's posts: categories Architecture, Explained and In Focus."""
    jobs.poll(db, settings, clock)


def error(r, status: int, code: str) -> str:
    """The message of an error answer, after checking its status, shape and code."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code and code in ERROR_CODES
    assert body["error"]["message"]
    return body["error"]["message"]


def stored(db, email: str) -> Subscriber | None:
    db.expire_all()
    sub = db.exec(select(Subscriber).where(Subscriber.email == email)).first()
    db.rollback()
    return sub


def settled(db, timeout: float = 30) -> None:
    """Wait until the app's outbox relay has sent what it can (no mail waiting or in flight)."""
    deadline = time.monotonic() + timeout
    while True:
        db.expire_all()
        busy = db.exec(select(Outbox).where(Outbox.status == OutboxStatus.pending)).all()
        db.rollback()
        if not busy:
            return
        assert time.monotonic() < deadline, f"outbox still busy after {timeout} s: {busy}"
        time.sleep(0.02)


# --- keys: the command, and what the server makes of them --------------------------------------


@pytest.mark.slow
def test_api_keys_made_listed_and_revoked_with_the_command_on_a_running_server(tmp_path, smtp_server):
    serve = serving.web_only(tmp_path, smtp_server)
    config = tmp_path / "digest.toml"
    try:
        made = run_digest(config, "api-key", "create", "Our site", check=True)
        key = made.stdout.strip()
        assert re.fullmatch(r"dk_[A-Za-z0-9_-]{43}", key), made.stdout  # the key alone on stdout, for scripts
        assert "not shown again" in made.stderr and key not in made.stderr

        listed = run_digest(config, "api-key", "list", check=True).stdout
        assert "Our site" in listed and "1 key, 1 in use" in listed
        assert key not in listed and key[3:12] not in listed
        with serving.database(config) as s:
            [row] = s.exec(select(ApiKey)).all()
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert key not in (row.name, row.key_hash)

        again = run_digest(config, "api-key", "create", "Our site")
        assert again.returncode == 1
        assert one_line_error(again) == ("error: an API key named 'Our site' exists: revoke it first,"
                                         " or choose another name")

        base = f"http://127.0.0.1:{serve.port}/api/v1"
        auth = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"{base}/subscribers", json={"email": "ann@example.com"}, headers=auth, timeout=10)
        assert r.status_code == 201 and r.json()["status"] == "pending"
        serving.wait_for(lambda: smtp_server.to("ann@example.com"), 30, lambda: "the confirmation mail")
        assert httpx.get(f"{base}/subscribers", headers=auth, timeout=10).json()["data"][0]["email"] == "ann@example.com"
        with serving.database(config) as s:
            assert s.exec(select(ApiKey)).one().last_used_at is not None

        assert run_digest(config, "api-key", "revoke", "Our site", check=True).stdout.strip() == \
            "Revoked API key 1 (Our site)"
        r = httpx.get(f"{base}/subscribers", headers=auth, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert run_digest(config, "api-key", "revoke", "1", check=True).stdout.strip() == \
            "API key 1 (Our site) was already revoked"
        missing = run_digest(config, "api-key", "revoke", "Their site")
        assert one_line_error(missing) == "error: no API key 'Their site' (see `digest api-key list`)"

        # A revoked key's name can go to its replacement.
        replacement = run_digest(config, "api-key", "create", "Our site", check=True).stdout.strip()
        assert httpx.get(f"{base}/editions", headers={"Authorization": f"Bearer {replacement}"},
                         timeout=10).status_code == 200
        assert "2 keys, 1 in use" in run_digest(config, "api-key", "list", check=True).stdout
        assert serve.stop() == 0
    finally:
        if serve.proc.poll() is None:
            serve.proc.kill()
    log = serve.text()
    assert "/api/v1/subscribers" in log  # the access log is there ...
    assert key not in log and replacement not in log  # ... and no key in it


def test_a_name_is_needed_and_a_number_is_not_a_name(db, clock):
    from digest.errors import DigestError

    with pytest.raises(DigestError, match="needs a name"):
        apikeys.create(db, " \u200b ", clock)
    with pytest.raises(DigestError, match="is a number"):
        apikeys.create(db, "42", clock)


def test_requests_without_a_valid_key_get_401(client, db, clock, key):
    r = client.get("/api/v1/subscribers")
    assert "Authorization: Bearer" in error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    for header in (f"Basic {key}", f"Bearer {key}x", "Bearer dk_", f"Bearer {key[3:]}", "Bearer"):
        error(client.get("/api/v1/subscribers", headers={"Authorization": header}), 401, "unauthorized")
    # Never from a URL, where it would be logged.
    error(client.get(f"/api/v1/subscribers?key={key}&api_key={key}&token={key}"), 401, "unauthorized")

    assert client.get("/api/v1/subscribers", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    apikeys.revoke(db, apikeys.find(db, "test"), clock)
    r = client.get("/api/v1/subscribers", headers={"Authorization": f"Bearer {key}"})
    assert "revoked" in error(r, 401, "unauthorized")
    # ... before anything else is looked at
    error(client.post("/api/v1/subscribers", json={}, headers={"Authorization": f"Bearer {key}"}), 401, "unauthorized")


def test_last_used_is_noted_at_most_once_a_minute(api, db, clock):
    assert api.get("/editions").status_code == 200
    db.expire_all()
    [row] = db.exec(select(ApiKey)).all()
    assert row.last_used_at == clock.now
    first = clock.now
    clock.now += timedelta(seconds=30)
    api.get("/editions")
    db.expire_all()
    assert db.exec(select(ApiKey)).one().last_used_at == first
    clock.now += timedelta(seconds=31)
    api.get("/editions")
    db.expire_all()
    assert db.exec(select(ApiKey)).one().last_used_at == clock.now


# --- subscribers: create ----------------------------------------------------------------------


def test_create_pending_mails_a_confirmation_through_the_outbox(api, db, smtp_server, posts, settings):
    r = api.post("/subscribers", json={"email": "Ann@Example.COM", "name": "Ann", "topics": ["Explained"]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["email"] == "ann@example.com" and body["status"] == "pending"
    assert body["name"] == "Ann" and body["topics"] == ["Explained"] and body["confirmed_at"] is None
    assert stored(db, "ann@example.com").status == SubscriberStatus.pending
    settled(db)
    [mail] = smtp_server.to("ann@example.com")
    link = CONFIRM_LINK.search(mail.message.get_body(("plain",)).get_content()).group(0)
    assert link.startswith(settings.newsletter.public_url + "/confirm/")


def test_create_active_subscribes_at_once_without_mail(api, db, smtp_server, posts):
    r = api.post("/subscribers", json={"email": "bob@example.com", "status": "active", "topics": ["In Focus"]})
    assert r.status_code == 201
    assert r.json()["status"] == "active" and r.json()["confirmed_at"] is not None
    sub = stored(db, "bob@example.com")
    assert sub.status == SubscriberStatus.active and sub.topics == ["In Focus"]
    settled(db)
    assert smtp_server.received == []


@pytest.mark.parametrize("status", ["pending", "active", "unsubscribed"])
def test_an_address_on_the_list_is_left_as_it_is_with_409(api, db, clock, smtp_server, status):
    sub, _ = subs.add(db, "cy@example.com", clock, name="Cy")
    sub.status = SubscriberStatus(status)
    db.add(sub)
    db.commit()
    for wanted in ("pending", "active"):
        r = api.post("/subscribers", json={"email": "CY@example.com", "name": "Someone", "status": wanted})
        assert "cy@example.com" in error(r, 409, "subscriber_exists")
    after = stored(db, "cy@example.com")
    assert after.status == SubscriberStatus(status) and after.name == "Cy"
    settled(db)
    assert smtp_server.received == []


def test_create_refuses_bad_input_and_stores_nothing(api, db, posts):
    assert "not a valid email address" in error(api.post("/subscribers", json={"email": "ann@"}), 422, "invalid_email")
    message = error(api.post("/subscribers", json={"email": "ann@example.com", "topics": ["Nope"]}), 422, "unknown_topic")
    assert message == "unknown topic 'Nope': no post carries it (known: Architecture, Explained, In Focus)"
    assert "body.email" in error(api.post("/subscribers", json={"name": "Ann"}), 422, "validation_failed")
    assert "body.status" in error(api.post("/subscribers", json={"email": "ann@example.com", "status": "bounced"}),
                                  422, "validation_failed")
    error(api.post("/subscribers", content=b'{"email": ', headers={"Content-Type": "application/json"}),
          422, "validation_failed")
    error(api.post("/subscribers", json=["ann@example.com"]), 422, "validation_failed")
    db.expire_all()
    assert db.exec(select(Subscriber)).all() == []


def test_pending_creates_have_their_own_lower_rate_limit_per_key(settings, clock, db, smtp_server):
    settings.api.sign_ups_per_minute = 2
    _, key = apikeys.create(db, "site", clock)
    _, other = apikeys.create(db, "other", clock)
    with TestClient(create_app(settings, clock=clock)) as client:
        api = Api(client, key)
        assert [api.post("/subscribers", json={"email": f"r{i}@example.com"}).status_code for i in range(2)] == [201, 201]
        r = api.post("/subscribers", json={"email": "r2@example.com"})
        error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert stored(db, "r2@example.com") is None
        # Subscribing someone who has agreed already mails nobody: not limited by it.
        assert api.post("/subscribers", json={"email": "r3@example.com", "status": "active"}).status_code == 201
        assert Api(client, other).post("/subscribers", json={"email": "r4@example.com"}).status_code == 201
        clock.now += timedelta(seconds=61)
        assert api.post("/subscribers", json={"email": "r2@example.com"}).status_code == 201
        settled(db)
    assert sorted(a for got in smtp_server.received for a in got.recipients) == [
        "r0@example.com", "r1@example.com", "r2@example.com", "r4@example.com"]


# --- subscribers: get, update, unsubscribe, erase ----------------------------------------------


def test_get_update_unsubscribe_and_erase(api, db, clock, posts):
    sub, _ = subs.add(db, "dee@example.com", clock, name="Dee")
    sub_id = sub.id
    path = f"/subscribers/{sub_id}"
    r = api.get(path)
    assert r.status_code == 200
    assert r.json() == {"id": sub.id, "email": "dee@example.com", "name": "Dee", "status": "active", "topics": None,
                        "cadence": "weekly", "paused": False, "created_at": "2026-11-26T09:00:00Z", "confirmed_at": "2026-11-26T09:00:00Z",
                        "unsubscribed_at": None}

    r = api.patch(path, json={"topics": ["Explained", "In Focus"]})
    assert r.status_code == 200 and r.json()["topics"] == ["Explained", "In Focus"] and r.json()["name"] == "Dee"
    r = api.patch(path, json={"name": "Dee\u202e Dum  "})
    assert r.json()["name"] == "Dee Dum" and r.json()["topics"] == ["Explained", "In Focus"]  # left as it was
    assert api.patch(path, json={"topics": []}).json()["topics"] is None  # none chosen: every one
    assert api.patch(path, json={"name": None}).json()["name"] is None
    assert "'Gossip'" in error(api.patch(path, json={"topics": ["Gossip"]}), 422, "unknown_topic")
    error(api.patch(path, json={"topics": "Explained"}), 422, "validation_failed")
    assert api.patch(path, json={}).status_code == 200
    sub = stored(db, "dee@example.com")
    assert (sub.name, sub.topics) == (None, None)

    clock.now += timedelta(hours=1)
    r = api.post(f"{path}/unsubscribe")
    assert r.json()["status"] == "unsubscribed" and r.json()["unsubscribed_at"] == "2026-11-26T10:00:00Z"
    assert api.post(f"{path}/unsubscribe").json()["status"] == "unsubscribed"  # idempotent
    assert stored(db, "dee@example.com").status == SubscriberStatus.unsubscribed

    r = api.delete(path)
    assert r.status_code == 204 and r.content == b""
    assert stored(db, "dee@example.com") is None
    for method in ("get", "patch", "delete"):
        kw = {"json": {}} if method == "patch" else {}
        assert error(getattr(api, method)(path, **kw), 404, "not_found") == f"no subscriber {sub_id}"
    error(api.post(f"{path}/unsubscribe"), 404, "not_found")


def test_a_topic_no_post_carries_any_more_can_be_kept(api, db, clock, posts):
    sub, _ = subs.add(db, "eve@example.com", clock)
    sub.topics = ["Retired", "Explained"]
    db.add(sub)
    db.commit()
    r = api.patch(f"/subscribers/{sub.id}", json={"topics": ["Retired", "In Focus"]})
    assert r.status_code == 200 and r.json()["topics"] == ["In Focus", "Retired"]


def test_erasing_keeps_past_deliveries_anonymous(api, db, clock, smtp_server, posts, settings):
    sub, _ = subs.add(db, "fay@example.com", clock)
    with SMTPMailer(settings.smtp) as mailer:
        jobs.send(db, settings, mailer, clock, fetch=False)
    assert api.delete(f"/subscribers/{sub.id}").status_code == 204
    db.expire_all()
    [delivery] = db.exec(select(Delivery)).all()
    assert delivery.subscriber_id is None and delivery.status.value == "sent"


# --- subscribers: list ------------------------------------------------------------------------


def all_pages(api, limit: int, **params) -> list[dict]:
    seen, cursor = [], None
    while True:
        r = api.get("/subscribers", params={"limit": limit, **params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["data"]) <= limit
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def test_the_cursor_gives_every_subscriber_once_while_the_list_changes(api, db, clock):
    for i in range(10):
        subs.add(db, f"r{i:02}@example.com", clock)
    first = api.get("/subscribers", params={"limit": 4}).json()
    assert [s["email"] for s in first["data"]] == [f"r{i:02}@example.com" for i in range(4)]
    # Between two pages someone already listed leaves and someone new joins.
    subs.erase(db, subs.get(db, "r01@example.com"))
    subs.add(db, "late@example.com", clock)
    rest, cursor = [], first["next_cursor"]
    while cursor:
        page = api.get("/subscribers", params={"limit": 4, "cursor": cursor}).json()
        rest += page["data"]
        cursor = page["next_cursor"]
    emails = [s["email"] for s in first["data"] + rest]
    assert emails == [f"r{i:02}@example.com" for i in range(10)] + ["late@example.com"]

    assert len(all_pages(api, 500)) == 10
    assert len(all_pages(api, 1)) == 10
    assert len(all_pages(api, 10)) == 10  # exactly one full page: no empty page after it


def test_list_filters_and_refuses_what_it_cannot_read(api, db, clock):
    for i in range(5):
        subs.add(db, f"r{i}@example.com", clock)
    subs.unsubscribe(db, subs.get(db, "r2@example.com"), clock)
    assert [s["email"] for s in all_pages(api, 2, status="unsubscribed")] == ["r2@example.com"]
    assert len(all_pages(api, 2, status="active")) == 4
    assert [s["email"] for s in api.get("/subscribers", params={"email": "R3@Example.com"}).json()["data"]] == [
        "r3@example.com"]
    assert api.get("/subscribers", params={"email": "nobody@example.com"}).json() == {"data": [], "next_cursor": None}
    assert api.get("/subscribers", params={"email": "r3@example.com", "status": "pending"}).json()["data"] == []
    assert api.get("/subscribers").json()["next_cursor"] is None  # 100 by default

    assert "query.limit" in error(api.get("/subscribers", params={"limit": 501}), 422, "validation_failed")
    error(api.get("/subscribers", params={"limit": 0}), 422, "validation_failed")
    error(api.get("/subscribers", params={"status": "gone"}), 422, "validation_failed")
    for cursor in ("nonsense", "czE=x", "", "%%%", "cy0x"):
        assert "query.cursor" in error(api.get("/subscribers", params={"cursor": cursor}), 422, "validation_failed")


# --- editions ---------------------------------------------------------------------------------


def test_editions_list_and_get_with_counts(api, db, clock, smtp_server, settings, posts):
    error(api.get("/editions/1"), 404, "not_found")
    assert api.get("/editions").json() == {"data": []}
    for address in ("ann@example.com", "bob@example.com", "cy@example.com"):
        subs.add(db, address, clock)
    smtp_server.refuse["cy@example.com"] = "550 5.1.1 no such user"
    with SMTPMailer(settings.smtp) as mailer:
        jobs.send(db, settings, mailer, clock, fetch=False)

    [edition] = api.get("/editions").json()["data"]
    assert edition["number"] == 1 and edition["status"] == "sent" and edition["subject"].startswith("Test Weekly: ")
    posts_in_it = int(re.search(r"(\d+) new post", edition["subject"]).group(1))
    assert edition["counts"] == {"posts": posts_in_it, "pending": 0, "sent": 2, "failed": 1, "skipped": 0}
    assert api.get("/editions/1").json() == edition
    error(api.get("/editions/2"), 404, "not_found")
    error(api.get("/editions/first"), 404, "not_found")


def test_cadences_a_reader_is_given_and_switched_to_and_each_cadences_edition_1(tmp_path, smtp_server):
    """With a daily cadence beside the weekly one: a subscriber is created in either and switched
    through the API, who then gets every post exactly once; both cadences have an edition 1, and
    the API tells them apart."""
    from test_cadences import Publication, received_once

    blog = Publication(tmp_path, smtp_server)
    try:
        _, key = apikeys.create(blog.session, "test", blog.clock)
        with TestClient(create_app(blog.settings, clock=blog.clock)) as c:
            api = Api(c, key)
            r = api.post("/subscribers", json={"email": "ann@example.com", "status": "active", "cadence": "daily"})
            assert r.status_code == 201 and r.json()["cadence"] == "daily"
            bob = api.post("/subscribers", json={"email": "bob@example.com", "status": "active"}).json()
            assert bob["cadence"] == "weekly"
            r = api.post("/subscribers", json={"email": "cy@example.com", "cadence": "hourly"})
            assert "'hourly'" in error(r, 422, "unknown_cadence") and "weekly, daily" in error(r, 422, "unknown_cadence")
            assert stored(blog.session, "cy@example.com") is None
            r = api.post("/subscribers", json={"email": "dee@example.com", "cadence": "daily"})  # pending
            assert r.status_code == 201 and r.json()["cadence"] == "daily"
            assert stored(blog.session, "dee@example.com").cadence == "daily"

            blog.send("daily")  # daily 1: posts 1, 2
            blog.send()  # weekly 1: posts 1, 2
            blog.new_post()
            blog.send("daily")  # daily 2: post 3
            assert "'monthly'" in error(api.patch(f"/subscribers/{bob['id']}", json={"cadence": "monthly"}),
                                        422, "unknown_cadence")
            r = api.patch(f"/subscribers/{bob['id']}", json={"cadence": "daily"})
            assert r.status_code == 200 and r.json()["cadence"] == "daily"
            assert stored(blog.session, "bob@example.com").cadence_changed_at is not None  # the switch is recorded
            blog.new_post()
            blog.send("daily")  # daily 3: post 4; bob's first daily one catches up on 3 as well
            blog.send()  # weekly 2 (posts 3, 4): bob is no longer a weekly reader
            assert blog.got("bob@example.com") == [[1, 2], [3, 4]]
            assert set(received_once(blog.got("bob@example.com")).values()) == {1}
            assert api.patch(f"/subscribers/{bob['id']}", json={"cadence": None}).json()["cadence"] == "weekly"

            weekly_1, daily_1 = api.get("/editions/1").json(), api.get("/editions/1?cadence=daily").json()
            assert (weekly_1["cadence"], weekly_1["number"], weekly_1["counts"]["sent"]) == ("weekly", 1, 1)
            assert (daily_1["cadence"], daily_1["number"], daily_1["counts"]["sent"]) == ("daily", 1, 1)
            assert api.get("/editions/1?cadence=weekly").json() == weekly_1
            assert [e["number"] for e in api.get("/editions?cadence=daily").json()["data"]] == [3, 2, 1]
            assert [(e["cadence"], e["number"]) for e in api.get("/editions").json()["data"]] == [
                ("weekly", 2), ("daily", 3), ("daily", 2), ("weekly", 1), ("daily", 1)]
            assert api.get("/editions/3?cadence=daily").json()["counts"]["sent"] == 2  # ann and bob
            assert error(api.get("/editions/3"), 404, "not_found") == "no edition 3 of weekly"
            error(api.get("/editions/1?cadence=hourly"), 422, "unknown_cadence")
            error(api.get("/editions?cadence=hourly"), 422, "unknown_cadence")
    finally:
        blog.close()


# --- errors, the document, the rate limit -----------------------------------------------------


def test_every_error_under_api_v1_is_json_and_reader_pages_keep_html(client, api):
    assert "/api/v1/nothing" in error(client.get("/api/v1/nothing"), 404, "not_found")
    error(api.get("/nothing/at/all"), 404, "not_found")
    error(api.put("/subscribers"), 405, "method_not_allowed")
    error(api.get("/subscribers/0"), 404, "not_found")
    error(api.get(f"/subscribers/{2**70}"), 404, "not_found")
    r = client.get("/nothing")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    r = client.get("/archive/abc")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert client.get("/openapi.json").status_code == 404  # the reader app publishes none
    # The reader app's security headers cover the API too.
    r = api.get("/editions")
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Cache-Control"] == "no-store"


def test_the_openapi_document_describes_the_api_only(client):
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": "/api/v1"}]
    assert doc["info"]["title"] == "Test Weekly API"
    assert {path: sorted(item) for path, item in doc["paths"].items()} == {
        "/subscribers": ["get", "post"],
        "/subscribers/{subscriber_id}": ["delete", "get", "patch"],
        "/subscribers/{subscriber_id}/unsubscribe": ["post"],
        "/editions": ["get"],
        "/editions/{number}": ["get"],
    }
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http", "scheme": "bearer",
        "description": "A key from `digest api-key create NAME`, as `Authorization: Bearer dk_...`"}
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert operation["security"] == [{"ApiKey": []}], (path, method)
            for status in ("401", "429", "422"):
                if status in operation["responses"]:
                    assert operation["responses"][status]["content"]["application/json"]["schema"] == error_body
    assert "HTTPValidationError" not in r.text
    codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
    assert set(codes) == ERROR_CODES


def test_each_key_has_its_own_rate_limit(settings, clock, db):
    settings.api.rate_limit_per_minute = 3
    _, key = apikeys.create(db, "busy", clock)
    _, other = apikeys.create(db, "quiet", clock)
    with TestClient(create_app(settings, clock=clock)) as client:
        busy, quiet = Api(client, key), Api(client, other)
        assert [busy.get("/editions").status_code for _ in range(3)] == [200] * 3
        clock.now += timedelta(seconds=20)
        r = busy.get("/editions")
        assert "more than 3 requests a minute" in error(r, 429, "rate_limited")
        assert r.headers["Retry-After"] == "40"  # when the first of the three leaves the minute
        error(busy.post("/subscribers", json={"email": "x@example.com"}), 429, "rate_limited")
        assert quiet.get("/editions").status_code == 200
        clock.now += timedelta(seconds=41)
        assert busy.get("/editions").status_code == 200
