"""The key, team, user and end-user commands as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import run_gateway
from tests.keyhelpers import gateway_config


def tollhouse(*args: str) -> tuple[int, Any, str]:
    result = subprocess.run([sys.executable, "-m", "tollhouse.cli", *args], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    out = orjson.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, out, result.stderr


def test_create_use_list_and_block_a_key(tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    s = ("--store", store)
    assert tollhouse("migrate", *s)[0] == 0
    assert tollhouse("teams", "create", *s, "--alias", "ml", "--max-budget", "5",
                     "--budget-period", "daily", "--rpm", "50")[0] == 0  # fmt: skip
    assert tollhouse("users", "create", *s, "--alias", "ann", "--team", "ml")[0] == 0
    code, created, _ = tollhouse("keys", "create", *s, "--alias", "svc", "--team", "ml", "--user",
                                 "ann", "--models", "chat", "--max-budget", "1.25", "--tpm", "900")  # fmt: skip
    assert code == 0 and created["secret"].startswith("sk-th-")
    assert created["prefix"] == created["secret"][:12] and created["max_budget_usd"] == "1.25"
    code, listed, _ = tollhouse("keys", "list", *s)
    assert [k["alias"] for k in listed] == ["svc"] and "secret" not in listed[0]
    assert created["secret"] not in orjson.dumps(listed).decode()
    assert tollhouse("end-users", "set", *s, "vip", "--max-budget", "2", "--rpm", "5")[0] == 0

    msg = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    with run_gateway(gateway_config(store)) as gw, httpx.Client(base_url=gw.v1) as http:
        auth = {"authorization": f"Bearer {created['secret']}"}
        ok = http.post("/chat/completions", json=msg, headers=auth)
        assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-requests"] == "50"
        assert gw.wait_events(1)[0].team == "ml" and gw.events[0].user == "ann"
        too_big = http.post("/chat/completions", json={**msg, "max_tokens": 2000}, headers=auth)
        assert too_big.status_code == 429 and "Send a smaller max_tokens" in too_big.text
        assert tollhouse("keys", "block", *s, "svc")[1]["blocked"] is True
        assert http.post("/chat/completions", json=msg, headers=auth).status_code == 401


def test_per_model_limits_from_the_cli_are_shown_and_enforced(tmp_path: Path) -> None:
    """``--model-limit MODEL=RPM[:TPM]``, repeatable; each model has its own counter."""
    store = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    s = ("--store", store)
    code, created, err = tollhouse("keys", "create", *s, "--alias", "pm",
                                   "--model-limit", "chat=1", "--model-limit", "slow=:50000")  # fmt: skip
    assert code == 0, err
    assert created["model_limits"] == {"chat": {"rpm": 1, "tpm": None},
                                       "slow": {"rpm": None, "tpm": 50000}}  # fmt: skip
    assert tollhouse("keys", "show", *s, "pm")[1]["model_limits"] == created["model_limits"]
    code, _, err = tollhouse("keys", "create", *s, "--alias", "bad", "--model-limit", "chat")
    assert code != 0 and "MODEL=RPM[:TPM]" in err

    def post(model: str) -> int:
        msg = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        auth = {"authorization": f"Bearer {created['secret']}"}
        return http.post("/chat/completions", json=msg, headers=auth).status_code

    with run_gateway(gateway_config(store)) as gw, httpx.Client(base_url=gw.v1) as http:
        assert [post("chat"), post("slow"), post("chat")] == [200, 200, 429]


def test_errors_are_plain_and_exit_nonzero(tmp_path: Path) -> None:
    s = ("--store", f"sqlite+aiosqlite:///{tmp_path}/cli.db")
    code, _, err = tollhouse("keys", "block", *s, "ghost")
    assert code == 1 and "no key with alias 'ghost'" in err
    code, _, err = tollhouse("keys", "create", *s, "--alias", "x", "--team", "nope")
    assert code == 1 and "no team with alias 'nope'" in err
    code, _, err = tollhouse("keys", "create", *s, "--alias", "y", "--budget-period", "fortnightly",
                             "--max-budget", "1")  # fmt: skip
    assert code == 1 and "fortnightly" in err
    code, _, err = tollhouse("keys", "create", *s, "--alias", "z", "--max-budget", "1",
                             "--soft-budget", "2")  # fmt: skip
    assert code == 1 and "the soft budget must not exceed the max budget" in err
    assert tollhouse("keys", "create", *s, "--alias", "dup")[0] == 0
    code, _, err = tollhouse("keys", "create", *s, "--alias", "dup")
    assert code == 1 and "dup" in err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--max-budget", "NaN"), "more than 0 and at most"),
        (("--max-budget", "Infinity"), "more than 0 and at most"),
        (("--max-budget", "1e30"), "more than 0 and at most"),
        (("--max-budget", "0.0000000001"), "9 decimal places"),
        (("--rpm", "99999999999999999999"), "from 1 to 2147483647"),
        (("--tpm", "99999999999999999999"), "from 1 to 9007199254740992"),
        (("--expires-in", "99999999d"), "year 9000"),
    ],
)
def test_values_the_api_refuses_are_refused_by_the_cli_with_a_message(
    tmp_path: Path, flags: tuple[str, str], says: str
) -> None:
    """They were tracebacks (InvalidOperation, OverflowError, a database range error) or,
    for a sub-nano budget, stored as something else."""
    store = ("--store", f"sqlite+aiosqlite:///{tmp_path}/cli.db")
    assert tollhouse("migrate", *store)[0] == 0
    code, _, err = tollhouse("keys", "create", *store, "--alias", "k", *flags)
    assert code != 0 and says in err and "Traceback" not in err
