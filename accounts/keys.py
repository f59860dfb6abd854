"""API key format and hashing: ``tk_<prefix>_<secret>``; the prefix finds the row, the SHA-256
of the whole key proves it."""

import hashlib
import hmac
import secrets

KEY_SCHEME = "tk"
PREFIX_BYTES = 6
SECRET_BYTES = 32


def generate_key() -> tuple[str, str, str]:
    """A new key as (full key, visible prefix, stored hash)."""
    prefix = secrets.token_hex(PREFIX_BYTES)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    return key, prefix, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def split_prefix(key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != PREFIX_BYTES * 2:
        return None
    return parts[1]


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)
