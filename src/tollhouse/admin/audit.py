"""Recording admin mutations: one audit row and one log line each, never with a secret.

``redact`` is the single gate every change passes through before it is stored
or logged: values under secret-looking names are replaced, and any string that
looks like a virtual key (``sk-…``) is masked wherever it appears.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tollhouse.store.audit import AuditEntry, AuditRepo

log = logging.getLogger("tollhouse.audit")

_SECRET_NAMES = re.compile(r"secret|password|token$|key_hash|api_key|authorization", re.I)
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_-]{20,}")  # a whole key; a 12-character prefix is fine
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: the admin key's alias (or ``cli``), from where, in which request."""

    alias: str
    address: str | None = None
    request_id: str | None = None


CLI = Actor("cli", "local")


def redact(value: Any) -> Any:
    """A copy of ``value`` safe to store and log."""
    if isinstance(value, Mapping):  # a key can carry a secret too (a pasted API key)
        return {
            _KEY_LIKE.sub(REDACTED, str(k)): REDACTED if _SECRET_NAMES.search(str(k)) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _KEY_LIKE.sub(REDACTED, value)
    return value


class Auditor:
    def __init__(self, repo: AuditRepo) -> None:
        self._repo = repo

    async def record(
        self,
        actor: Actor,
        action: str,
        target_type: str,
        target: str,
        changes: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        clean = redact(dict(changes)) if changes is not None else None
        entry = await self._repo.append(
            actor=actor.alias, action=action, target_type=target_type, target=redact(target),
            address=actor.address, request_id=actor.request_id, changes=clean,
        )  # fmt: skip
        log.info(
            "admin_audit id=%s actor=%s action=%s target_type=%s target=%s address=%s changes=%s",
            entry.id, actor.alias, action, target_type, entry.target, actor.address,
            orjson.dumps(clean, default=str).decode(),
        )  # fmt: skip
        return entry
