"""Two in-process workers of one homeserver on a fresh PostgreSQL database, with Redis on (as
`sotto serve --workers N` runs them), for federation tests that need to tell workers apart.

They share the server name and signing key. Worker 1's federation port is the one in the
server name (other servers dial it); worker 2 listens for federation on a port of its own,
which tests dial directly (as a load balancer might send a request there). Needs PostgreSQL
at 127.0.0.1:5432 and Redis at 127.0.0.1:6379 whatever SOTTO_TEST_DATABASE says.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from bridge.xmatrix import authorization_header
from tests.federation.support import CertAuthority, federation_of, federation_overrides
from tests.support.postgres import fresh_database
from tests.support.server import RunningServer, free_port, run_server


@asynccontextmanager
async def two_workers(
    directory: str, ca: CertAuthority
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    shared: dict[str, Any] = {
        "signing_key_path": os.path.join(directory, "signing.key"),
        "redis": {"enabled": True, "channel": f"sotto-test-{uuid.uuid4().hex}"},
    }
    async with fresh_database() as url:
        shared["database"] = {"url": url}
        one = federation_overrides(ca, free_port())
        two = federation_overrides(ca, free_port())
        two["server_name"] = one["server_name"]
        dirs = [os.path.join(directory, "w1"), os.path.join(directory, "w2")]
        for d in dirs:
            os.makedirs(d, exist_ok=True)
        async with (
            run_server(dirs[0], **one, **shared) as w1,
            run_server(dirs[1], **two, **shared) as w2,
        ):
            yield w1, w2


async def send_txn_to_worker(
    origin: RunningServer, worker: RunningServer, pdus: list[dict[str, Any]], txn: str
) -> dict[str, Any]:
    """PUT a transaction of `pdus` from `origin` straight to `worker`'s own federation port
    (signed for the worker's server name); its per-PDU answers."""
    body = {"origin": origin.server_name, "origin_server_ts": 0, "pdus": pdus, "edus": []}
    path = f"/_matrix/federation/v1/send/{quote(txn)}"
    header = authorization_header(
        "PUT", path, origin.server_name, worker.server_name, body, origin.hs.signing_key
    )
    port = federation_of(worker).port
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            URL(f"https://127.0.0.1:{port}{path}", encoded=True),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": header},
            ssl=federation_of(origin).client.ssl_context,
            timeout=aiohttp.ClientTimeout(total=90),
        ) as resp,
    ):
        out = await resp.json()
        assert resp.status == 200, out
        answers: dict[str, Any] = out["pdus"]
        return answers
