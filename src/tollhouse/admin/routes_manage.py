"""``/admin/v1`` management routes: keys, teams, users and end-user limits.

Entities are addressed by alias. Every mutation goes through ``AdminService``
(the same code the CLI runs), which writes the audit row.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from tollhouse.admin.deps import AdminActor, Runtime
from tollhouse.admin.schemas import (
    Alias,
    Deleted,
    EndUserOut,
    EndUserSet,
    ErrorResponse,
    KeyCreate,
    KeyCreated,
    KeyOut,
    KeyUpdate,
    LimitsIn,
    TeamCreate,
    TeamOut,
    TeamUpdate,
    UserCreate,
    UserOut,
    UserUpdate,
)
from tollhouse.admin.service import LIMIT_FIELDS
from tollhouse.identity.manage import LimitsInput
from tollhouse.store import removal
from tollhouse.store.models import ModelLimit

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in ((400, "invalid request"), (401, "missing or wrong admin key"),
                       (404, "no such entity"), (409, "alias already taken or still in use"),
                       (429, "rate limited, or too many failed authentications"))
}  # fmt: skip
router = APIRouter(responses=_ERRORS)
AliasPath = Annotated[Alias, Path(description="the entity's alias")]
EndUserId = Annotated[str, Path(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]+$")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**6)]


def limits_input(limits: LimitsIn) -> LimitsInput:
    return LimitsInput(limits.max_budget_usd, limits.soft_budget_usd, limits.budget_period,
                       limits.rpm, limits.tpm)  # fmt: skip


def patch(body: Any) -> dict[str, Any]:
    """The fields the client sent, nested limits as sent too. ``null`` means "none":
    no limits, no metadata, every model, no expiry; an alias cannot be null (ignored)."""
    changes = dict(body.model_dump(exclude_unset=True))
    if changes.get("alias", "") is None:
        del changes["alias"]
    if "metadata" in changes and changes["metadata"] is None:
        changes["metadata"] = {}
    if "limits" in changes:
        given = body.limits
        changes["limits"] = (
            dict.fromkeys(LIMIT_FIELDS) if given is None else given.model_dump(exclude_unset=True)
        )
    return changes


# --- keys ---------------------------------------------------------------------------------


@router.post("/keys", status_code=201, tags=["keys"])
async def create_key(body: KeyCreate, rt: Runtime, actor: AdminActor) -> KeyCreated:
    """Create a key. The response holds its secret; it is never shown again."""
    model_limits = None
    if body.model_limits is not None:
        model_limits = {m: ModelLimit(v.rpm, v.tpm) for m, v in body.model_limits.items()}
    new = await rt.service.create_key(
        actor, body.alias, team=body.team, user=body.user, models=body.models,
        model_limits=model_limits, limits=limits_input(body.limits), expires_in=body.expires_in,
        expires_at=body.expires_at, metadata=body.metadata,
    )  # fmt: skip
    return KeyCreated(**KeyOut.of(new.key).model_dump(), secret=new.secret)


@router.get("/keys", tags=["keys"])
async def list_keys(rt: Runtime, _: AdminActor, team: Alias | None = None,
                    user: Alias | None = None, limit: Limit = 100,
                    offset: Offset = 0) -> list[KeyOut]:  # fmt: skip
    team_id = (await rt.service.team(team)).id if team else None
    user_id = (await rt.service.user(user)).id if user else None
    keys = await rt.store.keys.list(team_id=team_id, user_id=user_id, limit=limit, offset=offset)
    return [KeyOut.of(k) for k in keys]


@router.get("/keys/{alias}", tags=["keys"])
async def get_key(alias: AliasPath, rt: Runtime, _: AdminActor) -> KeyOut:
    return KeyOut.of(await rt.service.key(alias))


@router.patch("/keys/{alias}", tags=["keys"])
async def update_key(alias: AliasPath, body: KeyUpdate, rt: Runtime, actor: AdminActor) -> KeyOut:
    return KeyOut.of(await rt.service.update_key(actor, alias, patch(body)))


@router.post("/keys/{alias}/block", tags=["keys"])
async def block_key(alias: AliasPath, rt: Runtime, actor: AdminActor) -> KeyOut:
    return KeyOut.of(await rt.service.set_blocked(actor, "key", alias, True))


@router.post("/keys/{alias}/unblock", tags=["keys"])
async def unblock_key(alias: AliasPath, rt: Runtime, actor: AdminActor) -> KeyOut:
    return KeyOut.of(await rt.service.set_blocked(actor, "key", alias, False))


@router.delete("/keys/{alias}", tags=["keys"])
async def delete_key(alias: AliasPath, rt: Runtime, actor: AdminActor) -> Deleted:
    await rt.service.delete(actor, "key", alias)
    return Deleted(kind="key", alias=alias)


# --- teams --------------------------------------------------------------------------------


@router.post("/teams", status_code=201, tags=["teams"])
async def create_team(body: TeamCreate, rt: Runtime, actor: AdminActor) -> TeamOut:
    team = await rt.service.create_team(actor, body.alias, limits_input(body.limits),
                                        body.models, body.metadata)  # fmt: skip
    return TeamOut.of(team)


@router.get("/teams", tags=["teams"])
async def list_teams(rt: Runtime, _: AdminActor, limit: Limit = 100,
                     offset: Offset = 0) -> list[TeamOut]:  # fmt: skip
    return [TeamOut.of(t) for t in await rt.store.teams.list(limit=limit, offset=offset)]


@router.get("/teams/{alias}", tags=["teams"])
async def get_team(alias: AliasPath, rt: Runtime, _: AdminActor) -> TeamOut:
    return TeamOut.of(await rt.service.team(alias))


@router.patch("/teams/{alias}", tags=["teams"])
async def update_team(alias: AliasPath, body: TeamUpdate, rt: Runtime,
                      actor: AdminActor) -> TeamOut:  # fmt: skip
    return TeamOut.of(await rt.service.update_team(actor, alias, patch(body)))


@router.post("/teams/{alias}/block", tags=["teams"])
async def block_team(alias: AliasPath, rt: Runtime, actor: AdminActor) -> TeamOut:
    """Block every key of the team (the team's keys are refused while it is blocked)."""
    return TeamOut.of(await rt.service.set_blocked(actor, "team", alias, True))


@router.post("/teams/{alias}/unblock", tags=["teams"])
async def unblock_team(alias: AliasPath, rt: Runtime, actor: AdminActor) -> TeamOut:
    return TeamOut.of(await rt.service.set_blocked(actor, "team", alias, False))


@router.delete("/teams/{alias}", tags=["teams"])
async def delete_team(alias: AliasPath, rt: Runtime, actor: AdminActor) -> Deleted:
    """Refused (409) while users or keys still belong to the team."""
    await rt.service.delete(actor, "team", alias)
    return Deleted(kind="team", alias=alias)


# --- users --------------------------------------------------------------------------------


@router.post("/users", status_code=201, tags=["users"])
async def create_user(body: UserCreate, rt: Runtime, actor: AdminActor) -> UserOut:
    user = await rt.service.create_user(actor, body.alias, limits_input(body.limits),
                                        body.team, body.email, body.metadata)  # fmt: skip
    return UserOut.of(user)


@router.get("/users", tags=["users"])
async def list_users(rt: Runtime, _: AdminActor, team: Alias | None = None,
                     limit: Limit = 100, offset: Offset = 0) -> list[UserOut]:  # fmt: skip
    team_id = (await rt.service.team(team)).id if team else None
    users = await rt.store.users.list(team_id=team_id, limit=limit, offset=offset)
    return [UserOut.of(u) for u in users]


@router.get("/users/{alias}", tags=["users"])
async def get_user(alias: AliasPath, rt: Runtime, _: AdminActor) -> UserOut:
    return UserOut.of(await rt.service.user(alias))


@router.patch("/users/{alias}", tags=["users"])
async def update_user(alias: AliasPath, body: UserUpdate, rt: Runtime,
                      actor: AdminActor) -> UserOut:  # fmt: skip
    return UserOut.of(await rt.service.update_user(actor, alias, patch(body)))


@router.post("/users/{alias}/block", tags=["users"])
async def block_user(alias: AliasPath, rt: Runtime, actor: AdminActor) -> UserOut:
    return UserOut.of(await rt.service.set_blocked(actor, "user", alias, True))


@router.post("/users/{alias}/unblock", tags=["users"])
async def unblock_user(alias: AliasPath, rt: Runtime, actor: AdminActor) -> UserOut:
    return UserOut.of(await rt.service.set_blocked(actor, "user", alias, False))


@router.delete("/users/{alias}", tags=["users"])
async def delete_user(alias: AliasPath, rt: Runtime, actor: AdminActor) -> Deleted:
    """Refused (409) while keys still belong to the user."""
    await rt.service.delete(actor, "user", alias)
    return Deleted(kind="user", alias=alias)


# --- end users (the request's ``user`` field) ---------------------------------------------


@router.get("/end-users", tags=["end users"])
async def list_end_users(rt: Runtime, _: AdminActor, limit: Limit = 100,
                         offset: Offset = 0) -> list[EndUserOut]:  # fmt: skip
    rows = await removal.list_end_users(rt.store.engine, limit=limit, offset=offset)
    return [EndUserOut.of(e) for e in rows]


@router.get("/end-users/{end_user}", tags=["end users"])
async def get_end_user(end_user: EndUserId, rt: Runtime, _: AdminActor) -> EndUserOut:
    return EndUserOut.of(await rt.service.end_user(end_user))


@router.put("/end-users/{end_user}", tags=["end users"])
async def set_end_user(end_user: EndUserId, body: EndUserSet, rt: Runtime,
                       actor: AdminActor) -> EndUserOut:  # fmt: skip
    """Give one end user its own budget and limits (replacing any it had)."""
    return EndUserOut.of(await rt.service.set_end_user(actor, end_user, limits_input(body.limits)))


@router.delete("/end-users/{end_user}", tags=["end users"])
async def delete_end_user(end_user: EndUserId, rt: Runtime, actor: AdminActor) -> Deleted:
    """Drop the end user's own limits; the configured default applies again."""
    await rt.service.delete(actor, "end_user", end_user)
    return Deleted(kind="end_user", alias=end_user)
