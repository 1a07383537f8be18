"""`sotto admin …` drives the admin API of a running server with an admin token."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from typing import Any

import aiohttp
import pytest

from homeserver.cli import main
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
