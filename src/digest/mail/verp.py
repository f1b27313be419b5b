"""VERP envelope senders: ``bounce+{token}@{bounce_domain}``, where the token names one delivery.

A bounce is sent to the envelope sender, so the address it arrives at tells which delivery (and
so which subscriber and edition) bounced, whatever the bounce's body says. The token is the
delivery id and a 48-bit HMAC of it, both in lower-case hex (some systems fold the case of
local parts): ``bounce+1f2a9-5d1e0c7a9f3b@news.example.com``. Forged or altered tokens are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from digest.links import KeyedHMAC

PREFIX = "bounce+"
_TOKEN = re.compile(r"bounce\+([0-9a-f]{1,16})-([0-9a-f]{12})@", re.IGNORECASE)


class VERP:
    def __init__(self, secret_key: str, domain: str):
        self.domain = domain.lower()
        self._mac_of = KeyedHMAC(hashlib.sha256(b"digest.verp\0" + secret_key.encode("utf-8")).digest(), "sha256")

    def _mac(self, ident: str) -> str:
        return self._mac_of.digest(ident.encode("ascii"))[:6].hex()

    def token(self, delivery_id: int) -> str:
        ident = f"{delivery_id:x}"
        return f"{ident}-{self._mac(ident)}"

    def sender(self, delivery_id: int) -> str:
        return f"{PREFIX}{self.token(delivery_id)}@{self.domain}"

    def read(self, address: str) -> int | None:
        """The delivery id named by a VERP address (or any text containing one), None if there is
        none or its signature does not match."""
        for m in _TOKEN.finditer(address or ""):
            ident, mac = m.group(1).lower(), m.group(2).lower()
            if hmac.compare_digest(mac, self._mac(ident)):
                return int(ident, 16)
        return None
