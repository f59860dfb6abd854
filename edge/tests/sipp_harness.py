"""Real SIP peers for the edge's end-to-end tests and benchmarks: SIPp, the edge process, its CDRs.

Everything runs on loopback, one address per role (all of 127.0.0.0/8 is loopback on Linux), so
the edge tells callers apart by source address exactly as it does in production:

    127.0.0.1  the edge (SIP on UDP, control API on TCP)
    127.0.0.2  the customer's PBX: SIPp UAC of outbound calls, SIPp UAS at an origination URI
    127.0.0.3  the carrier's gateway: SIPp UAS of outbound calls, SIPp UAC of inbound calls
    127.0.0.9  a stranger: in no trunk's ACL and no carrier's gateway

`Sipp` runs one SIPp process in the foreground (no ``-bg``) so that it can be waited for and
stopped reliably; every run is bounded by ``-m`` (calls), ``-recv_timeout`` (per message) and a
wall-clock timeout after which it is killed. Its statistics CSV (``-trace_stat``), unexpected
messages (``-trace_err``), message log (``-trace_msg``) and scenario log (``-trace_logs``) stay
in the work directory for the failure report. SIPp's exit status: 0 every call succeeded, 1 at
least one failed, 97/99 stopped by a command or without calls, 255 (-1) a fatal error.

Scenario parameters (see edge/tests/sipp/*.xml): numbers go in as keywords, ``-key caller N
-key callee N`` ([caller], [callee]); the status a refusal scenario expects as a global
variable, ``-set expected 503`` ([$expected]); digest credentials as ``-au``/``-ap``.

`EdgeProcess` runs ``python -m edge`` on a snapshot document, waits for its ``edge ready`` line,
talks to its control API and reads the CDR journal it writes (``cdr-*.jsonl``).

`Kamailio` runs shared/peers/run-kamailio.sh, the benchmark's reference proxy; it also validates
the scenarios through a real record-routing proxy while the edge is not there.

No pytest at import time (bench/edge_cps.py uses this module too): `require_sipp` imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "sipp"

EDGE_IP = "127.0.0.1"
PBX_IP = "127.0.0.2"
CARRIER_IP = "127.0.0.3"
STRANGER_IP = "127.0.0.9"

DEFAULT_TOKEN = "sipp-tests-token"
READY_LINE = "edge ready"

# SIPp's exit statuses (sipp(1), "EXIT STATUS").
SIPP_ALL_OK = 0
SIPP_SOME_FAILED = 1


def sipp_binary() -> str | None:
    return shutil.which("sipp")


def require_sipp() -> str:
    """The sipp binary, or skip the calling test (CI installs it: Debian package sip-tester)."""
    binary = sipp_binary()
    if binary is None:
        import pytest

        pytest.skip("sipp is not installed (apt-get install sip-tester)")
    return binary


def scenario(name: str) -> Path:
    path = SCENARIOS / name
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def free_udp_port(host: str = EDGE_IP) -> int:
    """A UDP port free on `host` now (the usual bind-to-0 race applies; ports are not reused
    soon after by the kernel's ephemeral allocator, which is enough on a test machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_tcp_port(host: str = EDGE_IP) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port(host: str = EDGE_IP) -> int:
    """A port free for both UDP and TCP on `host` (the edge listens on both for SIP)."""
    for _ in range(50):
        port = free_udp_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text if len(text) <= limit else "…" + text[-limit:]


def _terminate(process: subprocess.Popen[Any], grace: float) -> int | None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. The exit status, None if unknown."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
    return process.returncode


# --- SIPp ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SippStats:
    """The last line of SIPp's ``-trace_stat`` CSV, by column name (cumulative ``(C)`` columns)."""

    columns: Mapping[str, str]

    def count(self, name: str) -> int:
        value = self.columns.get(f"{name}(C)", self.columns.get(name, "0"))
        try:
            return int(float(value))
        except ValueError:
            return 0

    @property
    def successful(self) -> int:
        return self.count("SuccessfulCall")

    @property
    def failed(self) -> int:
        return self.count("FailedCall")

    @property
    def created(self) -> int:
        return self.count("TotalCallCreated")

    @property
    def incoming(self) -> int:
        return self.count("IncomingCall")

    @property
    def outgoing(self) -> int:
        return self.count("OutgoingCall")

    def response_time_ms(self, index: int = 1) -> float | None:
        """The mean response time ``index`` (``rtd="true"``) over the run, in milliseconds."""
        value = self.columns.get(f"ResponseTime{index}(C)")
        return None if value is None else _sipp_duration_ms(value)


def _sipp_duration_ms(value: str) -> float:
    """SIPp writes durations as ``HH:MM:SS:microseconds``."""
    parts = value.strip().split(":")
    if len(parts) != 4:
        raise ValueError(f"not a SIPp duration: {value!r}")
    hours, minutes, seconds, micros = (int(p) for p in parts)
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + micros / 1000


def read_sipp_stats(path: Path) -> SippStats | None:
    """The final statistics of a run (SIPp dumps them at exit, also on SIGTERM/SIGINT)."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    if len(lines) < 2:
        return None
    header = lines[0].split(";")
    values = lines[-1].split(";")
    return SippStats(dict(zip(header, values, strict=False)))


@dataclass(frozen=True)
class SipMessage:
    """One message of a SIPp ``-trace_msg`` log."""

    direction: str  # "sent" or "received"
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def head(self) -> str:
        """Start line and headers, without the body."""
        return re.split(r"\r?\n\r?\n", self.text, maxsplit=1)[0]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (long form, case-insensitive)."""
        for line in self.head.splitlines()[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def headers(self, name: str) -> list[str]:
        return [
            value.strip()
            for key, _, value in (line.partition(":") for line in self.head.splitlines()[1:])
            if key.strip().lower() == name.lower()
        ]

    @property
    def status(self) -> int | None:
        match = re.match(r"SIP/2\.0 (\d{3}) ", self.first_line)
        return int(match.group(1)) if match else None

    @property
    def method(self) -> str | None:
        match = re.match(r"([A-Z]+) \S+ SIP/2\.0$", self.first_line)
        return match.group(1) if match else None


_LOG_SEPARATOR = re.compile(r"^-{20,} [0-9: .-]+$", re.MULTILINE)
_LOG_DIRECTION = re.compile(r"^\w+ message (sent|received)\b[^\n]*\n\n?", re.MULTILINE)


def read_sipp_messages(path: Path) -> list[SipMessage]:
    """The messages of a ``-trace_msg`` log, in order."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    messages = []
    for block in _LOG_SEPARATOR.split(text):
        match = _LOG_DIRECTION.search(block)
        if match is None:
            continue
        body = block[match.end() :].strip("\n")
        if body:
            messages.append(SipMessage(match.group(1), body.replace("\r\n", "\n")))
    return messages


@dataclass
class SippResult:
    name: str
    returncode: int | None
    stats: SippStats | None
    workdir: Path
    timed_out: bool = False

    @property
    def successful(self) -> int:
        return self.stats.successful if self.stats else 0

    @property
    def failed(self) -> int:
        return self.stats.failed if self.stats else 0

    @property
    def ok(self) -> bool:
        return self.returncode == SIPP_ALL_OK and not self.timed_out

    @property
    def errors(self) -> str:
        return _tail(self.workdir / f"{self.name}.errors.log")

    @property
    def messages(self) -> list[SipMessage]:
        return read_sipp_messages(self.workdir / f"{self.name}.messages.log")

    def received(self, method_or_status: str | int) -> list[SipMessage]:
        """Messages this SIPp received: requests by method, responses by status."""
        out = []
        for message in self.messages:
            if message.direction != "received":
                continue
            if isinstance(method_or_status, int):
                if message.status == method_or_status:
                    out.append(message)
            elif message.method == method_or_status:
                out.append(message)
        return out

    def explain(self) -> str:
        stats = "no statistics"
        if self.stats is not None:
            stats = (
                f"created={self.stats.created} successful={self.successful} failed={self.failed}"
            )
        parts = [f"sipp {self.name}: exit {self.returncode}, {stats}"]
        if self.timed_out:
            parts.append("(killed at its wall-clock timeout)")
        for label, suffix in (
            ("errors", "errors.log"),
            ("log", "log.log"),
            ("screen", "screen.txt"),
        ):
            text = _tail(self.workdir / f"{self.name}.{suffix}", 2500)
            if text.strip():
                parts.append(f"--- {label} ---\n{text}")
        return "\n".join(parts)


class Sipp:
    """One SIPp process: a UAC (``remote`` given) or a UAS, run in the foreground.

    ``duration_ms`` is ``-d`` (the scenario's ``<pause/>``); ``recv_timeout_ms`` fails a call
    that waits longer than that for a message (it must exceed any pause of the peer);
    ``wall_timeout`` kills the process. ``trace_messages`` keeps a full message log and
    ``trace_errors`` the unexpected ones (tests: yes; benchmarks: no, both cost SIPp CPU).
    """

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        scenario_file: Path | None = None,
        builtin: str | None = None,
        local_ip: str,
        local_port: int | None = None,
        remote: tuple[str, int] | None = None,
        calls: int | None = 1,
        rate: float | None = None,
        rate_period_ms: int | None = None,
        limit: int | None = None,
        duration_ms: int | None = None,
        keys: Mapping[str, str] | None = None,
        variables: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        service: str | None = None,
        recv_timeout_ms: int | None = 10_000,
        wall_timeout: float = 30.0,
        trace_messages: bool = True,
        trace_errors: bool = True,
        stats_every_s: int = 1,
        extra: Sequence[str] = (),
    ) -> None:
        if (scenario_file is None) == (builtin is None):
            raise ValueError("give exactly one of scenario_file and builtin")
        self.binary = sipp_binary() or "sipp"
        self.workdir = workdir
        self.name = name
        self.local_ip = local_ip
        self.local_port = local_port or free_udp_port(local_ip)
        self.remote = remote
        self.wall_timeout = wall_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self._timed_out = False
        self._screen: Any = None

        args: list[str] = [self.binary]
        if remote is not None:
            args.append(f"{remote[0]}:{remote[1]}")
        args += ["-sf", str(scenario_file)] if scenario_file else ["-sn", str(builtin)]
        args += ["-i", local_ip, "-p", str(self.local_port), "-nostdin"]
        if calls is not None:
            args += ["-m", str(calls)]
        if rate is not None:
            args += ["-r", _number(rate)]
        if rate_period_ms is not None:
            args += ["-rp", str(rate_period_ms)]
        if limit is not None:
            args += ["-l", str(limit)]
        if duration_ms is not None:
            args += ["-d", str(duration_ms)]
        if service is not None:
            args += ["-s", service]
        for key, value in (keys or {}).items():
            args += ["-key", key, str(value)]
        for key, value in (variables or {}).items():
            args += ["-set", key, str(value)]
        if auth is not None:
            args += ["-au", auth[0], "-ap", auth[1]]
        if recv_timeout_ms is not None:
            args += ["-recv_timeout", str(recv_timeout_ms)]
        args += ["-trace_stat", "-stf", str(self.stats_path), "-fd", str(stats_every_s)]
        if trace_errors:
            args += ["-trace_err", "-error_file", str(workdir / f"{name}.errors.log")]
            args += ["-trace_logs", "-log_file", str(workdir / f"{name}.log.log")]
        if trace_messages:
            args += ["-trace_msg", "-message_file", str(workdir / f"{name}.messages.log")]
        args += list(extra)
        self.args = args

    @property
    def stats_path(self) -> Path:
        return self.workdir / f"{self.name}.stats.csv"

    @property
    def address(self) -> tuple[str, int]:
        return (self.local_ip, self.local_port)

    @property
    def uri(self) -> str:
        """This SIPp as a SIP URI (an origination URI), e.g. ``sip:127.0.0.2:40000``."""
        return f"sip:{self.local_ip}:{self.local_port}"

    def start(self) -> Sipp:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._screen = open(self.workdir / f"{self.name}.screen.txt", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.args,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._screen,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        return self

    def wait_listening(self, timeout: float = 5.0) -> Sipp:
        """Wait until the SIP socket is bound (a UAS must be up before calls come)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"sipp {self.name} exited at start\n{self.result().explain()}")
            if _udp_bound(self.local_ip, self.local_port):
                return self
            time.sleep(0.02)
        raise RuntimeError(f"sipp {self.name} is not listening on {self.address}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to end by itself (it stops after ``-m`` calls); kill it at the timeout
        (``wall_timeout`` from its start by default)."""
        assert self.process is not None, "start() first"
        if timeout is None:
            assert self.started_at is not None
            timeout = max(0.1, self.started_at + self.wall_timeout - time.monotonic())
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._timed_out = True
            _terminate(self.process, 3)
        return self.result()

    def stop(self, grace: float = 3.0) -> SippResult:
        """End SIPp now (SIGTERM: it still writes its final statistics)."""
        if self.process is not None:
            _terminate(self.process, grace)
        return self.result()

    def result(self) -> SippResult:
        if (
            self._screen is not None
            and self.process is not None
            and self.process.poll() is not None
        ):
            self._screen.close()
        return SippResult(
            name=self.name,
            returncode=None if self.process is None else self.process.poll(),
            stats=read_sipp_stats(self.stats_path),
            workdir=self.workdir,
            timed_out=self._timed_out,
        )

    def run(self, timeout: float | None = None) -> SippResult:
        return self.start().wait(timeout)


def status_kib(pid: int, field: str) -> int | None:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM...), in KiB; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state, field 3 of proc(5): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _udp_bound(host: str, port: int) -> bool:
    """Whether a UDP socket is bound to (host, port) or (0.0.0.0, port), read from
    /proc/net/udp: binding a probe socket instead could steal the port from the process
    that is about to bind it."""
    wanted = {_proc_net_address(host, port), _proc_net_address("0.0.0.0", port)}
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] in wanted for line in lines if len(line.split()) > 1)


def _proc_net_address(host: str, port: int) -> str:
    """(127.0.0.2, 5060) as /proc/net/udp writes it: 0200007F:13C4 (little-endian IPv4)."""
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


# --- the edge --------------------------------------------------------------------------------


class EdgeError(RuntimeError):
    pass


class EdgeProcess:
    """``python -m edge`` on a snapshot document (or, with ``snapshot=None``, on the one it
    pulls from ``snapshot_url``), with its control API and CDR journal.

    The command line is the edge's contract::

        python -m edge --node NAME --sip IP:PORT --control IP:PORT --token TOKEN
                       --snapshot FILE.json | --snapshot-url URL --journal-dir DIR
                       [--drain-timeout S]
    """

    def __init__(
        self,
        workdir: Path,
        snapshot: Mapping[str, Any] | None,
        *,
        node: str = "edge-test",
        ip: str = EDGE_IP,
        sip_port: int | None = None,
        control_port: int | None = None,
        token: str = DEFAULT_TOKEN,
        drain_timeout: float | None = None,
        python: str | None = None,
        launcher: Sequence[str] | None = None,
        snapshot_url: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.node = node
        self.ip = ip
        self.sip_port = sip_port or free_port(ip)
        self.control_port = control_port or free_tcp_port(ip)
        self.token = token
        self.journal_dir = workdir / "journal"
        self.snapshot_path = workdir / "snapshot.json"
        self.stderr_path = workdir / "edge.stderr.log"
        self.stdout_lines: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._stdout_done = threading.Event()
        # ``launcher`` replaces ``python -m edge`` (bench/edge_cps.py runs the edge with a
        # live-event sink that way); the options that follow are the same.
        self.args = [
            *(launcher or (python or sys.executable, "-m", "edge")),
            "--node",
            node,
            "--sip",
            f"{ip}:{self.sip_port}",
            "--control",
            f"{ip}:{self.control_port}",
            "--token",
            token,
            *(["--snapshot", str(self.snapshot_path)] if snapshot is not None else []),
            *(["--snapshot-url", snapshot_url] if snapshot_url is not None else []),
            "--journal-dir",
            str(self.journal_dir),
        ]
        if drain_timeout is not None:
            self.args += ["--drain-timeout", _number(drain_timeout)]
        self.args += list(extra_args)
        self.env = dict(os.environ)
        self.env["PYTHONUNBUFFERED"] = "1"
        # REDIS_URL is also the edge's (shared limits): an edge under test counts alone unless
        # the test gives it Redis (`env` or --redis-url).
        self.env.pop("REDIS_URL", None)
        self.env.update(env or {})
        if snapshot is not None:
            self.write_snapshot(snapshot)
        else:
            self.journal_dir.mkdir(parents=True, exist_ok=True)

    # -- process --

    @property
    def sip_address(self) -> tuple[str, int]:
        return (self.ip, self.sip_port)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def write_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self.snapshot_path.write_text(json.dumps(snapshot, indent=1))

    def start(self, timeout: float = 20.0) -> EdgeProcess:
        stderr = open(self.stderr_path, "wb")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                self.args,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        finally:
            stderr.close()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.process.poll() is not None:
                self._stdout_done.wait(1)
                raise EdgeError(f"the edge exited before it was ready\n{self.explain()}")
            if time.monotonic() > deadline:
                self.stop(grace=2)
                raise EdgeError(f"the edge was not ready after {timeout} s\n{self.explain()}")
        return self

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stdout_lines.append(line)
            if READY_LINE in line:
                self._ready.set()
        self._stdout_done.set()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM: the edge drains (new calls 503, current calls finish), then exits 0."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise EdgeError(f"the edge did not exit within {timeout} s\n{self.explain()}") from None

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL after `grace` seconds. The exit status."""
        if self.process is None:
            return None
        code = _terminate(self.process, grace)
        self._stdout_done.wait(1)
        return code

    def rss_kib(self) -> int | None:
        """Resident memory of the edge process (VmRSS), in KiB."""
        return status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int | None:
        """The edge process's peak resident memory so far (VmHWM), in KiB."""
        return status_kib(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the edge process so far, all threads."""
        return cpu_seconds(self.pid)

    def explain(self) -> str:
        code = None if self.process is None else self.process.poll()
        stdout = "\n".join(self.stdout_lines[-40:])
        return (
            f"edge {self.node} (sip {self.ip}:{self.sip_port}, control {self.control_port}), "
            f"exit {code}\n--- stdout ---\n{stdout}\n--- stderr ---\n{_tail(self.stderr_path)}"
        )

    # -- control API --

    def api(
        self, method: str, path: str, body: Any = None, *, timeout: float = 5.0
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text) of one control API request; a `body` of bytes is
        sent as it is (an encoded snapshot), anything else as JSON."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{self.ip}:{self.control_port}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, _decode(response.read(), response.headers)
        except urllib.error.HTTPError as error:
            return error.code, _decode(error.read(), error.headers)

    def health(self) -> dict[str, Any]:
        """``GET /health``; a draining edge may answer 503, its body is what counts."""
        status, body = self.api("GET", "/health")
        if status not in (200, 503) or not isinstance(body, dict):
            raise EdgeError(f"GET /health: {status} {body!r}")
        return body

    def calls(self) -> list[dict[str, Any]]:
        """``GET /calls``: the active calls (``{"calls": [...]}``; a bare list is accepted)."""
        status, body = self.api("GET", "/calls")
        if isinstance(body, dict):
            body = body.get("calls")
        if status != 200 or not isinstance(body, list):
            raise EdgeError(f"GET /calls: {status} {body!r}")
        return body

    def hang_up(self, call_id: str) -> int:
        status, _ = self.api("DELETE", f"/calls/{call_id}")
        return status

    def push_config(self, snapshot: Mapping[str, Any]) -> tuple[int, Any]:
        return self.api("POST", "/config", snapshot)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = self.api("GET", "/metrics")
        if status != 200 or not isinstance(body, str):
            raise EdgeError(f"GET /metrics: {status}")
        return parse_prometheus(body)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the /metrics samples of `name` that carry `labels` (and maybe more);
        0 if there is none (counters appear on first use)."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.metrics().items()
            if sample == name and wanted <= sample_labels
        )

    def wait_active_calls(
        self, count: int, timeout: float = 5.0, *, answered: bool = True
    ) -> list[dict[str, Any]]:
        """Poll ``GET /calls`` until it lists `count` calls (answered ones only, by default:
        a call whose ``state`` is ``answered``, or any call if the edge gives no state)."""
        deadline = time.monotonic() + timeout
        calls: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            calls = self.calls()
            if answered:
                calls = [c for c in calls if c.get("state", "answered") == "answered"]
            if len(calls) == count:
                return calls
            time.sleep(0.05)
        raise EdgeError(f"expected {count} active calls, the edge lists {len(calls)}: {calls!r}")

    # -- CDR journal --

    def cdrs(self) -> list[dict[str, Any]]:
        """Every complete record in the journal so far (a torn last line is skipped)."""
        return read_cdrs(self.journal_dir)

    def wait_for_cdrs(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Poll the journal until it holds at least `count` records; return them all."""
        deadline = time.monotonic() + timeout
        records = self.cdrs()
        while len(records) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            records = self.cdrs()
        if len(records) < count:
            raise EdgeError(
                f"expected {count} CDRs in {self.journal_dir}, found {len(records)}: "
                f"{records!r}\n{self.explain()}"
            )
        return records


def _decode(data: bytes, headers: Any) -> Any:
    text = data.decode("utf-8", "replace")
    if "json" in (headers.get("Content-Type") or "") or text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of the Prometheus text format: (name, labels) -> value."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = frozenset(_LABEL.findall(match.group(2) or ""))
        try:
            samples[(match.group(1), labels)] = float(match.group(3))
        except ValueError:
            continue
    return samples


def read_cdrs(directory: Path) -> list[dict[str, Any]]:
    """The records of every ``cdr-*.jsonl`` file in `directory`, file by file, line by line."""
    records = []
    for path in sorted(directory.glob("cdr-*.jsonl")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line still being written
    return records


def cdrs_for(records: Iterable[Mapping[str, Any]], a_call_id: str) -> list[Mapping[str, Any]]:
    return [record for record in records if record.get("a_call_id") == a_call_id]


# --- Kamailio (the benchmark's reference proxy) ---------------------------------------------


def default_peers_dir() -> Path:
    """shared/peers: beside the repository (``../shared``), or ``$TRUNKLINE_PEERS``."""
    override = os.environ.get("TRUNKLINE_PEERS")
    if override:
        return Path(override)
    return REPO.parent / "shared" / "peers"


def kamailio_available(peers: Path | None = None) -> bool:
    peers = peers or default_peers_dir()
    return shutil.which("kamailio") is not None and (peers / "run-kamailio.sh").is_file()


class Kamailio:
    """shared/peers/run-kamailio.sh LISTEN_PORT UAS_PORT: a dialog-stateful, record-routing
    proxy on 127.0.0.1:LISTEN_PORT that relays every call to 127.0.0.1:UAS_PORT."""

    def __init__(self, workdir: Path, uas_port: int, *, peers: Path | None = None) -> None:
        self.peers = peers or default_peers_dir()
        self.workdir = workdir
        self.port = free_udp_port(EDGE_IP)
        self.uas_port = uas_port
        self.log_path = workdir / f"kamailio-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def sip_address(self) -> tuple[str, int]:
        return (EDGE_IP, self.port)

    def start(self, timeout: float = 10.0) -> Kamailio:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                ["bash", str(self.peers / "run-kamailio.sh"), str(self.port), str(self.uas_port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not _udp_bound(EDGE_IP, self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"kamailio exited at start\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kamailio is not listening\n{_tail(self.log_path)}")
            time.sleep(0.05)
        time.sleep(0.2)  # its worker processes start after the socket is bound
        return self

    def stop(self) -> None:
        """SIGTERM to the whole process group (kamailio forks its workers), then wait."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        time.sleep(0.5)  # the README: give it a moment before the next one starts


# --- a responsiveness probe ------------------------------------------------------------------


class OptionsProbe(threading.Thread):
    """Sends an OPTIONS to an edge every `every` seconds and records (sent at, delay) of each
    answer (time.monotonic, seconds), matched by CSeq number so that a late answer is not taken
    for the next one's; an OPTIONS unanswered within `timeout` is recorded with delay `timeout`.

    An answer's delay is what one SIP request waits: the kernel's loopback, the edge's event
    loop being busy or paused (a garbage collection, a config swap), the edge's handling, and
    this probe's own scheduling. It is sent from `PBX_IP`, in the benchmark trunks' ACL, so the
    abuse guard leaves it alone.
    """

    def __init__(
        self,
        edge: tuple[str, int],
        *,
        every: float = 0.005,
        timeout: float = 1.0,
        local_ip: str = PBX_IP,
    ) -> None:
        super().__init__(daemon=True)
        self.edge = edge
        self.every = every
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((local_ip, 0))
        self.samples: list[tuple[float, float]] = []
        self.stopping = threading.Event()

    def _options(self, n: int) -> bytes:
        host, port = self.sock.getsockname()
        return (
            f"OPTIONS sip:{self.edge[0]}:{self.edge[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-probe-{n}-{os.urandom(4).hex()}\r\n"
            f"From: <sip:probe@{host}>;tag=probe\r\nTo: <sip:{self.edge[0]}>\r\n"
            f"Call-ID: probe-{n}@{host}\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            sent = time.monotonic()
            self.sock.sendto(self._options(n), self.edge)
            delay = self._answer(n, sent)
            self.samples.append((sent, delay))
            time.sleep(max(0.0, self.every - (time.monotonic() - sent)))

    def _answer(self, n: int, sent: float) -> float:
        """The delay of the answer to OPTIONS number `n`; answers to earlier ones are skipped."""
        deadline = sent + self.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                break
            match = re.search(rb"\r\nCSeq:\s*(\d+)", data, re.IGNORECASE)
            if match is not None and int(match.group(1)) == n:
                return time.monotonic() - sent
        return self.timeout

    def stop(self) -> None:
        self.stopping.set()
        self.join(self.timeout + 1)
        self.sock.close()

    def worst(self, windows: list[tuple[float, float]], inside: bool) -> float:
        """The longest delay of the OPTIONS sent inside (or outside) the `windows`."""

        def within(t: float) -> bool:
            return any(start <= t <= end for start, end in windows)

        delays = [d for t, d in self.samples if within(t) == inside]
        return max(delays, default=0.0)


# --- a malformed-message sender --------------------------------------------------------------


@dataclass
class RawSipClient:
    """A UDP socket that sends arbitrary bytes (garbage, truncated or malformed SIP) and
    collects what comes back."""

    local_ip: str
    remote: tuple[str, int]
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.local_ip, 0))

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.remote)

    def receive(self, timeout: float = 2.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return data

    def receive_all(self, window: float = 0.5) -> list[bytes]:
        out = []
        deadline = time.monotonic() + window
        while (remaining := deadline - time.monotonic()) > 0:
            data = self.receive(remaining)
            if data is None:
                break
            out.append(data)
        return out

    def close(self) -> None:
        self.sock.close()


def status_line(data: bytes) -> tuple[int, str] | None:
    """(status, reason phrase) of a response datagram, None if it is not one."""
    first = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
    match = re.match(r"SIP/2\.0 (\d{3}) (.*)$", first)
    return (int(match.group(1)), match.group(2)) if match else None


# --- rtpengine ---------------------------------------------------------------------------------

RTPENGINE_IP = "127.0.0.5"  # the media address rtpengine gives both sides in the tests


def rtpengine_binary() -> str | None:
    return shutil.which("rtpengine")


class Rtpengine:
    """A userspace rtpengine (``--table=-1``) on loopback: media on ``RTPENGINE_IP`` in a port
    range of its own, its ng control port on ``ng_address``; ``ng`` asks it a command."""

    def __init__(
        self,
        workdir: Path,
        *,
        media_ip: str = RTPENGINE_IP,
        ports: tuple[int, int] | None = None,
    ) -> None:
        self.workdir = workdir
        self.media_ip = media_ip
        self.ng_address = (EDGE_IP, free_udp_port(EDGE_IP))
        # By default a block of 200 media ports (4 per call: RTP and RTCP on both legs, so
        # 50 calls at once), spread by the ng port to keep parallel runs apart. A benchmark
        # needs thousands: `ports`.
        base = 20000 + (self.ng_address[1] % 45) * 200
        self.ports = ports or (base, base + 199)
        self.log_path = workdir / f"rtpengine-{self.ng_address[1]}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((EDGE_IP, 0))
        self._cookie = 0

    @property
    def spec(self) -> str:
        """The edge's --rtpengine value for this instance."""
        return f"udp:{self.ng_address[0]}:{self.ng_address[1]}"

    def start(self, timeout: float = 10.0) -> Rtpengine:
        binary = rtpengine_binary() or "rtpengine"
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                # --config-file=none: the package's /etc/rtpengine/rtpengine.conf would add
                # its CLI and HTTP ports (2224, 2225), which a second rtpengine (a parallel
                # test, the bench, the packaged service) then fails to bind, and exits.
                binary, "--foreground", "--config-file=none", "--log-stderr", "--log-level=6",
                "--table=-1", "--no-fallback", f"--interface={self.media_ip}",
                f"--listen-ng={self.ng_address[0]}:{self.ng_address[1]}",
                f"--port-min={self.ports[0]}", f"--port-max={self.ports[1]}",
                "--delete-delay=0", "--num-threads=2", "--pidfile=/dev/null",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rtpengine exited {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, TimeoutError):
                if self.ng({"command": "ping"}, timeout=0.3).get(b"result") == b"pong":
                    return self
        raise RuntimeError(f"rtpengine did not answer ping:\n{self.log()}")

    def ng(self, command: Mapping[str, Any], timeout: float = 2.0) -> dict[bytes, Any]:
        from edge import bencode

        self._cookie += 1
        cookie = f"test{self._cookie}".encode()
        self._sock.settimeout(timeout)
        self._sock.sendto(cookie + b" " + bencode.encode(dict(command)), self.ng_address)
        while True:
            data = self._sock.recv(65535)
            got, _, body = data.partition(b" ")
            if got == cookie:
                answer: dict[bytes, Any] = bencode.decode(body)
                return answer

    def sessions(self) -> list[str]:
        """rtpengine's `list`: the call ids of the sessions it holds."""
        return [c.decode() for c in self.ng({"command": "list"}).get(b"calls", [])]

    def leg_packets(self, call_id: str) -> dict[str, int]:
        """Packets rtpengine received from each leg of a session (by tag), from `query`."""
        answer = self.ng({"command": "query", "call-id": call_id})
        packets: dict[str, int] = {}
        for tag, data in (answer.get(b"tags") or {}).items():
            total = 0
            for medium in data.get(b"medias", []):
                for stream in medium.get(b"streams", []):
                    total += stream.get(b"stats", {}).get(b"packets", 0)
            packets[tag.decode()] = total
        return packets

    def log(self) -> str:
        return _tail(self.log_path) if self.log_path.exists() else "(no log)"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _terminate(self.process, 3.0)
        self._sock.close()


def stop_group(process: subprocess.Popen[Any], grace: float = 20) -> None:
    """SIGTERM a process's whole group (started with start_new_session), SIGKILL it if it is
    still there after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@dataclass
class RunningPlatform:
    """`manage.py runplatform` running (web app and embedded edge), as `start_platform` left it."""

    process: subprocess.Popen[bytes]
    log_path: Path
    web_port: int
    sip_port: int
    control_port: int
    node: str
    _log: Any = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def stop(self) -> None:
        stop_group(self.process)
        self._log.close()


def start_platform(
    manage: Sequence[str], env: dict[str, str], workdir: Path, attempts: int = 3
) -> RunningPlatform:
    """Start `manage.py runplatform` on free ports and wait for its edge to be ready. A free
    port may be taken before the platform binds it: then try again with others, as a new node
    (runplatform records a node's control URL when it creates it). `env` is updated with the
    edge's name and addresses."""
    log_path = workdir / "platform.log"
    for attempt in range(attempts):
        web_port, sip_port, control_port = free_tcp_port(), free_port(), free_tcp_port()
        env["EDGE_NODE_NAME"] = node = "embedded" if attempt == 0 else f"embedded-{attempt}"
        env["EDGE_SIP_ADDRESS"] = f"{EDGE_IP}:{sip_port}"
        env["EDGE_CONTROL_ADDRESS"] = f"127.0.0.1:{control_port}"
        log_path = workdir / f"platform-{attempt}.log"
        log = open(log_path, "wb")  # noqa: SIM115 -- the platform's stdout while it runs
        process = subprocess.Popen(
            [*manage, "runplatform", "--port", str(web_port)],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while b"edge ready" not in log_path.read_bytes():
            failed = process.poll() is not None or b"did not start" in log_path.read_bytes()
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if b"edge ready" in log_path.read_bytes():
            return RunningPlatform(process, log_path, web_port, sip_port, control_port, node, log)
        stop_group(process)
        log.close()
    raise AssertionError("the platform did not start:\n" + log_path.read_text())
