"""Errors a user can act on. Each carries a one-line message; the CLI prints it without a traceback."""


class DigestError(Exception):
    """Base class: something the operator can fix, described in one line."""

    exit_code = 1


class ConfigError(DigestError):
    """A missing or invalid setting, or no config file."""

    exit_code = 2


class FeedError(DigestError):
    """A source could not be fetched or parsed."""


class DeliveryError(DigestError):
    """The SMTP server could not be reached or refused us as a whole."""


class DatabaseError(DigestError):
    """The database cannot be reached, read or written (down, read-only, disk full)."""


class NotFound(DigestError):
    """A subscriber, edition or other record does not exist."""


class InvalidAddress(DigestError):
    """An email address that cannot be delivered to."""


class BadToken(DigestError):
    """A signed link that was forged, altered or has expired."""


class SchemaOutOfDate(DigestError):
    """The database's schema is not the one this version of digest expects."""

    exit_code = 2
