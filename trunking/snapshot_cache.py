"""Each snapshot version is encoded once and reused by every edge, retry and reconcile.

`publish` builds the snapshot (from the changes the signals recorded, when this process holds
the latest version: `trunking.snapshot.build`) and stores, under the version, the delta from the
version before at once and the whole snapshot when first asked for (`Release.full`).
`latest_release` reads the latest version (one indexed row) and its stored bytes, encoding them
from this process's build of that version if they are not stored yet, and reading everything
only if neither. The bytes live in Redis when ``REDIS_URL`` is set (every worker and web process
shares them), else in this process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Any

from django.conf import settings

from edge import snapshot_wire

from .models import ConfigRevision
from .snapshot import Changes, Snapshot, build, delta, encode, last_built

BODY_TTL_SECONDS = 3600  # then a retry or reconcile builds it again, once
LOCAL_VERSIONS = 4  # versions kept in this process without Redis
# Versions are per database: the name keeps two databases on one Redis apart.
KEY = "tl:config:{database}:{kind}:{version}:{content_hash}"


class Release:
    """One version as it travels: the whole snapshot, and a delta for edges on `base`.

    The whole snapshot is encoded (and stored) when first asked for: a push to edges that all
    hold the base sends them the delta first.
    """

    def __init__(
        self,
        version: int,
        content_hash: str,
        full: bytes | None,
        base: int | None = None,
        delta: bytes | None = None,
        *,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.version = version
        self.content_hash = content_hash
        self.base = base
        self.delta = delta
        self._full = full
        self._snapshot = snapshot
        self._lock = threading.Lock()

    @property
    def full(self) -> bytes:
        with self._lock:
            if self._full is None:
                assert self._snapshot is not None
                self._full = encode(self._snapshot)
                _store({_key("full", self.version, self.content_hash): self._full})
                self._snapshot = None
            return self._full

    def body_for(self, applied_version: int | None) -> bytes:
        """What to send an edge that reports ``applied_version``: the delta if it holds the
        delta's base, else the whole snapshot."""
        if self.delta is not None and applied_version is not None and applied_version == self.base:
            return self.delta
        return self.full


@lru_cache(maxsize=4)
def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


_local: OrderedDict[str, bytes] = OrderedDict()
_local_lock = threading.Lock()


def _store(items: dict[str, bytes]) -> None:
    if settings.REDIS_URL:
        pipe = _redis(settings.REDIS_URL).pipeline(transaction=False)
        for key, value in items.items():
            pipe.set(key, value, ex=BODY_TTL_SECONDS)
        pipe.execute()
        return
    with _local_lock:
        _local.update(items)
        while len(_local) > 2 * LOCAL_VERSIONS:
            _local.popitem(last=False)


def _fetch(*keys: str) -> list[bytes | None]:
    if settings.REDIS_URL:
        return list(_redis(settings.REDIS_URL).mget(keys))
    with _local_lock:
        return [_local.get(key) for key in keys]


def _key(kind: str, version: int, content_hash: str) -> str:
    database = settings.DATABASES["default"]["NAME"]
    return KEY.format(database=database, kind=kind, version=version, content_hash=content_hash)


def forget() -> None:
    """Drop every stored version (tests: a database flushed between them reuses versions)."""
    if settings.REDIS_URL:
        client = _redis(settings.REDIS_URL)
        keys = list(
            client.scan_iter(
                match=KEY.format(database="*", kind="*", version="*", content_hash="*")
            )
        )
        if keys:
            client.delete(*keys)
    with _local_lock:
        _local.clear()


def publish(changes: Changes | None = None) -> Release:
    """Build the current snapshot (from ``changes`` if this process can) and store its bytes
    under its version, with the delta from the version this process built before."""
    built, base = build(changes)
    full_key, delta_key = (
        _key("full", built.version, built.content_hash),
        _key("delta", built.version, built.content_hash),
    )
    full, stored_delta = _fetch(full_key, delta_key)
    if full is not None:  # this version is already encoded: the same bytes for everyone
        return _release(built.version, built.content_hash, full, stored_delta)
    delta_body = None
    if base is not None:
        delta_body = (
            str(base.version).encode() + b"\n" + snapshot_wire.encode_delta(delta(base, built))
        )
        _store({delta_key: delta_body})
        delta_body = delta_body.partition(b"\n")[2]
    return Release(
        built.version,
        built.content_hash,
        None,
        None if base is None else base.version,
        delta_body,
        snapshot=built.snapshot,
    )


def _release(
    version: int,
    content_hash: str,
    full: bytes | None,
    stored_delta: bytes | None,
    whole: Snapshot | None = None,
) -> Release:
    if stored_delta is None:
        return Release(version, content_hash, full, snapshot=whole)
    base, _, body = stored_delta.partition(b"\n")
    return Release(version, content_hash, full, int(base), body, snapshot=whole)


def latest_release() -> Release:
    """The latest published version's bytes, without building if they are stored (a retry,
    the periodic reconcile) or this process built that version (encoded from it now); else
    built once (everything read). Either way stored for the next call."""
    latest = ConfigRevision.objects.order_by("-id").values_list("id", "content_hash").first()
    if latest is not None:
        full, stored_delta = _fetch(_key("full", *latest), _key("delta", *latest))
        if full is not None:
            return _release(latest[0], latest[1], full, stored_delta)
        built = last_built()
        if built is not None and (built.version, built.content_hash) == latest:
            release = _release(latest[0], latest[1], None, stored_delta, built.snapshot)
            release.full  # noqa: B018 -- stored now: the next call finds it
            return release
    release = publish()
    release.full  # noqa: B018 -- stored now: the next call finds it
    return release
