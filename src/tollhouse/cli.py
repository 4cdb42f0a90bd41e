"""The ``tollhouse`` command: ``serve`` and ``check-config``.

Thin on purpose: it parses arguments, loads the config, configures logging
and hands the app to uvicorn (httptools + uvloop, chosen by measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tollhouse import __version__
from tollhouse.accesslog import BatchingStreamHandler
from tollhouse.cli_manage import add_commands
from tollhouse.config import ConfigError, load_config
from tollhouse.config.schema import Config
from tollhouse.logs import log_to

CONFIG_ENV = "TOLLHOUSE_CONFIG"  # the config path, for workers started by import string


def _configure_logging(level: str, access_log: bool) -> None:
    """Access lines (already JSON) go to stdout; everything else to stderr."""
    access = logging.getLogger("tollhouse.access")
    access.propagate = False
    access.handlers.clear()
    if access_log:
        access.addHandler(BatchingStreamHandler(sys.stdout))  # message-only lines
        access.setLevel(logging.INFO)
    else:
        access.setLevel(logging.WARNING)
    log_to(sys.stderr, level)


# Budgets and rate limits are exact only when every worker counts in the same place:
# memory counters would give each worker its own copy of every budget and limit.
_SHARED_COUNTERS = (
    "tollhouse: --workers {n} needs limits.backend: redis. With memory counters each worker "
    "keeps its own budgets and rate limits, so together the workers could let through up to "
    "{n} times a budget or limit. Set limits.backend: redis in the config (shared counters), "
    "or serve with one worker."
)


def _workers(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tollhouse.app import create_app
    from tollhouse.server import GatewayHttpProtocol

    try:
        config = load_config(args.config)
    except ConfigError as err:
        _print_problems(err)
        return 2
    if args.workers > 1 and config.limits.backend == "memory":
        print(_SHARED_COUNTERS.format(n=args.workers), file=sys.stderr)
        return 2
    server = config.server
    _configure_logging(server.log_level, server.access_log)
    host = args.host or server.host
    port = server.port if args.port is None else args.port
    loop = "uvloop" if sys.platform != "win32" else "asyncio"
    logging.getLogger("tollhouse").info(
        "serving on http://%s:%s config=%s workers=%d",
        host, port, args.config or "<embedded defaults>", args.workers,
    )  # fmt: skip
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": loop,
        "http": GatewayHttpProtocol,
        "lifespan": "on",
        "access_log": False,
        "log_level": server.log_level,
        "timeout_graceful_shutdown": server.shutdown_timeout,
    }
    if args.workers > 1:  # each worker configures its logging in app_from_env
        uvicorn.run(_prepare_workers(args, config), factory=True, workers=args.workers, **options)
        return 0
    uv_config = uvicorn.Config(create_app(config), **options)
    # uvicorn's Config applies its logging dictConfig, which closes every existing
    # handler (the access log's writer thread with it), so ours go in after it.
    _configure_logging(server.log_level, server.access_log)
    uv_server = uvicorn.Server(uv_config)
    with contextlib.suppress(KeyboardInterrupt):
        uv_server.run()
    return 0 if uv_server.started else 3  # uvicorn's own exit status for a failed start


def _prepare_workers(args: argparse.Namespace, config: Config) -> str:
    """Set up ``--workers N``: uvicorn starts each worker from an import string, so the
    config path travels in the environment; metrics use prometheus_client's
    multi-process mode in a directory emptied now, before any worker writes to it;
    the store is migrated once here rather than by N workers racing."""
    import asyncio
    import tempfile

    from tollhouse.metrics import multiprocess
    from tollhouse.store.migrate import migrate

    shared = multiprocess.directory() or Path(tempfile.mkdtemp(prefix="tollhouse-metrics-"))
    multiprocess.prepare(shared)
    os.environ[multiprocess.ENV] = str(shared)
    os.environ[CONFIG_ENV] = str(Path(args.config).resolve()) if args.config else ""
    if config.store.migrate_on_start:
        asyncio.run(migrate(config.store.url))
    return "tollhouse.cli:app_from_env"


def app_from_env() -> Any:
    """The app factory each worker runs (``--workers N``): config from ``TOLLHOUSE_CONFIG``."""
    import atexit

    from tollhouse.app import create_app
    from tollhouse.metrics import multiprocess

    config = load_config(os.environ.get(CONFIG_ENV) or None)
    _configure_logging(config.server.log_level, config.server.access_log)
    shared = multiprocess.directory()
    if shared is not None:  # a worker that exits drops its live gauges (in flight)
        atexit.register(multiprocess.worker_exited, shared, os.getpid())
    return create_app(config)


def _print_problems(err: ConfigError) -> None:
    print(f"{err.source}: invalid config", file=sys.stderr)
    for problem in err.problems:
        print(f"  - {problem}", file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as err:
        _print_problems(err)
        return 1
    print(f"{args.file}: ok ({len(config.backends)} backends, {len(config.models)} models)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollhouse", description="An LLM gateway that accounts for every request."
    )
    parser.add_argument("--version", action="version", version=f"tollhouse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (embedded defaults without --config)")
    serve.add_argument("--config", help="YAML config file")
    serve.add_argument("--host", help="bind address (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: server.port, 4000)")
    serve.add_argument(
        "--workers", type=_workers, default=1, metavar="N",
        help="worker processes (default 1; more need limits.backend: redis); /metrics merges "
        "them (docs/monitoring.md)",
    )  # fmt: skip
    serve.set_defaults(func=_serve)
    check = sub.add_parser("check-config", help="validate a config file and explain what is wrong")
    check.add_argument("file")
    check.set_defaults(func=_check)
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "builder", None) is not None:
        args.op = args.builder(args)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
