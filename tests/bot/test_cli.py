"""`sotto-bot` as a real subprocess against a real Sotto server, with a nio user on the other side."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from nio import RoomMessageText

from tests.bot.js_peer import js_client
from tests.bot.peer import Peer
from tests.support.server import RunningServer

Peers = Callable[[str], Awaitable[Peer]]
ROOT = Path(__file__).resolve().parents[2]


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []
        self.stdout: list[str] = []

    async def line_matching(self, stream: str, needle: str, seconds: float = 30.0) -> str:
        reader = self.proc.stdout if stream == "stdout" else self.proc.stderr
        store = self.stdout if stream == "stdout" else self.stderr
        assert reader is not None
        for line in store:
            if needle in line:
                return line
        async with asyncio.timeout(seconds):
            while True:
                raw = await reader.readline()
                if not raw:
                    raise AssertionError(f"{stream} closed without {needle!r}: {store}")
                line = raw.decode()
                store.append(line)
                if needle in line:
                    return line

    async def finish(self, seconds: float = 30.0) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), seconds)
        assert self.proc.returncode is not None
        return self.proc.returncode, "".join(self.stdout) + out.decode(), "".join(self.stderr) + err.decode()


@asynccontextmanager
async def sotto_bot(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Proc]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clients.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SOTTO_BOT_SYNC_TIMEOUT_MS": "500", **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Proc(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with sotto_bot(*args, env=env) as proc:
        return await proc.finish()


async def login_bot(server: RunningServer, tmp_path: Path) -> tuple[str, str]:
    await server.register("bot", "bot-password")
    password_file = tmp_path / "password"
    password_file.write_text("bot-password\n")
    store = str(tmp_path / "cli-store")
    user_id = f"@bot:{server.server_name}"
    rc, out, err = await run_cli(
        "login",
        "--homeserver",
        server.base_url,
        "--user",
        user_id,
        "--password-file",
        str(password_file),
        "--store",
        store,
    )
    assert rc == 0, err
    assert f"logged in as {user_id}" in out and "cross-signing master key:" in out
    # The password itself never reaches the store or the output.
    assert "bot-password" not in out + err
    assert not files_containing(Path(store), b"bot-password")
    return store, user_id


async def test_login_send_listen_and_run(server: RunningServer, tmp_path: Path, peers: Peers) -> None:
    store, bot_id = await login_bot(server, tmp_path)
    alice = await peers("alice")
    room = await alice.create_room([bot_id])

    # send: joins the room it was invited to, then sends encrypted markdown.
    rc, out, err = await run_cli("send", room, "hello **cli**", "--store", store)
    assert rc == 0, err
    event_id = out.strip()
    message = await alice.wait_for(lambda r, e: e.event_id == event_id)
    assert isinstance(message, RoomMessageText) and message.decrypted
    assert message.body == "hello **cli**" and message.formatted_body == "hello <strong>cli</strong>"

    # listen --json: one JSON object per new message.
    async with sotto_bot("listen", room, "--json", "--count", "1", "--store", store) as listener:
        await listener.line_matching("stderr", "listening to")
        sent = await alice.send_text(room, "for the listener")
        line = await listener.line_matching("stdout", "{")
        rc, _, err = await listener.finish()
    assert rc == 0, err
    record = json.loads(line)
    assert record["event_id"] == sent and record["body"] == "for the listener"
    assert record["sender"] == alice.user_id and record["encrypted"] is True and record["room_id"] == room

    # run: the quickstart echo bot, then a clean shutdown on SIGTERM.
    async with sotto_bot("run", "clients/examples/echo.py", "--store", store) as runner:
        await runner.line_matching("stderr", "ready:")
        await alice.send_text(room, "!echo from the quickstart")
        reply = await alice.wait_for_reply(room, bot_id)
        assert reply.body == "from the quickstart" and reply.decrypted
        runner.proc.send_signal(signal.SIGTERM)
        rc, _, err = await runner.finish()
    assert rc == 0, err
    assert "bot stopped" in err
    assert "from the quickstart" not in err  # no message bodies in the logs


async def test_store_is_locked_while_a_bot_runs(server: RunningServer, tmp_path: Path, peers: Peers) -> None:
    store, _ = await login_bot(server, tmp_path)
    async with sotto_bot("run", "clients/examples/echo.py", "--store", store) as runner:
        await runner.line_matching("stderr", "ready:")
        rc, _, err = await run_cli("send", "!nowhere:x", "hi", "--store", store)
        assert rc == 1 and "in use by another sotto-bot process" in err
        runner.proc.send_signal(signal.SIGINT)
        rc, _, _ = await runner.finish()
    assert rc == 0


def js_env(
    server: RunningServer, login: dict[str, Any], bot_id: str, store: str, mode: str
) -> dict[str, str]:
    device_id = json.loads((Path(store) / "credentials.json").read_text())["device_id"]
    return {
        "HS_URL": server.base_url,
        "USER_ID": login["user_id"],
        "ACCESS_TOKEN": login["access_token"],
        "DEVICE_ID": login["device_id"],
        "PASSWORD": "password",
        "BOT_USER_ID": bot_id,
        "BOT_DEVICE_ID": device_id,
        "MODE": mode,
    }


def shown_to_operator(out: str) -> tuple[list[str], str]:
    """The emoji symbols and the numbers line `verify` printed ("  🐶 Dog  🐱 Cat  …")."""
    lines = out.splitlines()
    emoji_line = lines[next(i for i, line in enumerate(lines) if line.startswith("Verifying")) + 1]
    numbers = next(line for line in lines if "or the numbers:" in line)
    return [part.split(" ", 1)[0] for part in emoji_line.strip().split("  ")], numbers.strip()


async def test_verify_answers_an_emoji_verification(server: RunningServer, tmp_path: Path) -> None:
    """`verify` waits; Element (js-sdk) asks to verify the bot's device over to-device."""
    store, bot_id = await login_bot(server, tmp_path)
    alice = await server.login("alice")
    env = js_env(server, alice, bot_id, store, "request")
    async with sotto_bot("verify", "--yes", "--store", store) as cli:
        await cli.line_matching("stdout", "waiting for a verification")
        async with js_client("device_verify_client.mjs", env, alice["user_id"], alice["device_id"]) as js:
            shown = json.loads(await js.expect("SAS"))
            await js.expect("VERIFIED")
            assert json.loads(await js.expect("STATUS")) == {"user": True, "device": True, "local": True}
            rc, out, err = await cli.finish()
    assert rc == 0, err
    assert f"verified {alice['user_id']} / {alice['device_id']}" in out
    # The operator saw what the person saw.
    assert shown_to_operator(out) == (
        shown["emoji"],
        f"or the numbers: {' '.join(map(str, shown['decimal']))}",
    )


async def test_verify_asks_a_device(server: RunningServer, tmp_path: Path) -> None:
    """`verify --user U --device D`: the bot asks Element's device over to-device; both trust."""
    store, bot_id = await login_bot(server, tmp_path)
    alice = await server.login("alice")
    env = js_env(server, alice, bot_id, store, "accept")
    async with js_client("device_verify_client.mjs", env, alice["user_id"], alice["device_id"]) as js:
        await js.expect("ROOM")  # the bot joins it when the CLI starts, and so shares a room with Alice
        async with sotto_bot(
            "verify", "--yes", "--user", alice["user_id"], "--device", alice["device_id"], "--store", store
        ) as cli:
            shown = json.loads(await js.expect("SAS"))
            await js.expect("VERIFIED")
            assert json.loads(await js.expect("STATUS")) == {"user": True, "device": True, "local": True}
            rc, out, err = await cli.finish()
    assert rc == 0, err
    assert f"verified {alice['user_id']} / {alice['device_id']}" in out
    assert f"signed the identity of {alice['user_id']}" in out
    assert shown_to_operator(out) == (
        shown["emoji"],
        f"or the numbers: {' '.join(map(str, shown['decimal']))}",
    )


async def test_verify_asks_a_user_in_a_room(server: RunningServer, tmp_path: Path) -> None:
    """`verify --room R --user U`: the bot asks in the DM, Element (js-sdk) accepts, both trust."""
    store, bot_id = await login_bot(server, tmp_path)
    alice = await server.login("alice")
    env = {
        "HS_URL": server.base_url,
        "USER_ID": alice["user_id"],
        "ACCESS_TOKEN": alice["access_token"],
        "DEVICE_ID": alice["device_id"],
        "PASSWORD": "password",
        "BOT_USER_ID": bot_id,
        "MODE": "accept",
    }
    async with js_client("verify_client.mjs", env, alice["user_id"], alice["device_id"]) as js:
        room = await js.expect("ROOM")
        async with sotto_bot(
            "verify", "--yes", "--room", room, "--user", alice["user_id"], "--store", store
        ) as cli:
            shown = json.loads(await js.expect("SAS"))
            await js.expect("VERIFIED")
            assert json.loads(await js.expect("STATUS"))["user"] is True
            rc, out, err = await cli.finish()
    assert rc == 0, err
    assert f"verified {alice['user_id']} / {alice['device_id']}" in out
    assert f"signed the identity of {alice['user_id']}" in out
    # The operator was shown what the person saw: "  🐶 Dog  🐱 Cat  …" and the numbers.
    lines = out.splitlines()
    emoji_line = lines[next(i for i, line in enumerate(lines) if line.startswith("Verifying")) + 1]
    assert [part.split(" ", 1)[0] for part in emoji_line.strip().split("  ")] == shown["emoji"]
    assert f"or the numbers: {' '.join(map(str, shown['decimal']))}" in out


async def test_verify_usage_errors(tmp_path: Path) -> None:
    store = str(tmp_path / "no-store")
    assert (await run_cli("verify", "--room", "!r:x", "--store", store))[0] == 2
    assert (await run_cli("verify", "--user", "@a:x", "--store", store))[0] == 2


async def test_login_with_key_backup_then_restore_into_a_new_store(
    server: RunningServer, tmp_path: Path
) -> None:
    await server.register("bot", "bot-password")
    password_file = tmp_path / "password"
    password_file.write_text("bot-password\n")
    user_id = f"@bot:{server.server_name}"
    store = str(tmp_path / "store-1")
    rc, out, err = await run_cli(
        "login",
        "--homeserver",
        server.base_url,
        "--user",
        user_id,
        "--password-file",
        str(password_file),
        "--store",
        store,
        "--key-backup",
    )
    assert rc == 0, err
    printed = out.split("key backup recovery key (keep it somewhere safe): ")[1].strip()
    rc, shown, _ = await run_cli("backup", "key", "--store", store)
    assert rc == 0 and shown.strip() == printed

    # A second store for the account (the first one lost): restore from the recovery key.
    other = str(tmp_path / "store-2")
    rc, _, err = await run_cli(
        "login",
        "--homeserver",
        server.base_url,
        "--user",
        user_id,
        "--password-file",
        str(password_file),
        "--store",
        other,
    )
    assert rc == 0, err
    key_file = tmp_path / "recovery"
    key_file.write_text(printed)
    rc, out, err = await run_cli("backup", "restore", "--recovery-key-file", str(key_file), "--store", other)
    assert rc == 0, err
    assert out.startswith("restored ")
    wrong = tmp_path / "wrong"
    wrong.write_text(printed[:-1] + ("1" if printed[-1] != "1" else "2"))
    rc, _, err = await run_cli("backup", "restore", "--recovery-key-file", str(wrong), "--store", other)
    assert rc == 1 and "recovery key" in err


async def test_login_with_secret_storage_then_recover_into_a_new_store(
    server: RunningServer, tmp_path: Path
) -> None:
    await server.register("bot", "bot-password")
    password_file = tmp_path / "password"
    password_file.write_text("bot-password\n")
    common = [
        "--homeserver",
        server.base_url,
        "--user",
        f"@bot:{server.server_name}",
        "--password-file",
        str(password_file),
        "--key-backup",
        "--secret-storage",
    ]
    rc, first, err = await run_cli("login", *common, "--store", str(tmp_path / "one"))
    assert rc == 0, err
    recovery_key = first.split("recovery key (keep it somewhere safe): ")[1].strip()
    master = first.split("cross-signing master key: ")[1].split()[0]
    key_file = tmp_path / "recovery.txt"
    key_file.write_text(recovery_key + "\n")
    rc, second, err = await run_cli(
        "login", *common, "--store", str(tmp_path / "two"), "--recovery-key-file", str(key_file)
    )
    assert rc == 0, err
    assert f"cross-signing master key: {master}" in second
    assert "recovery key" not in second  # nothing new to write down
    assert "already has cross-signing keys" not in err
