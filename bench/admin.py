"""Benchmark: every /admin page of `digest serve` with a million subscribers and 200 editions on
PostgreSQL. Prints p50/p95/max per page (client-side wall time, keep-alive, one request at a time).

    WITH_POSTGRES_DURABLE=1 .ci/with-postgres .venv/bin/python bench/admin.py
    .venv/bin/python bench/admin.py --server-url postgresql+psycopg://.../postgres --keep   # reuse later

Steps:
1. The bench database (`digest_admin_bench`): reused when its marker (COMMENT ON DATABASE: the
   shape below) matches, else created: `digest db upgrade`, then filled inside PostgreSQL with
   INSERT ... SELECT generate_series (no row goes through Python), then VACUUM ANALYZE.
   `digest db upgrade` runs on a reused one too (a newer migration may add an index).
2. The shape (defaults):
   - 1,000,000 subscribers signed up over 5 years, more of them lately (ids in sign-up order):
     80% active (2% of them paused), 12% unsubscribed, 2% pending, 4.5% bounced, 1.5% suspended;
     confirmed_at, unsubscribed_at, bounced_at spread between sign-up and now; 35% chose topics.
   - 200 weekly editions (Mondays 09:00 UTC back from this week), 8 posts each, from 12 feeds (2
     with a last error); 40 posts waiting for the next edition.
   - Deliveries: 200 editions x ~800,000 recipients would be 160 M rows (~25 GB): too much here.
     The newest --full editions (3) have every delivery row (99.5% sent, 0.3% failed, half of
     those bounces, 0.2% skipped; the newest still has 0.3% pending). Older editions keep their
     `recipients` count (worked out from the subscribers' dates), all their undelivered rows at
     the same rates (failed, skipped: what the admin pages count) and a 1-in-2,000 sample of sent ones.
3. `digest admin add`, `digest serve --no-scheduler` (the real uvicorn, the web app alone: no
   scheduled send or feed poll during the run), sign in through the login form.
4. The pages: those of the admin NAV (digest.service.admin.area.NAV), then every page linked from
   them under /admin (links, frames, GET forms: text inputs filled with --search, each select at
   its first, second and last option), and from those, to --depth; same origin, GET only, never a
   POST (no logout, no send). Pages whose paths and queries differ only in numbers (/editions/7,
   /editions/8; ?before=20, ?before=5000) count as one kind: the first and the last found of each
   kind are measured.
5. Each page: one warm-up request, then --requests timed ones; p50/p95/max, size. A line warns of
   any page whose p95 reaches 300 ms (the target of issue 12); the exit status is 0 either way.
   A download (a response that is not HTML, e.g. the CSV export) is timed once and listed apart.

Figures depend on the machine and its load (printed); docs/admin.md keeps a run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from smtp_ceiling import free_port  # noqa: E402
from sqlalchemy import make_url  # noqa: E402

from digest.config import render_config  # noqa: E402
from digest.service.admin.area import ADMIN, NAV  # noqa: E402

DIGEST = [sys.executable, "-m", "digest"]
DATABASE = "digest_admin_bench"
SHAPE_VERSION = 1  # bump when the fill below changes: a kept database is then filled again
TARGET_MS = 300
ADMIN_EMAIL = "bench@example.com"
PASSWORD = "bench password, long enough"
SKIP = {ADMIN + "/login", ADMIN + "/logout", ADMIN + "/admin.css"}


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def digest(config: Path, *args: str, stdin: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    done = subprocess.run([*DIGEST, "--config", str(config), *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=config.parent)
    if done.returncode != 0:
        raise SystemExit(f"digest {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


# --- the fill ---------------------------------------------------------------------------------

def fill_statements(subscribers: int, editions: int, full: int) -> list[tuple[str, str]]:
    """(what, SQL) in order. Everything relative to now(), so the overview's 26 weeks have data."""
    n, e = subscribers, editions
    return [
        ("subscribers", f"""
INSERT INTO subscriber (email, name, status, paused, topics, created_at, confirmed_at, unsubscribed_at,
                        confirmation_sent_at, bounced_at)
SELECT 'reader' || lpad(i::text, 7, '0') || '@' || (ARRAY['example.com','mail.test','post.test','inbox.test'])[1 + i % 4],
       CASE WHEN i % 3 = 0 THEN NULL ELSE 'Reader ' || i END,
       st, st = 'active' AND r2 < 0.02,
       CASE WHEN r2 < 0.25 THEN '["Explained"]' WHEN r2 < 0.35 THEN '["Explained", "In Focus"]' END,
       created, CASE WHEN st <> 'pending' THEN created + r3 * interval '2 hours' END,
       CASE WHEN st = 'unsubscribed' THEN created + (now() - created) * (0.05 + 0.95 * r3) END,
       created,
       CASE WHEN st IN ('bounced', 'suspended') THEN created + (now() - created) * (0.05 + 0.95 * r3) END
FROM (
  SELECT i, random() AS r2, random() AS r3,
         -- sign-ups over 5 years, denser lately; the pending ones are the newest
         now() - interval '1826 days' * (1 - power(i::float8 / {n}, 0.6)) AS created,
         CASE WHEN i > {n} - {n} / 50 AND r1 < 0.7 THEN 'pending'
              WHEN r1 < 0.80 THEN 'active' WHEN r1 < 0.92 THEN 'unsubscribed'
              WHEN r1 < 0.965 THEN 'bounced' WHEN r1 < 0.98 THEN 'suspended' ELSE 'active' END AS st
  FROM (SELECT i, random() AS r1 FROM generate_series(1, {n}) AS i) AS g
) AS s
"""),
        ("feeds and posts", f"""
INSERT INTO source (url, title, created_at, last_polled_at, last_fetched_at, last_error)
SELECT 'https://blog' || f || '.example.com/feed.atom', 'Blog number ' || f, now() - interval '4 years',
       now() - interval '20 minutes', now() - interval '20 minutes' - CASE WHEN f IN (5, 9) THEN interval '3 days' ELSE interval '0' END,
       CASE WHEN f = 5 THEN 'HTTP 503 from https://blog5.example.com/feed.atom'
            WHEN f = 9 THEN 'not a feed: https://blog9.example.com/feed.atom (text/html)' END
FROM generate_series(1, 12) AS f;
INSERT INTO edition (number, created_at, status, subject, finished_at, slot)
SELECT k, w, 'sent', 'Bench Weekly #' || k || ': 8 new posts', w + interval '40 minutes', w
FROM (SELECT k, date_trunc('week', now()) + interval '9 hours' - interval '1 week' * ({e} - k)
             - CASE WHEN date_trunc('week', now()) + interval '9 hours' > now() THEN interval '1 week' ELSE interval '0' END AS w
      FROM generate_series(1, {e}) AS k) AS x;
INSERT INTO post (source_id, guid, url, title, category, display_title, author, published_at, excerpt,
                  content_hash, first_seen_at, updated_at, eligible)
SELECT 1 + p % 12, 'tag:bench,' || p, 'https://blog' || (1 + p % 12) || '.example.com/posts/' || p,
       cat || ': Post number ' || p, cat, 'Post number ' || p, 'Author ' || (p % 30), t,
       repeat('A paragraph of the post, as its feed gives it. ', 8), md5(p::text), t, t, true
FROM (SELECT p, (ARRAY['Explained','In Focus','Notes'])[1 + p % 3] AS cat,
             now() - interval '1 week' * ({e} + 1) + interval '1 hour' * p * 21 AS t
      FROM generate_series(1, {e} * 8 + 40) AS p) AS x;
INSERT INTO editionpost (post_id, edition_id)
SELECT p.id, ed.id FROM post p JOIN edition ed ON ed.number = (p.id - 1) / 8 + 1;
UPDATE post SET first_seen_at = now() - interval '1 hour' * (id % 40), published_at = now() - interval '1 hour' * (id % 40),
                updated_at = now() WHERE id > {e} * 8;
"""),
        (f"deliveries of the newest {full} editions (every row)", f"""
INSERT INTO delivery (edition_id, subscriber_id, status, attempts, last_error, message_id, sent_at)
SELECT ed.id, s.id, st, CASE WHEN st = 'pending' THEN 1 ELSE 1 + (st = 'failed')::int END,
       CASE WHEN st = 'failed' AND s.id % 2 = 0 THEN 'bounced (550 5.1.1 mailbox unknown)'
            WHEN st = 'failed' THEN '554 5.7.1 rejected by policy'
            WHEN st = 'pending' THEN '451 4.7.1 try again later' END,
       CASE WHEN st = 'sent' THEN '<' || ed.number || '.' || s.id || '@bench.test>' END,
       CASE WHEN st = 'sent' THEN ed.created_at + interval '1 second' * (s.id % 2400) END
FROM edition ed
CROSS JOIN LATERAL (
  SELECT s.id, CASE WHEN h < 3 THEN 'failed' WHEN h < 5 THEN 'skipped'
                    WHEN h < 8 AND ed.number = {e} THEN 'pending' ELSE 'sent' END AS st
  FROM (SELECT s.id, (s.id::bigint * 7919 + ed.number * 104729) % 1000 AS h FROM subscriber s
        WHERE s.confirmed_at < ed.created_at
          AND (s.unsubscribed_at IS NULL OR s.unsubscribed_at > ed.created_at)
          AND (s.bounced_at IS NULL OR s.bounced_at > ed.created_at)) AS s
) AS s
WHERE ed.number > {e} - {full};
UPDATE edition SET status = 'sending', finished_at = NULL WHERE number = {e};
"""),
        ("deliveries of the older editions (undelivered rows, a sample of the sent)", f"""
INSERT INTO delivery (edition_id, subscriber_id, status, attempts, last_error, message_id, sent_at)
SELECT ed.id, s.id, st, 1 + (st = 'failed')::int,
       CASE WHEN st = 'failed' AND s.id % 2 = 0 THEN 'bounced (550 5.1.1 mailbox unknown)'
            WHEN st = 'failed' THEN '554 5.7.1 rejected by policy' END,
       CASE WHEN st = 'sent' THEN '<' || ed.number || '.' || s.id || '@bench.test>' END,
       CASE WHEN st = 'sent' THEN ed.created_at + interval '1 second' * (s.id % 2400) END
FROM edition ed
CROSS JOIN LATERAL (
  SELECT g AS id, CASE WHEN g % 1000 < 600 THEN 'failed' ELSE 'skipped' END AS st
  FROM generate_series(1 + ed.number % 200, {n}, 200) AS g   -- 0.5%: failed and skipped
  UNION ALL
  SELECT g, 'sent' FROM generate_series(101 + ed.number % 200, {n}, 2000) AS g  -- 1 in 2,000 (never in the above)
) AS pick
JOIN subscriber s ON s.id = pick.id AND s.confirmed_at < ed.created_at
WHERE ed.number <= {e} - {full};
"""),
        ("recipients of every edition", f"""
-- the full ones: their rows; the older ones: who was on the list that Monday, from the dates
UPDATE edition ed SET recipients = (SELECT count(*) FROM delivery d WHERE d.edition_id = ed.id)
WHERE ed.number > {e} - {full};
WITH changes AS (
  SELECT date_trunc('week', confirmed_at) AS wk, count(*) AS d FROM subscriber WHERE confirmed_at IS NOT NULL GROUP BY 1
  UNION ALL
  SELECT date_trunc('week', COALESCE(unsubscribed_at, bounced_at)), -count(*) FROM subscriber
  WHERE COALESCE(unsubscribed_at, bounced_at) IS NOT NULL GROUP BY 1
), listed AS (
  SELECT wk, sum(sum(d)) OVER (ORDER BY wk) AS size FROM changes GROUP BY wk
)
UPDATE edition ed SET recipients = (SELECT size FROM listed WHERE wk < date_trunc('week', ed.created_at)
                                    ORDER BY wk DESC LIMIT 1)
WHERE ed.number <= {e} - {full};
"""),
    ]


def marker(subscribers: int, editions: int, full: int) -> str:
    return f"digest admin bench v{SHAPE_VERSION}: subscribers={subscribers} editions={editions} full={full}"


def prepare(server_url: str, config: Path, args: argparse.Namespace) -> tuple[str, bool]:
    """The bench database's libpq DSN, and whether it was filled now (else reused)."""
    admin = libpq(server_url)
    want = marker(args.subscribers, args.editions, args.full)
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (DATABASE,)).fetchone()
        reuse = row is not None and row[0] == want
        if row is not None and not reuse:
            conn.execute(f'DROP DATABASE "{DATABASE}" WITH (FORCE)')
        if not reuse:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    dsn = libpq(make_url(server_url).set(database=DATABASE).render_as_string(hide_password=False))
    print("digest db upgrade:", digest(config, "db", "upgrade").strip().replace("\n", "; ") or "done", flush=True)
    if reuse:
        print(f"reusing {DATABASE} ({want})", flush=True)
        return dsn, False
    t_all = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        conn.execute("SET work_mem = '256MB'")
        for what, sql in fill_statements(args.subscribers, args.editions, args.full):
            t0 = time.perf_counter()
            conn.execute(sql)
            conn.commit()
            print(f"  filled {what}: {time.perf_counter() - t0:.1f} s", flush=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        print(f"  VACUUM ANALYZE: {time.perf_counter() - t0:.1f} s", flush=True)
        conn.execute(f"COMMENT ON DATABASE \"{DATABASE}\" IS '{want}'")
    print(f"filled {DATABASE} in {time.perf_counter() - t_all:.0f} s", flush=True)
    return dsn, True


# --- the pages --------------------------------------------------------------------------------

class Links(HTMLParser):
    """Where a page leads with a GET: a[href], iframe[src], and GET forms (their text inputs, and
    their selects with the options' values)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.forms: list[tuple[str, list[str], dict[str, list[str]]]] = []  # (action, text inputs, selects)
        self._form: tuple[str, list[str], dict[str, list[str]]] | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a" and a.get("href"):
            self.found.append(a["href"])
        elif tag == "iframe" and a.get("src"):
            self.found.append(a["src"])
        elif tag == "form" and a.get("method", "get").lower() == "get":
            self._form = (a.get("action", ""), [], {})
            self.forms.append(self._form)
        elif self._form is None:
            return
        elif tag == "input" and a.get("name") and a.get("type", "text") in ("text", "search", "email"):
            self._form[1].append(a["name"])
        elif tag == "select" and a.get("name"):
            self._select = a["name"]
            self._form[2][self._select] = []
        elif tag == "option" and self._select is not None:
            self._form[2][self._select].append(a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None


def kind_of(path_and_query: str) -> str:
    """/admin/editions/17?page=3 -> /admin/editions/N?page=N: pages of one kind cost alike (a
    query's words, ?status=pending or ?match=contains, make kinds of their own)."""
    parts = urlsplit(path_and_query)
    return re.sub(r"\d+", "N", parts.path + ("?" + "&".join(sorted(parts.query.split("&"))) if parts.query else ""))


def form_queries(texts: list[str], selects: dict[str, list[str]], search: str) -> list[dict[str, str]]:
    """A GET form's submissions: the text inputs filled with `search` and each select at its first
    option; then the same with one select at its second, and at its last, option."""
    base = {**{n: search for n in texts}, **{n: options[0] for n, options in selects.items() if options}}
    variants = [base]
    for name, options in selects.items():
        for option in dict.fromkeys(options[1:2] + options[-1:]):
            variants.append({**base, name: option})
    return variants


def linked(base: str, page_url: str, html: str, search: str) -> Iterable[str]:
    """The admin pages `html` leads to, as path?query, same origin only."""
    parser = Links()
    parser.feed(html)
    targets = list(parser.found)
    for action, texts, selects in parser.forms:
        if texts or selects:
            for query in form_queries(texts, selects, search):
                targets.append((action or page_url).split("?")[0] + "?" + urlencode(query))
    origin = urlsplit(base)
    for t in targets:
        u = urlsplit(urljoin(page_url, t))
        if (u.scheme, u.netloc) != (origin.scheme, origin.netloc):
            continue
        if not (u.path == ADMIN or u.path.startswith(ADMIN + "/")) or u.path in SKIP:
            continue
        yield u.path + ("?" + u.query if u.query else "")


def discover(client: httpx.Client, base: str, depth: int, search: str) -> list[str]:
    """The NAV pages, then what they link to (to `depth`): the first and last found of each kind."""
    kinds: dict[str, list[str]] = {}
    frontier = [ADMIN + rel for _, rel in NAV]
    seen: set[str] = set()
    for level in range(depth + 1):
        following: list[str] = []
        for path in frontier:
            if path in seen:
                continue
            seen.add(path)
            kinds.setdefault(kind_of(path), []).append(path)
            if level == depth:
                continue
            r = client.get(path)
            if r.status_code != 200:
                print(f"  ! {path}: HTTP {r.status_code}", flush=True)
                continue
            if r.headers.get("content-type", "").startswith("text/html"):
                following.extend(linked(base, base + path, r.text, search))
        frontier = following
    pages = []
    for found in kinds.values():
        pages.extend(dict.fromkeys([found[0], found[-1]]))
    return pages


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, max(0, round(q * len(sorted_ms) + 0.5) - 1))]


def measure(client: httpx.Client, path: str, requests: int) -> tuple[int, int, list[float], bool]:
    """(status, bytes, sorted wall times in ms, is a page) of `requests` GETs after a warm-up. A
    download (not HTML: a CSV export of the whole list) is timed once, the warm-up itself."""
    t0 = time.perf_counter()
    r = client.get(path)
    if not r.headers.get("content-type", "").startswith("text/html"):
        return r.status_code, len(r.content), [(time.perf_counter() - t0) * 1000], False
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        r = client.get(path)
        r.read()
        times.append((time.perf_counter() - t0) * 1000)
    return r.status_code, len(r.content), sorted(times), True


def sign_in(client: httpx.Client) -> None:
    form = client.get(ADMIN + "/login")
    csrf = re.search(r'name="csrf" value="([^"]*)"', form.text)
    if not csrf:
        raise SystemExit(f"no login form at {ADMIN}/login (HTTP {form.status_code})")
    r = client.post(ADMIN + "/login", data={"email": ADMIN_EMAIL, "password": PASSWORD, "csrf": csrf.group(1)})
    if r.status_code != 303:
        raise SystemExit(f"sign-in failed: HTTP {r.status_code}")


def serve(config: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    with log.open("w") as out:
        proc = subprocess.Popen([*DIGEST, "--config", str(config), "serve", "--no-scheduler", "--port", str(port),
                                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=config.parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"digest serve did not answer:\n{log.read_text()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", default=os.environ.get("DIGEST_TEST_DATABASE_URL"),
                    help="postgresql+psycopg:// URL of a database to CREATE/DROP from (default: $DIGEST_TEST_DATABASE_URL)")
    ap.add_argument("--subscribers", type=int, default=1_000_000)
    ap.add_argument("--editions", type=int, default=200)
    ap.add_argument("--full", type=int, default=3, help="newest editions with every delivery row")
    ap.add_argument("--requests", type=int, default=20, help="timed requests per page")
    ap.add_argument("--depth", type=int, default=2, help="links followed from the NAV pages")
    ap.add_argument("--search", default="reader00424", help="what GET forms (search boxes) are filled with")
    ap.add_argument("--keep", action="store_true", help=f"keep {DATABASE} for the next run (reused by its marker)")
    args = ap.parse_args()
    if not args.server_url or not args.server_url.startswith("postgresql"):
        raise SystemExit("need --server-url postgresql+psycopg://... (or run under .ci/with-postgres)")
    if not 0 < args.full <= args.editions:
        raise SystemExit("--full must be between 1 and --editions")

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = Path(tmp) / "digest.toml"
        url = make_url(args.server_url).set(database=DATABASE).render_as_string(hide_password=False)
        config.write_text(render_config(
            name="Bench Weekly", from_="Bench Weekly <news@bench.test>", public_url=base,
            feeds=[str(ROOT / "examples" / "codelooru.atom")], database_url=url, first_edition_days=0))
        dsn, filled = prepare(args.server_url, config, args)
        try:
            digest(config, "admin", "add", ADMIN_EMAIL, "--password-stdin", stdin=PASSWORD + "\n")
            with psycopg.connect(dsn) as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
                settings = {k: conn.execute(f"SHOW {k}").fetchone()[0]
                            for k in ("fsync", "synchronous_commit", "shared_buffers")}
                sizes = conn.execute(
                    "SELECT (SELECT count(*) FROM subscriber), (SELECT count(*) FROM edition),"
                    " (SELECT count(*) FROM delivery), pg_size_pretty(pg_database_size(current_database()))").fetchone()
            proc = serve(config, port, Path(tmp) / "serve.log")
            try:
                with httpx.Client(base_url=base, timeout=60) as client:
                    sign_in(client)
                    pages = discover(client, base, args.depth, args.search)
                    load_during = os.getloadavg()
                    print(f"\n{len(pages)} pages, {args.requests} requests each (after one warm-up):", flush=True)
                    print(f"  {'page':<62} {'status':>6} {'KB':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
                    slow, downloads = [], []
                    for path in pages:
                        status, size, ms, is_page = measure(client, path, args.requests)
                        if not is_page:
                            downloads.append((path, status, size, ms[0]))
                            continue
                        p95 = percentile(ms, 0.95)
                        print(f"  {path:<62} {status:>6} {size / 1024:>6.0f} {statistics.median(ms):>8.0f}"
                              f" {p95:>8.0f} {ms[-1]:>8.0f}", flush=True)
                        if p95 >= TARGET_MS or status != 200:
                            slow.append(path)
                    if downloads:
                        print("downloads (not pages; timed once):")
                    for path, status, size, once in downloads:
                        print(f"  {path:<62} {status:>6} {size / 1024:>6.0f} KB in {once / 1000:.1f} s", flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
        finally:
            if not args.keep:
                with psycopg.connect(libpq(args.server_url), autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')

    print()
    print(f"PostgreSQL {version} ({', '.join(f'{k}={v}' for k, v in settings.items())});"
          f" {'filled now' if filled else 'reused'}: {sizes[0]:,} subscribers, {sizes[1]:,} editions,"
          f" {sizes[2]:,} delivery rows, {sizes[3]}")
    print(f"cores: {os.cpu_count()}; load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)},"
          f" during: {' '.join(f'{x:.2f}' for x in load_during)}, after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for path in slow:
        print(f"WARNING: {path}: p95 at or over {TARGET_MS} ms, or not HTTP 200")


if __name__ == "__main__":
    main()
