"""Running one of tests/js's Node scripts to completion: it reports one `@@RESULT <json>`
line on stdout and exits 0, or the test fails with the end of its stderr."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from tests.integration.test_e2ee_js import JS_DIR, ensure_js_sdk


async def run_node_script(script: str, env: dict[str, str], timeout: float = 60.0) -> dict[str, Any]:
    node = ensure_js_sdk()
    proc = await asyncio.create_subprocess_exec(
        node,
        script,
        cwd=JS_DIR,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    line = next(x for x in out.decode().splitlines() if x.startswith("@@RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("@@RESULT "))
    return result
