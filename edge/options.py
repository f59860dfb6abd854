"""The edge's options, parsed in one place for `python -m edge`, `manage.py runedge` and
`manage.py runplatform`.

Every option has one environment variable (`ENVIRONMENT`); the command line wins over the
environment, which wins over the caller's defaults (runedge and runplatform pass what they
derive from Django: the node's token, the VAR_DIR paths, this web app's snapshot URL), which win
over the built-in defaults. Names earlier versions read (`RETIRED`) are refused with the new
name. Django-free: the edge never imports Django.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.runtime.allocator import ALLOCATORS, DEFAULT_ALLOCATOR
from edge.runtime.gc_policy import DEFAULT_FULL_INTERVAL
from edge.runtime.rtpengine import parse_engines
from edge.sip.digest import DEFAULT_CHALLENGE_ORDER

__all__ = [
    "DEFAULT_DIGEST_ALGORITHMS",
    "ENVIRONMENT",
    "RETIRED",
    "EdgeOptions",
    "UsageError",
    "add_arguments",
    "build_parser",
    "check_retired",
    "host_port",
    "options_from_environment",
    "options_from_namespace",
]

# Option (argparse dest) -> environment variable: one name per setting, the same for
# `python -m edge`, `manage.py runedge` and `manage.py runplatform` (README, "Environment").
ENVIRONMENT = {
    "node": "EDGE_NODE_NAME",
    "sip": "EDGE_SIP_ADDRESS",
    "tls": "EDGE_TLS_ADDRESS",
    "cert": "EDGE_TLS_CERT",
    "key": "EDGE_TLS_KEY",
    "advertise": "EDGE_ADVERTISE",
    "control": "EDGE_CONTROL_ADDRESS",
    "token": "EDGE_CONTROL_TOKEN",
    "snapshot": "EDGE_SNAPSHOT",
    "snapshot_url": "EDGE_SNAPSHOT_URL",
    "journal_dir": "EDGE_JOURNAL_DIR",
    "state_dir": "EDGE_STATE_DIR",
    "drain_timeout": "EDGE_DRAIN_TIMEOUT",
    "digest_secret_file": "EDGE_DIGEST_SECRET_FILE",
    "cdr_batch_size": "EDGE_CDR_BATCH_SIZE",
    "cdr_flush_interval": "EDGE_CDR_FLUSH_INTERVAL",
    "log_level": "EDGE_LOG_LEVEL",
    "redis_url": "REDIS_URL",
    "limit_share": "EDGE_LIMIT_SHARE",
    "digest_algorithms": "EDGE_DIGEST_ALGORITHMS",
    "gc_full_interval": "EDGE_GC_FULL_INTERVAL",
    "stall_dump": "EDGE_STALL_DUMP_MS",
    "allocator": "EDGE_ALLOCATOR",
    "cdr_ship": "EDGE_CDR_SHIP",
    "live_events": "EDGE_LIVE_EVENTS",
    "rtpengine": "EDGE_RTPENGINE",
}
# Names earlier versions read: refused with the name to use, rather than silently ignored.
RETIRED = {
    "EDGE_NODE": "EDGE_NODE_NAME",
    "EDGE_SIP": "EDGE_SIP_ADDRESS",
    "EDGE_TLS": "EDGE_TLS_ADDRESS",
    "EDGE_CONTROL": "EDGE_CONTROL_ADDRESS",
    "EDGE_REDIS_URL": "REDIS_URL",
    "EDGE_CDR_JOURNAL_DIR": "EDGE_JOURNAL_DIR",
}
# The challenge order: edge.sip.digest says why MD5 comes first.
DEFAULT_DIGEST_ALGORITHMS = DEFAULT_CHALLENGE_ORDER


class UsageError(ValueError):
    """The options are incomplete or malformed."""


def check_retired(environ: Mapping[str, str] | None = None) -> None:
    """UsageError if a retired variable is set (it would be ignored)."""
    environ = os.environ if environ is None else environ
    for old, new in RETIRED.items():
        if environ.get(old):
            raise UsageError(f"{old} is no longer read: set {new} instead")


@dataclass(frozen=True)
class EdgeOptions:
    node: str
    sip: tuple[str, int]
    control: tuple[str, int]
    token: str
    journal_dir: Path
    tls: tuple[str, int] | None = None
    cert: Path | None = None
    key: Path | None = None
    advertise: str | None = None
    snapshot: Path | None = None
    snapshot_url: str | None = None
    state_dir: Path | None = None
    drain_timeout: float = 30.0
    digest_secret_file: Path | None = None
    cdr_batch_size: int = 64
    cdr_flush_interval: float = 0.05
    log_level: str = "INFO"
    redis_url: str | None = None  # cluster-wide limits; None: this edge counts alone
    limit_share: int = 1  # edges splitting each limit while Redis is unreachable
    digest_algorithms: tuple[str, ...] = DEFAULT_DIGEST_ALGORITHMS  # challenge order
    gc_full_interval: float = DEFAULT_FULL_INTERVAL  # seconds between full collections; 0 never
    # Milliseconds the event loop may not run before its thread's stack goes to stderr; 0 off.
    stall_dump: float = 0.0
    # CPython's allocator of a standalone edge's objects (edge/runtime/allocator.py).
    allocator: str = DEFAULT_ALLOCATOR
    # Ship the journal to --redis-url's CDR stream (edge/runtime/cdr_shipper.py), or in-process
    # where the runtime is given an ingest function (runedge, runplatform without Redis).
    cdr_ship: bool = True
    live_events: bool = True  # publish call events to --redis-url's stream (the live board)
    rtpengine: tuple[tuple[str, int], ...] = ()  # ng addresses; none: no media anchoring


def add_arguments(
    parser: argparse.ArgumentParser, defaults: Mapping[str, object] | None = None
) -> None:
    """Add the edge's options to ``parser``; ``defaults`` (by dest) sit below the environment."""
    defaults = defaults or {}

    def default(dest: str, builtin: object = None) -> object:
        value = os.environ.get(ENVIRONMENT[dest])
        if value:
            return value
        given = defaults.get(dest)
        return builtin if given in (None, "") else given

    def add(flag: str, dest: str, help: str, builtin: object = None, **kw: Any) -> None:
        env = ENVIRONMENT[dest]
        parser.add_argument(
            flag, dest=dest, default=default(dest, builtin), help=f"{help} [{env}]", **kw
        )

    add("--node", "node", "this edge's name (journal file names, CDRs, X-Edge-Node)")
    add("--sip", "sip", "HOST:PORT for SIP over UDP and TCP", "127.0.0.1:5060")
    add("--tls", "tls", "HOST:PORT for SIP over TLS (default with --cert: SIP host, port 5061)")
    add("--cert", "cert", "TLS certificate chain (PEM)")
    add("--key", "key", "TLS private key (PEM)")
    add("--advertise", "advertise", "host written in Via/Contact (default: the --sip host)")
    add("--control", "control", "HOST:PORT of the control API", "127.0.0.1:8081")
    add("--token", "token", "bearer token of the control API and the snapshot URL")
    add("--snapshot", "snapshot", "start from this snapshot file (wins over --snapshot-url)")
    add("--snapshot-url", "snapshot_url", "GET the snapshot from here at start-up")
    add("--journal-dir", "journal_dir", "directory of the CDR journal")
    add("--state-dir", "state_dir", "keeps the last applied snapshot (and the digest secret)")
    add("--drain-timeout", "drain_timeout", "seconds to let calls finish on SIGTERM", "30")
    add("--digest-secret-file", "digest_secret_file", "secret of the stateless digest nonces")
    add("--cdr-batch-size", "cdr_batch_size", "CDRs per journal write+fsync", "64")
    add("--cdr-flush-interval", "cdr_flush_interval", "max seconds a CDR waits", "0.05")
    add("--log-level", "log_level", "DEBUG, INFO, WARNING or ERROR", "INFO")
    add("--redis-url", "redis_url", "count trunk limits across edges in this Redis")
    add("--limit-share", "limit_share", "edges sharing each limit (used if Redis is down)", "1")
    add(
        "--digest-algorithms", "digest_algorithms",
        "digest challenge order (SHA-256,MD5 if every client knows SHA-256)",
        ",".join(DEFAULT_DIGEST_ALGORITHMS),
    )  # fmt: skip
    add(
        "--gc-full-interval", "gc_full_interval",
        "seconds between full garbage collections, each run once the edge is quiet (0: never; "
        "edge/runtime/gc_policy.py)",
        str(int(DEFAULT_FULL_INTERVAL)),
    )  # fmt: skip
    add(
        "--stall-dump", "stall_dump",
        "write the loop thread's Python stack to stderr when the event loop has not run for this "
        "many ms (0: off; edge/runtime/loop_watch.py)",
        "0",
    )  # fmt: skip
    add(
        "--allocator", "allocator",
        "jemalloc (Debian's libjemalloc2; malloc where it is not installed): memory goes back "
        "to the system after a busy spell, the core on 10 %% fewer instructions than on "
        "malloc; malloc (glibc's): memory goes back too; pymalloc: the fewest instructions, "
        "the memory stays (python -m edge and runedge; edge/runtime/allocator.py)",
        DEFAULT_ALLOCATOR,
    )  # fmt: skip
    add("--cdr-ship", "cdr_ship", "1: ship CDRs to the Redis stream of --redis-url; 0: don't", "1")
    add("--live-events", "live_events", "on: call events to --redis-url for the live board", "on")
    add(
        "--rtpengine", "rtpengine",
        "rtpengine ng addresses for media anchoring, e.g. udp:127.0.0.1:22222,udp:10.0.0.2:22222",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edge", description="Run a Trunkline SIP edge node."
    )
    add_arguments(parser)
    return parser


def host_port(text: str, what: str) -> tuple[str, int]:
    host, colon, port = text.strip().rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"{what}: expected HOST:PORT, got {text!r}")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port)


def _not_negative(flag: str, value: str) -> float:
    """`value` of `flag` as a number that is not negative (nor NaN), or a UsageError."""
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{flag}: not a number: {value!r}") from None
    if not number >= 0:
        raise UsageError(f"{flag} must not be negative")
    return number


def options_from_namespace(ns: argparse.Namespace) -> EdgeOptions:
    """Check the parsed options; UsageError says which one is wrong and how to give it."""
    check_retired()

    def text(dest: str) -> str | None:
        value = getattr(ns, dest, None)
        return None if value in (None, "") else str(value)

    def required(dest: str) -> str:
        value = text(dest)
        if value is None:
            flag = "--" + dest.replace("_", "-")
            raise UsageError(f"{flag} (or {ENVIRONMENT[dest]}) is required")
        return value

    def path(dest: str) -> Path | None:
        value = text(dest)
        return None if value is None else Path(value)

    tls = text("tls")
    cert, key = path("cert"), path("key")
    if tls is not None and (cert is None or key is None):
        raise UsageError("--tls needs --cert and --key")
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together")
    if tls is None and cert is not None:  # a certificate turns TLS on: the SIP host, port 5061
        tls = f"{host_port(required('sip'), '--sip')[0]}:5061"
    try:
        drain_timeout = float(required("drain_timeout"))
    except ValueError:
        raise UsageError(f"--drain-timeout: not a number: {ns.drain_timeout!r}") from None
    if drain_timeout < 0:
        raise UsageError("--drain-timeout must not be negative")
    try:
        cdr_batch_size = int(required("cdr_batch_size"))
        cdr_flush_interval = float(required("cdr_flush_interval"))
    except ValueError:
        raise UsageError("--cdr-batch-size / --cdr-flush-interval: not a number") from None
    if cdr_batch_size < 1 or cdr_flush_interval <= 0:
        raise UsageError("--cdr-batch-size and --cdr-flush-interval must be positive")
    snapshot, snapshot_url = path("snapshot"), text("snapshot_url")
    if snapshot is None and snapshot_url is None:
        raise UsageError("give --snapshot FILE or --snapshot-url URL (or EDGE_SNAPSHOT_URL)")
    try:
        limit_share = int(required("limit_share"))
    except ValueError:
        raise UsageError(f"--limit-share: not a number: {ns.limit_share!r}") from None
    if limit_share < 1:
        raise UsageError("--limit-share must be at least 1")
    algorithms = tuple(a.strip() for a in required("digest_algorithms").split(",") if a.strip())
    if not algorithms or set(algorithms) - {"MD5", "SHA-256"}:
        raise UsageError("--digest-algorithms: give MD5 and/or SHA-256, comma-separated")
    gc_full_interval = _not_negative("--gc-full-interval", required("gc_full_interval"))
    stall_dump = _not_negative("--stall-dump", text("stall_dump") or "0")
    allocator = (text("allocator") or DEFAULT_ALLOCATOR).lower()
    if allocator not in ALLOCATORS:
        raise UsageError(f"--allocator: one of {', '.join(ALLOCATORS)}, not {allocator!r}")
    try:
        rtpengine = tuple(parse_engines(text("rtpengine") or ""))
    except ValueError as error:
        raise UsageError(f"--rtpengine: {error}") from None
    live_events = (text("live_events") or "on").lower()
    if live_events not in ("on", "off"):
        raise UsageError(f"--live-events: on or off, not {live_events!r}")
    log_level = (text("log_level") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise UsageError(f"--log-level: unknown level {log_level!r}")
    return EdgeOptions(
        node=required("node"),
        sip=host_port(required("sip"), "--sip"),
        control=host_port(required("control"), "--control"),
        token=required("token"),
        journal_dir=Path(required("journal_dir")),
        tls=None if tls is None else host_port(tls, "--tls"),
        cert=cert,
        key=key,
        advertise=text("advertise"),
        snapshot=snapshot,
        snapshot_url=snapshot_url,
        state_dir=path("state_dir"),
        drain_timeout=drain_timeout,
        digest_secret_file=path("digest_secret_file"),
        cdr_batch_size=cdr_batch_size,
        cdr_flush_interval=cdr_flush_interval,
        log_level=log_level,
        redis_url=text("redis_url"),
        limit_share=limit_share,
        digest_algorithms=algorithms,
        gc_full_interval=gc_full_interval,
        stall_dump=stall_dump,
        allocator=allocator,
        cdr_ship=(text("cdr_ship") or "1").lower() not in ("0", "false", "no", "off"),
        live_events=live_events == "on",
        rtpengine=rtpengine,
    )


def options_from_environment(defaults: Mapping[str, object] | None = None) -> EdgeOptions:
    """The options from the environment over ``defaults``, no command line (runplatform)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser, defaults=defaults)
    return options_from_namespace(parser.parse_args([]))
