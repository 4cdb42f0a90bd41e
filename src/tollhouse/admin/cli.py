"""``tollhouse usage`` and the key commands that run the admin API's code.

``keys block|unblock|update|delete|show`` go through ``AdminService`` (so each
change is audited with actor ``cli``; ``keys create`` keeps its own options), and ``usage`` prints the same
JSON as ``GET /admin/v1/usage`` (or ``/usage/series`` with ``--series``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from tollhouse.admin import usage
from tollhouse.admin.audit import CLI
from tollhouse.admin.service import LIMIT_FIELDS, AdminService
from tollhouse.config import ConfigError, load_config
from tollhouse.store.engine import Store
from tollhouse.store.migrate import migrate
from tollhouse.store.models import StoreError

Op = Callable[[AdminService], Awaitable[object]]
_FILTERS = ("key", "team", "user", "end_user", "model", "backend", "provider")


def _store_url(args: argparse.Namespace) -> str:
    return str(args.store) if args.store else load_config(args.config).store.url


async def _run(args: argparse.Namespace) -> object:
    url = _store_url(args)
    await migrate(url)
    async with Store(url) as store:
        op: Op = args.service(args)
        return await op(AdminService(store))


def _command(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_run(args))
    except ConfigError as err:
        print(f"{err.source}: invalid config: {'; '.join(err.problems)}", file=sys.stderr)
        return 2
    except (LookupError, ValueError, StoreError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 1
    if result is not None:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _parser(sub: Any, name: str, help_: str, build: Callable[[argparse.Namespace], Op]) -> Any:
    p = sub.add_parser(name, help=help_)
    p.add_argument("--config", help="config file (its store.url is used)")
    p.add_argument("--store", help="store URL, overriding the config's")
    p.set_defaults(func=_command, builder=None, service=build)
    return p


def _key(args: argparse.Namespace) -> Op:
    from tollhouse.cli_manage import _key_json

    async def op(svc: AdminService) -> object:
        command = args.keys_cmd
        if command in ("block", "unblock"):
            return _key_json(await svc.set_blocked(CLI, "key", args.alias, command == "block"))
        if command == "delete":
            await svc.delete(CLI, "key", args.alias)
            return {"deleted": True, "alias": args.alias}
        if command == "update":
            return _key_json(await svc.update_key(CLI, args.alias, _changes(args)))
        return _key_json(await svc.key(args.alias))

    return op


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if args.models is not None:
        changes["models"] = args.models.split(",") if args.models else None
    if args.model_limit:
        changes["model_limits"] = dict(args.model_limit)
    if args.expires_in:
        from tollhouse.identity.manage import expiry

        changes["expires_at"] = expiry(args.expires_in)
    cli_names = ("max_budget", "soft_budget", "budget_period", "rpm", "tpm")
    limits = {f: getattr(args, a) for f, a in zip(LIMIT_FIELDS, cli_names, strict=True)}
    limits = {f: v for f, v in limits.items() if v is not None}
    if limits:
        changes["limits"] = limits
    if not changes:
        raise ValueError("nothing to change: give at least one option")
    return changes


def _usage(args: argparse.Namespace) -> Op:
    async def op(svc: AdminService) -> object:
        start, end = usage.window(args.start, args.end, datetime.now(UTC))
        filters = {f: getattr(args, f) for f in _FILTERS if getattr(args, f) is not None}
        engine = svc.store.engine
        if args.series:
            out: Any = await usage.series(engine, args.series, start, end, args.step,
                                          args.group_by, args.top, filters)  # fmt: skip
        else:
            out = await usage.totals(engine, start, end, filters)
        return out.model_dump(mode="json")

    return op


def add_admin_commands(sub: Any, keys: Any) -> None:
    """Route ``keys`` changes through the audited service; add ``keys update|delete|show``
    and ``usage``."""
    from tollhouse.cli_manage import _limit_args, _model_limit

    for name in ("block", "unblock"):
        keys.choices[name].set_defaults(func=_command, builder=None, service=_key)
    update = _parser(keys, "update", "change a key's models, limits or expiry", _key)
    update.add_argument("alias")
    update.add_argument("--models", help="comma-separated public models ('' for every model)")
    update.add_argument("--model-limit", type=_model_limit, action="append",
                        help="per-model limit MODEL=RPM[:TPM]; replaces the key's set")  # fmt: skip
    update.add_argument("--expires-in", help="new expiry from now, e.g. 30d")
    _limit_args(update)
    for name, help_ in (("delete", "delete a key"), ("show", "show one key")):
        _parser(keys, name, help_, _key).add_argument("alias")
    u = _parser(sub, "usage", "usage totals (or a time series) from the spend ledger", _usage)
    u.add_argument("--start", help="unix seconds or RFC 3339 (default: 24 h before --end)")
    u.add_argument("--end", help="unix seconds or RFC 3339 (default: now)")
    for name in _FILTERS:
        u.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"only this {name}")
    u.add_argument("--series", choices=usage.METRICS, help="print this metric per --step")
    u.add_argument("--step", default="1h", help="series step, e.g. 1m, 1h, 1d (default 1h)")
    u.add_argument("--group-by", choices=("key", "team", "model", "backend", "provider"))
    u.add_argument("--top", type=int, default=5, help="series: groups shown (rest: __other__)")
