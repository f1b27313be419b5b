"""Every setting and its default, in one place.

Settings come from a TOML file (``--config PATH``, else ``$DIGEST_CONFIG``, else
``./digest.toml``) and can be overridden from the environment as
``DIGEST_<SECTION>__<KEY>`` (e.g. ``DIGEST_SMTP__PORT=2525``).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import re
import secrets
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from digest.cron import Cron, zone
from digest.errors import ConfigError
from digest.subject import check_subject

DEFAULT_CONFIG_NAME = "digest.toml"
ENV_PREFIX = "DIGEST_"
# Variables named DIGEST_* that are not settings: where the config file is, the target of
# `digest db copy`, and the PostgreSQL server of the test suite.
OTHER_VARIABLES = frozenset({"DIGEST_CONFIG", "DIGEST_COPY_TO", "DIGEST_TEST_DATABASE_URL"})
# Sections under their former names, read as the new one (with a warning) for one release:
# [digest], the program's own name, was renamed [edition] (a section named for what it sets).
FORMER_SECTIONS = {"digest": "edition"}


def _env_list(value: Any) -> Any:
    """A list setting given as one string (from the environment): a JSON list when it starts
    with "[", else comma-separated (DIGEST_FEEDS__URLS=https://a/feed,https://b/feed)."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not a JSON list: {exc}") from None
    return [item.strip() for item in value.split(",") if item.strip()]


# A list of strings that can also be set from one environment variable (see _env_list).
StrList = Annotated[list[str], NoDecode, BeforeValidator(_env_list)]

log = logging.getLogger("digest")


class _Section(BaseModel):
    """A section of the config file. Each key's `description` is its documentation: `digest
    init` writes it as the key's comment and the README's configuration table shows it (a test
    checks the table). `examples[0]` is what `digest init` writes for a key without a default;
    `unset` (json_schema_extra) says what an unset optional key means, for the table."""

    model_config = ConfigDict(extra="forbid")


class NewsletterSettings(_Section):
    name: str = Field(description="shown in the subject and the header", examples=["My Newsletter"])
    from_: str = Field(alias="from",
                       description="From address, `Name <addr>`; its domain names Message-IDs and the List-Id",
                       examples=["My Newsletter <news@example.com>"])
    public_url: str = Field("http://127.0.0.1:8000",
                            description="base URL of the web app (`digest serve`), used in every link")
    site_url: str | None = Field(None, description="the blog's address: the page after signing up links back to it",
                                 examples=["https://blog.example.com"])
    secret_key: str = Field(min_length=16,
                            description="signs links (at least 16 characters; `digest init` generates one):"
                            " keep it secret")
    subject: str = Field("{name}: {n} new posts",  # fields: subject.SUBJECT_FIELDS
                         description="subject template: `{name}`, `{n}` (posts), `{number}` (edition), `{date}`;"
                                     " `{n} new posts` reads `1 new post` for one")
    reply_to: str | None = Field(None, description="a Reply-To address", examples=["editor@example.com"])
    list_id: str | None = Field(None, description="the List-Id header",
                                examples=["My Newsletter <my-newsletter.example.com>"],
                                json_schema_extra={"unset": "`Name <slug.from-domain>`"})
    feedback_id: str | None = Field(None, description="a `Feedback-ID` header (Gmail's feedback loop)",
                                    examples=["weekly:newsletter"])

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("from_")
    @classmethod
    def _from_has_address(cls, value: str) -> str:
        _, addr = parseaddr(value)
        if "@" not in addr or any(c in value for c in "\r\n"):
            raise ValueError("must be an address such as 'Name <news@example.com>'")
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        check_subject(value)  # ValueError naming the unknown field
        return value

    @field_validator("public_url", "site_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @property
    def from_address(self) -> str:
        return parseaddr(self.from_)[1]

    @property
    def domain(self) -> str:
        return self.from_address.rpartition("@")[2].lower()


class DatabaseSettings(_Section):
    url: str = Field("sqlite:///digest.db",
                     description="SQLAlchemy URL: SQLite (a relative path is relative to the config"
                     " file), or PostgreSQL as `postgresql+psycopg://user@host/db`")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from sqlalchemy import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL (e.g. sqlite:///digest.db or postgresql+psycopg://user@host/dbname)"
            ) from None
        try:
            url.get_dialect()  # loads SQLAlchemy's module for the dialect, not the driver
        except NoSuchModuleError:
            raise ValueError(f"unknown kind of database {url.drivername!r} (sqlite or postgresql+psycopg)") from None
        return value


@dataclass(frozen=True)
class FeedLocation:
    """One entry of feeds.urls."""

    # Source.url: the URL as written; a local path relative to the config file's folder when it
    # is inside it (so moving that folder with its feeds keeps every source and its posts).
    key: str
    location: str  # what is fetched: the URL, or the absolute path
    # The key a local feed had before keys were relative (the path resolved to absolute, or a
    # file:// URL as written): a Source row still under it is re-keyed on the next poll.
    former_key: str


class FeedsSettings(_Section):
    urls: StrList = Field(min_length=1, description="list of http(s) URLs or local file paths of RSS, Atom or JSON Feed"
                          " feeds (a `file:///path` URL is that path; any other scheme is a config error)", examples=[["https://www.example.com/feeds/posts/default"]])
    timeout: float = Field(default=20.0, gt=0, description="seconds for a whole feed fetch (connect, headers and body);"
                           " feeds are fetched 8 at a time")
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="largest feed accepted, in bytes")
    user_agent: str = Field("digest/0.1 (+self-hosted newsletter digest)", description="the User-Agent sent")

    @field_validator("urls")
    @classmethod
    def _locations(cls, value: list[str]) -> list[str]:
        for url in value:
            problem = feed_location_problem(url)
            if problem:
                raise ValueError(f"{url!r}: {problem}")
        return value


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def feed_location_problem(url: str) -> str | None:
    """Why `url` is neither an http(s) URL nor a local path (None if it is one). A value with a
    scheme is a URL, so `htps://…` or `ftp://…` is a mistake here, not a file of that name; a
    `file:///abs/path` URL is the local path it names."""
    if not url.strip():
        return "empty"
    m = _SCHEME.match(url)
    if not m:
        return None  # a local path
    scheme = m.group(1).lower()
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. "http://[::1/feed": Invalid IPv6 URL
        return f"not a valid URL ({exc})"
    if scheme in ("http", "https"):
        return None if parts.hostname else "no host name"
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            return "a file: URL must name an absolute path on this machine (file:///path/to/feed.xml)"
        return None
    return f"scheme {scheme!r} is not supported (http://, https:// or a local file path)"


class SMTPSettings(_Section):
    host: str = Field("127.0.0.1", description="the SMTP server")
    port: int = Field(default=25, ge=1, le=65535, description="its port")
    security: Literal["none", "starttls", "tls"] = Field("none", description="`none`, `starttls` or `tls`")
    # Both or neither: load_settings checks.
    username: str | None = Field(None,
                                 description="AUTH user name, when the server wants one (with `security = \"none\"`"
                                 " and a host other than loopback, sending logs a warning: it would cross the network"
                                 " in clear)",
                                 examples=[""])
    password: str | None = Field(None, description="AUTH password; better: `DIGEST_SMTP__PASSWORD` in the environment",
                                 examples=[""])
    timeout: float = Field(default=20.0, gt=0, description="seconds")
    local_hostname: str = Field("localhost", description="the name given in EHLO (one word)")
    connections: int = Field(default=4, ge=1, le=64, description="parallel SMTP connections, one sender process each;"
                             " `1`: send from the calling process")
    rate_limit: float = Field(default=0, ge=0, description="messages per second over all connections, for relays with"
                              " quotas; `0`: unlimited")
    max_attempts: int = Field(default=8, ge=1, le=100, description="attempts before a temporary failure (4xx, dropped"
                              " connection) becomes `failed`; retried after 5 min, 30 min, 2 h, 6 h, then every 12 h")
    bounce_domain: str | None = Field(None, description="domain of the VERP envelope sender `bounce+{token}@…`",
                                      examples=["bounces.example.com"], json_schema_extra={"unset": "the From domain"})

    @field_validator("username", "password")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value if value else None  # `username = ""` from the commented template: no login

    @field_validator("local_hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not value or any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("must be one host name such as 'mail.example.com' (no spaces)")
        return value

    @field_validator("bounce_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not value or not all(c.isalnum() or c in "-." for c in value) or "." not in value.strip("."):
            raise ValueError("must be a domain name such as 'bounces.example.com'")
        return value


class DKIMSettings(_Section):
    """DKIM signing (rsa-sha256, or ed25519-sha256 with an Ed25519 key): all three keys, or none
    (messages are not signed). `digest dkim keygen` makes a key and prints the TXT record to
    publish at <selector>._domainkey.<domain> (docs/delivery.md)."""

    domain: str | None = Field(None, description="`d=`: the signing domain", examples=["example.com"],
                               json_schema_extra={"unset": "unset: no signing"})
    selector: str | None = Field(None, description="`s=`: the DNS label the key is published under",
                                 examples=["digest"], json_schema_extra={"unset": "unset: no signing"})
    private_key_file: Path | None = Field(None,
                                          description="a PEM key, RSA (2048 bits) or Ed25519, relative to the"
                                          " config file",
                                          examples=["dkim.pem"], json_schema_extra={"unset": "unset: no signing"})

    @property
    def enabled(self) -> bool:
        return self.domain is not None


class EditionSettings(_Section):
    """How an edition is made from the posts."""

    category_from: Literal["title", "feed"] = Field("title", description="`title` (the prefix before `: `) or `feed`"
                                                    " (the post's first feed category)")
    sections: StrList = Field([], description="section order; unlisted categories follow alphabetically")
    excerpt_words: int = Field(default=60, ge=5, description="excerpt length in words")
    first_edition_days: int = Field(default=7, ge=0,
                                    description="when a source is new, only its posts this recent are sent (`0`: all)")
    templates_dir: Path | None = Field(None, description="a directory whose templates override the bundled ones",
                                       examples=["templates"])
    images: Literal["lead", "none"] = Field("lead", description="`lead`: each post's image from the feed above its"
                                            " title, as wide as the card (at most 552 px); `none`: no images")


class DeliverySettings(_Section):
    batch_size: int = Field(default=200, ge=1, description="deliveries a sender claims (and commits) at a time")
    # Any positive value is accepted (the tests sleep out a 3 s lease); in use it must outlast an
    # SMTP exchange with room to spare (docs/scaling.md).
    lease_seconds: int = Field(default=600, ge=1,
                               description="a sender that stops answering loses its claim after this")
    journal_dir: Path = Field(Path(".digest-journal"),
                              description="where a sender journals acceptances between database"
                              " commits (local disk; survives a crash)")
    mode: Literal["inline", "workers"] = Field("inline",
                                               description="`inline`: `digest send` and the schedule deliver;"
                                               " `workers`: they only build and queue the edition,"
                                               " `digest worker` processes send it")
    poll_seconds: float = Field(default=5.0, gt=0, description="how often an idle `digest worker` looks for work")


class WebSettings(_Section):
    """`digest serve`: subscribe, confirm, unsubscribe, preferences, archive."""

    host: str = Field("127.0.0.1", description="where `digest serve` listens (`--host` overrides)")
    port: int = Field(default=8000, ge=1, le=65535, description="... and on which port (`--port` overrides)")
    rate_limit_per_minute: int = Field(default=5, ge=1,
                                       description="subscribe posts per client per minute; more get 429")
    confirm_resend_minutes: int = Field(default=10, ge=0,
                                        description="at most one confirmation mail per pending address this often")
    check_deliverability: bool = Field(False,
                                       description="also check an address's domain in DNS (needs DNS from the server)")
    # uvicorn's forwarded_allow_ips: X-Forwarded-For and X-Forwarded-Proto are believed from these.
    forwarded_allow_ips: str = Field("127.0.0.1", description="reverse proxies whose `X-Forwarded-For` is trusted")


class ApiSettings(_Section):
    """The HTTP API at /api/v1 (`digest serve`), for keys made with `digest api-key create`."""

    rate_limit_per_minute: int = Field(default=600, ge=1, description="requests per API key per minute; more get 429")
    sign_ups_per_minute: int = Field(default=30, ge=1, description="pending subscribers (each mailed a confirmation)"
                                     " an API key may create per minute; more get 429")
class WelcomeSettings(_Section):
    """The welcome mail a reader gets once, when they confirm: a greeting and the latest edition's
    posts in their topics (templates `welcome.mjml.j2` and `welcome.txt.j2`)."""

    enabled: bool = Field(True, description="mail a welcome to each reader who confirms (and on `digest subscribers"
                          " add --welcome`)")
    subject: str = Field("Welcome to {name}",  # fields: subject.SUBJECT_FIELDS
                         description="its subject: the fields of `newsletter.subject`; `{n}` is the posts it shows")
    newest_posts: int = Field(default=10, ge=0, description="before the first edition went out, it shows this many of"
                              " the newest posts")

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        check_subject(value)  # ValueError naming the unknown field
        return value


class ScheduleSettings(_Section):
    """When `digest serve` sends the digest (`digest schedule` shows the next times)."""

    cron: str = Field("0 9 * * mon", description="when `digest serve` sends: crontab (minute hour day month weekday),"
                      " weekday 0/7 = Sunday, names work, an optional seconds field first")
    name: str = Field("weekly", description="what readers see the main cadence (`cron`) called, when there are others")
    cadences: dict[str, str] = Field({}, description="more cadences a reader can choose, name = cron (read like"
                                     ' `cron`), e.g. `{ daily = "0 7 * * *" }`; from the environment as a JSON object')
    timezone: str = Field("UTC", description="IANA zone the cron is read in, e.g. `Europe/Berlin`")
    poll_minutes: int = Field(default=30, ge=0, description="feed polling (and retries of deferred deliveries) between"
                              " sends; `0`: off")
    misfire_grace_hours: float = Field(default=24, ge=0, description="after downtime, a missed send is made if at most"
                                       " this late (at least 1 min)")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)  # CronError (a ValueError) names the problem
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _cron_text(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _cadence_name(value)

    @field_validator("cadences")
    @classmethod
    def _cadences(cls, value: dict[str, str]) -> dict[str, str]:
        checked = {}
        for name, expr in value.items():
            try:
                checked[_cadence_name(name)] = _cron_text(expr)
            except ValueError as exc:
                raise ValueError(f"{name!r}: {exc}") from None
        return checked

    @model_validator(mode="after")
    def _main_name_is_its_own(self) -> ScheduleSettings:
        if self.name in self.cadences:
            raise ValueError(f"cadences: {self.name!r} is the main cadence's name (schedule.name): give the other"
                             " cadence another name, or the main one with schedule.name")
        return self

    def parsed(self) -> Cron:
        """The schedule: the cron read in its time zone."""
        return Cron.parse(self.cron, self.timezone)

    def crons(self) -> dict[str, Cron]:
        """Every cadence by name, the main one first, each cron read in the schedule's zone."""
        return {self.name: self.parsed(), **{n: Cron.parse(e, self.timezone) for n, e in self.cadences.items()}}


def _cron_text(value: str) -> str:
    """A cron expression, checked (CronError, a ValueError, names the problem), spaces collapsed."""
    Cron.parse(value, "UTC")
    return " ".join(value.split())


_CADENCE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,49}")


def _cadence_name(name: str) -> str:
    """A cadence's name: it shows in forms, URLs and `--cadence`, and is stored (50 characters)."""
    if not _CADENCE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a cadence name: a lower-case letter, then up to 49 letters, digits,"
                         " '-' or '_'")
    return name


# What a webhook can be told about (docs/webhooks.md shows each event's body).
EVENTS = ("subscriber.confirmed", "subscriber.unsubscribed", "subscriber.bounced", "edition.sent")


class WebhookSettings(_Section):
    """`[[webhooks]]`, one table per URL: a signed POST there for each event it lists (docs/webhooks.md)."""

    url: str = Field(description="where the POSTs go: an http:// or https:// URL",
                     examples=["https://crm.example.com/hooks/digest"])
    secret: str = Field(min_length=16, description="signs each POST (`X-Digest-Signature`, HMAC-SHA256; at least 16"
                        " characters): keep it secret", examples=["a long random string"])
    events: StrList = Field(min_length=1, examples=[list(EVENTS)],
                            description="the events it is told about: " + ", ".join(f"`{e}`" for e in EVENTS))

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            raise ValueError(f"{value!r}: not a valid URL ({exc})") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r}: must be an http:// or https:// URL with a host")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        for event in value:
            if event not in EVENTS:
                guess = _closest(event, list(EVENTS))
                hint = f"did you mean {guess!r}?" if guess else "events: " + ", ".join(EVENTS)
                raise ValueError(f"unknown event {event!r} ({hint})")
        return list(dict.fromkeys(value))


class Settings(BaseSettings):
    """Every setting: the sections in the order `digest init` writes them, then the lists of tables."""

    newsletter: NewsletterSettings
    database: DatabaseSettings = DatabaseSettings()
    feeds: FeedsSettings
    smtp: SMTPSettings = SMTPSettings()
    dkim: DKIMSettings = DKIMSettings()
    edition: EditionSettings = EditionSettings()
    delivery: DeliverySettings = DeliverySettings()
    web: WebSettings = WebSettings()
    api: ApiSettings = ApiSettings()
    welcome: WelcomeSettings = WelcomeSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    # `[[webhooks]]` tables; from the environment, the whole list as JSON in DIGEST_WEBHOOKS.
    webhooks: list[WebhookSettings] = []

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
    )

    # Set by load_settings(); relative paths in the file are resolved against it.
    _config_path: Path | None = None

    @field_validator("webhooks")
    @classmethod
    def _one_table_per_url(cls, value: list[WebhookSettings]) -> list[WebhookSettings]:
        # A queued POST finds its secret by its URL when it is sent (the secret is never stored).
        seen: set[str] = set()
        for hook in value:
            if hook.url in seen:
                raise ValueError(f"{hook.url!r} is given twice: one [[webhooks]] table per URL, listing every event")
            seen.add(hook.url)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which load_settings() passes as init values.
        return (env_settings, init_settings)

    @property
    def config_dir(self) -> Path:
        return self._config_path.parent if self._config_path else Path.cwd()

    def _beside_config(self, p: Path | None) -> Path | None:
        """A path from the config, a relative one taken from the config file's folder."""
        if p is None:
            return None
        return p if p.is_absolute() else self.config_dir / p

    @property
    def templates_dir(self) -> Path | None:
        return self._beside_config(self.edition.templates_dir)

    def feed_locations(self) -> list[FeedLocation]:
        """feeds.urls, each with its key and where to fetch it."""
        out = []
        for url in self.feeds.urls:
            if url.lower().startswith(("http://", "https://")):
                out.append(FeedLocation(url, url, url))
                continue
            path = unquote(urlsplit(url).path) if url.lower().startswith("file:") else url
            absolute = Path(os.path.abspath(self.config_dir / path))  # an absolute `path` stays as it is
            try:
                key = absolute.relative_to(self.config_dir).as_posix()
            except ValueError:  # outside the config file's folder
                key = str(absolute)
            if url.startswith("file://") or Path(url).is_absolute():
                former_key = url
            else:
                former_key = str((self.config_dir / url).resolve())
            out.append(FeedLocation(key, str(absolute), former_key))
        return out

    @property
    def journal_dir(self) -> Path:
        return self._beside_config(self.delivery.journal_dir)  # type: ignore[return-value]

    @property
    def dkim_key_path(self) -> Path | None:
        return self._beside_config(self.dkim.private_key_file)

    @property
    def bounce_domain(self) -> str:
        """Domain of the envelope sender (VERP): smtp.bounce_domain, else the From domain."""
        return self.smtp.bounce_domain or self.newsletter.domain

    @property
    def database_url(self) -> str:
        """The database URL, a relative SQLite path resolved against the config file."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            path = url[len(prefix):]
            if path and not Path(path).is_absolute():
                return prefix + str((self.config_dir / path).resolve())
        return url


def plaintext_credentials_host(smtp: SMTPSettings) -> str | None:
    """smtp.host when the AUTH credentials would cross a network unencrypted (security = "none" to
    a host other than this machine), else None. The host is not resolved: only "localhost" (and
    *.localhost, RFC 6761) and loopback addresses count as this machine."""
    if smtp.security != "none" or not (smtp.username or smtp.password):
        return None
    host = smtp.host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return smtp.host


def warn_plaintext_credentials(smtp: SMTPSettings) -> None:
    """Log one warning when sending would put the SMTP password on the wire in clear text.
    Called once by each command that sends (and by `digest serve`) before it connects."""
    host = plaintext_credentials_host(smtp)
    if host is not None:
        log.warning('smtp.host %s is not this machine and smtp.security = "none": the SMTP username and'
                    ' password are sent unencrypted (use security = "starttls" or "tls")', host)


def write_config_file(path: Path, text: str) -> None:
    """Write a new config file, readable and writable by its owner only (mode 600): it holds
    newsletter.secret_key, and whoever reads it can forge unsubscribe and confirmation links.
    An existing file is never overwritten (FileExistsError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the config file is: --config, else $DIGEST_CONFIG, else ./digest.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("DIGEST_CONFIG")
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_CONFIG_NAME


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings; any problem is a ConfigError with a one-line message naming the key and
    where it was set: the environment variable, else the file and line."""
    cfg = config_path(path)
    if not cfg.is_file():
        raise ConfigError(
            f"config file not found: {cfg} (run 'digest init' to create one, or pass --config)"
        )
    try:
        text = cfg.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{cfg}: cannot read: {exc}") from None
    _check_environment(os.environ)
    origin = _Origin(cfg, text, os.environ)
    _read_former_sections(data, os.environ, origin)
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
    settings._config_path = cfg.resolve()
    _check_login(settings, origin)
    _check_directories(settings, origin)
    _check_dkim(settings, origin)
    return settings


def _read_former_sections(data: dict[str, Any], environ: Mapping[str, str], origin: _Origin) -> None:
    """Move a section given under its former name (FORMER_SECTIONS), in the file or as
    DIGEST_<FORMER>__<KEY>, to its name, with one warning line. Both names in the file, or both
    in the environment, is an error naming both."""
    for former, section in FORMER_SECTIONS.items():
        used = []
        if former in data:
            if section in data:
                raise ConfigError(f"{origin.of(former)}: [{former}] and [{section}] ({origin.of(section)}) are the same"
                                  f" section, now named [{section}]: move the keys of [{former}] into [{section}]")
            data[section] = data.pop(former)
            origin.former[section] = former
            used.append(f"[{former}] in {origin.of(section)}")
        variables = _section_variables(environ, former)
        if variables:
            current = _section_variables(environ, section)
            if current:
                raise ConfigError(f"{variables[0]} and {current[0]}: {env_name(former)}__* and"
                                  f" {env_name(section)}__* set the same section, now named [{section}]:"
                                  f" use {env_name(section)}__* only")
            for name in variables:
                data.setdefault(section, {})[name[len(env_name(former)) + 2:].lower()] = environ[name]
            origin.former[section] = former
            used += variables
        if used:
            log.warning("config: [%s] is now [%s], %s__* is now %s__*: rename %s (the former name is read until"
                        " the next release)", former, section, env_name(former), env_name(section), ", ".join(used))


def _section_variables(environ: Mapping[str, str], section: str) -> list[str]:
    """The DIGEST_<SECTION>__<KEY> variables set, by name."""
    prefix = env_name(section) + "__"
    return sorted(name for name in environ if name.upper().startswith(prefix))


def env_name(section: str, key: str | None = None) -> str:
    """The environment variable of a setting: DIGEST_SMTP__PORT for smtp.port."""
    return ENV_PREFIX + section.upper() + (f"__{key.upper()}" if key else "")


def _keys(model: type[BaseModel]) -> list[str]:
    """The names a model's settings are written as (newsletter.from, not from_)."""
    return [field.alias or name for name, field in model.model_fields.items()]


def _section_keys(section: str) -> list[str]:
    return _keys(Settings.model_fields[section].annotation)  # type: ignore[arg-type]


def _closest(word: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(word, choices, n=1)
    return match[0] if match else None


def _check_environment(environ: Mapping[str, str]) -> None:
    """Every DIGEST_* variable must name a setting: a misspelt one is refused, not ignored."""
    sections = _keys(Settings)
    for name in environ:
        upper = name.upper()  # pydantic-settings reads the names case-insensitively
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_VARIABLES:
            continue
        section, _, key = upper[len(ENV_PREFIX):].lower().partition("__")
        section = FORMER_SECTIONS.get(section, section)
        if section in TABLE_LISTS:
            if key:
                raise ConfigError(f"{name}: not a digest setting: [[{section}]] tables are set from the environment"
                                  f" all at once, as a JSON list in {env_name(section)}")
            continue
        if section not in sections:
            guess = _closest(section, sections)
            hint = f" (did you mean {env_name(guess, key)}?)" if guess else f" (sections: {', '.join(sections)})"
            raise ConfigError(f"{name}: not a digest setting: there is no section [{section}]{hint}")
        if not key:
            raise ConfigError(
                f"{name}: not a digest setting: set each key of [{section}] as {env_name(section)}__<KEY>"
            )
        keys = _section_keys(section)
        if key not in keys:
            guess = _closest(key, keys)
            hint = f"did you mean {env_name(section, guess)}?" if guess else f"its keys: {', '.join(keys)}"
            raise ConfigError(f"{name}: not a digest setting: [{section}] has no key '{key}' ({hint})")


class _Origin:
    """Where a setting was given, for messages: its environment variable, else the config file
    and the key's line."""

    def __init__(self, path: Path, text: str, environ: Mapping[str, str]):
        self.path = path
        self._lines = text.splitlines()
        self._env = {name.upper() for name in environ}
        self.former: dict[str, str] = {}  # section -> the former name it was given under

    def of(self, section: str, key: str | None = None) -> str:
        names = [section] + ([self.former[section]] if section in self.former else [])
        for name in names:
            if key is not None and env_name(name, key) in self._env:
                return env_name(name, key)
        for name in names:
            line = self._line(name, key)
            if line:
                return f"{self.path}:{line}"
        return str(self.path)

    def of_table(self, section: str, index: int | None = None, key: str | None = None) -> str:
        """Where the `index`-th `[[section]]` table (or its `key`) was given: the environment
        variable holding the whole list, else the file and line."""
        if env_name(section) in self._env:
            return env_name(section)
        header = re.compile(r"\[\[\s*" + re.escape(section) + r"\s*\]\]")
        assignment = re.compile(r"""["']?""" + re.escape(key or "") + r"""["']?\s*=""")
        wanted = index or 0  # the list itself: its first table
        tables, inside, found = -1, False, None
        for number, line in enumerate(self._lines, 1):
            stripped = line.strip()
            if stripped.startswith("["):
                inside = header.match(stripped) is not None
                tables += inside
                if inside and tables == wanted:
                    found = number
            elif inside and key is not None and tables == wanted and assignment.match(stripped):
                return f"{self.path}:{number}"
        return f"{self.path}:{found}" if found is not None else str(self.path)

    def _line(self, section: str, key: str | None) -> int | None:
        """The line of `key = ` under `[section]` (of the header when key is None). None for what
        this simple reading does not find (dotted keys, inline tables): the message names the key."""
        header = re.compile(r"\[\s*" + re.escape(section) + r"\s*\]")
        assignment = re.compile(r"""["']?""" + re.escape(key or "") + r"""["']?\s*=""")
        inside = False
        for number, line in enumerate(self._lines, 1):
            stripped = line.strip()
            if stripped.startswith("["):
                inside = header.match(stripped) is not None
                if inside and key is None:
                    return number
            elif inside and key is not None and assignment.match(stripped):
                return number
        return None


def _describe(exc: ValidationError, origin: _Origin) -> str:
    err = exc.errors()[0]
    parts = ["from" if str(p) == "from_" else str(p) for p in err["loc"]]
    key = ".".join(parts)
    section, name = parts[0], (parts[1] if len(parts) > 1 else None)
    if section in TABLE_LISTS:
        return _describe_table(err, parts, origin)
    if err["type"] == "missing":
        return f"{origin.path}: missing required setting '{key}' (set it in the file or as {env_name(section, name)})"
    where = origin.of(section, name)
    if err["type"] == "extra_forbidden" and name is None:
        guess = _closest(section, _keys(Settings))
        return f"{where}: unknown section [{section}]" + (f" (did you mean [{guess}]?)" if guess else "")
    if err["type"] == "extra_forbidden" and name is not None:
        guess = _closest(name, _section_keys(section))
        return f"{where}: unknown setting '{key}'" + (f" (did you mean '{section}.{guess}'?)" if guess else "")
    return f"{where}: invalid setting '{key}': {err['msg'].removeprefix('Value error, ')}"


def _describe_table(err: Any, parts: list[str], origin: _Origin) -> str:
    """An error in a list of tables, e.g. `webhooks[2].url`: the second [[webhooks]] table."""
    section = parts[0]
    message = err["msg"].removeprefix("Value error, ")
    if len(parts) < 2 or not parts[1].isdigit():
        return f"{origin.of_table(section)}: invalid setting '{section}': {message} (a list of [[{section}]] tables)"
    index = int(parts[1])
    key = parts[2] if len(parts) > 2 else None
    name = f"{section}[{index + 1}]" + (f".{key}" if key else "")
    if err["type"] == "missing":
        return f"{origin.of_table(section, index)}: missing required setting '{name}'"
    if err["type"] == "extra_forbidden" and key is not None:
        guess = _closest(key, _keys(TABLE_LISTS[section]))
        return (f"{origin.of_table(section, index, key)}: unknown setting '{name}'"
                + (f" (did you mean '{section}[{index + 1}].{guess}'?)" if guess else ""))
    return f"{origin.of_table(section, index, key)}: invalid setting '{name}': {message}"


def _check_login(settings: Settings, origin: _Origin) -> None:
    """SMTP AUTH needs both the user name and the password (today's failure would come at send time)."""
    smtp = settings.smtp
    if (smtp.username is None) == (smtp.password is None):
        return
    missing, given = ("password", "username") if smtp.password is None else ("username", "password")
    raise ConfigError(
        f"{origin.path}: missing required setting 'smtp.{missing}' (smtp.{given} is set;"
        f" set it in the file or as {env_name('smtp', missing)})"
    )


def _check_directories(settings: Settings, origin: _Origin) -> None:
    """The templates folder must exist and the journal's must be able to: found now, not at send time."""
    templates = settings.templates_dir
    if templates is not None and not templates.is_dir():
        reason = "is not a directory" if templates.exists() else "does not exist"
        raise ConfigError(
            f"{origin.of('edition', 'templates_dir')}: invalid setting 'edition.templates_dir': {templates} {reason}"
        )
    journal = settings.journal_dir
    if journal.exists() and not journal.is_dir():
        raise ConfigError(
            f"{origin.of('delivery', 'journal_dir')}: invalid setting 'delivery.journal_dir':"
            f" {journal} is a file, not a directory"
        )


def _check_dkim(settings: Settings, origin: _Origin) -> None:
    """DKIM is all or nothing, and the key must be readable: a one-line error naming the key."""
    d = settings.dkim
    given = {"domain": d.domain, "selector": d.selector, "private_key_file": d.private_key_file}
    if not any(v is not None for v in given.values()):
        return
    for key, value in given.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ConfigError(
                f"{origin.path}: missing required setting 'dkim.{key}' (DKIM needs domain, selector and"
                f" private_key_file; set it in the file or as {env_name('dkim', key)})"
            )
    # The one import of a higher layer (mail) by config, listed in import-linter's ignore_imports:
    # the key must load when the settings do, so that a bad key is a one-line error naming
    # dkim.private_key_file. mail/dkim.py imports nothing from digest; importing it here, not at
    # the top, means only configs that sign pay for it.
    from digest.mail.dkim import load_private_key

    path = settings.dkim_key_path
    assert path is not None  # (private_key_file is set: checked above)
    try:
        load_private_key(path)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{origin.of('dkim', 'private_key_file')}: invalid setting 'dkim.private_key_file':"
            f" cannot use {path}: {reason}"
        ) from None


def new_secret_key() -> str:
    return secrets.token_urlsafe(32)


# The keys `digest init` writes as settings; every other key is written commented out, at its
# default (or an example), with its description.
WRITTEN_BY_INIT = {
    "newsletter": ("name", "from", "public_url", "secret_key"),
    "database": ("url",),
    "feeds": ("urls",),
    "smtp": ("host", "port", "security"),
    "edition": ("category_from", "sections", "excerpt_words", "first_edition_days"),
    "schedule": ("cron", "timezone"),
}
_COMMENT_COLUMN = 26  # where a key's comment starts in the written file
_WIDTH = 100


def section_models() -> dict[str, type[_Section]]:
    """Each section of the config file and its model, in the file's order (not the lists of
    tables: TABLE_LISTS)."""
    return {name: field.annotation for name, field in Settings.model_fields.items()  # type: ignore[misc]
            if name not in TABLE_LISTS}


# The lists of tables (`[[webhooks]]`), by name, and the model of one table.
TABLE_LISTS: dict[str, type[_Section]] = {"webhooks": WebhookSettings}


def initial_value(section: str, key: str) -> Any:
    """What `digest init` writes for a key it is not given: the default, else the first example."""
    field = field_of(section, key)
    if not field.is_required() and field.default is not None:
        return field.default
    if not field.examples:
        raise KeyError(f"{section}.{key}: neither a default nor an example")
    return field.examples[0]


def field_of(section: str, key: str) -> FieldInfo:
    for name, field in section_models()[section].model_fields.items():
        if (field.alias or name) == key:
            return field
    raise KeyError(f"{section}.{key}")


def toml_value(value: Any) -> str:
    """A value as TOML writes it (TOML basic strings accept JSON string escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)


def render_config(
    *,
    name: str | None = None,
    from_: str | None = None,
    public_url: str | None = None,
    feeds: list[str] | None = None,
    database_url: str | None = None,
    smtp_host: str | None = None,
    smtp_port: int | None = None,
    secret_key: str | None = None,
    first_edition_days: int | None = None,
) -> str:
    """The commented config file that `digest init` writes, made from the models: every key with
    its description, the keys of WRITTEN_BY_INIT set (to the values given, else their defaults or
    examples), the others commented out at their defaults. A new secret key unless one is given."""
    given = {
        ("newsletter", "name"): name, ("newsletter", "from"): from_, ("newsletter", "public_url"): public_url,
        ("newsletter", "secret_key"): secret_key or new_secret_key(), ("feeds", "urls"): feeds,
        ("database", "url"): database_url, ("smtp", "host"): smtp_host, ("smtp", "port"): smtp_port,
        ("edition", "first_edition_days"): first_edition_days,
    }
    lines = ["# digest configuration. Every key can be overridden from the environment as",
             "# DIGEST_<SECTION>__<KEY>, e.g. DIGEST_SMTP__PORT=2525."]
    for section, model in section_models().items():
        lines.append("")
        about = model.__dict__.get("__doc__")  # the section's own docstring, not _Section's
        if about:
            lines += ["# " + line for line in _wrap(" ".join(about.split()), _WIDTH - 2)]
        lines.append(f"[{section}]")
        for attr, field in model.model_fields.items():
            key = field.alias or attr
            value = given.get((section, key))
            setting = f"{key} = {toml_value(initial_value(section, key) if value is None else value)}"
            if key not in WRITTEN_BY_INIT.get(section, ()):
                setting = "# " + setting
            lines += _with_comment(setting, field.description or "")
    for section, model in TABLE_LISTS.items():  # none by default: one example, commented out
        lines += ["", "# " + " ".join((model.__doc__ or "").split()), f"# [[{section}]]"]
        for attr, field in model.model_fields.items():
            example = field.examples[0] if field.examples else ""
            setting = f"# {field.alias or attr} = {toml_value(example)}"
            lines += _with_comment(setting, field.description or "")
    return "\n".join(lines) + "\n"


def _with_comment(setting: str, comment: str) -> list[str]:
    """`setting  # comment`, the comment at _COMMENT_COLUMN and wrapped under itself; a comment
    that would wrap beside a long setting goes on the lines above it instead."""
    column = max(_COMMENT_COLUMN, len(setting) + 2)
    if column > _COMMENT_COLUMN and column + 2 + len(comment) > _WIDTH:
        return ["# " + part for part in _wrap(comment, _WIDTH - 2)] + [setting]
    parts = _wrap(comment, _WIDTH - column - 2) or [""]
    return [f"{setting.ljust(column)}# {parts[0]}".rstrip()] + [" " * column + "# " + part for part in parts[1:]]


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)
