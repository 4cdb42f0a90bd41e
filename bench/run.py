"""One whole gateway benchmark run: the gateway's cost, measured against no gateway.

Why this shape: the question is "what does putting tollhouse in the path cost?", so every
scenario is measured twice with the same load generator and the same mock upstream:
once straight at the mock ("direct") and once through the gateway. The difference
(added latency, throughput ratio) is the gateway's overhead; the absolute numbers
mostly describe this machine.

Each upstream delay gets a fresh mock upstream process (``--delay-ms``) and a fresh
gateway process (``tollhouse serve``) configured to proxy to it. With ``taskset`` on a
machine with at least two CPUs, the gateway is pinned to CPU 0 and the mock plus the
load generator to CPU 1, so the gateway never competes with its own measurement.

    python -m bench.run             # the full matrix, ~5 s per measurement
    python -m bench.run --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Final

from bench.loadgen import DEFAULT_BODY, LoadResult, Percentiles
from bench.paired import PairedResult, describe

REPO: Final = Path(__file__).resolve().parent.parent
CHAT_PATH: Final = "/v1/chat/completions"
DELAYS_MS: Final = (0, 50)
CONCURRENCY: Final = (1, 16, 64)
QUICK_CONCURRENCY: Final = (16,)
READY_TIMEOUT_S: Final = 30.0

GATEWAY_CONFIG: Final = """\
server:
  access_log: true
auth:
  required: false
store:
  url: {store_url}
backends:
  - name: mock-upstream
    provider: openai
    base_url: http://127.0.0.1:{mock_port}/v1
    prices: {{input: 1.0, output: 2.0}}
models:
  - name: {model}
    backend: mock-upstream
    model: {model}
"""


def sqlite_store(workdir: Path | str) -> str:
    """The benchmark gateway's default store: a SQLite file of its own."""
    return f"sqlite+aiosqlite:///{workdir}/bench-store.db"


class BenchError(RuntimeError):
    """The run cannot go on (a child did not start); the message says what to look at."""


@dataclass(frozen=True, slots=True)
class Scenario:
    delay_ms: int
    concurrency: int
    stream: bool


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPUs each role runs on; empty prefixes when pinning is unavailable."""

    gateway: tuple[str, ...]
    clients: tuple[str, ...]
    description: str


class Children:
    """Every process this run started, each in its own session so it can be ended by id.

    Stopping sends SIGTERM to the child's own process group (its pid, as it leads a new
    session), waits, then SIGKILLs: nothing outlives the run, even on Ctrl-C.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], *, stdout: IO[bytes] | int = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not subprocess.DEVNULL else subprocess.DEVNULL,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pinning(external_gateway: bool, pin: bool = True) -> Pinning:
    taskset = shutil.which("taskset")
    cpus = os.cpu_count() or 1
    if not pin:
        return Pinning((), (), "none (--no-pin); the OS places every process")
    if taskset is None or cpus < 2:
        why = "taskset not found" if taskset is None else "fewer than 2 CPUs"
        return Pinning((), (), f"none ({why}); everything shares the CPUs")
    gateway = "not pinned (external)" if external_gateway else "gateway on CPU 0"
    return Pinning(
        (taskset, "-c", "0"),
        (taskset, "-c", "1"),
        f"{gateway}; mock upstream + load generator on CPU 1 (taskset)",
    )


def _gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("tollhouse")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from tollhouse.cli import main; sys.exit(main())"]


def _wait_ready(
    url: str, proc: subprocess.Popen[bytes] | None, what: str, *, allow_404: bool = False
) -> None:
    """Poll ``url`` until it answers 200 (or 404, for a gateway without the probe)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            if allow_404 and exc.code == 404:
                return
            last = f"status {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{what} not ready at {url} after {READY_TIMEOUT_S:g} s ({last})")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"machine: nproc={os.cpu_count()} ({cpu}), "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}"
    )


def _load(
    children: Children,
    pinning: Pinning,
    url: str,
    scenario: Scenario,
    args: argparse.Namespace,
) -> LoadResult:
    """Run the load generator as a pinned child process and read its JSON result."""
    duration: float = args.duration
    warmup: float = args.warmup
    argv = [
        *pinning.clients,
        sys.executable,
        "-m",
        "bench.loadgen",
        url,
        "--concurrency",
        str(scenario.concurrency),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--json",
    ]
    if scenario.stream:
        argv.append("--stream")
    return LoadResult.from_json(_last_line(children, argv, warmup + duration, "load generator"))


def _last_line(children: Children, argv: list[str], seconds: float, what: str) -> str:
    """Run a measuring child for ``seconds`` (plus a minute's grace); its last stdout line."""
    with tempfile.TemporaryFile() as out:
        proc = children.start(argv, stdout=out)
        try:
            proc.wait(timeout=seconds + 60)
        finally:
            children.stop(proc)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"{what} failed ({proc.returncode}):\n{text}")
    return text.strip().splitlines()[-1]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _added(gateway: float | None, direct: float | None) -> str:
    return "-" if gateway is None or direct is None else f"{gateway - direct:+.2f}"


_COLUMNS: Final = (
    ("delay", 5),
    ("conc", 4),
    ("mode", 6),
    ("rps dir", 8),
    ("rps gw", 8),
    ("gw/dir", 6),
    ("p50 dir", 7),
    ("p50 gw", 7),
    ("+p50", 7),
    ("p99 dir", 7),
    ("p99 gw", 7),
    ("+p99", 7),
    ("ttft50 dir", 10),
    ("ttft50 gw", 9),
    ("+ttft50", 7),
    ("err dir/gw", 10),
    ("gw cpu", 6),
)


def _line(cells: Sequence[str]) -> str:
    return "  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))


def _pick(p: Percentiles | None, which: str) -> float | None:
    return None if p is None else float(getattr(p, which))


def _row(
    scenario: Scenario,
    direct: LoadResult,
    gateway: LoadResult,
    cpu_s: float | None,
    warmup_s: float,
) -> str:
    def trio(direct_p: Percentiles | None, gateway_p: Percentiles | None, which: str) -> list[str]:
        d, g = _pick(direct_p, which), _pick(gateway_p, which)
        return [_ms(d), _ms(g), _added(g, d)]

    ratio = gateway.rps / direct.rps if direct.rps else None
    served = gateway.rps * (gateway.duration_s + warmup_s)
    cpu_us = "-" if cpu_s is None or not served else f"{cpu_s / served * 1e6:.0f}"
    return _line(
        [
            f"{scenario.delay_ms}ms",
            str(scenario.concurrency),
            "stream" if scenario.stream else "json",
            f"{direct.rps:,.0f}",
            f"{gateway.rps:,.0f}",
            "-" if ratio is None else f"{ratio:.2f}",
            *trio(direct.latency_ms, gateway.latency_ms, "p50"),
            *trio(direct.latency_ms, gateway.latency_ms, "p99"),
            *trio(direct.ttft_ms, gateway.ttft_ms, "p50"),
            f"{direct.errors}/{gateway.errors}",
            cpu_us,
        ]
    )


def _scenarios(args: argparse.Namespace) -> list[Scenario]:
    concurrency = args.concurrency or (QUICK_CONCURRENCY if args.quick else CONCURRENCY)
    modes = {"json": (False,), "stream": (True,)}.get(args.mode, (False, True))
    return [
        Scenario(delay, conc, stream)
        for delay in args.delay or DELAYS_MS
        for stream in modes
        for conc in concurrency
    ]


def _cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time of a process so far (Linux ``/proc``), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _stack(
    children: Children,
    pinning: Pinning,
    delay_ms: int,
    mock_port: int,
    gateway_url: str | None,
    workdir: Path,
    store_url: str | None = None,
) -> Iterator[tuple[str, int | None]]:
    """Start the mock (and, unless external, the gateway) for one delay; the gateway's
    store is ``store_url``, by default a SQLite file in ``workdir``.

    Yields the gateway's URL and, when this run started it, its pid (for CPU accounting).
    """
    mock_log = workdir / f"mock-{delay_ms}ms.log"
    with mock_log.open("wb") as log:
        mock = children.start(
            [
                *pinning.clients,
                sys.executable,
                "-m",
                "bench.mock_upstream",
                "--port",
                str(mock_port),
                "--delay-ms",
                str(delay_ms),
            ],
            stdout=log,
        )
    gateway: subprocess.Popen[bytes] | None = None
    log_path = workdir / f"gateway-{delay_ms}ms.log"
    try:
        try:
            _wait_ready(f"http://127.0.0.1:{mock_port}/v1/models", mock, "mock upstream")
        except BenchError as exc:
            tail = mock_log.read_text(errors="replace")[-3000:]
            raise BenchError(f"{exc}\n--- mock upstream output (tail) ---\n{tail}") from None
        if gateway_url is not None:
            _wait_ready(f"{gateway_url}/health/ready", None, "gateway", allow_404=True)
            yield gateway_url, None
            return
        config = workdir / "tollhouse.yaml"
        model = str(DEFAULT_BODY["model"])
        config.write_text(
            GATEWAY_CONFIG.format(
                mock_port=mock_port, model=model, store_url=store_url or sqlite_store(workdir)
            )
        )
        port = _free_port()
        argv = [*pinning.gateway, *_gateway_command(), "serve", "--config", str(config)]
        argv.extend(("--port", str(port)))
        with log_path.open("wb") as log:
            gateway = children.start(argv, stdout=log)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(f"{url}/health/ready", gateway, "gateway")
        except BenchError as exc:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"{exc}\n--- gateway output (tail) ---\n{tail}") from None
        yield url, gateway.pid
    finally:
        if gateway is not None:
            children.stop(gateway)
        children.stop(mock)


def _relay_line(
    children: Children,
    pinning: Pinning,
    mock_port: int,
    delay_ms: int,
    direct: LoadResult,
    args: argparse.Namespace,
) -> str:
    """What a do-nothing TCP relay (``bench.relay``) adds at concurrency 1: the floor any
    proxy hop costs on this machine, to read the gateway's ``+p50`` against."""
    port = _free_port()
    argv = [*pinning.gateway, sys.executable, "-m", "bench.relay"]
    relay = children.start([*argv, "--port", str(port), "--upstream-port", str(mock_port)])
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v1/models", relay, "relay")
        url = f"http://127.0.0.1:{port}{CHAT_PATH}"
        result = _load(children, pinning, url, Scenario(delay_ms, 1, False), args)
    finally:
        children.stop(relay)
    added = _added(_pick(result.latency_ms, "p50"), _pick(direct.latency_ms, "p50"))
    return (
        f"    reference: a do-nothing TCP relay (bench/relay.py) adds {added} ms p50 "
        f"at concurrency 1 (json, {delay_ms} ms upstream)"
    )


def _paired_line(
    children: Children,
    pinning: Pinning,
    direct_url: str,
    gateway_url: str,
    args: argparse.Namespace,
) -> str:
    """The concurrency-1 rows again, with direct and gateway requests taking turns in one
    window (``bench.paired``): the added latency without the drift between two windows."""
    parts = []
    for stream in {"json": (False,), "stream": (True,)}.get(args.mode, (False, True)):
        argv = [*pinning.clients, sys.executable, "-m", "bench.paired", direct_url, gateway_url]
        argv += ["--duration", str(args.duration), "--warmup", str(args.warmup), "--json"]
        if stream:
            argv.append("--stream")
        line = _last_line(children, argv, args.warmup + args.duration, "bench.paired")
        result = PairedResult.from_json(line)
        parts.append(f"{'stream' if stream else 'json'} {describe(result)}")
    return "    interleaved at concurrency 1 (bench/paired.py): " + "; ".join(parts)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the ``finally`` blocks end every child."""
    raise SystemExit(128 + signum)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, help="measured seconds per leg (5; --quick: 2)")
    parser.add_argument(
        "--warmup", type=float, help="unmeasured seconds before each leg (1; --quick: 0.5)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="concurrency 16 only, shorter measurements"
    )
    parser.add_argument(
        "--mock-port",
        type=int,
        default=0,
        help="port of the mock upstream (default: a free one; set it to the port an "
        "already-running gateway proxies to)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="measure only this concurrency (repeatable; default 1, 16 and 64)",
    )
    parser.add_argument(
        "--delay",
        type=int,
        action="append",
        help="measure only this upstream delay in ms (repeatable; default 0 and 50)",
    )
    parser.add_argument(
        "--mode", choices=("json", "stream", "both"), default="both", help="response kind"
    )
    parser.add_argument(
        "--no-relay",
        action="store_true",
        help="skip the reference leg through a do-nothing TCP relay (bench/relay.py)",
    )
    parser.add_argument(
        "--no-paired",
        action="store_true",
        help="skip the concurrency-1 legs taking turns in one window (bench/paired.py)",
    )
    # Hidden: measure an already-running gateway (or, to test this harness, a second mock).
    parser.add_argument("--gateway-url", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the OS place processes (pinning puts the gateway on its own CPU, which makes "
        "every hop through it a cross-CPU wake-up; see README)",
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 1.0
    if args.gateway_url is not None:
        args.gateway_url = args.gateway_url.rstrip("/")
    return args


def run(args: argparse.Namespace) -> int:
    """Run every scenario, printing each table row as soon as it is measured."""
    pinning = _pinning(external_gateway=args.gateway_url is not None, pin=not args.no_pin)
    scenarios = _scenarios(args)
    legs = 2 * len(scenarios) * (args.duration + args.warmup)
    print(_machine())
    print(f"pinning: {pinning.description}")
    print(
        f"load: {len(scenarios)} scenarios x 2 legs, {args.warmup:g} s warm-up + "
        f"{args.duration:g} s measured each (~{legs:.0f} s); closed loop, keep-alive; "
        f"body {DEFAULT_BODY}"
    )
    gateway_desc = args.gateway_url or "tollhouse serve (started per upstream delay)"
    print(f"gateway: {gateway_desc}")
    print(
        "times in ms; + columns = gateway minus direct; gw cpu = gateway process CPU "
        "per request (µs, warm-up included)\n"
    )
    print(_line([name for name, _ in _COLUMNS]))
    print(_line(["-" * width for _, width in _COLUMNS]), flush=True)

    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="tollhouse-bench-") as tmp:
            for delay in args.delay or DELAYS_MS:
                group = [s for s in scenarios if s.delay_ms == delay]
                if not group:
                    continue
                port = args.mock_port or _free_port()
                stack = _stack(children, pinning, delay, port, args.gateway_url, Path(tmp))
                with stack as (gw, pid):
                    reference: LoadResult | None = None
                    for scenario in group:
                        url = f"http://127.0.0.1:{port}" + CHAT_PATH
                        direct = _load(children, pinning, url, scenario, args)
                        if scenario.concurrency == 1 and not scenario.stream:
                            reference = direct
                        cpu0 = _cpu_seconds(pid)
                        gateway = _load(children, pinning, gw + CHAT_PATH, scenario, args)
                        cpu1 = _cpu_seconds(pid)
                        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
                        print(_row(scenario, direct, gateway, cpu, args.warmup), flush=True)
                        for leg, result in (("direct", direct), ("gateway", gateway)):
                            if result.error_samples:
                                samples = "; ".join(result.error_samples)
                                print(f"    {leg} errors, e.g.: {samples}", flush=True)
                    if reference is not None and not args.no_relay:
                        print(_relay_line(children, pinning, port, delay, reference, args))
                    if any(s.concurrency == 1 for s in group) and not args.no_paired:
                        direct_url = f"http://127.0.0.1:{port}{CHAT_PATH}"
                        line = _paired_line(children, pinning, direct_url, gw + CHAT_PATH, args)
                        print(line, flush=True)
    except BenchError as exc:
        print(f"\nbenchmark aborted: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m bench.run``."""
    args = _parse_args(argv)
    # Explicit, because a shell starting us in the background may have ignored SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
