"""Every setting and its default, in one place.

Settings come from a TOML file (``--config PATH``, else ``$DIGEST_CONFIG``, else
``./digest.toml``) and can be overridden from the environment as
``DIGEST_<SECTION>__<KEY>`` (e.g. ``DIGEST_SMTP__PORT=2525``).
"""

from __future__ import annotations

import os
import secrets
import tomllib
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .cron import Cron, zone
from .errors import ConfigError

DEFAULT_CONFIG_NAME = "digest.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewsletterSettings(_Section):
    name: str
    from_: str = Field(alias="from")
    public_url: str = "http://127.0.0.1:8000"
    secret_key: str = Field(min_length=16)
    subject: str = "{name}: {n} new posts"
    reply_to: str | None = None
    list_id: str | None = None  # defaults to "<slug>.<from domain>"
    # Feedback-ID header (Gmail feedback loop), e.g. "weekly:codelooru"; unset = no header.
    feedback_id: str | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("from_")
    @classmethod
    def _from_has_address(cls, value: str) -> str:
        _, addr = parseaddr(value)
        if "@" not in addr or any(c in value for c in "\r\n"):
            raise ValueError("must be an address such as 'Name <news@example.com>'")
        return value

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
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
    url: str = "sqlite:///digest.db"


class FeedsSettings(_Section):
    urls: list[str] = Field(min_length=1)
    timeout: float = 20.0
    max_bytes: int = 10 * 1024 * 1024
    user_agent: str = "digest/0.1 (+self-hosted newsletter digest)"


class SMTPSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 25
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: str | None = None
    timeout: float = 20.0
    local_hostname: str = "localhost"
    # Parallel SMTP connections, one sender process each (1 = send from the calling process).
    connections: int = Field(default=4, ge=1, le=64)
    # Messages per second over all connections; 0 = unlimited (for relays with quotas).
    rate_limit: float = Field(default=0, ge=0)
    # Temporary failures (4xx, dropped connections) are retried with backoff up to this many attempts.
    max_attempts: int = Field(default=8, ge=1, le=100)
    # Envelope sender domain: bounces go to bounce+<token>@<bounce_domain>. Unset = the From domain.
    bounce_domain: str | None = None

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
    """DKIM signing; unset (no domain) = messages are not signed."""

    domain: str | None = None
    selector: str | None = None
    private_key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.domain is not None


class DigestSettings(_Section):
    category_from: Literal["title", "feed"] = "title"
    sections: list[str] = []
    excerpt_words: int = Field(default=60, ge=5)
    first_edition_days: int = Field(default=7, ge=0)
    templates_dir: Path | None = None


class DeliverySettings(_Section):
    batch_size: int = Field(default=200, ge=1)  # deliveries claimed (and committed) per batch
    # A claim older than this is abandoned. Any positive value is accepted (the tests sleep out a
    # 3 s lease); in use it must outlast an SMTP exchange with room to spare (docs/scaling.md).
    lease_seconds: int = Field(default=600, ge=1)
    # Where each sender journals acceptances between ledger commits (local disk).
    journal_dir: Path = Path(".digest-journal")
    # "inline": `digest send` (and the schedule) delivers the edition itself. "workers": it only
    # creates the edition and its deliveries; `digest worker` processes send them.
    mode: Literal["inline", "workers"] = "inline"
    poll_seconds: float = Field(default=5.0, gt=0)  # how often an idle `digest worker` looks for work


class WebSettings(_Section):
    host: str = "127.0.0.1"  # `digest serve` listens here (--host overrides)
    port: int = Field(default=8000, ge=1, le=65535)  # ... and on this port (--port overrides)
    rate_limit_per_minute: int = Field(default=5, ge=1)  # subscribe posts per client address
    confirm_resend_minutes: int = Field(default=10, ge=0)  # at most one confirmation mail per address this often
    check_deliverability: bool = False  # also look up the address's domain in DNS when subscribing
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's forwarded_allow_ips).
    forwarded_allow_ips: str = "127.0.0.1"


class ScheduleSettings(_Section):
    cron: str = "0 9 * * mon"  # when `digest serve` sends; crontab, optionally with seconds first
    timezone: str = "UTC"  # IANA name the cron is read in, e.g. "Europe/Berlin"
    poll_minutes: int = Field(default=30, ge=0)  # feed polling (and retries) between sends; 0: off
    misfire_grace_hours: float = Field(default=24, ge=0)  # a send missed by downtime is made this late (at least 1 min)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)  # CronError (a ValueError) names the problem
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        Cron.parse(value, "UTC")
        return " ".join(value.split())

    def parsed(self) -> Cron:
        """The schedule: the cron read in its time zone."""
        return Cron.parse(self.cron, self.timezone)


class Settings(BaseSettings):
    newsletter: NewsletterSettings
    database: DatabaseSettings = DatabaseSettings()
    feeds: FeedsSettings
    smtp: SMTPSettings = SMTPSettings()
    digest: DigestSettings = DigestSettings()
    delivery: DeliverySettings = DeliverySettings()
    web: WebSettings = WebSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    dkim: DKIMSettings = DKIMSettings()

    model_config = SettingsConfigDict(
        env_prefix="DIGEST_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    # Set by load_settings(); relative paths in the file are resolved against it.
    _config_path: Path | None = None

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
        return self._beside_config(self.digest.templates_dir)

    def feed_locations(self) -> list[str]:
        """Feed URLs, with relative local paths resolved against the config file."""
        out = []
        for url in self.feeds.urls:
            if url.startswith(("http://", "https://", "file://")) or Path(url).is_absolute():
                out.append(url)
            else:
                out.append(str((self.config_dir / url).resolve()))
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


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the config file is: --config, else $DIGEST_CONFIG, else ./digest.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("DIGEST_CONFIG")
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_CONFIG_NAME


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings; any problem is a ConfigError with a one-line message naming the key."""
    cfg = config_path(path)
    if not cfg.is_file():
        raise ConfigError(
            f"config file not found: {cfg} (run 'digest init' to create one, or pass --config)"
        )
    try:
        data = tomllib.loads(cfg.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{cfg}: cannot read: {exc}") from None
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, cfg)) from None
    settings._config_path = cfg.resolve()
    _check_dkim(settings, cfg)
    return settings


def _check_dkim(settings: Settings, cfg: Path) -> None:
    """DKIM is all or nothing, and the key must be readable: a one-line error naming the key."""
    d = settings.dkim
    given = {"domain": d.domain, "selector": d.selector, "private_key_file": d.private_key_file}
    if not any(v is not None for v in given.values()):
        return
    for key, value in given.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ConfigError(
                f"{cfg}: missing required setting 'dkim.{key}' (DKIM needs domain, selector and"
                f" private_key_file; set it in the file or as DIGEST_DKIM__{key.upper()})"
            )
    from .dkim_signer import load_private_key  # here: only configs that sign pay for the import

    path = settings.dkim_key_path
    try:
        load_private_key(path)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{cfg}: invalid setting 'dkim.private_key_file': cannot use {path}: {reason}") from None


def _describe(exc: ValidationError, cfg: Path) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join("from" if p == "from_" else p for p in loc)
    if err["type"] == "missing":
        msg = f"missing required setting '{key}'"
    else:
        msg = f"invalid setting '{key}': {err['msg'].removeprefix('Value error, ')}"
    env = "DIGEST_" + "__".join(p.upper() for p in loc)
    return f"{cfg}: {msg} (set it in the file or as {env})"


def new_secret_key() -> str:
    return secrets.token_urlsafe(32)


def render_config(
    *,
    name: str = "My Newsletter",
    from_: str = "My Newsletter <news@example.com>",
    public_url: str = "http://127.0.0.1:8000",
    feeds: list[str] | None = None,
    database_url: str = "sqlite:///digest.db",
    smtp_host: str = "127.0.0.1",
    smtp_port: int = 25,
    secret_key: str | None = None,
    first_edition_days: int = 7,
) -> str:
    """The commented config file that `digest init` writes."""
    import json

    feeds = feeds or ["https://www.example.com/feeds/posts/default"]
    q = json.dumps  # TOML basic strings accept JSON string escapes
    feed_list = ", ".join(q(f) for f in feeds)
    return f"""\
# digest configuration. Every key can be overridden from the environment as
# DIGEST_<SECTION>__<KEY>, e.g. DIGEST_SMTP__PORT=2525.

[newsletter]
name = {q(name)}                 # shown in the subject and the header
from = {q(from_)}   # From address
public_url = {q(public_url)}     # base URL of `digest serve`; used in every link
secret_key = {q(secret_key or new_secret_key())}  # signs links; keep it secret
# subject = "{{name}}: {{n}} new posts"  # {{name}}, {{n}} (posts), {{number}} (edition), {{date}}
# reply_to = "editor@example.com"
# feedback_id = "weekly:newsletter"   # Feedback-ID header for Gmail's feedback loop

[database]
url = {q(database_url)}   # any SQLAlchemy URL; relative SQLite paths are relative to this file

[feeds]
urls = [{feed_list}]   # http(s) URLs or local file paths
# timeout = 20        # seconds per HTTP request
# max_bytes = 10485760

[smtp]
host = {q(smtp_host)}
port = {smtp_port}
security = "none"     # none | starttls | tls
# username = ""
# password = ""       # better: DIGEST_SMTP__PASSWORD in the environment
# timeout = 20
# connections = 4     # parallel SMTP connections (one sender process each); 1 = no extra processes
# rate_limit = 0      # messages per second over all connections, for relays with quotas; 0 = unlimited
# max_attempts = 8    # a 4xx or dropped connection is retried (5 min, 30 min, 2 h, 6 h, then every 12 h) this often
# bounce_domain = "bounces.example.com"  # envelope sender: bounce+<token>@<this>; default: the From domain

# DKIM signing (rsa-sha256, or ed25519-sha256 with an Ed25519 key). Leave unset to not sign.
# Generate a key:  openssl genrsa -out dkim.pem 2048
# and publish the TXT record that docs/delivery.md shows at <selector>._domainkey.<domain>.
[dkim]
# domain = "example.com"
# selector = "digest"
# private_key_file = "dkim.pem"   # relative to this file

[digest]
category_from = "title"   # "title": the prefix before ": "; "feed": the post's first feed category
sections = []             # section order; unlisted categories follow alphabetically
excerpt_words = 60
first_edition_days = {first_edition_days}    # on a new install, only posts this recent go into the first edition (0: all)
# templates_dir = "templates"   # override the bundled templates

[delivery]
# batch_size = 200      # deliveries claimed and committed per batch
# lease_seconds = 600   # a sender that stops answering loses its claim after this
# journal_dir = ".digest-journal"  # acceptances not yet in the database; survives a crash
# mode = "inline"       # "workers": `digest send` only queues the edition; `digest worker` sends it
# poll_seconds = 5      # how often an idle `digest worker` looks for pending deliveries

[web]                   # `digest serve`: subscribe, confirm, unsubscribe, preferences, archive
# host = "127.0.0.1"
# port = 8000
# rate_limit_per_minute = 5      # subscribe posts per client address; more get 429
# confirm_resend_minutes = 10    # at most one confirmation mail per pending address this often
# check_deliverability = false   # also check the address's domain in DNS (needs DNS from the server)
# forwarded_allow_ips = "127.0.0.1"  # reverse proxies whose X-Forwarded-For is trusted

[schedule]
# When `digest serve` sends the digest (`digest schedule` shows the next times).
cron = "0 9 * * mon"      # crontab: minute hour day month weekday (0/7 = Sunday; names work)
timezone = "UTC"          # IANA name the cron is read in, e.g. "Europe/Berlin", "America/New_York"
# poll_minutes = 30       # between sends, poll the feeds and retry deferred deliveries (0: off)
# misfire_grace_hours = 24  # if the service was down at send time, send on start if this late at most
"""
