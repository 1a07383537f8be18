"""`sotto admin …` drives the admin API of a running server with an admin token."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from homeserver.admin_cli import ApiError, _wait_for_redaction
from homeserver.cli import main
from homeserver.config import Config
from tests.support.server import RunningServer


def write_config(server: RunningServer, tmp_path: Any) -> str:
    path = os.path.join(str(tmp_path), "cli.yaml")
    with open(path, "w") as f:
        f.write(
            f'server_name: "{server.server_name}"\n'
            f"listener:\n  bind_address: 127.0.0.1\n  port: {server.config.listener.port}\n"
        )
    return path


async def run_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str], stdin: str = ""
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


async def test_admin_cli(
    server: RunningServer,
    http: aiohttp.ClientSession,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = write_config(server, tmp_path)
    await server.register("root", password="rootpw", admin=True)
    bob = await server.register("bob")
    monkeypatch.delenv("SOTTO_ADMIN_TOKEN", raising=False)

    code, _, err = await run_cli(capsys, monkeypatch, ["admin", "users", "--config", cfg])
    assert code == 1 and "SOTTO_ADMIN_TOKEN" in err

    code, out, _ = await run_cli(
        capsys, monkeypatch, ["admin", "login", "root", "--password-stdin", "--config", cfg], "rootpw\n"
    )
    assert code == 0
    token = out.strip()
    monkeypatch.setenv("SOTTO_ADMIN_TOKEN", token)

    code, out, _ = await run_cli(capsys, monkeypatch, ["admin", "users", "--config", cfg])
    assert code == 0
    assert {u["name"] for u in json.loads(out)["users"]} == {bob, f"@root:{server.server_name}"}

    code, out, _ = await run_cli(capsys, monkeypatch, ["admin", "user", "bob", "--config", cfg])
    assert code == 0 and json.loads(out)["name"] == bob

    code, out, _ = await run_cli(
        capsys,
        monkeypatch,
        ["admin", "reset-password", "bob", "--password-stdin", "--config", cfg],
        "fresh\n",
    )
    assert code == 0
    assert await server.hs.passwords.check(
        "fresh", str((await server.hs.accounts.get_user(bob) or {})["password_hash"])
    )

    token_b, _ = await server.hs.auth.create_session(bob, None, None)
    async with http.post(
        f"{server.base_url}/_matrix/client/v3/createRoom",
        json={"name": "CLI room"},
        headers={"Authorization": f"Bearer {token_b}"},
    ) as resp:
        room_id = (await resp.json())["room_id"]
    code, out, _ = await run_cli(capsys, monkeypatch, ["admin", "rooms", "--config", cfg])
    assert code == 0 and [r["name"] for r in json.loads(out)["rooms"]] == ["CLI room"]
    code, out, _ = await run_cli(capsys, monkeypatch, ["admin", "room", room_id, "--config", cfg])
    assert code == 0 and json.loads(out)["joined_members"] == 1
    code, out, _ = await run_cli(capsys, monkeypatch, ["admin", "delete-room", room_id, "--config", cfg])
    assert code == 0 and json.loads(out)["kicked_users"] == [bob]

    for verb, flag, value in (
        ("lock", "locked", True),
        ("unlock", "locked", False),
        ("suspend", "suspended", True),
        ("unsuspend", "suspended", False),
    ):
        code, out, _ = await run_cli(capsys, monkeypatch, ["admin", verb, "bob", "--config", cfg])
        assert code == 0 and json.loads(out) == {flag: value}
        assert (await server.hs.accounts.get_moderation(bob) or {})[flag] is value

    code, out, _ = await run_cli(capsys, monkeypatch, ["admin", "deactivate", "bob", "--config", cfg])
    assert code == 0
    assert (await server.hs.accounts.get_user(bob) or {})["deactivated"]

    code, _, err = await run_cli(capsys, monkeypatch, ["admin", "user", "nobody", "--config", cfg])
    assert code == 1 and "M_NOT_FOUND" in err

    # A non-admin's token is refused.
    monkeypatch.setenv("SOTTO_ADMIN_TOKEN", "not-a-token")
    code, _, err = await run_cli(capsys, monkeypatch, ["admin", "server-version", "--config", cfg])
    assert code == 1 and "M_UNKNOWN_TOKEN" in err


async def test_admin_cli_moderation(
    server: RunningServer,
    http: aiohttp.ClientSession,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spammer's messages redacted (waiting for the job), media quarantined and released,
    a room given a new admin: the moderation actions an operator runs from a shell."""
    cfg = write_config(server, tmp_path)
    root = await server.register("root", admin=True)
    alice = await server.register("alice")
    spammer = await server.register("spammer")
    root_token, _ = await server.hs.auth.create_session(root, None, None)
    monkeypatch.setenv("SOTTO_ADMIN_TOKEN", root_token)
    tokens = {u: (await server.hs.auth.create_session(u, None, None))[0] for u in (alice, spammer)}

    async def call(user: str, method: str, path: str, body: Any = None) -> Any:
        async with http.request(
            method, server.base_url + path, json=body, headers={"Authorization": f"Bearer {tokens[user]}"}
        ) as resp:
            assert resp.status == 200, (path, await resp.text())
            return await resp.json()

    async def cli(*argv: str) -> Any:
        code, out, err = await run_cli(capsys, monkeypatch, ["admin", *argv, "--config", cfg])
        assert code == 0, err
        return json.loads(out)

    room = (await call(alice, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}))["room_id"]
    await call(spammer, "POST", f"/_matrix/client/v3/join/{room}", {})
    spam = [
        (
            await call(
                spammer, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/s{i}", {"body": "buy"}
            )
        )["event_id"]
        for i in range(3)
    ]
    done = await cli("redact-user", "spammer", "--reason", "spam", "--wait")
    assert (done["status"], done["failed_redactions"]) == ("complete", {})
    for event_id in spam:
        event = await call(alice, "GET", f"/_matrix/client/v3/rooms/{room}/event/{event_id}")
        assert event["content"] == {} and event["unsigned"]["redacted_because"]["sender"] == spammer

    async with http.post(
        f"{server.base_url}/_matrix/media/v3/upload",
        data=b"spam picture",
        headers={"Authorization": f"Bearer {tokens[spammer]}", "Content-Type": "text/plain"},
    ) as resp:
        mxc = (await resp.json())["content_uri"]

    async def download_status() -> int:
        path = "/_matrix/client/v1/media/download/" + mxc.removeprefix("mxc://")
        async with http.get(
            server.base_url + path, headers={"Authorization": f"Bearer {tokens[alice]}"}
        ) as resp:
            return resp.status

    assert await cli("quarantine", "--media", mxc) == {}
    assert await download_status() == 404
    assert await cli("quarantine", "--media", mxc, "--release") == {}
    assert await download_status() == 200
    assert await cli("quarantine", "--user", "spammer") == {"num_quarantined": 1}
    assert await download_status() == 404
    code, _, err = await run_cli(
        capsys, monkeypatch, ["admin", "quarantine", "--room", room, "--release", "--config", cfg]
    )
    assert code == 1 and "--release" in err

    assert await cli("make-room-admin", room, "spammer") == {}
    levels = await call(alice, "GET", f"/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/")
    assert levels["users"][spammer] == 100  # alice created the room: she outranks everyone


async def test_waiting_for_a_redaction_rides_over_other_workers(aiohttp_server: Any) -> None:
    """Behind a load balancer a status poll may reach a worker that did not start the job
    (404): `--wait` asks again, and gives up only after many misses in a row."""
    answers = [404, 404, 200]

    async def status(_request: web.Request) -> web.Response:
        code = answers.pop(0) if answers else 404
        if code == 404:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "unknown"}, status=404)
        return web.json_response({"status": "complete", "failed_redactions": {}})

    app = web.Application()
    app.router.add_get("/_synapse/admin/v1/user/redact_status/{redact_id}", status)
    srv = await aiohttp_server(app)
    config = cast(Config, SimpleNamespace(baseurl=str(srv.make_url("")).rstrip("/")))
    done = await _wait_for_redaction(config, "token", "job1", lambda _line: None, poll_s=0)
    assert done == {"redact_id": "job1", "status": "complete", "failed_redactions": {}}
    with pytest.raises(ApiError) as e:
        await _wait_for_redaction(config, "token", "job2", lambda _line: None, poll_s=0)
    assert e.value.status == 404
