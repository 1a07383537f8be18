"""A matrix-js-sdk (Rust crypto) client script from tests/js/, run as a subprocess.

The script reports progress as `@@STEP detail` lines on stdout; `expect("STEP")` waits for the
next one, bounded, and fails with the script's stderr if it exits first.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from tests.integration.test_e2ee_js import JS_DIR, ensure_js_sdk


@dataclass
class JsClient:
    proc: asyncio.subprocess.Process
    user_id: str
    device_id: str
    steps: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    stderr: list[str] = field(default_factory=list)

    async def expect(self, name: str, seconds: float = 60.0) -> str:
        """The detail of the next `@@name` line (earlier steps of other names are skipped)."""
        async with asyncio.timeout(seconds):
            while True:
                step, detail = await self.steps.get()
                if step == name:
                    return detail
                if step == "EXIT":
                    raise AssertionError(f"js client exited ({detail}) before {name}:\n{self.log()}")

    async def exit_code(self, seconds: float = 30.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), seconds)

    def log(self) -> str:
        return "".join(self.stderr[-200:])


@asynccontextmanager
async def js_client(
    script: str, env: dict[str, str], user_id: str, device_id: str
) -> AsyncIterator[JsClient]:
    # Installs tests/js's packages on a fresh checkout (CI runs tests/bot first).
    node = ensure_js_sdk()
    proc = await asyncio.create_subprocess_exec(
        node,
        script,
        cwd=JS_DIR,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = JsClient(proc, user_id, device_id)

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            client.stderr.append(raw.decode(errors="replace"))

    async def read_stdout() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("@@"):
                name, _, detail = line[2:].partition(" ")
                client.steps.put_nowait((name, detail))
            else:
                client.stderr.append(line + "\n")  # SDK logging goes to stdout
        await stderr_reader  # so the exit report carries the script's last words
        client.steps.put_nowait(("EXIT", str(await proc.wait())))

    stderr_reader = asyncio.create_task(read_stderr())
    readers = [stderr_reader, asyncio.create_task(read_stdout())]
    try:
        yield client
    except BaseException:
        print("js client stderr:\n" + client.log())
        raise
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        for reader in readers:
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader
