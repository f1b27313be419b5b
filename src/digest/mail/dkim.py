"""DKIM signatures (RFC 6376, relaxed/relaxed; rsa-sha256, or ed25519-sha256 per RFC 8463).

Built for one message variant sent to many recipients, where only a few headers (To, Message-ID,
List-Unsubscribe) and a few short body runs (the personal links and name) differ per recipient:

- the canonical form of every static header and body run is computed once per variant;
- the header hash of the static headers is computed once, and copied (``hashlib`` state copy) per
  recipient before the personal headers and the DKIM-Signature header itself are added — the
  order of ``h=`` is ours to choose, so the static headers come first;
- per recipient: one SHA-256 over the canonical body (C, ~10 µs for 30 KB), one over a few hundred
  header bytes, and one private-key operation (``cryptography``/OpenSSL: RSA-2048 ≈ 0.3 ms,
  Ed25519 ≈ 0.05 ms) on the prehashed digest.

``l=`` (body length) is never used. dkimpy, the reference implementation, verifies these signatures
in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

__all__ = ["DKIMSigner", "load_private_key", "new_private_key", "write_private_key", "canon_header", "canon_body",
           "dns_record", "txt_strings"]

_WSP_RUN = re.compile(rb"[ \t]+")
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")
_UNFOLD = re.compile(rb"\r\n(?=[ \t])")
_PKCS1 = padding.PKCS1v15()
_PREHASHED = Prehashed(hashes.SHA256())

# The keys DKIM signs with here (RFC 6376 rsa-sha256, RFC 8463 ed25519-sha256).
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def load_private_key(path: Path) -> PrivateKey:
    """An RSA (≥ 1024 bits) or Ed25519 private key from a PEM file; OSError/ValueError otherwise."""
    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an unencrypted PEM private key ({exc.__class__.__name__})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise ValueError(f"RSA key of {key.key_size} bits is too short for DKIM (use 2048)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError(f"unsupported key type {type(key).__name__} (use RSA or Ed25519)")


def canon_header(name: str, value: bytes) -> bytes:
    """Relaxed header canonicalization of one header field, with its CRLF."""
    value = _UNFOLD.sub(b"", value)
    value = _WSP_RUN.sub(b" ", value).strip(b" \t")
    return name.lower().encode("ascii") + b":" + value + b"\r\n"


def canon_lines(data: bytes) -> bytes:
    """Relaxed body canonicalization of complete CRLF-terminated lines (no end-of-body rule)."""
    if b"\t" in data or b"  " in data or b" \r\n" in data:
        data = _WSP_RUN.sub(b" ", data)
        data = _TRAILING_WSP.sub(b"\r\n", data)
    return data


def canon_body(body: bytes) -> bytes:
    """Relaxed body canonicalization of a whole body (reference version, used by the tests)."""
    lines = body.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = [_WSP_RUN.sub(b" ", line).rstrip(b" \t") for line in lines]
    while out and out[-1] == b"":
        out.pop()
    return b"".join(line + b"\r\n" for line in out)


def _fold(text: str, first: int) -> str:
    """Fold a tag list for a header line: break before tags so that no line exceeds 78 chars."""
    out: list[str] = []
    line = first
    for i, piece in enumerate(text.split(" ")):
        if i and line + 1 + len(piece) > 76:
            out.append("\r\n\t")
            line = 1
        elif i:
            out.append(" ")
            line += 1
        out.append(piece)
        line += len(piece)
    return "".join(out)


def _fold_b64(value: str, first: int) -> str:
    parts: list[str] = []
    width = 72
    room = max(8, 76 - first)
    parts.append(value[:room])
    for i in range(room, len(value), width):
        parts.append(value[i : i + width])
    return "\r\n\t".join(parts)


class DKIMSigner:
    """Signs messages for one domain and selector with one key."""

    def __init__(self, domain: str, selector: str, key: PrivateKey) -> None:
        self.domain = domain.strip().lower()
        self.selector = selector.strip()
        self.key = key
        self._sign: Callable[[bytes], bytes]
        if isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = "rsa-sha256"
            self._sign = lambda digest: key.sign(digest, _PKCS1, _PREHASHED)
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            self.algorithm = "ed25519-sha256"
            self._sign = key.sign  # RFC 8463: PureEdDSA over the SHA-256 of the header data
        else:  # pragma: no cover - load_private_key rejects these
            raise TypeError(f"unsupported key {type(key).__name__}")

    @classmethod
    def from_file(cls, domain: str, selector: str, path: Path) -> DKIMSigner:
        return cls(domain, selector, load_private_key(path))

    def prepare(self, static_headers: Sequence[tuple[str, bytes]], personal_names: Sequence[str],
                oversign: Iterable[str], timestamp: int) -> PreparedSignature:
        """Everything about the signature that is the same for every recipient of one variant.

        ``static_headers``: (name, raw value) of the headers that are the same for everyone, in
        the order they appear; ``personal_names``: names of the per-recipient headers, in the order
        their values will be given to :meth:`PreparedSignature.sign`; ``oversign``: names listed
        once more in ``h=`` so that nobody can add a second one without breaking the signature.
        """
        return PreparedSignature(self, static_headers, personal_names, list(oversign), timestamp)


class PreparedSignature:
    __slots__ = ("signer", "_static_hash", "_head", "_names")

    def __init__(self, signer: DKIMSigner, static_headers: Sequence[tuple[str, bytes]],
                 personal_names: Sequence[str], oversign: list[str], timestamp: int) -> None:
        self.signer = signer
        h = hashlib.sha256()
        names: list[str] = []
        for name, value in static_headers:
            h.update(canon_header(name, value))
            names.append(name)
        names += list(personal_names) + oversign
        self._static_hash = h
        self._names = tuple(personal_names)
        tags = (
            f"v=1; a={signer.algorithm}; c=relaxed/relaxed; d={signer.domain}; s={signer.selector};"
            f" t={timestamp}; h={':'.join(n for n in names)};"
        )
        # "DKIM-Signature: " is 16 characters; the h= list is folded at colons when long.
        tags = _fold(tags, 16)
        self._head = "DKIM-Signature: " + _fold_h(tags) + "\r\n\tbh="

    def sign(self, personal_values: Sequence[bytes], body_hash: bytes) -> bytes:
        """The DKIM-Signature header line (with CRLF) for one recipient."""
        h = self._static_hash.copy()
        for name, value in zip(self._names, personal_values, strict=True):
            h.update(canon_header(name, value))
        bh = base64.b64encode(body_hash).decode("ascii")
        unsigned = f"{self._head}{bh};\r\n\tb="
        h.update(canon_header("dkim-signature", unsigned[16:].encode("ascii")).rstrip(b"\r\n"))
        b = base64.b64encode(self.signer._sign(h.digest())).decode("ascii")
        return (unsigned + _fold_b64(b, 3) + "\r\n").encode("ascii")


def _fold_h(tags: str) -> str:
    """Break an over-long h= line at its colons (FWS is allowed around ':' in h=)."""
    lines = tags.split("\r\n\t")
    out: list[str] = []
    for line in lines:
        while len(line) > 76 and ":" in line[:76]:
            cut = line.rfind(":", 0, 76) + 1
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return "\r\n\t".join(out)


def dns_record(key: PrivateKey) -> str:
    """The TXT record value to publish at <selector>._domainkey.<domain>."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()



def new_private_key(kind: str = "rsa", bits: int = 2048) -> PrivateKey:
    """A new signing key: RSA (`bits`, at least 2048) or Ed25519."""
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind != "rsa":
        raise ValueError(f"unknown key type {kind!r} (rsa or ed25519)")
    if bits < 2048:
        raise ValueError(f"RSA keys shorter than 2048 bits are not accepted by many receivers (got {bits})")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write_private_key(key: PrivateKey, path: Path) -> None:
    """Write `key` as an unencrypted PKCS#8 PEM file readable by its owner only; FileExistsError
    if the file exists (a key in use is never overwritten)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def txt_strings(record: str, size: int = 255) -> str:
    """A TXT record value as DNS zone files and most DNS hosts take it: quoted strings of at most
    255 characters each (an RSA-2048 record is longer than one)."""
    return " ".join(f'"{record[i:i + size]}"' for i in range(0, len(record), size))
