"""Start, run and stop one edge node: ``python -m edge`` and ``manage.py runedge``.

Start-up, in order: load the config snapshot (``--snapshot FILE``; else GET ``--snapshot-url``
with the bearer token, falling back to ``<state-dir>/snapshot.json`` with a WARNING when that
fails; with neither, refuse to start), open the CDR journal, bind SIP UDP and TCP on ``--sip``
(and TLS on ``--tls`` with ``--cert``/``--key``), build the core, start the control API on
``--control``, then print one line to stdout::

    edge ready node=edge-1 sip=127.0.0.1:5060 tls=- control=127.0.0.1:8081 config_version=42

(ports are the bound ones, so port 0 works). SIGTERM or SIGINT drains: the core refuses new
calls (503), the runtime waits until no call is active or ``--drain-timeout`` passes (a second
signal stops waiting), then dispatches the core's `close` outputs (final CDRs, BYEs), closes the
transports, flushes and fsyncs the journal, stops the control API and exits 0.

The options are parsed in `edge.options` (shared with runedge and runplatform): every option
also comes from the environment (`ENVIRONMENT`); command line > environment > the caller's
defaults > built-in defaults.

Live call events: with ``--redis-url`` (and ``--live-events on``, the default) batches go to a
Redis stream for the web's live board, else nowhere (`edge.runtime.events.live_events_sink`);
``EdgeRuntime(..., events=...)`` takes another sink (the embedded platform's, on its loop).

This module wires things together; it must never decide anything about calls and never log
per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from edge import native
from edge.config import ConfigError, EdgeConfig
from edge.limits import (
    AcquireSlot,
    Limits,
    LocalLimits,
    ReleaseSlot,
    SlotDecision,
    SlotGranted,
    SlotRefused,
    decide,
)
from edge.media import MediaFailed, MediaReady, MediaStats
from edge.numbering import prepare_regions
from edge.options import (
    DEFAULT_DIGEST_ALGORITHMS,
    ENVIRONMENT,
    EdgeOptions,
    UsageError,
    add_arguments,
    build_parser,
    options_from_namespace,
)
from edge.runtime import allocator
from edge.runtime.cdr_shipper import (
    InProcessTransport,
    JournalShipper,
    RedisShipTransport,
    ShipBatch,
    ShipperThread,
)
from edge.runtime.checkpoint import RESTART_REASON, AnsweredCalls, CallCheckpoint, recover
from edge.runtime.cluster_limits import ClusterLimits
from edge.runtime.control import (
    SNAPSHOT_FILE,
    ControlApp,
    ControlledCore,
    ControlServer,
    bind_control_socket,
    compile_snapshot,
    save_snapshot,
    start_control_server,
)
from edge.runtime.events import BatchingSink, EventSink, NodeEvent, live_events_sink
from edge.runtime.gc_policy import GcPolicy
from edge.runtime.journal import CdrJournal, JournalFlusher
from edge.runtime.loop_watch import LoopWatch
from edge.runtime.rtpengine import Media, attach_media
from edge.runtime.transports import (
    Dispatcher,
    HostResolver,
    SipCore,
    StreamTransports,
    UdpTransport,
    open_udp,
)

if TYPE_CHECKING:
    from edge.b2bua import Address, Output

__all__ = [
    "ENVIRONMENT",
    "CoreParams",
    "EdgeOptions",
    "EdgeRuntime",
    "StartupError",
    "UsageError",
    "add_arguments",
    "build_parser",
    "main",
    "options_from_namespace",
    "run",
]

logger = logging.getLogger(__name__)

READY = "edge ready"
DIGEST_SECRET_FILE = "digest-secret"
SNAPSHOT_FETCH_TIMEOUT = 10.0
GATEWAY_REFRESH_INTERVAL = 300.0


class StartupError(RuntimeError):
    """The edge cannot start (no snapshot, a port in use, an unreadable certificate...)."""


class EdgeCore(SipCore, ControlledCore, Protocol):
    """Everything the runtime asks of the B2BUA."""

    def close(self, now: float, wall: float) -> Sequence[Output]: ...

    def slot_decided(self, decision: SlotDecision, now: float, wall: float) -> Sequence[Output]: ...

    def media_decided(
        self, decision: MediaReady | MediaFailed, now: float, wall: float
    ) -> Sequence[Output]: ...

    def media_deleted(self, stats: MediaStats, now: float, wall: float) -> Sequence[Output]: ...

    def held(self) -> int: ...

    def release_memory(self) -> None: ...


# --- the runtime ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoreParams:
    """What a core factory gets: everything the B2BUA's constructor needs from the runtime."""

    node: str
    config: EdgeConfig
    local: dict[str, Address]
    digest_secret: bytes
    digest_algorithms: tuple[str, ...] = DEFAULT_DIGEST_ALGORITHMS
    media_engines: bool = False  # rtpengine configured: trunks in media mode auto anchor


def default_core(params: CoreParams) -> EdgeCore:
    from edge.b2bua import B2bua, B2buaSettings

    return B2bua(
        node=params.node,
        config=params.config,
        settings=B2buaSettings(
            challenge_algorithms=params.digest_algorithms, media_engines=params.media_engines
        ),
        local=params.local,
        digest_secret=params.digest_secret,
        rng=random.Random(secrets.randbits(64)),
    )


def fetch_snapshot(url: str, *, token: str, node: str, timeout: float) -> bytes:
    """GET the snapshot (blocking: run it in an executor)."""
    request = urllib.request.Request(
        url,
        headers={
            "Authorization": f"Bearer {token}",
            "X-Edge-Node": node,
            "Accept": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: bytes = response.read()
    return data


def _format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(kind: int, host: str, port: int) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_sip(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on the same port (with port 0: a port free for both)."""
    for _ in range(1 if port else 20):
        udp = _bind(socket.SOCK_DGRAM, host, port)
        try:
            tcp = _bind(socket.SOCK_STREAM, host, udp.getsockname()[1])
        except OSError:
            udp.close()
            if port:
                raise
            continue
        return udp, tcp
    raise OSError(f"no port free for both UDP and TCP on {host}")


class EdgeRuntime:
    """One edge node's sockets, core, journal, events and control API on the running loop.

    `start` brings everything up (StartupError if it cannot), `stop` asks for the graceful
    shutdown that `run_until_stopped` performs. Usable on a loop shared with other services
    (the embedded single-process mode).
    """

    def __init__(
        self,
        options: EdgeOptions,
        *,
        core_factory: Callable[[CoreParams], EdgeCore] = default_core,
        events: EventSink | None = None,
        cdr_ingest: Callable[[Sequence[ShipBatch]], object] | None = None,
    ) -> None:
        self.options = options
        # Without Redis, the embedded platform's CDRs go to this (billing's ingest) in-process.
        self._cdr_ingest = cdr_ingest
        self.shipper: ShipperThread | None = None
        self._core_factory = core_factory
        self.events: EventSink = events or live_events_sink(
            node=options.node, redis_url=options.redis_url, enabled=options.live_events
        )
        self.core: EdgeCore | None = None
        self.dispatcher: Dispatcher | None = None
        self.udp: UdpTransport | None = None
        self.streams: StreamTransports | None = None
        self.flusher: JournalFlusher | None = None
        self.control: ControlServer | None = None
        self._control_task: asyncio.Task[None] | None = None
        self.sip_address: tuple[str, int] | None = None
        self.tls_address: tuple[str, int] | None = None
        self.control_address: tuple[str, int] | None = None
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._base_config: EdgeConfig | None = None
        self._gateway_addresses: dict[str, list[str]] = {}
        self._gateway_task: asyncio.Task[None] | None = None
        self._gateway_timer: asyncio.TimerHandle | None = None
        # Set by `serve` in a process that is an edge (edge/runtime/gc_policy.py).
        self.gc_policy: GcPolicy | None = None
        self.loop_watch: LoopWatch | None = None  # likewise (edge/runtime/loop_watch.py)
        self._sockets: list[socket.socket] = []
        self.media: Media | None = None  # rtpengine ng client (edge/runtime/rtpengine.py)
        self.cluster_limits: ClusterLimits | None = None
        self.checkpoint: CallCheckpoint | None = None
        self.limits: Limits = LocalLimits()  # what the core's AcquireSlot / ReleaseSlot ask

    # --- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._abort_start()
            raise

    async def _start(self) -> None:
        options = self.options
        loop = asyncio.get_running_loop()
        data, config, source = await self._load_snapshot()
        logger.info("config version %d loaded from %s", config.version, source)
        logger.info("SIP core: %s (edge/native.py)", native.status())
        logger.info(
            "allocator: %s (edge/runtime/allocator.py)", allocator.status(options.allocator)
        )

        try:
            journal = CdrJournal(
                options.journal_dir,
                node=options.node,
                batch_size=options.cdr_batch_size,
                flush_interval=options.cdr_flush_interval,
            )
        except (OSError, ValueError) as error:
            raise StartupError(f"CDR journal in {options.journal_dir}: {error}") from None
        self.flusher = JournalFlusher(journal, loop=loop)
        try:
            recovered = await loop.run_in_executor(None, recover, journal)
        except (OSError, ValueError) as error:
            raise StartupError(f"calls left by the last run: {error}") from None
        if recovered:
            logger.warning(
                "%d answered calls were left unfinished by the last run: CDRs written (%s)",
                len(recovered),
                RESTART_REASON,
            )
        self.shipper = self._cdr_shipper()

        server_ssl = client_ssl = None
        try:
            client_ssl = ssl.create_default_context()
            if options.cert is not None and options.key is not None:
                server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                server_ssl.load_cert_chain(options.cert, options.key)
                client_ssl.load_cert_chain(options.cert, options.key)  # carriers may ask for it
        except (OSError, ssl.SSLError) as error:
            raise StartupError(
                f"TLS certificate {options.cert} / key {options.key}: {error}"
            ) from None

        host, port = options.sip
        try:
            udp_sock, tcp_sock = _bind_sip(host, port)
        except OSError as error:
            raise StartupError(f"cannot bind SIP on {host}:{port}: {error}") from None
        self._sockets += [udp_sock, tcp_sock]
        self.sip_address = (host, udp_sock.getsockname()[1])
        tls_sock = None
        if options.tls is not None:
            try:
                tls_sock = _bind(socket.SOCK_STREAM, *options.tls)
            except OSError as error:
                raise StartupError(f"cannot bind SIP TLS on {options.tls}: {error}") from None
            self._sockets.append(tls_sock)
            self.tls_address = (options.tls[0], tls_sock.getsockname()[1])
        try:
            control_sock = bind_control_socket(*options.control)
        except OSError as error:
            raise StartupError(
                f"cannot bind the control API on {options.control}: {error}"
            ) from None
        self._sockets.append(control_sock)
        self.control_address = (options.control[0], control_sock.getsockname()[1])

        advertised = options.advertise or host
        if advertised in ("0.0.0.0", "::"):
            logger.warning(
                "SIP bound to %s: give --advertise so Via/Contact carry a real host", host
            )
        sip_port = self.sip_address[1]
        local: dict[str, Address] = {
            "udp": (advertised, sip_port, "udp"),
            "tcp": (advertised, sip_port, "tcp"),
        }
        if self.tls_address is not None:
            local["tls"] = (advertised, self.tls_address[1], "tls")
        self._base_config = config
        limits: Limits = LocalLimits()
        if options.redis_url:
            self.cluster_limits = ClusterLimits(
                options.redis_url,
                node=options.node,
                loop=loop,
                share=options.limit_share,
                on_decided=self._limit_decided,
            )
            await self.cluster_limits.start()  # an outage only means local counting for now
            limits = self.cluster_limits
        self.limits = limits
        prepare_regions(_regions(config))
        core = self.core = self._core_factory(
            CoreParams(
                node=options.node,
                config=self._with_known_gateways(config),
                local=local,
                digest_secret=self._digest_secret(),
                digest_algorithms=options.digest_algorithms,
                media_engines=bool(options.rtpengine),
            )
        )
        if options.state_dir is not None and source != str(options.state_dir / SNAPSHOT_FILE):
            try:
                await loop.run_in_executor(None, save_snapshot, options.state_dir, data)
            except OSError as error:
                logger.error("snapshot not saved to %s: %s", options.state_dir, error)

        events = self.events
        if isinstance(core, AnsweredCalls):  # a core that can say which calls are up
            self.checkpoint = CallCheckpoint(core, journal, loop=loop)
            events = self.checkpoint.sink(events)
        dispatcher = self.dispatcher = Dispatcher(
            core, loop=loop, journal=self.flusher, events=events, resolver=HostResolver(loop)
        )
        dispatcher.slots = self._slot
        self.media = await attach_media(dispatcher, core, options.rtpengine)
        self.udp = await open_udp(dispatcher, udp_sock)
        self.streams = StreamTransports(dispatcher, client_ssl=client_ssl)
        await self.streams.listen(tcp_sock, transport="tcp")
        if tls_sock is not None:
            await self.streams.listen(tls_sock, transport="tls", ssl=server_ssl)
        self._refresh_gateways()

        app = ControlApp(
            core=core,
            token=options.token,
            dispatch=dispatcher.dispatch,
            apply_config=self.apply_config,
            state_dir=options.state_dir,
            runtime_metrics=self._runtime_metrics,
        )
        if self.checkpoint is not None:
            self.checkpoint.start()
        self.control, self._control_task = await start_control_server(app, control_sock)
        self._sockets.clear()  # owned by their servers now
        self._node_event("node_started")

    def _slot(self, out: AcquireSlot | ReleaseSlot) -> None:
        """The core asks for a call's slot or gives one back. Counters that answer at once
        (this edge's, or the cluster's while Redis is away) answer through the same input as
        the cluster's later answer: `core.slot_decided`."""
        if type(out) is ReleaseSlot:
            self.limits.release(out.trunk_id, out.call_id)
            return
        core, dispatcher = self.core, self.dispatcher
        if core is None or dispatcher is None or type(out) is not AcquireSlot:
            return
        now = dispatcher.loop.time()
        decision = decide(self.limits, out, now)
        if decision is not None:
            dispatcher.dispatch(core.slot_decided(decision, now, time.time()))

    def _cdr_shipper(self) -> ShipperThread | None:
        """The journal's shipper: to the Redis stream, else in-process, else none (load_cdrs)."""
        options = self.options
        transport: RedisShipTransport | InProcessTransport
        if options.redis_url and options.cdr_ship:
            transport = RedisShipTransport(options.redis_url, node=options.node)
        elif self._cdr_ingest is not None and options.cdr_ship:
            transport = InProcessTransport(self._cdr_ingest)
        else:
            logger.info("CDRs stay in the journal (no Redis to ship to): load them with load_cdrs")
            return None
        shipper = ShipperThread(
            JournalShipper(options.journal_dir, node=options.node, transport=transport)
        )
        shipper.start()
        return shipper

    def _limit_decided(self, call_id: str, granted: bool, reason: str | None) -> None:
        """The cluster counters answered an admission the core left waiting."""
        core, dispatcher = self.core, self.dispatcher
        if core is not None and dispatcher is not None:
            decision: SlotDecision = (
                SlotGranted(call_id) if granted else SlotRefused(call_id, reason or "channel_limit")
            )
            dispatcher.dispatch(core.slot_decided(decision, dispatcher.loop.time(), time.time()))

    def ready_line(self) -> str:
        assert self.core is not None and self.sip_address and self.control_address
        tls = "-" if self.tls_address is None else _format_address(self.tls_address)
        return (
            f"{READY} node={self.options.node} sip={_format_address(self.sip_address)} "
            f"tls={tls} control={_format_address(self.control_address)} "
            f"config_version={self.core.config.version}"
        )

    async def _load_snapshot(self) -> tuple[bytes, EdgeConfig, str]:
        options = self.options
        loop = asyncio.get_running_loop()
        if options.snapshot is not None:
            try:
                data = options.snapshot.read_bytes()
                config = await loop.run_in_executor(None, compile_snapshot, data)
            except (OSError, ConfigError) as error:
                raise StartupError(f"snapshot file {options.snapshot}: {error}") from None
            return data, config, str(options.snapshot)
        failures = []
        if options.snapshot_url is not None:
            try:
                data = await loop.run_in_executor(
                    None,
                    lambda: fetch_snapshot(
                        options.snapshot_url or "",
                        token=options.token,
                        node=options.node,
                        timeout=SNAPSHOT_FETCH_TIMEOUT,
                    ),
                )
                config = await loop.run_in_executor(None, compile_snapshot, data)
                return data, config, options.snapshot_url
            except (OSError, ConfigError) as error:
                failures.append(f"{options.snapshot_url}: {error}")
                saved = "none" if options.state_dir is None else options.state_dir / SNAPSHOT_FILE
                logger.warning(
                    "snapshot URL %s failed (%s); falling back to the saved snapshot (%s)",
                    options.snapshot_url,
                    error,
                    saved,
                )
        if options.state_dir is not None:
            saved_path = options.state_dir / SNAPSHOT_FILE
            try:
                data = saved_path.read_bytes()
                config = await loop.run_in_executor(None, compile_snapshot, data)
                logger.warning("running on the saved snapshot %s until one is pushed", saved_path)
                return data, config, str(saved_path)
            except FileNotFoundError:
                failures.append(f"{saved_path}: no saved snapshot")
            except (OSError, ConfigError) as error:
                failures.append(f"{saved_path}: {error}")
        else:
            failures.append("no --state-dir to fall back to")
        raise StartupError("no config snapshot, refusing to start: " + "; ".join(failures))

    def _digest_secret(self) -> bytes:
        options = self.options
        if options.digest_secret_file is not None:
            try:
                secret = options.digest_secret_file.read_bytes().strip()
            except OSError as error:
                raise StartupError(f"digest secret file: {error}") from None
            if len(secret) < 16:
                raise StartupError("the digest secret file must hold at least 16 bytes")
            return secret
        if options.state_dir is None:
            # Nonces then die with the process: a caller is challenged again, nothing worse.
            return secrets.token_bytes(32)
        path = options.state_dir / DIGEST_SECRET_FILE
        try:
            options.state_dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(secrets.token_hex(32).encode())
            return path.read_bytes().strip()
        except OSError as error:
            raise StartupError(f"digest secret {path}: {error}") from None

    async def _abort_start(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self.control is not None and self._control_task is not None:
            self.control.should_exit = True
            await asyncio.wait([self._control_task], timeout=5)
        if self.udp is not None:
            self.udp.close()
        if self.streams is not None:
            self.streams.close()
        if self.flusher is not None:
            await self.flusher.aclose()
        if self.shipper is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.shipper.stop)

    # --- config and gateway names ----------------------------------------------------------

    def apply_config(self, config: EdgeConfig) -> None:
        """Swap in a compiled snapshot (the control API calls this on the loop)."""
        assert self.core is not None
        self._base_config = config
        prepare_regions(_regions(config))
        self.core.apply_config(self._with_known_gateways(config))
        self._refresh_gateways()
        self._node_event("config_applied")

    def _node_event(self, kind: str) -> None:
        """Tell the live board (it then re-reads this edge's calls: no ghosts after a restart)."""
        assert self.core is not None
        event = NodeEvent(kind, time.time(), {"config_version": self.core.config.version})
        try:
            self.events.publish([event])
        except Exception:
            logger.exception("event sink failed; %s lost", kind)

    def _with_known_gateways(self, config: EdgeConfig) -> EdgeConfig:
        known = {
            host: self._gateway_addresses[host]
            for host in config.unresolved_gateway_hosts
            if host in self._gateway_addresses
        }
        return config.with_resolved_hosts(known) if known else config

    def _refresh_gateways(self) -> None:
        """Resolve gateways configured by name (their addresses identify carrier traffic)."""
        if self._gateway_timer is not None:
            self._gateway_timer.cancel()
            self._gateway_timer = None
        config = self._base_config
        if config is None or not config.unresolved_gateway_hosts:
            return
        if self._gateway_task is not None:
            self._gateway_task.cancel()
        loop = asyncio.get_running_loop()
        self._gateway_task = loop.create_task(self._resolve_gateways(config))

    async def _resolve_gateways(self, config: EdgeConfig) -> None:
        assert self.dispatcher is not None and self.core is not None
        resolver = self.dispatcher.resolver
        for host in sorted(config.unresolved_gateway_hosts):
            try:
                self._gateway_addresses[host] = await resolver.addresses(host)
            except OSError as error:
                logger.warning("gateway host %s does not resolve: %s", host, error)
        if self._base_config is config:
            self.core.apply_config(self._with_known_gateways(config))
            loop = asyncio.get_running_loop()
            self._gateway_timer = loop.call_later(GATEWAY_REFRESH_INTERVAL, self._refresh_gateways)

    # --- metrics of the runtime itself -----------------------------------------------------

    def _runtime_metrics(self) -> Iterable[Metric]:
        dispatcher, streams, flusher = self.dispatcher, self.streams, self.flusher
        if streams is not None:
            yield GaugeMetricFamily(
                "trunkline_edge_stream_connections",
                "Open TCP/TLS connections",
                value=len(streams.connections),
            )
            yield CounterMetricFamily(
                "trunkline_edge_connect_failures",
                "Outbound TCP/TLS connections that could not be opened",
                value=streams.connect_failures,
            )
        if dispatcher is not None:
            yield CounterMetricFamily(
                "trunkline_edge_transmits_dropped",
                "Messages the core asked to send that could not be sent",
                value=dispatcher.transmits_dropped,
            )
            yield CounterMetricFamily(
                "trunkline_edge_core_errors",
                "Inputs on which the core raised (bugs)",
                value=dispatcher.core_errors,
            )
            yield CounterMetricFamily(
                "trunkline_edge_cdr_journal_failures",
                "CDRs the journal refused",
                value=dispatcher.cdr_failures,
            )
        if flusher is not None:
            yield GaugeMetricFamily(
                "trunkline_edge_cdr_journal_pending",
                "CDRs buffered, not yet written to the journal",
                value=flusher.journal.pending,
            )
        if self.shipper is not None:
            yield from self.shipper.shipper.metrics()
        if self.gc_policy is not None:
            yield from self.gc_policy.metrics()
        if self.loop_watch is not None:
            yield from self.loop_watch.metrics()
        if self.media is not None:
            yield from self.media.metrics()
        if isinstance(self.events, BatchingSink):
            yield CounterMetricFamily(
                "trunkline_edge_events_dropped",
                "Live call events dropped because the publisher fell behind",
                value=self.events.dropped,
            )

    # --- stop ------------------------------------------------------------------------------

    def stop(self, *, hurry: bool = False) -> None:
        """Ask for a graceful stop (idempotent); a second request stops waiting for calls."""
        if self._stop.is_set() or hurry:
            self._hurry.set()
        self._stop.set()

    async def run_until_stopped(self) -> None:
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        core, dispatcher = self.core, self.dispatcher
        assert core is not None and dispatcher is not None
        assert self.flusher is not None and self.streams is not None
        loop = asyncio.get_running_loop()
        core.drain()
        deadline = loop.time() + self.options.drain_timeout
        if core.active_calls:
            logger.info(
                "draining: %d calls, waiting up to %.0fs",
                core.active_calls,
                self.options.drain_timeout,
            )
        while core.active_calls and loop.time() < deadline and not self._hurry.is_set():
            await asyncio.sleep(0.05)
        if core.active_calls:
            logger.warning("drain: ending %d calls still in progress", core.active_calls)
        self.streams.stop_listening()
        # The core's last words (final CDRs, BYEs, 503s) go out while the sockets are still
        # open; nothing can come in between this and closing them: this is one callback.
        if self.media is not None:
            self.media.closing()
        try:
            dispatcher.dispatch(core.close(loop.time(), time.time()))
        except Exception:
            logger.exception("core.close raised: calls still open have no final CDR")
        if self.media is not None:
            self.media.close()
        dispatcher.stop_timer()
        if self.cluster_limits is not None:
            await self.cluster_limits.close()  # sends the releases of the calls just ended
        if self.udp is not None:
            self.udp.close()
        self.streams.close()
        dispatcher.resolver.close()
        if self._gateway_timer is not None:
            self._gateway_timer.cancel()
        if self._gateway_task is not None:
            self._gateway_task.cancel()
        try:
            await self.flusher.aclose()
        except OSError as error:
            logger.error("CDR journal could not be flushed at shutdown: %s", error)
        else:
            if self.checkpoint is not None:  # every call has its CDR: nothing to recover
                await self.checkpoint.aclose()
        if self.shipper is not None:
            await loop.run_in_executor(None, self.shipper.stop)
        closer = getattr(self.events, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:
                logger.exception("live events sink failed to close")
        if self.control is not None and self._control_task is not None:
            self.control.should_exit = True
            done, _ = await asyncio.wait([self._control_task], timeout=10)
            if not done:
                self._control_task.cancel()
        logger.info("edge stopped")


def _regions(config: EdgeConfig) -> set[str]:
    """The regions whose numbers the edge reads: each trunk's default country and inbound's."""
    from edge.b2bua import B2buaSettings

    regions = {trunk.default_country for trunk in config.trunks.values()}
    return regions | {B2buaSettings().inbound_default_region}


# --- entry points -----------------------------------------------------------------------------


async def serve(
    options: EdgeOptions,
    *,
    core_factory: Callable[[CoreParams], EdgeCore] = default_core,
    events: EventSink | None = None,
    ready: Callable[[str], None] | None = None,
    cdr_ingest: Callable[[Sequence[ShipBatch]], object] | None = None,
) -> int:
    """Run one edge until SIGTERM/SIGINT; the exit code."""
    runtime = EdgeRuntime(options, core_factory=core_factory, events=events, cdr_ingest=cdr_ingest)
    try:
        await runtime.start()
    except StartupError as error:
        logger.error("%s", error)  # unconfigured logging still prints errors to stderr
        return 1
    loop = asyncio.get_running_loop()
    core = runtime.core
    assert core is not None  # started
    runtime.gc_policy = GcPolicy(
        full_interval=options.gc_full_interval, held=core.held, release=core.release_memory
    )
    runtime.gc_policy.install(loop)
    runtime.loop_watch = LoopWatch(dump_after=options.stall_dump / 1000)
    runtime.loop_watch.start(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, runtime, sig)
    try:
        line = runtime.ready_line()
        if ready is not None:
            ready(line)
        else:
            print(line, flush=True)
        await runtime.run_until_stopped()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        runtime.gc_policy.uninstall()
        runtime.loop_watch.stop()
    return 0


def _on_signal(runtime: EdgeRuntime, sig: int) -> None:
    logger.info("%s: stopping (again to stop waiting for calls)", signal.Signals(sig).name)
    runtime.stop()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(options: EdgeOptions, *, configure_logging: bool = True, **kwargs: Any) -> int:
    """Run the edge in this process, its own (`python -m edge`, runedge): on the allocator of
    ``options`` (this may re-execute the process first, edge/runtime/allocator.py), on a new
    event loop (uvloop when importable); the exit code."""
    allocator.adopt(options.allocator)
    if configure_logging:
        logging.basicConfig(
            level=options.log_level,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        # Its worker threads without jemalloc's thread cache, like the edge's others.
        executor = ThreadPoolExecutor(
            thread_name_prefix="asyncio", initializer=allocator.uncached_thread
        )
        runner.get_loop().set_default_executor(executor)
        return runner.run(serve(options, **kwargs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    namespace = parser.parse_args(argv)
    try:
        options = options_from_namespace(namespace)
    except UsageError as error:
        parser.error(str(error))
    return run(options)
