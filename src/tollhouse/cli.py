"""The ``tollhouse`` command: ``serve`` and ``check-config``.

Thin on purpose: it parses arguments, loads the config, configures logging
and hands the app to uvicorn (httptools + uvloop, chosen by measurement).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tollhouse import __version__
from tollhouse.accesslog import BatchingStreamHandler
from tollhouse.cli_manage import add_commands
from tollhouse.config import ConfigError, load_config


def _configure_logging(level: str, access_log: bool) -> None:
    """Access lines (already JSON) go to stdout; everything else to stderr."""
    access = logging.getLogger("tollhouse.access")
    access.propagate = False
    access.handlers.clear()
    if access_log:
        handler = BatchingStreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
    else:
        access.setLevel(logging.WARNING)
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
    )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tollhouse.app import create_app
    from tollhouse.server import GatewayHttpProtocol

    try:
        config = load_config(args.config)
    except ConfigError as err:
        _print_problems(err)
        return 2
    server = config.server
    _configure_logging(server.log_level, server.access_log)
    host = args.host or server.host
    port = server.port if args.port is None else args.port
    app = create_app(config)
    loop = "uvloop" if sys.platform != "win32" else "asyncio"
    logging.getLogger("tollhouse").info(
        "serving on http://%s:%s config=%s", host, port, args.config or "<embedded defaults>"
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop=loop,
        http=GatewayHttpProtocol,
        lifespan="on",
        access_log=False,
        log_level=server.log_level,
        timeout_graceful_shutdown=30,
    )
    return 0


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
