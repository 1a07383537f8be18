"""Email notifications (pushers of kind "email", as Synapse's email pusher), end to end: a
real server emails a real SMTP server (tests/support/smtp.py). The sender's clock is a
FakeClock the test moves, and each pass is run by the test (`run_once`), so nothing waits
on real time."""

from __future__ import annotations

import asyncio
import html
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import pytest

from homeserver.config import ConfigError, config_from_dict
from homeserver.handlers.cs_services import CS_KEY
from homeserver.handlers.email_notifs import (
    MAX_NOTIFS_PER_EMAIL,
    EmailNotifier,
    MessageLine,
    RoomSummary,
    compose,
    unsubscribe_headers,
)
from tests.integration.test_email_registration import email_auth, start, validated
from tests.security.support import FakeClock
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server
from tests.support.smtp import APP_NAME, SENDER, email_config, smtp_server

FROM = SENDER
APP = APP_NAME
CLIENT = "https://chat.example.org"
THROTTLE_MS = 600_000
ALICE_EMAIL = "alice@example.org"


async def client(
    srv: RunningServer, http: aiohttp.ClientSession, name: str, admin: bool = False
) -> RawClient:
    user_id = await srv.register(name, admin=admin)
    token, _ = await srv.hs.auth.create_session(user_id, None, None)
    return RawClient(http, srv.base_url, token, user_id)


async def set_threepids(root: RawClient, user_id: str, addresses: list[str]) -> None:
    """Through the admin API (RawClient would put the client API's prefix on the path)."""
    body = {"threepids": [{"medium": "email", "address": a} for a in addresses]}
    url = f"{root.base_url}/_synapse/admin/v2/users/{quote(user_id)}"
    async with root.session.put(url, json=body, headers={"Authorization": f"Bearer {root.token}"}) as resp:
        assert resp.status == 200, await resp.text()


def notifier_on_a_fake_clock(srv: RunningServer) -> tuple[EmailNotifier, FakeClock]:
    """The server's email notifier, its clock replaced by one the test moves."""
    notifier = srv.runner.app[CS_KEY].email_notifier
    assert isinstance(notifier, EmailNotifier)
    notifier.clock = clock = FakeClock(time.time())
    return notifier, clock


def email_pusher(address: str) -> dict[str, Any]:
    return {
        "kind": "email",
        "app_id": "m.email",
        "pushkey": address,
        "app_display_name": "Email Notifications",
        "device_display_name": address,
        "lang": "en",
        "data": {},
    }


async def setup(
    srv: RunningServer, http: aiohttp.ClientSession
) -> tuple[RawClient, RawClient, RawClient, str]:
    """An admin, alice (with a validated address) and bob in bob's room; returns (root, alice,
    bob, room)."""
    root = await client(srv, http, "root", admin=True)
    alice = await client(srv, http, "alice")
    bob = await client(srv, http, "bob")
    await set_threepids(root, alice.user_id, [ALICE_EMAIL])
    await bob.ok("PUT", f"/profile/{quote(bob.user_id)}/displayname", json={"displayname": "Bob & <Co>"})
    room = await bob.room_with(alice, name="Tea & <Cakes>")
    return root, alice, bob, room


async def test_summary_once_throttled_read_and_encrypted(tmp_path: Path) -> None:
    async with smtp_server() as sink:
        email = email_config(
            sink, enable_notifs=True, notif_delay_ms=200, notif_throttle_ms=THROTTLE_MS,
            client_base_url=CLIENT + "/",
        )  # fmt: skip
        async with run_server(str(tmp_path), email=email) as srv, aiohttp.ClientSession() as http:
            notifier, clock = notifier_on_a_fake_clock(srv)
            root, alice, bob, room = await setup(srv, http)

            # Only an address validated on the account may be a pushkey (as Synapse).
            status, out = await alice.request("POST", "/pushers/set", json=email_pusher("else@example.org"))
            assert (status, out["errcode"]) == (400, "M_THREEPID_NOT_FOUND"), out
            await alice.ok("POST", "/pushers/set", json=email_pusher(ALICE_EMAIL))

            # A message: nothing before the delay has passed, then one summary.
            body = "<script>alert(1)</script> tea & biscuits?"
            first = await bob.send(room, body, "t1")
            assert await notifier.run_once() == 0
            clock.now = time.time() + 1
            # Sent by the server's own timer (a pass every 0.1 s here), within the deadline.
            mail = await sink.wait_for(1, timeout=10.0)
            assert mail.rcpt_tos == [ALICE_EMAIL]
            subject = str(mail.message["Subject"])
            assert subject.startswith(f"[{APP}]") and "Bob & <Co>" in subject and "Tea & <Cakes>" in subject
            assert body in mail.text and "Bob & <Co>" in mail.text and "Tea & <Cakes>" in mail.text
            assert f"{CLIENT}/#/room/{room}" in mail.text
            assert html.escape(body) in mail.html and "<script>" not in mail.html
            assert html.escape("Bob & <Co>") in mail.html and html.escape("Tea & <Cakes>") in mail.html
            assert html.escape(f"{CLIENT}/#/room/{room}/{first}") in mail.html
            sent_at = clock.now

            # Not again for the same message, however long it stays unread.
            clock.now += 2 * THROTTLE_MS / 1000
            assert await notifier.run_once() == 0
            assert len(sink.messages) == 1

            # Read before it was due: never emailed.
            clock.now = sent_at + 1
            read = await bob.send(room, "already read", "t2")
            await alice.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(read)}", json={})
            clock.now = sent_at + THROTTLE_MS / 1000 + 2
            assert await notifier.run_once() == 0
            assert len(sink.messages) == 1

            # An encrypted message: named, never shown (the server cannot read it anyway).
            secret = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "CIPHERTEXT-XYZ", "session_id": "s"}
            await bob.ok("PUT", f"/rooms/{quote(room)}/send/m.room.encrypted/t3", json=secret)
            await notifier.run_once()
            mail = await sink.wait_for(2)
            assert "an encrypted message" in mail.text and "an encrypted message" in mail.html
            for part in (mail.text, mail.html):
                assert "CIPHERTEXT-XYZ" not in part and "already read" not in part and "tea &" not in part
            second_at = clock.now

            # Throttled: a newer message waits until notif_throttle_ms after the last email.
            await bob.send(room, "third one", "t4")
            clock.now = second_at + 1
            assert await notifier.run_once() == 0
            assert len(sink.messages) == 2
            clock.now = second_at + THROTTLE_MS / 1000 + 1
            await notifier.run_once()
            mail = await sink.wait_for(3)
            assert "third one" in mail.text and "an encrypted message" not in mail.text

            # The address is taken off the account: its pusher goes, and no email is sent.
            await set_threepids(root, alice.user_id, [])
            await bob.send(room, "fourth", "t5")
            clock.now += 2 * THROTTLE_MS / 1000
            assert await notifier.run_once() == 0
            assert len(sink.messages) == 3
            assert (await alice.ok("GET", "/pushers"))["pushers"] == []


async def test_a_refused_recipient_holds_up_no_one(tmp_path: Path) -> None:
    """The SMTP server refuses alice's address for good (550 to RCPT): carol, after her in
    the pass, is still emailed, and alice's message is not offered again each pass."""
    async with smtp_server() as sink:
        sink.refused.add(ALICE_EMAIL)
        email = email_config(sink, enable_notifs=True, notif_delay_ms=60_000, notif_throttle_ms=THROTTLE_MS)
        async with run_server(str(tmp_path), email=email) as srv, aiohttp.ClientSession() as http:
            notifier, clock = notifier_on_a_fake_clock(srv)
            root, alice, bob, room = await setup(srv, http)
            carol = await client(srv, http, "carol")
            assert alice.user_id < carol.user_id  # alice comes first in a pass
            await set_threepids(root, carol.user_id, ["carol@example.org"])
            assert (await carol.join(room))[0] == 200
            for user, address in ((alice, ALICE_EMAIL), (carol, "carol@example.org")):
                await user.ok("POST", "/pushers/set", json=email_pusher(address))

            await bob.send(room, "anyone for tea?", "t1")
            clock.now = time.time() + 61
            await notifier.run_once()
            mail = await sink.wait_for(1)
            assert mail.rcpt_tos == ["carol@example.org"] and "anyone for tea?" in mail.text
            assert sink.refusals == [ALICE_EMAIL]

            # Refused for good: not offered again on the next passes (nor is carol's sent twice).
            for _ in range(3):
                clock.now += 61
                await notifier.run_once()
            assert sink.refusals == [ALICE_EMAIL] and len(sink.messages) == 1

            # Throttled as if sent: a newer message is tried once the throttle has passed.
            await bob.send(room, "second pot", "t2")
            clock.now += 61
            await notifier.run_once()
            assert sink.refusals == [ALICE_EMAIL] and len(sink.messages) == 1
            clock.now += THROTTLE_MS / 1000
            await notifier.run_once()
            mail = await sink.wait_for(2)
            assert mail.rcpt_tos == ["carol@example.org"] and "second pot" in mail.text
            assert sink.refusals == [ALICE_EMAIL, ALICE_EMAIL]


async def test_a_busy_room_is_emailed(tmp_path: Path) -> None:
    """More notifications than one email shows keep arriving within the delay: the oldest is
    due, so the email goes out (with the newest)."""
    delay_ms = 60_000
    async with smtp_server() as sink:
        email = email_config(sink, enable_notifs=True, notif_delay_ms=delay_ms, notif_throttle_ms=THROTTLE_MS)
        async with run_server(str(tmp_path), email=email) as srv, aiohttp.ClientSession() as http:
            notifier, clock = notifier_on_a_fake_clock(srv)
            _, alice, bob, room = await setup(srv, http)
            await alice.ok("POST", "/pushers/set", json=email_pusher(ALICE_EMAIL))

            first = await bob.send(room, "message 0", "t0")
            event = await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(first)}")
            first_ts = event["origin_server_ts"]
            await asyncio.sleep(0.05)  # the others arrive later
            for i in range(1, MAX_NOTIFS_PER_EMAIL + 5):
                await bob.send(room, f"message {i}", f"t{i}")
            clock.now = (first_ts + delay_ms - 1.5) / 1000
            assert await notifier.run_once() == 0
            # Only the first is past the delay.
            clock.now = (first_ts + delay_ms + 0.5) / 1000
            assert await notifier.run_once() == 1
            mail = await sink.wait_for(1)
            assert mail.rcpt_tos == [ALICE_EMAIL]
            last = MAX_NOTIFS_PER_EMAIL + 4
            assert f"message {last}" in mail.text and f"message {last - 1}" in mail.text
            assert "message 0\n" not in mail.text


async def test_notifications_off_by_default(tmp_path: Path) -> None:
    async with (
        smtp_server() as sink,
        run_server(str(tmp_path), email=email_config(sink)) as srv,
        aiohttp.ClientSession() as http,
    ):
        # No sender at all: email pushers are stored, nothing is sent.
        assert srv.runner.app[CS_KEY].email_notifier is None
        _, alice, bob, room = await setup(srv, http)
        status, out = await alice.request("POST", "/pushers/set", json=email_pusher("else@example.org"))
        assert (status, out["errcode"]) == (400, "M_THREEPID_NOT_FOUND"), out
        await alice.ok("POST", "/pushers/set", json=email_pusher(ALICE_EMAIL))
        await bob.send(room, "hello", "t1")
        pushers = (await alice.ok("GET", "/pushers"))["pushers"]
        assert [(p["kind"], p["pushkey"]) for p in pushers] == [("email", ALICE_EMAIL)]
        assert sink.messages == []
        # The address leaves the account: its pusher goes with it (as in Synapse).
        gone = {"medium": "email", "address": ALICE_EMAIL.upper()}
        await alice.ok("POST", "/account/3pid/delete", json=gone)
        assert (await alice.ok("GET", "/pushers"))["pushers"] == []


async def test_email_pushers_are_stored_when_email_is_off(tmp_path: Path) -> None:
    async with run_server(str(tmp_path)) as srv, aiohttp.ClientSession() as http:
        alice = await client(srv, http, "alice")
        await alice.ok("POST", "/pushers/set", json=email_pusher("anyone@example.org"))
        pushers = (await alice.ok("GET", "/pushers"))["pushers"]
        assert [(p["kind"], p["pushkey"]) for p in pushers] == [("email", "anyone@example.org")]


async def pushers_of(user: RawClient) -> list[tuple[str, str, str]]:
    return [(p["kind"], p["app_id"], p["pushkey"]) for p in (await user.ok("GET", "/pushers"))["pushers"]]


async def open_page(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, str]:
    async with http.request(method, url, **kw) as resp:
        return resp.status, await resp.text()


def with_query(link: str, **changes: str) -> str:
    """`link` with some of its query parameters replaced."""
    parts = urlsplit(link)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return parts._replace(query=urlencode({**query, **changes})).geturl()


async def test_unsubscribe_link(tmp_path: Path) -> None:
    """Each email links to a page that turns the notifications off without signing in (and
    names it in List-Unsubscribe, with RFC 8058's one-click POST). GET only asks; POST
    unsubscribes; a token changed in any way unsubscribes no one."""
    async with smtp_server() as sink:
        email = email_config(sink, enable_notifs=True, notif_delay_ms=60_000, notif_throttle_ms=THROTTLE_MS)
        async with run_server(str(tmp_path), email=email) as srv, aiohttp.ClientSession() as http:
            notifier, clock = notifier_on_a_fake_clock(srv)
            _, alice, bob, room = await setup(srv, http)
            await alice.ok("POST", "/pushers/set", json=email_pusher(ALICE_EMAIL))
            mine = [("email", "m.email", ALICE_EMAIL)]

            async def next_mail(n: int) -> Any:
                await bob.send(room, f"message {n}", f"t{n}")
                clock.now += 2 * THROTTLE_MS / 1000
                assert await notifier.run_once() == 1
                return await sink.wait_for(n)

            mail = await next_mail(1)
            found = re.findall(r"Unsubscribe: (\S+)", mail.text)
            assert len(found) == 1, mail.text
            link = found[0]
            assert link.startswith(f"{srv.base_url}/_synapse/client/unsubscribe?access_token=")
            query = parse_qs(urlsplit(link).query)
            assert query["app_id"] == ["m.email"] and query["pushkey"] == [ALICE_EMAIL]
            assert f'<a href="{html.escape(link)}">Unsubscribe</a>' in mail.html
            assert mail.message["List-Unsubscribe"] == f"<{link}>"
            # One-click (RFC 8058) is offered for https links only; this test server is http.
            assert mail.message["List-Unsubscribe-Post"] is None

            # Opening the link (a person, or a mail scanner) only asks.
            status, page = await open_page(http, "GET", link)
            assert status == 200 and '<form method="post">' in page and ALICE_EMAIL in page, page
            assert await pushers_of(alice) == mine

            # Changed in any way: 400, and nothing is removed (neither GET nor POST).
            token = query["access_token"][0]
            flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
            payload, _, mac = token.partition(".")
            tampered = [
                with_query(link, pushkey="bob@example.org"),
                with_query(link, pushkey=ALICE_EMAIL.upper()),
                with_query(link, app_id="m.other"),
                with_query(link, access_token=flipped),
                with_query(link, access_token=payload),
                with_query(link, access_token="." + mac),
                with_query(link, access_token=""),
                link.partition("&")[0],
            ]
            for bad in tampered:
                for method in ("GET", "POST"):
                    status, page = await open_page(http, method, bad, data="List-Unsubscribe=One-Click")
                    assert status == 400 and "not valid" in page, (method, bad, page)
                    assert token not in page and "<form" not in page
            assert await pushers_of(alice) == mine

            # The page's button posts to the same URL: unsubscribed, and no more emails.
            _, form = await open_page(http, "GET", link)
            fields = dict(re.findall(r'name="([\w-]+)" value="([^"]*)"', form))
            assert fields == {"List-Unsubscribe": "One-Click"}, form
            status, page = await open_page(http, "POST", link, data=fields)
            assert status == 200 and "unsubscribed" in page, page
            assert await pushers_of(alice) == []
            await bob.send(room, "after unsubscribing", "t-after")
            clock.now += 2 * THROTTLE_MS / 1000
            assert await notifier.run_once() == 0
            assert len(sink.messages) == 1
            # Again: still fine (already unsubscribed).
            status, page = await open_page(http, "POST", link, data=fields)
            assert status == 200 and "unsubscribed" in page, page

            # Turned on again (two pushers for the address, one typed otherwise); a mail
            # client's one-click POST to List-Unsubscribe turns both off.
            await alice.ok("POST", "/pushers/set", json=email_pusher(ALICE_EMAIL))
            other = {**email_pusher(ALICE_EMAIL.upper()), "app_id": "org.example.mail", "append": True}
            await alice.ok("POST", "/pushers/set", json=other)
            mail = await next_mail(2)
            header = str(mail.message["List-Unsubscribe"])
            assert header.startswith("<") and header.endswith(">")
            one_click = header[1:-1]
            status, _ = await open_page(
                http,
                "POST",
                one_click,
                data=b"List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert status == 200
            assert await pushers_of(alice) == []
            await bob.send(room, "after one click", "t-click")
            clock.now += 2 * THROTTLE_MS / 1000
            assert await notifier.run_once() == 0
            assert len(sink.messages) == 2


async def register_with_email(
    http: aiohttp.ClientSession, srv: RunningServer, sink: Any, name: str, address: str
) -> RawClient:
    """A new account registered through the email stage of POST /register."""
    raw = RawClient(http, srv.base_url)
    body = await start(raw, name)
    creds = await validated(http, srv, sink, address, f"secret-{name}")
    status, out = await raw.request("POST", "/register", json={"auth": email_auth(creds, body["session"])})
    assert status == 200, out
    return RawClient(http, srv.base_url, out["access_token"], out["user_id"])


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"enable_notifs": True}, True),  # notif_for_new_users is on by default, as in Synapse
        ({"enable_notifs": True, "notif_for_new_users": False}, False),
        ({"notif_for_new_users": True}, False),  # only with enable_notifs
    ],
)
async def test_notif_for_new_users(tmp_path: Path, settings: dict[str, Any], expected: bool) -> None:
    async with smtp_server() as sink:
        async with (
            run_server(str(tmp_path), email=email_config(sink, **settings)) as srv,
            aiohttp.ClientSession() as http,
        ):
            alice = await register_with_email(http, srv, sink, "alice", "Alice@Example.org")
            pushers = (await alice.ok("GET", "/pushers"))["pushers"]
            if not expected:
                assert pushers == []
                return
            assert pushers == [
                {
                    "kind": "email",
                    "app_id": "m.email",
                    "pushkey": ALICE_EMAIL,
                    "app_display_name": "Email Notifications",
                    "device_display_name": ALICE_EMAIL,
                    "lang": "en",
                    "data": {},
                }
            ]
            # Not tied to the device that registered: signing it out keeps the pusher.
            await alice.ok("POST", "/logout", json={})
            other = await client_of(srv, http, alice.user_id)
            assert await pushers_of(other) == [("email", "m.email", ALICE_EMAIL)]
            # Registered without the email stage: no pusher.
            raw = RawClient(http, srv.base_url)
            body = await start(raw, "bob")
            auth = {"type": "m.login.dummy", "session": body["session"]}
            status, out = await raw.request("POST", "/register", json={"auth": auth})
            assert status == 200, out
            bob = RawClient(http, srv.base_url, out["access_token"], out["user_id"])
            assert await pushers_of(bob) == []


async def client_of(srv: RunningServer, http: aiohttp.ClientSession, user_id: str) -> RawClient:
    token, _ = await srv.hs.auth.create_session(user_id, None, None)
    return RawClient(http, srv.base_url, token, user_id)


def test_summary_of_several_rooms() -> None:
    named = RoomSummary("Garden", True, "https://c/#/room/!a:x", senders=["Carol"])
    named.messages.append(MessageLine("Carol", "<b>hi</b>", "https://c/#/room/!a:x/$e"))
    named.more = 2
    unnamed = RoomSummary("Dan", False, "https://c/#/room/!b:x", senders=["Dan"])
    unnamed.messages.append(MessageLine("Dan", "an encrypted message", "https://c/#/room/!b:x/$f"))
    mail = compose(APP, "Alice", "https://c", [named, unnamed])
    assert mail.subject == f"[{APP}] You have messages on {APP} in the Garden room and others..."
    assert "You have 4 unread notifications" in mail.text and "and 2 more" in mail.text
    assert "&lt;b&gt;hi&lt;/b&gt;" in mail.html and "<b>hi</b>" not in mail.html
    only_dan = compose(APP, "Alice", "https://c", [unnamed])
    assert only_dan.subject == f"[{APP}] You have a message on {APP} from Dan..."


def test_config_is_checked() -> None:
    base = {"server_name": "example.org"}
    good = {"enabled": True, "notif_from": FROM, "enable_notifs": True}
    email = config_from_dict({**base, "email": good}).email
    assert (email.notif_delay_ms, email.notif_throttle_ms) == (600_000, 3_600_000)
    assert email.client_base_url == "https://app.element.io"
    assert email.notif_for_new_users is True
    bad = [
        ({"notif_from": FROM, "enable_notifs": True}, "needs email.enabled"),
        ({**good, "enable_notifs": "yes"}, "enable_notifs"),
        ({**good, "notif_delay_ms": -1}, "notif_delay_ms"),
        ({**good, "notif_throttle_ms": "1h"}, "notif_throttle_ms"),
        ({**good, "client_base_url": "app.element.io"}, "client_base_url"),
        ({**good, "notif_for_new_users": "no"}, "notif_for_new_users"),
    ]
    for email_cfg, message in bad:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({**base, "email": email_cfg})


def test_unsubscribe_headers() -> None:
    https = "https://matrix.example.org/_synapse/client/unsubscribe?access_token=t&app_id=m.email&pushkey=a"
    assert unsubscribe_headers(https) == {
        "List-Unsubscribe": f"<{https}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert unsubscribe_headers(https.replace("https:", "http:")) == {
        "List-Unsubscribe": f"<{https.replace('https:', 'http:')}>"
    }
    # Too long for one SMTP header line (a long app ID and address): no header, the footer
    # link still works.
    assert unsubscribe_headers(https + "x" * 1000) == {}
