"""digest: a self-hosted newsletter digest mailer."""

__version__ = "0.1.0"
