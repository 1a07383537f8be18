"""Authorization matrix: every client endpoint x {no token, token in the query string, bad
token, deactivated user, guest} and every room endpoint x {non-member, banned, kicked,
insufficient power level, invite-only} → the right errcode, and no leaked information.

The route lists are read from the running app, so an endpoint added later is covered
automatically (and the room table below must name it, or `test_room_table_is_complete`
fails). One world is built per module: a private, invite-only room with shared history,
whose name and messages carry SECRET markers; after two users are kicked and banned, the
owner sends AFTER markers that they must never see.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio

from homeserver.api.admin import ADMIN_KEY
from homeserver.handlers.users import create_account
from tests.security.support import raw
from tests.support.server import RunningServer, run_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

C = "/_matrix/client/{_ver}"
ROOM = C + "/rooms/{room_id}"

# Reachable without an access token, by the spec (or, for /account/*, through UIA without one).
PUBLIC = {
    ("GET", "/.well-known/matrix/client"),
    ("GET", "/.well-known/matrix/support"),
    ("GET", "/_matrix/client/versions"),
    ("GET", C + "/login"),
    ("POST", C + "/login"),
    ("POST", C + "/refresh"),  # authenticated by the refresh token in its body
    ("POST", C + "/register"),
    ("GET", C + "/register/available"),
    ("GET", C + "/register/m.login.registration_token/validity"),
    ("POST", C + "/account/password"),
    ("POST", C + "/account/deactivate"),
    # Validation tokens for third-party identifiers (email, when configured), and the pages
    # their emailed links open (the link's token is the credential).
    *(
        ("POST", f"{C}/{purpose}/{medium}/requestToken")
        for purpose in ("register", "account/3pid", "account/password")
        for medium in ("email", "msisdn")
    ),
    ("GET", "/_matrix/client/unstable/registration/email/submit_token"),
    ("GET", "/_matrix/client/unstable/add_threepid/email/submit_token"),
    ("GET", "/_synapse/client/password_reset/email/submit_token"),
    ("POST", "/_synapse/client/password_reset/email/submit_token"),
    # A notification email's unsubscribe link (its signed token is the credential).
    ("GET", "/_synapse/client/unsubscribe"),
    ("POST", "/_synapse/client/unsubscribe"),
    ("GET", C + "/profile/{user_id}"),
    ("GET", C + "/profile/{user_id}/{key}"),
    ("GET", C + "/directory/room/{alias}"),
    ("GET", C + "/directory/list/room/{room_id}"),
    ("GET", C + "/room_summary/{room}"),
    ("GET", "/_matrix/media/{_ver}/download/{server_name}/{media_id}"),
    ("GET", "/_matrix/media/{_ver}/download/{server_name}/{media_id}/{file_name}"),
    ("GET", "/_matrix/media/{_ver}/thumbnail/{server_name}/{media_id}"),
    ("GET", "/metrics"),
    # Registration by shared secret: the MAC over the request is the credential.
    ("GET", "/_synapse/admin/v1/register"),
    ("POST", "/_synapse/admin/v1/register"),
    ("GET", "/_sotto/health"),
    ("GET", "/_sotto/ready"),
    # Delayed events: the unguessable delay ID is the credential (MSC4140, for a call's SFU).
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}/{action}"),
}

# Endpoints a guest may call (guest access is otherwise refused with M_GUEST_ACCESS_FORBIDDEN).
# Only an application service's own token opens these: any other (a guest's too) is unknown there.
APPSERVICE_ONLY = {("POST", "/_matrix/client/{_ver}/appservice/{service_id}/ping")}

GUEST_OK = {
    ("GET", C + "/account/whoami"),
    # A token is needed by default (room_directory.allow_public_rooms_without_auth), and a
    # guest's will do, as in Synapse; for a search (POST) and asking another server too.
    ("GET", C + "/publicRooms"),
    ("POST", C + "/publicRooms"),
    ("POST", C + "/logout"),
    ("POST", C + "/logout/all"),
    ("POST", C + "/user/{user_id}/filter"),
    ("GET", C + "/user/{user_id}/filter/{filter_id}"),
    ("GET", C + "/devices"),
    ("GET", C + "/devices/{device_id}"),
    ("PUT", C + "/devices/{device_id}"),
    ("PUT", C + "/sendToDevice/{event_type}/{txn_id}"),
    # The spec's guest access module: reading and talking in rooms that let guests in,
    # the display name, media and end-to-end encryption keys.
    ("GET", C + "/sync"),
    # Sliding sync: the same data as /sync, for clients that sync this way (as Synapse allows).
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"),
    ("POST", C + "/join/{room_id_or_alias}"),
    ("POST", ROOM + "/join"),
    ("POST", ROOM + "/leave"),
    ("PUT", ROOM + "/send/{event_type}/{txn_id}"),
    ("GET", ROOM + "/state"),
    *((m, ROOM + p) for m in ("GET", "PUT") for p in ("/state/{event_type}", "/state/{event_type}/")),
    ("GET", ROOM + "/state/{event_type}/{state_key}"),
    ("PUT", ROOM + "/state/{event_type}/{state_key}"),
    ("GET", ROOM + "/messages"),
    ("GET", ROOM + "/initialSync"),  # room previews
    ("GET", C + "/events"),  # room previews: what happens next
    ("GET", ROOM + "/context/{event_id}"),
    ("GET", ROOM + "/event/{event_id}"),
    ("GET", ROOM + "/members"),
    ("PUT", C + "/profile/{user_id}/{key}"),  # filled with displayname
    ("DELETE", C + "/profile/{user_id}/{key}"),
    ("GET", C + "/media/download/{server_name}/{media_id}"),
    ("GET", C + "/media/download/{server_name}/{media_id}/{file_name}"),
    ("GET", C + "/media/thumbnail/{server_name}/{media_id}"),
    ("POST", C + "/keys/upload"),
    ("POST", C + "/keys/upload/{device_id}"),
    ("POST", C + "/keys/query"),
    ("POST", C + "/keys/claim"),
}

SECRET = "SECRET"
AFTER = "AFTER"


@dataclass
class Actor:
    user_id: str
    token: str


@dataclass
class World:
    srv: RunningServer
    http: aiohttp.ClientSession
    room: str
    before_event: str
    after_event: str
    owner: Actor
    member: Actor
    outsider: Actor
    kicked: Actor
    banned: Actor
    guest: Actor
    deactivated: Actor

    async def call(
        self, actor: Actor | None, method: str, path: str, body: Any = None, **kw: Any
    ) -> tuple[int, Any, str]:
        status, out, _ = await raw(
            self.http, method, self.srv.base_url + path, token=actor.token if actor else None, json=body, **kw
        )
        return status, out, str(out)


async def _actor(srv: RunningServer, name: str, *, guest: bool = False) -> Actor:
    if guest:
        user_id = await create_account(
            srv.hs.accounts, srv.hs.passwords, srv.server_name, name, None, 0, guest=True
        )
    else:
        user_id = await srv.register(name)
    token, _ = await srv.hs.auth.create_session(user_id, None, None)
    return Actor(user_id, token)


async def _ok(
    world_http: aiohttp.ClientSession, srv: RunningServer, actor: Actor, method: str, path: str, body: Any
) -> Any:
    status, out, _ = await raw(
        world_http, method, srv.base_url + "/_matrix/client/v3" + path, token=actor.token, json=body
    )
    assert status == 200, (path, out)
    return out


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with run_server(str(tmp_path_factory.mktemp("authz"))) as srv, aiohttp.ClientSession() as http:
        owner, member, outsider, kicked, banned = [
            await _actor(srv, n) for n in ("owner", "member", "outsider", "kicked", "banned")
        ]
        guest = await _actor(srv, "guest", guest=True)
        deactivated = await _actor(srv, "gone")

        async def ok(actor: Actor, method: str, path: str, body: Any = None) -> Any:
            return await _ok(http, srv, actor, method, path, body)

        room = (await ok(owner, "POST", "/createRoom", {"preset": "private_chat", "name": f"{SECRET}-NAME"}))[
            "room_id"
        ]
        r = quote(room)
        for actor in (member, kicked, banned, deactivated):
            await ok(owner, "POST", f"/rooms/{r}/invite", {"user_id": actor.user_id})
            await ok(actor, "POST", f"/rooms/{r}/join", {})
        before = (
            await ok(
                owner,
                "PUT",
                f"/rooms/{r}/send/m.room.message/b1",
                {"msgtype": "m.text", "body": f"{SECRET}-1"},
            )
        )["event_id"]
        await ok(owner, "POST", f"/rooms/{r}/kick", {"user_id": kicked.user_id})
        await ok(owner, "POST", f"/rooms/{r}/ban", {"user_id": banned.user_id})
        after = (
            await ok(
                owner,
                "PUT",
                f"/rooms/{r}/send/m.room.message/a1",
                {"msgtype": "m.text", "body": f"{SECRET}-{AFTER}-1"},
            )
        )["event_id"]
        await ok(owner, "PUT", f"/rooms/{r}/state/m.room.topic", {"topic": f"{SECRET}-{AFTER}-TOPIC"})
        thread = {
            "msgtype": "m.text",
            "body": f"{SECRET}-{AFTER}-THREAD",
            "m.relates_to": {"rel_type": "m.thread", "event_id": after},
        }
        await ok(owner, "PUT", f"/rooms/{r}/send/m.room.message/a2", thread)
        await srv.runner.app[ADMIN_KEY].deactivate(deactivated.user_id)
        yield World(
            srv, http, room, before, after, owner, member, outsider, kicked, banned, guest, deactivated
        )


def fill(canonical: str, world: World, actor: Actor, route_pattern: str) -> str:
    """A concrete path for a route: real IDs where they matter, plausible values elsewhere."""
    version = "v1" if "(?:v1)" in route_pattern else "v3"
    values = {
        "_ver": version,
        "room_id": world.room,
        "room_id_or_alias": world.room,
        "room": world.room,
        "user_id": actor.user_id,
        "event_id": world.after_event,
        "alias": "#nothing:" + world.srv.server_name,
        "server_name": world.srv.server_name,
        "media_id": "abcdefgh",
        "file_name": "f.txt",
        "txn_id": "txn-authz",
        "event_type": "m.room.message",
        "state_key": "",
        "type": "m.authz",
        "device_id": "NODEVICE",
        "filter_id": "0",
        "receipt_type": "m.read",
        "rel_type": "m.thread",
        "scope": "global",
        "kind": "override",
        "rule_id": "authz",
        "field": "enabled",
        "version": "1",
        "session_id": "s",
        "tag": "u.authz",
        "key": "displayname",
        "delete_id": "x",
        "purge_id": "x",
        "redact_id": "x",
        "delay_id": "x",
        "action": "send",
        "report_id": "1",
        "token": "tok",
        "protocol": "irc",
        "service_id": "no-such-service",
        "network_id": "irc",
        "provider": "oidc",
        "external_id": "x",
        "medium": "email",
        "address": "a@b.c",
    }
    return re.sub(r"\{(\w+)\}", lambda m: quote(values[m.group(1)], safe=""), canonical)


def client_routes(world: World) -> list[tuple[str, str, str]]:
    out = []
    for route in world.srv.runner.app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None:
            continue
        pattern = str(resource.get_info().get("pattern", ""))
        out.append((route.method, resource.canonical, pattern))
    return sorted(set(out))


def template(value: Any, names: dict[str, str]) -> Any:
    """`value` with every string (keys included) that is a placeholder replaced."""
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, dict):
        return {names.get(k, k): template(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [template(v, names) for v in value]
    return value


def body_for(method: str) -> Any:
    return {} if method in ("POST", "PUT", "DELETE") else None


# Tokens ---------------------------------------------------------------------------------------


async def test_every_endpoint_needs_a_valid_token(world: World) -> None:
    failures = []
    checked = 0
    for method, canonical, pattern in client_routes(world):
        if (method, canonical) in PUBLIC:
            continue
        checked += 1
        path = fill(canonical, world, world.outsider, pattern)
        body = body_for(method)
        cases: list[tuple[str, Actor | None, dict[str, Any], int, str]] = [
            ("no token", None, {}, 401, "M_MISSING_TOKEN"),
            ("query token", None, {"params": {"access_token": world.outsider.token}}, 401, "M_MISSING_TOKEN"),
            ("bad token", Actor("", "syt_bad"), {}, 401, "M_UNKNOWN_TOKEN"),
            ("deactivated", world.deactivated, {}, 401, "M_UNKNOWN_TOKEN"),
        ]
        for label, actor, kw, status, errcode in cases:
            got, out, text = await world.call(actor, method, path, body, **kw)
            if got != status or not isinstance(out, dict) or out.get("errcode") != errcode:
                failures.append((label, method, canonical, got, text[:100]))
            elif SECRET in text:
                failures.append((label + " leaks", method, canonical, got, text[:100]))
    assert checked > 100
    assert failures == []


async def test_guests_are_refused_except_where_allowed(world: World) -> None:
    failures = []
    for method, canonical, pattern in client_routes(world):
        if (method, canonical) in PUBLIC or canonical.startswith("/_synapse") or "/logout" in canonical:
            continue  # (logging out would end the guest's session for the rest of the loop)
        path = fill(canonical, world, world.guest, pattern)
        status, out, text = await world.call(world.guest, method, path, body_for(method))
        refused = status == 403 and isinstance(out, dict) and out.get("errcode") == "M_GUEST_ACCESS_FORBIDDEN"
        if (method, canonical) in APPSERVICE_ONLY:
            refused = status == 401 and isinstance(out, dict) and out.get("errcode") == "M_UNKNOWN_TOKEN"
        if (method, canonical) in GUEST_OK:
            if refused or status >= 500:
                failures.append(("guest refused", method, canonical, status, text[:100]))
        elif not refused:
            failures.append(("guest allowed", method, canonical, status, text[:100]))
        if SECRET in text:
            failures.append(("guest leak", method, canonical, status, text[:100]))
    assert failures == []


async def test_admin_api_needs_an_admin(world: World) -> None:
    checked = 0
    for method, canonical, pattern in client_routes(world):
        if not canonical.startswith(("/_synapse/admin", "/_matrix/client/{_ver}/admin/")):
            continue
        if (method, canonical) in PUBLIC:
            continue
        if canonical.endswith(("/admin/whois/{user_id}", "/admin/v1/whois/{user_id}")):
            continue  # admins, or the user themself: test_account_moderation.py
        path = fill(canonical, world, world.member, pattern)
        status, out, text = await world.call(world.member, method, path, body_for(method))
        assert (status, out.get("errcode")) == (403, "M_FORBIDDEN"), (canonical, text)
        checked += 1
    assert checked >= 6  # the Synapse-style API and account moderation (lock, suspend)


# Rooms ----------------------------------------------------------------------------------------

MSG = {"msgtype": "m.text", "body": "x"}

# (method, route, body). `{other}` is the room owner, `{me}` the acting user.
ROOM_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", ROOM + "/aliases", None),
    ("POST", ROOM + "/ban", {"user_id": "{other}"}),
    ("GET", ROOM + "/context/{event_id}", None),
    ("GET", ROOM + "/event/{event_id}", None),
    ("POST", ROOM + "/forget", {}),
    ("GET", ROOM + "/hierarchy", None),
    ("GET", ROOM + "/initialSync", None),
    ("POST", ROOM + "/invite", {"user_id": "{other}"}),
    ("POST", ROOM + "/join", {}),
    ("GET", ROOM + "/joined_members", None),
    ("POST", ROOM + "/kick", {"user_id": "{other}"}),
    ("POST", ROOM + "/leave", {}),
    ("GET", ROOM + "/members", None),
    ("GET", ROOM + "/messages", None),
    ("POST", ROOM + "/read_markers", {"m.fully_read": "{event_id}"}),
    ("POST", ROOM + "/receipt/{receipt_type}/{event_id}", {}),
    ("PUT", ROOM + "/redact/{event_id}/{txn_id}", {}),
    ("GET", ROOM + "/relations/{event_id}", None),
    ("GET", ROOM + "/relations/{event_id}/{rel_type}", None),
    ("GET", ROOM + "/relations/{event_id}/{rel_type}/{event_type}", None),
    ("POST", ROOM + "/report", {"reason": "x"}),
    ("POST", ROOM + "/report/{event_id}", {"reason": "x"}),
    ("PUT", ROOM + "/send/{event_type}/{txn_id}", MSG),
    ("GET", ROOM + "/state", None),
    ("GET", ROOM + "/state/{event_type}", None),
    ("GET", ROOM + "/state/{event_type}/", None),
    ("GET", ROOM + "/state/{event_type}/{state_key}", None),
    ("PUT", ROOM + "/state/{event_type}", {"x": 1}),
    ("PUT", ROOM + "/state/{event_type}/", {"x": 1}),
    ("PUT", ROOM + "/state/{event_type}/{state_key}", {"x": 1}),
    ("GET", ROOM + "/threads", None),
    ("GET", ROOM + "/timestamp_to_event", None),
    ("PUT", ROOM + "/typing/{user_id}", {"typing": True, "timeout": 1000}),
    ("POST", ROOM + "/unban", {"user_id": "{other}"}),
    ("POST", ROOM + "/upgrade", {"new_version": "12"}),
]

# Reads a former member may still make: the spec shows the room as it was when they left.
READABLE_AFTER_LEAVING = {
    ROOM + "/aliases",
    ROOM + "/initialSync",
    ROOM + "/messages",
    ROOM + "/state",
    ROOM + "/members",
    ROOM + "/context/{event_id}",
    ROOM + "/relations/{event_id}",
    ROOM + "/relations/{event_id}/{rel_type}",
    ROOM + "/relations/{event_id}/{rel_type}/{event_type}",
    ROOM + "/threads",
    ROOM + "/timestamp_to_event",
}
# Bugs found by this matrix in other areas' code, kept visible (strict xfail) until fixed.
FORMER_MEMBER_BUGS: dict[tuple[str, str], str] = {}
POWER_BUGS: dict[tuple[str, str], str] = {}


def params(table: list[tuple[str, str, Any]], bugs: dict[tuple[str, str], str], id_of: Any) -> list[Any]:
    return [
        pytest.param(
            m,
            r,
            b,
            id=id_of(m, r),
            marks=[pytest.mark.xfail(strict=True, reason=bugs[(m, r)])] if (m, r) in bugs else [],
        )
        for m, r, b in table
    ]


# Fine for anyone (they change only the caller's own view, or are reports to the admins).
HARMLESS = {ROOM + "/forget", ROOM + "/report", ROOM + "/report/{event_id}"}


def route_pattern(world: World, method: str, route: str) -> str:
    for m, canonical, pattern in client_routes(world):
        if (m, canonical) == (method, route):
            return pattern
    return ""


def room_request(world: World, actor: Actor, method: str, route: str, body: Any) -> tuple[str, Any]:
    path = fill(route, world, actor, route_pattern(world, method, route))
    if (
        route.endswith("/state/{event_type}")
        or route.endswith("/state/{event_type}/")
        or route.endswith("{state_key}")
    ):
        path = path.replace("m.room.message", "m.room.topic" if method == "GET" else "m.authz.state")
    if route.endswith("/timestamp_to_event"):
        path += "?ts=0&dir=f"
    return path, template(body, {"{other}": world.owner.user_id, "{event_id}": world.after_event})


async def test_room_table_covers_every_room_route(world: World) -> None:
    listed = {(m, r) for m, r, _ in ROOM_ENDPOINTS}
    missing = [
        (m, c) for m, c, _ in client_routes(world) if c.startswith(ROOM + "/") and (m, c) not in listed
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("method", "route", "body"), ROOM_ENDPOINTS, ids=[f"{m} {r[len(ROOM) :]}" for m, r, _ in ROOM_ENDPOINTS]
)
async def test_outsider(world: World, method: str, route: str, body: Any) -> None:
    path, body = room_request(world, world.outsider, method, route, body)
    status, out, text = await world.call(world.outsider, method, path, body)
    assert SECRET not in text, text
    if route in HARMLESS:
        assert status < 500
        return
    assert status in (403, 404), (status, text)
    assert out["errcode"] in ("M_FORBIDDEN", "M_NOT_FOUND"), text


@pytest.mark.parametrize("who", ["kicked", "banned"])
@pytest.mark.parametrize(
    ("method", "route", "body"),
    params(ROOM_ENDPOINTS, FORMER_MEMBER_BUGS, lambda m, r: f"{m} {r[len(ROOM) :]}"),
)
async def test_former_member(world: World, who: str, method: str, route: str, body: Any) -> None:
    actor: Actor = getattr(world, who)
    if route.endswith("/forget"):
        pytest.skip("forgetting would hide the history test_former_members_see_history_up_to_leaving reads")
    path, body = room_request(world, actor, method, route, body)
    status, out, text = await world.call(actor, method, path, body)
    assert AFTER not in text, text
    if route in HARMLESS or (route in READABLE_AFTER_LEAVING and status == 200):
        assert status < 500
        return
    assert status in (403, 404), (status, text)
    assert out["errcode"] in ("M_FORBIDDEN", "M_NOT_FOUND"), text


async def test_former_members_see_history_up_to_leaving(world: World) -> None:
    for actor in (world.kicked, world.banned):
        status, _, text = await world.call(
            actor,
            "GET",
            f"/_matrix/client/v3/rooms/{quote(world.room)}/messages",
            params={"dir": "b", "limit": "50"},
        )
        assert status == 200, text
        assert f"{SECRET}-1" in text and AFTER not in text


PRIVILEGED: list[tuple[str, str, Any]] = [
    ("PUT", ROOM + "/state/m.room.name", {"name": "hijacked"}),
    ("PUT", ROOM + "/state/m.room.power_levels", {"users": {"{me}": 100}}),
    ("PUT", ROOM + "/state/m.room.join_rules", {"join_rule": "public"}),
    ("PUT", ROOM + "/state/m.room.history_visibility", {"history_visibility": "world_readable"}),
    ("PUT", ROOM + "/state/m.room.server_acl", {"allow": ["*"], "deny": []}),
    ("POST", ROOM + "/kick", {"user_id": "{other}"}),
    ("POST", ROOM + "/ban", {"user_id": "{other}"}),
    ("POST", ROOM + "/unban", {"user_id": "{banned}"}),
    ("POST", ROOM + "/invite", {"user_id": "{outsider}"}),
    ("PUT", ROOM + "/redact/{before}/{txn_id}", {}),
    ("POST", ROOM + "/upgrade", {"new_version": "12"}),
    ("PUT", C + "/directory/list/room/{room_id}", {"visibility": "public"}),
]


@pytest.mark.parametrize(
    ("method", "route", "body"), params(PRIVILEGED, POWER_BUGS, lambda m, r: f"{m} {r.split('}/', 1)[-1]}")
)
async def test_insufficient_power(world: World, method: str, route: str, body: Any) -> None:
    path = fill(route.replace("{before}", world.before_event), world, world.member, "")
    body = template(
        body,
        {
            "{me}": world.member.user_id,
            "{other}": world.owner.user_id,
            "{banned}": world.banned.user_id,
            "{outsider}": world.outsider.user_id,
        },
    )
    if route.endswith("/invite"):
        # A private_chat room lets members invite (invite level 0): that one is allowed.
        pytest.skip("members may invite in private_chat rooms")
    status, out, text = await world.call(world.member, method, path, body)
    assert (status, out.get("errcode")) == (403, "M_FORBIDDEN"), text


async def test_unauthorised_redaction_is_not_applied(world: World) -> None:
    path = f"/_matrix/client/v3/rooms/{quote(world.room)}/redact/{quote(world.before_event)}/redact-again"
    await world.call(world.member, "PUT", path, {})
    status, out, text = await world.call(
        world.owner, "GET", f"/_matrix/client/v3/rooms/{quote(world.room)}/event/{quote(world.before_event)}"
    )
    assert status == 200 and out["content"].get("body") == f"{SECRET}-1", text


async def test_invite_only(world: World) -> None:
    for route in (
        f"/_matrix/client/v3/rooms/{quote(world.room)}/join",
        f"/_matrix/client/v3/join/{quote(world.room)}",
    ):
        status, out, text = await world.call(world.outsider, "POST", route, {})
        assert (status, out["errcode"]) == (403, "M_FORBIDDEN"), text
        assert SECRET not in text
    status, out, text = await world.call(
        world.outsider, "POST", f"/_matrix/client/v3/knock/{quote(world.room)}", {}
    )
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN"), text
    # The banned user cannot come back, even through an invite.
    status, out, text = await world.call(
        world.owner,
        "POST",
        f"/_matrix/client/v3/rooms/{quote(world.room)}/invite",
        {"user_id": world.banned.user_id},
    )
    assert status == 403, text
    status, out, text = await world.call(
        world.banned, "POST", f"/_matrix/client/v3/rooms/{quote(world.room)}/join", {}
    )
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN"), text


# Other users' data ---------------------------------------------------------------------------

OTHERS_DATA: list[tuple[str, str, Any]] = [
    ("GET", C + "/user/{other}/account_data/m.authz", None),
    ("PUT", C + "/user/{other}/account_data/m.authz", {"x": 1}),
    ("GET", C + "/user/{other}/rooms/{room_id}/account_data/m.authz", None),
    ("PUT", C + "/user/{other}/rooms/{room_id}/account_data/m.authz", {"x": 1}),
    ("POST", C + "/user/{other}/filter", {}),
    ("GET", C + "/user/{other}/filter/0", None),
    ("GET", C + "/user/{other}/rooms/{room_id}/tags", None),
    ("PUT", C + "/user/{other}/rooms/{room_id}/tags/u.x", {}),
    ("DELETE", C + "/user/{other}/rooms/{room_id}/tags/u.x", None),
    ("PUT", C + "/presence/{other}/status", {"presence": "online"}),
    ("PUT", C + "/profile/{other}/displayname", {"displayname": "hijacked"}),
    ("PUT", ROOM + "/typing/{other}", {"typing": True, "timeout": 1000}),
]


@pytest.mark.parametrize(
    ("method", "route", "body"), OTHERS_DATA, ids=[f"{m} {r}" for m, r, _ in OTHERS_DATA]
)
async def test_other_users_data(world: World, method: str, route: str, body: Any) -> None:
    path = fill(route.replace("{other}", quote(world.owner.user_id)), world, world.member, "")
    status, out, text = await world.call(world.member, method, path, body)
    assert status in (403, 404), text
    assert out["errcode"] in ("M_FORBIDDEN", "M_NOT_FOUND"), text
    # And nothing changed.
    profile = await world.call(None, "GET", f"/_matrix/client/v3/profile/{quote(world.owner.user_id)}")
    assert profile[1].get("displayname") != "hijacked"


@pytest.mark.parametrize(
    "action",
    ["invite", "kick", "ban", "unban"],
)
async def test_membership_errors_do_not_reveal_membership(world: World, action: str) -> None:
    # The outsider's request must fail the same way whatever the target's membership is.
    answers = set()
    for target in (world.owner, world.banned, world.kicked, world.outsider):
        status, out, _ = await world.call(
            world.outsider,
            "POST",
            f"/_matrix/client/v3/rooms/{quote(world.room)}/{action}",
            {"user_id": target.user_id},
        )
        assert status == 403
        answers.add((out["errcode"], out["error"].replace(target.user_id, "<target>")))
    assert len(answers) == 1, answers
