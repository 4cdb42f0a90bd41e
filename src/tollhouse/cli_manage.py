"""``tollhouse migrate`` and the key, team and user commands.

They open the store named by the config (or ``--store URL``), run one
operation through ``tollhouse.admin.service`` (the same audited code the admin API
uses) and print the result. A new key's secret is printed once; only its
hash is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation

import orjson

from tollhouse.admin.audit import CLI
from tollhouse.admin.service import AdminService
from tollhouse.config import ConfigError, load_config
from tollhouse.identity.manage import LimitsInput
from tollhouse.store.engine import Store
from tollhouse.store.migrate import migrate
from tollhouse.store.models import MAX_RPM, MAX_TPM, MAX_USD, ApiKey, ModelLimit, StoreError

# The admin API's bounds, so the CLI accepts what the API accepts and refuses the rest
# with a message, not a traceback from the database.


def _usd(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r}") from None
    if not value.is_finite() or not 0 < value <= MAX_USD:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_USD} USD")
    if value != value.quantize(Decimal("1e-9"), rounding="ROUND_DOWN"):
        raise argparse.ArgumentTypeError("at most 9 decimal places (nano-USD)")
    return value


def _whole(text: str, most: int) -> int:
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {most}, not {text[:32]!r}"
        )
    return int(text)


def _positive(text: str) -> int:
    """An rpm (the smaller bound: a 32-bit column on PostgreSQL)."""
    return _whole(text, MAX_RPM)


def _tokens(text: str) -> int:
    return _whole(text, MAX_TPM)


def _model_limit(text: str) -> tuple[str, ModelLimit]:
    """``MODEL=RPM`` or ``MODEL=RPM:TPM`` (either may be empty: ``gpt-4o=:20000``)."""
    model, sep, spec = text.partition("=")
    rpm, _, tpm = spec.partition(":")
    if not sep or not model or not (rpm or tpm):
        raise argparse.ArgumentTypeError(f"expected MODEL=RPM[:TPM], got {text!r}")
    return model, ModelLimit(_positive(rpm) if rpm else None, _tokens(tpm) if tpm else None)


def _limit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-budget", type=_usd, help="spend cap in USD per budget period")
    parser.add_argument("--soft-budget", type=_usd, help="alert threshold in USD (<= max)")
    parser.add_argument("--budget-period", help="hourly, daily, weekly, monthly or e.g. 30d")
    parser.add_argument("--rpm", type=_positive, help="requests per minute")
    parser.add_argument("--tpm", type=_tokens, help="tokens per minute")


def _limits(args: argparse.Namespace) -> LimitsInput:
    return LimitsInput(args.max_budget, args.soft_budget, args.budget_period, args.rpm, args.tpm)


def _store_url(args: argparse.Namespace) -> str:
    if args.store:
        return str(args.store)
    return load_config(args.config).store.url


def _usd_text(nusd: int | None) -> str | None:
    return None if nusd is None else str(Decimal(nusd) / 10**9)


def _key_json(key: ApiKey) -> dict[str, object]:
    """Everything ``keys create|update`` can set, so ``keys show`` reads each setting back."""
    cache = key.metadata.get("cache")
    return {
        "alias": key.alias, "prefix": key.key_prefix, "team_id": key.team_id,
        "user_id": key.user_id, "models": key.models, "blocked": key.blocked,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "max_budget_usd": _usd_text(key.limits.max_budget_nusd),
        "soft_budget_usd": _usd_text(key.limits.soft_budget_nusd),
        "budget_period": key.limits.budget_period, "rpm": key.limits.rpm, "tpm": key.limits.tpm,
        "model_limits": {model: {"rpm": limit.rpm, "tpm": limit.tpm}
                         for model, limit in (key.model_limits or {}).items()},
        # on/off as set with --cache; null: the config's cache.enabled decides
        "cache": None if cache is None else ("on" if cache else "off"),
    }  # fmt: skip


async def _run(args: argparse.Namespace, op: Callable[[AdminService], Awaitable[object]]) -> object:
    url = _store_url(args)
    await migrate(url)
    async with Store(url) as store:
        return await op(AdminService(store))  # the admin API's code: every mutation audited


def _print(value: object) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _command(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_run(args, args.op))
    except ConfigError as err:
        print(f"{err.source}: invalid config: {'; '.join(err.problems)}", file=sys.stderr)
        return 2
    except (LookupError, ValueError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result is not None:
        _print(result)
    return 0


def _keys_create(args: argparse.Namespace) -> Callable[[AdminService], Awaitable[object]]:
    async def op(s: AdminService) -> object:
        new = await s.create_key(
            CLI, args.alias, team=args.team, user=args.user,
            models=args.models.split(",") if args.models else None,
            model_limits=dict(args.model_limit) if args.model_limit else None,
            limits=_limits(args), expires_in=args.expires_in,
            metadata=None if args.cache is None else {"cache": args.cache == "on"},
        )  # fmt: skip
        return {
            "secret": new.secret,
            "note": "shown once; only its hash is stored",
            **_key_json(new.key),
        }

    return op


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", help="config file (its store.url is used)")
        p.add_argument("--store", help="store URL, overriding the config's")
        p.set_defaults(func=_command)
        return p

    command("migrate", "create or upgrade the store's tables").set_defaults(op=_noop)
    keys = sub.add_parser("keys", help="virtual API keys").add_subparsers(
        dest="keys_cmd", required=True
    )
    sub_keys = {"create": "create a key (prints its secret once)", "list": "list keys",
                "block": "block a key", "unblock": "unblock a key"}  # fmt: skip
    parsers = {}
    for name, help_ in sub_keys.items():
        p = keys.add_parser(name, help=help_)
        p.add_argument("--config")
        p.add_argument("--store")
        p.set_defaults(func=_command)
        parsers[name] = p
    create = parsers["create"]
    create.add_argument("--alias", required=True, help="name shown in metrics and logs")
    create.add_argument("--team", help="owner team alias")
    create.add_argument("--user", help="owner user alias")
    create.add_argument("--models", help="comma-separated public model names it may use")
    create.add_argument("--expires-in", help="e.g. 30d, 12h")
    create.add_argument("--cache", choices=("on", "off"),
                        help="turn the response cache on or off for this key (default: config)")  # fmt: skip
    create.add_argument("--model-limit", type=_model_limit, action="append",
                        help="per-model limit MODEL=RPM[:TPM]; repeat for more models")  # fmt: skip
    _limit_args(create)
    create.set_defaults(builder=_keys_create)
    parsers["list"].set_defaults(op=_keys_list)
    from tollhouse.admin.cli import add_admin_commands  # audited; shares the admin API's code

    add_admin_commands(sub, keys)
    for name, blocked in (("block", True), ("unblock", False)):
        parsers[name].add_argument("alias")
        parsers[name].set_defaults(builder=_blocker(blocked))
    end_users = sub.add_parser("end-users", help="budgets for end users (the request's user field)")
    setter = end_users.add_subparsers(dest="end_users_cmd", required=True).add_parser(
        "set", help="give one end user its own budget and limits (overrides the default)"
    )
    setter.add_argument("--config")
    setter.add_argument("--store")
    setter.add_argument("end_user")
    _limit_args(setter)
    setter.set_defaults(func=_command, builder=_end_user_setter)
    for kind in ("teams", "users"):
        group = sub.add_parser(kind, help=f"{kind} that own keys and budgets")
        p = group.add_subparsers(dest=f"{kind}_cmd", required=True).add_parser("create")
        p.add_argument("--config")
        p.add_argument("--store")
        p.add_argument("--alias", required=True)
        _limit_args(p)
        if kind == "teams":
            p.add_argument("--models", help="comma-separated public model names")
        else:
            p.add_argument("--team", help="team alias")
            p.add_argument("--email")
        p.set_defaults(func=_command, builder=_creator(kind))


async def _noop(s: AdminService) -> object:
    return {"migrated": True}


async def _keys_list(s: AdminService) -> object:
    return [_key_json(k) for k in await s.store.keys.list()]


def _blocker(
    blocked: bool,
) -> Callable[[argparse.Namespace], Callable[[AdminService], Awaitable[object]]]:
    def build(args: argparse.Namespace) -> Callable[[AdminService], Awaitable[object]]:
        async def op(s: AdminService) -> object:
            return _key_json(await s.set_blocked(CLI, "key", args.alias, blocked))

        return op

    return build


def _creator(
    kind: str,
) -> Callable[[argparse.Namespace], Callable[[AdminService], Awaitable[object]]]:
    def build(args: argparse.Namespace) -> Callable[[AdminService], Awaitable[object]]:
        async def op(s: AdminService) -> object:
            if kind == "teams":
                models = args.models.split(",") if args.models else None
                team = await s.create_team(CLI, args.alias, _limits(args), models)
                return {"id": team.id, "alias": team.alias}
            user = await s.create_user(CLI, args.alias, _limits(args), args.team, args.email)
            return {"id": user.id, "alias": user.alias}

        return op

    return build


def _end_user_setter(args: argparse.Namespace) -> Callable[[AdminService], Awaitable[object]]:
    async def op(s: AdminService) -> object:
        row = await s.set_end_user(CLI, args.end_user, _limits(args))
        return {"end_user": row.id, "budget_period": row.limits.budget_period,
                "rpm": row.limits.rpm, "tpm": row.limits.tpm}  # fmt: skip

    return op
