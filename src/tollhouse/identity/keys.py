"""Virtual API keys: generated once, shown once, stored only as a SHA-256 hash.

A key is 32 random bytes (256 bits), so a fast hash is enough: there is no
password to brute-force, and hashing on every request must cost microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "sk-th-"
DISPLAY_CHARS = 12


def generate() -> tuple[str, str, str]:
    """Return (secret, hash, display prefix). Only the hash and the prefix are stored."""
    secret = PREFIX + secrets.token_urlsafe(32)
    return secret, hash_key(secret), secret[:DISPLAY_CHARS]


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison for the admin key."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
