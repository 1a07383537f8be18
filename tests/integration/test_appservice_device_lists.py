"""A bridge that encrypts as its own users (`org.matrix.msc3202: true`) is told, in the
transaction that carries the membership change, who came to share a room with its users
(`device_lists.changed`) and who no longer shares any (`device_lists.left`), as a client's
/sync is: a real server pushing to a real HTTP endpoint, the bodies checked as sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from homeserver.appservice.encryption import DEVICE_LISTS
from tests.integration.test_appservice import bridged_server, eventually
from tests.support.appservice import AS_TOKEN, Receiver
from tests.support.http import RawClient
from tests.support.server import RunningServer, free_port

ENCRYPTING = {"org.matrix.msc3202": True}
Body = dict[str, Any]


class Recorder(Receiver):
    """The endpoint, keeping each transaction's whole body. The test waits for each change's
    transaction before making the next, so each wait looks only past the last one found."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Body] = []
        self.cursor = 0

    async def handle(self, request: web.Request) -> web.Response:
        txn = request.match_info["txn"]
        if all(t != txn for t, _ in self.transactions):
            self.received.append(await request.json())
        return await super().handle(request)

    async def body_with(self, match: Callable[[dict[str, Any]], bool], what: str) -> Body:
        """The next transaction carrying an event that matches (polled for, bounded)."""

        def found() -> int | None:
            return next(
                (
                    i
                    for i in range(self.cursor, len(self.received))
                    if any(map(match, self.received[i]["events"]))
                ),
                None,
            )

        async def arrived() -> bool:
            return found() is not None

        await eventually(arrived, what)
        index = found()
        assert index is not None
        self.cursor = index + 1
        return self.received[index]

    async def membership(self, room: str, user_id: str, membership: str) -> Body:
        def match(e: dict[str, Any]) -> bool:
            return bool(
                e["room_id"] == room
                and e["type"] == "m.room.member"
                and e.get("state_key") == user_id
                and e["content"].get("membership") == membership
            )

        return await self.body_with(match, f"{user_id}'s {membership} in {room}")

    async def message(self, room: str, text: str) -> Body:
        def match(e: dict[str, Any]) -> bool:
            return bool(e["room_id"] == room and e["content"].get("body") == text)

        return await self.body_with(match, f"the message {text!r}")


def lists(body: Body) -> tuple[list[str], list[str]]:
    found = body.get(DEVICE_LISTS, {"changed": [], "left": []})
    return list(found["changed"]), list(found["left"])


async def person(srv: RunningServer, http: aiohttp.ClientSession, name: str) -> RawClient:
    login = await srv.login(name)
    return RawClient(http, srv.base_url, login["access_token"], login["user_id"])


class Bridge:
    """The service acting as one of its users (the bot, or a puppet)."""

    def __init__(self, srv: RunningServer, http: aiohttp.ClientSession, user_id: str) -> None:
        self.client = RawClient(http, srv.base_url, AS_TOKEN, user_id)
        self.as_user = {"user_id": user_id}
        self.user_id = user_id

    async def join(self, room: str) -> None:
        await self.client.ok("POST", f"/join/{quote(room)}", json={}, params=self.as_user)

    async def leave(self, room: str) -> None:
        await self.client.ok("POST", f"/rooms/{quote(room)}/leave", json={}, params=self.as_user)


async def puppet(srv: RunningServer, http: aiohttp.ClientSession, localpart: str) -> Bridge:
    service = RawClient(http, srv.base_url, AS_TOKEN)
    register = {"type": "m.login.application_service", "username": localpart, "inhibit_login": True}
    body = await service.ok("POST", "/register", json=register)
    return Bridge(srv, http, body["user_id"])


async def leave(client: RawClient, room: str) -> None:
    await client.ok("POST", f"/rooms/{quote(room)}/leave", json={})


async def test_others_coming_and_going(tmp_path: Any, http: aiohttp.ClientSession) -> None:
    as_port = free_port()
    receiver = Recorder()
    async with bridged_server(str(tmp_path), as_port, ENCRYPTING) as srv, receiver.running(as_port):
        bot = Bridge(srv, http, f"@_bridge_bot:{srv.server_name}")
        ghost = await puppet(srv, http, "_bridge_ghost")
        alice, bob, carol, dave = [await person(srv, http, n) for n in ("alice", "bob", "carol", "dave")]
        room = await alice.create_room(preset="public_chat")
        await bot.join(room)
        # Carol also shares another room with the bridge, through one of its puppets.
        other = await carol.create_room(preset="public_chat")
        await ghost.join(other)
        await alice.send(room, "ready", "t1")
        # Everyone's earlier device changes (their logins) are behind this transaction.
        await receiver.message(room, "ready")

        # Joining a room with the bot: the bridge starts tracking bob's devices.
        assert (await bob.join(room))[0] == 200
        changed, left = lists(await receiver.membership(room, bob.user_id, "join"))
        assert bob.user_id in changed and left == []
        assert (await carol.join(room))[0] == 200
        assert carol.user_id in lists(await receiver.membership(room, carol.user_id, "join"))[0]

        # Bob leaves the only room he shares with the bridge's users: he is in `left`.
        await leave(bob, room)
        changed, left = lists(await receiver.membership(room, bob.user_id, "leave"))
        assert left == [bob.user_id] and bob.user_id not in changed

        # Carol leaves it too, but still shares the other room with the puppet.
        await leave(carol, room)
        changed, left = lists(await receiver.membership(room, carol.user_id, "leave"))
        assert carol.user_id not in left and carol.user_id not in changed

        # Kicked and banned users stop sharing as well.
        assert (await dave.join(room))[0] == 200
        assert dave.user_id in lists(await receiver.membership(room, dave.user_id, "join"))[0]
        await alice.ok("POST", f"/rooms/{quote(room)}/kick", json={"user_id": dave.user_id})
        assert lists(await receiver.membership(room, dave.user_id, "leave"))[1] == [dave.user_id]
        assert (await bob.join(room))[0] == 200
        await receiver.membership(room, bob.user_id, "join")
        await alice.ok("POST", f"/rooms/{quote(room)}/ban", json={"user_id": bob.user_id})
        assert lists(await receiver.membership(room, bob.user_id, "ban"))[1] == [bob.user_id]

        # Alice, still there with the bot, was never in `left`; nor the bridge's own users.
        everyone_left = {u for b in receiver.received for u in lists(b)[1]}
        assert everyone_left == {bob.user_id, dave.user_id}


async def test_the_bridges_own_users_coming_and_going(tmp_path: Any, http: aiohttp.ClientSession) -> None:
    as_port = free_port()
    receiver = Recorder()
    async with bridged_server(str(tmp_path), as_port, ENCRYPTING) as srv, receiver.running(as_port):
        bot = Bridge(srv, http, f"@_bridge_bot:{srv.server_name}")
        ghost = await puppet(srv, http, "_bridge_ghost")
        alice, bob, carol = [await person(srv, http, n) for n in ("alice", "bob", "carol")]
        room = await alice.room_with(bob, carol, preset="public_chat")
        other = await carol.create_room(preset="public_chat")
        await ghost.join(other)
        await carol.send(other, "ready", "t1")
        await receiver.message(other, "ready")

        # The bot joins a room: its members are new to the bridge.
        await bot.join(room)
        changed, left = lists(await receiver.membership(room, bot.user_id, "join"))
        assert {alice.user_id, bob.user_id, carol.user_id} <= set(changed) and left == []
        assert bot.user_id not in changed

        # The bot leaves it: its members no longer share a room with the bridge's users,
        # except carol, who is in the other room with the puppet.
        await bot.leave(room)
        changed, left = lists(await receiver.membership(room, bot.user_id, "leave"))
        assert left == sorted([alice.user_id, bob.user_id]) and changed == []

        # The puppet comes back into the room instead: tracked again.
        await ghost.join(room)
        changed, left = lists(await receiver.membership(room, ghost.user_id, "join"))
        assert {alice.user_id, bob.user_id} <= set(changed) and left == []
        assert ghost.user_id not in changed

        # With two of the bridge's users in the room, one leaving leaves no one.
        await bot.join(room)
        await receiver.membership(room, bot.user_id, "join")
        await bot.leave(room)
        assert lists(await receiver.membership(room, bot.user_id, "leave")) == ([], [])
