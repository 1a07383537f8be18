"""Re-consent to changed terms (`registration.terms.block_events_until_consent` and
`server_notice`; homeserver/handlers/consent.py, homeserver/api/consent.py), end to end on a
real server: a user who registered under version 1 of the terms is, once the server moves
to version 2, refused events with 403 M_CONSENT_NOT_GIVEN and a `consent_uri`, and sent one
server notice with that link; the consent page shows the policies and records the
acceptance, after which the user's events go through again. The server notices room stays
usable meanwhile; application services' users and the server notices user are never asked;
a forged link is a 403; with blocking off nothing is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest

from homeserver.config import ConfigError, TermsConfig, config_from_dict
from homeserver.handlers.consent import ConsentNotices
from tests.federation.support import fed_server, make_ca
from tests.integration.test_registration_terms import begin, stage
from tests.support.appservice import AS_TOKEN, write_registration
from tests.support.http import RawClient
from tests.support.server import RunningServer, lasting_database, run_server

NOT_GIVEN = "M_CONSENT_NOT_GIVEN"
POLICIES = {
    "terms_of_service": {
        "en": {"name": "Terms of Service", "url": "https://example.org/terms-en.html"},
        "fr": {"name": "Conditions d'utilisation", "url": "https://example.org/terms-fr.html"},
    },
    "community": {"en": {"name": "<Community> & Rules", "url": "https://example.org/rules?a=1&b=2"}},
}
NOTICE = "Our terms have changed. Please review and accept them: %(consent_uri)s"
NOTICES = {"localpart": "notices"}
KNOCK_RULE = {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}


def terms(version: str, block: bool = True, notice: str | None = NOTICE) -> dict[str, Any]:
    return {
        "version": version,
        "policies": POLICIES,
        "block_events_until_consent": block,
        "server_notice": notice,
    }


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def client(server: RunningServer, http: aiohttp.ClientSession, user_id: str) -> RawClient:
    token, _ = await server.hs.auth.create_session(user_id, None, None)
    return RawClient(http, server.base_url, token, user_id)


async def make_user(
    server: RunningServer, http: aiohttp.ClientSession, localpart: str, consent: str | None = None
) -> RawClient:
    user_id = await server.register(localpart)
    if consent is not None:
        assert await server.hs.accounts.set_consent(user_id, consent, server.hs.clock.time_ms())
    return await client(server, http, user_id)


def notices_of(server: RunningServer) -> ConsentNotices:
    return next(s for s in server.hs.background if isinstance(s, ConsentNotices))


async def synced(server: RunningServer, user: RawClient) -> dict[str, Any]:
    """A sync, and the server notice it may have set going, sent."""
    out: dict[str, Any] = await user.sync()
    await notices_of(server).settled()
    return out


async def send(user: RawClient, room: str, body: str) -> tuple[int, Any]:
    return await user.request(
        "PUT",
        f"/rooms/{quote(room)}/send/m.room.message/{body}",
        json={"msgtype": "m.text", "body": body},
    )


def refused(status: int, out: Any) -> str:
    """The consent_uri of a 403 M_CONSENT_NOT_GIVEN (Synapse's ConsentNotGivenError)."""
    assert status == 403 and out["errcode"] == NOT_GIVEN, (status, out)
    uri = out["consent_uri"]
    assert isinstance(uri, str) and uri in out["error"]
    return uri


async def notice_bodies(server: RunningServer, user: RawClient, room: str) -> list[str]:
    system = f"@notices:{server.server_name}"
    out = await user.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "50"})
    return [
        e["content"]["body"] for e in out["chunk"] if e["sender"] == system and e["type"] == "m.room.message"
    ]


async def test_new_terms_block_until_accepted(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with lasting_database() as db:
        # Version 1: alice registers (accepting it), makes a room, and joins bob's.
        async with run_server(
            str(tmp_path), registration={"terms": terms("1")}, server_notices=NOTICES, **db
        ) as first:
            raw = RawClient(http, first.base_url)
            session = (await begin(raw, "alice"))["session"]
            assert (await stage(raw, session, {"type": "m.login.dummy"}))[0] == 401
            status, out = await stage(raw, session, {"type": "m.login.terms"})
            assert status == 200, out
            alice = RawClient(http, first.base_url, out["access_token"], out["user_id"])
            bob = await make_user(first, http, "bob", consent="1")
            room = await alice.create_room(preset="public_chat")
            bobs = await bob.create_room(preset="public_chat")
            other = await bob.create_room(preset="public_chat")
            assert (await alice.join(bobs))[0] == 200
            assert (await send(alice, room, "before"))[0] == 200
            name = first.server_name

        # The operator publishes version 2, with blocking and a server notice.
        async with run_server(
            str(tmp_path),
            server_name=name,
            registration={"terms": terms("2")},
            server_notices=NOTICES,
            **db,
        ) as server:
            alice.base_url = bob.base_url = server.base_url
            assert await server.hs.accounts.set_consent(bob.user_id, "2", server.hs.clock.time_ms())

            # Every kind of event alice would send is refused, with her consent link.
            uri = refused(*await send(alice, room, "blocked"))
            base = f"{server.config.baseurl}/_matrix/consent?"
            assert uri.startswith(base)
            query = parse_qs(urlsplit(uri).query)
            assert query["u"] == ["alice"] and len(query["h"]) == 1
            assert (
                refused(
                    *await alice.request(
                        "PUT", f"/rooms/{quote(room)}/state/m.room.topic", json={"topic": "x"}
                    )
                )
                == uri
            )
            joined_before = set((await alice.sync())["rooms"]["join"])
            assert refused(*await alice.request("POST", "/createRoom", json={"name": "new"})) == uri
            assert refused(*await alice.join(other)) == uri
            status, out = await alice.request(
                "POST", f"/rooms/{quote(room)}/invite", json={"user_id": bob.user_id}
            )
            assert refused(status, out) == uri
            # No room was half made; she may still leave a room, and read.
            assert set((await alice.sync())["rooms"]["join"]) == joined_before
            assert (await alice.request("POST", f"/rooms/{quote(bobs)}/leave", json={}))[0] == 200
            history = await alice.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b"})
            assert "before" in [e["content"].get("body") for e in history["chunk"]]

            # Her sync brings one server notice with the link, in her notices room.
            await synced(server, alice)
            invited = (await alice.sync())["rooms"]["invite"]
            assert len(invited) == 1, invited
            (notices_room,) = invited
            # The notices room stays usable: she joins it and reads the notice.
            assert (await alice.join(notices_room))[0] == 200
            assert await notice_bodies(server, alice, notices_room) == [NOTICE % {"consent_uri": uri}]
            # Typing and receipts are no events; in the room only the power levels refuse her.
            status, out = await alice.request(
                "PUT", f"/rooms/{quote(notices_room)}/typing/{quote(alice.user_id)}", json={"typing": False}
            )
            assert status == 200, out
            status, out = await send(alice, notices_room, "reply")
            assert status == 403 and out["errcode"] == "M_FORBIDDEN", out
            # Not again, however often she syncs; not to bob, who has accepted version 2.
            await synced(server, alice)
            await synced(server, alice)
            assert len(await notice_bodies(server, alice, notices_room)) == 1
            await synced(server, bob)
            assert (await bob.sync())["rooms"]["invite"] == {}
            assert (await send(bob, bobs, "fine"))[0] == 200

        # After a restart, still no second notice; still blocked.
        async with run_server(
            str(tmp_path),
            server_name=name,
            registration={"terms": terms("2")},
            server_notices=NOTICES,
            **db,
        ) as server:
            alice.base_url = bob.base_url = server.base_url
            await synced(server, alice)
            sync = await alice.sync()
            assert sync["rooms"]["invite"] == {}
            assert len(await notice_bodies(server, alice, notices_room)) == 1
            # The same link (the port of this test's server differs: its base URL with it).
            uri = refused(*await send(alice, room, "still blocked"))
            base = f"{server.config.baseurl}/_matrix/consent?"
            assert uri.startswith(base) and parse_qs(urlsplit(uri).query) == query

            # The consent page: the policies (in her language, escaped) and a form.
            async with http.get(uri, headers={"Accept-Language": "fr-CH, en;q=0.5"}) as resp:
                html = await resp.text()
                assert resp.status == 200, html
            assert "Conditions d&#x27;utilisation" in html and "Terms of Service" not in html
            assert "&lt;Community&gt; &amp; Rules" in html and "<Community>" not in html
            assert "https://example.org/rules?a=1&amp;b=2" in html
            assert '<form method="post"' in html and 'name="v" value="2"' in html
            form = {"u": query["u"][0], "h": query["h"][0]}
            # A form from version 1 records nothing: the page again, to accept anew.
            async with http.post(f"{base[:-1]}", data={**form, "v": "1"}) as resp:
                assert resp.status == 400 and "The terms have changed" in await resp.text()
            assert (await server.hs.accounts.get_consent(alice.user_id)) == ("1", "2", False)
            before = server.hs.clock.time_ms()
            async with http.post(f"{base[:-1]}", data={**form, "v": "2"}) as resp:
                assert resp.status == 200 and "Thank you" in await resp.text()
            user = await server.hs.accounts.get_user(alice.user_id)
            assert user is not None and user["consent_version"] == "2"
            assert isinstance(user["consent_ts"], int) and user["consent_ts"] >= before
            # The block lifts at once; the page says she has accepted.
            assert (await send(alice, room, "after"))[0] == 200
            assert (await alice.join(other))[0] == 200
            async with http.get(uri) as resp:
                html = await resp.text()
                assert resp.status == 200 and "You have accepted" in html and "<form" not in html


async def test_forged_links_are_refused(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(
        str(tmp_path), registration={"terms": terms("2")}, server_notices=NOTICES
    ) as server:
        alice = await make_user(server, http, "alice")
        await make_user(server, http, "mallory")
        room = await make_user(server, http, "owner", consent="2")
        room_id = await room.create_room(preset="public_chat")
        uri = refused(*await alice.join(room_id))
        h = parse_qs(urlsplit(uri).query)["h"][0]
        page = f"{server.base_url}/_matrix/consent"
        for params in (
            {"u": "alice"},
            {"u": "alice", "h": ""},
            {"u": "alice", "h": "A" * len(h)},
            {"u": "mallory", "h": h},  # alice's MAC for another user
            {"u": "@alice:elsewhere.example", "h": h},
            {"h": h},
        ):
            async with http.get(page, params=params) as resp:
                assert resp.status == 403, params
            async with http.post(page, data={**params, "v": "2"}) as resp:
                assert resp.status == 403, params
        assert (await server.hs.accounts.get_consent(f"@mallory:{server.server_name}")) == (None, None, False)
        # Her full user ID works as `u` too.
        async with http.get(page, params={"u": alice.user_id, "h": h}) as resp:
            assert resp.status == 200


async def test_exempt_users_and_other_workers(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    registration = write_registration(str(tmp_path), 0, url=None)
    async with run_server(
        str(tmp_path), registration={"terms": terms("2")}, server_notices=NOTICES, app_services=[registration]
    ) as server:
        # The service's bot and a user it registers in its namespace are never asked.
        service = RawClient(http, server.base_url, AS_TOKEN, f"@_bridge_bot:{server.server_name}")
        bridged_room = await service.create_room(preset="public_chat")
        out = await service.ok(
            "POST", "/register", json={"type": "m.login.application_service", "username": "_bridge_x"}
        )
        bridged = RawClient(http, server.base_url, out["access_token"], out["user_id"])
        assert (await bridged.join(bridged_room))[0] == 200
        assert (await send(bridged, bridged_room, "hello"))[0] == 200
        await synced(server, bridged)
        assert (await bridged.sync())["rooms"]["invite"] == {}

        # Nor the server notices user: an admin's notice reaches a user who has not accepted.
        admin = await make_user(server, http, "root")
        await server.hs.accounts.set_admin(admin.user_id, True)
        carol = await make_user(server, http, "carol")
        async with http.post(
            f"{server.base_url}/_synapse/admin/v1/send_server_notice",
            json={"user_id": carol.user_id, "content": {"msgtype": "m.text", "body": "hi"}},
            headers={"Authorization": f"Bearer {admin.token}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
        (notice_room,) = (await carol.sync())["rooms"]["invite"]
        assert (await carol.join(notice_room))[0] == 200
        # The admin himself has accepted nothing: his own events are refused.
        refused(*await admin.request("POST", "/createRoom", json={}))
        # The admin API acting as a user who has not accepted (here a join) is the admin's
        # doing, as in Synapse; that user's own requests are still refused.
        dave = await make_user(server, http, "dave")
        async with http.post(
            f"{server.base_url}/_synapse/admin/v1/join/{quote(bridged_room)}",
            json={"user_id": dave.user_id},
            headers={"Authorization": f"Bearer {admin.token}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
        refused(*await send(dave, bridged_room, "mine"))

        # Accepted elsewhere (another worker's page writes only the database): the next event
        # of hers finds it, as no refusal is remembered.
        refused(*await carol.join(bridged_room))
        assert await server.hs.accounts.set_consent(carol.user_id, "2", server.hs.clock.time_ms())
        assert (await carol.join(bridged_room))[0] == 200

        # Guests are not sent the notice (as Synapse).
        guest_id = f"@guest1:{server.server_name}"
        await server.hs.accounts.create_user(guest_id, None, server.hs.clock.time_ms(), is_guest=True)
        guest = await client(server, http, guest_id)
        await synced(server, guest)
        assert (await guest.sync())["rooms"]["invite"] == {}
        assert await server.hs.accounts.get_consent(guest_id) == (None, None, True)


async def test_blocking_off_refuses_nothing(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(
        str(tmp_path), registration={"terms": terms("2", block=False, notice=None)}, server_notices=NOTICES
    ) as server:
        # Nothing is asked per event, and no sync extension runs.
        assert server.hs.creator.consent is None
        assert not any(isinstance(s, ConsentNotices) for s in server.hs.background)
        dave = await make_user(server, http, "dave", consent="1")
        room = await dave.create_room(preset="public_chat")
        assert (await send(dave, room, "hi"))[0] == 200
        await dave.sync()
        assert (await dave.sync())["rooms"]["invite"] == {}
        # The page is there (a link without its MAC is refused).
        async with http.get(f"{server.base_url}/_matrix/consent", params={"u": "dave"}) as resp:
            assert resp.status == 403


async def test_blocking_follows_the_current_terms(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """What is asked is the terms in the config now (tests swap them): a user who accepted
    the version in force is remembered for it only."""
    async with run_server(str(tmp_path), registration={"terms": terms("2")}) as server:
        frank = await make_user(server, http, "frank", consent="2")
        room = await frank.create_room(preset="public_chat")
        assert (await send(frank, room, "v2"))[0] == 200
        server.hs.config.registration.terms = TermsConfig("3", POLICIES, block_events_until_consent=True)
        refused(*await send(frank, room, "v3"))
        server.hs.config.registration.terms = TermsConfig("3", POLICIES)
        assert (await send(frank, room, "unblocked"))[0] == 200


async def test_the_notice_needs_server_notices(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(str(tmp_path), registration={"terms": terms("2", block=False)}) as server:
        assert not any(isinstance(s, ConsentNotices) for s in server.hs.background)
        erin = await make_user(server, http, "erin")
        await erin.sync()
        assert (await erin.sync())["rooms"]["invite"] == {}


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"block_events_until_consent": "yes"}, "registration.terms.block_events_until_consent"),
        ({"block_events_until_consent": 1}, "registration.terms.block_events_until_consent"),
        ({"server_notice": ""}, "registration.terms.server_notice"),
        ({"server_notice": {"body": "x"}}, "registration.terms.server_notice"),
        ({"block_events_error": "x"}, "registration.terms: expected a mapping"),
    ],
)
def test_config_errors(extra: dict[str, Any], error: str) -> None:
    data = {
        "server_name": "example.org",
        "registration": {"terms": {"version": "1", "policies": POLICIES, **extra}},
    }
    with pytest.raises(ConfigError, match=error):
        config_from_dict(data)


def test_config_defaults() -> None:
    data = {"server_name": "example.org", "registration": {"terms": {"version": "1", "policies": POLICIES}}}
    checked = config_from_dict(data).registration.terms
    assert checked is not None
    assert checked.block_events_until_consent is False and checked.server_notice is None
    data["registration"]["terms"].update(block_events_until_consent=True, server_notice=NOTICE)  # type: ignore[index]
    checked = config_from_dict(data).registration.terms
    assert checked is not None and checked.block_events_until_consent and checked.server_notice == NOTICE


async def test_federated_joins_invites_and_knocks(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Joins, invites and knocks that go over federation (built without the event creator)
    are asked too."""
    ca = make_ca(str(tmp_path / "ca"))
    async with (
        fed_server(str(tmp_path / "a"), ca, registration={"terms": terms("2", notice=None)}) as a,
        fed_server(str(tmp_path / "b"), ca) as b,
    ):
        alice = await make_user(a, http, "alice", consent="2")
        room = await alice.create_room(preset="public_chat")
        bob = await make_user(b, http, "bob")
        remote = await bob.create_room(preset="public_chat")
        knockable = await bob.create_room(room_version="10", initial_state=[KNOCK_RULE])
        # Version 3 is published: alice has accepted only version 2.
        a.hs.config.registration.terms = TermsConfig("3", POLICIES, block_events_until_consent=True)
        uri = refused(*await alice.request("POST", f"/join/{quote(remote)}", params={"via": b.server_name}))
        status, out = await alice.request(
            "POST", f"/rooms/{quote(room)}/invite", json={"user_id": bob.user_id}
        )
        assert refused(status, out) == uri
        status, out = await alice.request("POST", f"/knock/{quote(knockable)}", params={"via": b.server_name})
        assert refused(status, out) == uri
        assert await a.hs.events.get_membership(remote, alice.user_id) is None
        # Accepted: over federation she joins.
        assert await a.hs.accounts.set_consent(alice.user_id, "3", a.hs.clock.time_ms())
        status, out = await alice.request("POST", f"/join/{quote(remote)}", params={"via": b.server_name})
        assert status == 200, out


async def test_the_notice_reaches_sliding_sync_users(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Element X syncs with sliding sync only: its requests count as syncing too."""
    config = {"registration": {"terms": terms("2")}, "server_notices": NOTICES}
    async with run_server(str(tmp_path), **config) as server:
        erin = await make_user(server, http, "erin")
        path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
        lists = {"all": {"ranges": [[0, 9]], "timeline_limit": 1}}
        await erin.ok("POST", path, json={"lists": lists}, params={"timeout": "0"})
        await notices_of(server).settled()
        (notice_room,) = (await erin.sync())["rooms"]["invite"]
        assert (await erin.join(notice_room))[0] == 200
        [body] = await notice_bodies(server, erin, notice_room)
        assert "/_matrix/consent?u=erin&h=" in body
