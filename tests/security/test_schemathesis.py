"""Schemathesis against the official Client-Server API definitions, for every operation Sotto
implements: generated requests (with an access token) must never get a 5xx, and responses
must conform to the spec's response schemas.

Bounded in time: a fixed number of examples per operation, derandomised so CI runs are
reproducible (set SOTTO_SCHEMATHESIS_EXAMPLES for a longer local hunt). Operations that
would end the test's session (logout) are left out. Known failures in other areas' code
are listed in KNOWN with the owner, as strict xfails: fixing one turns its test red until
the entry is removed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

from tests.security.support import ThreadedServer
from tests.support.server import RunningServer

SPEC = Path(
    os.environ.get("SOTTO_MATRIX_SPEC", Path(__file__).parents[3] / "shared/matrix-spec/client-server.json")
)
if not SPEC.exists():
    SPEC = Path("/work/shared/matrix-spec/client-server.json")
EXAMPLES = int(os.environ.get("SOTTO_SCHEMATHESIS_EXAMPLES", "12"))

# Would end the shared session (the token is the test's identity).
EXCLUDED = {("POST", "/_matrix/client/v3/logout"), ("POST", "/_matrix/client/v3/logout/all")}

# (METHOD, spec path) -> why it fails, and whose code it is.
_DEVICE_NULLS = (
    "deliberate: device objects carry display_name/last_seen_ip as null instead of leaving them out, "
    "because matrix-nio's devices schema requires every key (homeserver/handlers/devices.py device_json)"
)
KNOWN: dict[tuple[str, str], str] = {
    ("GET", "/_matrix/client/v3/devices"): _DEVICE_NULLS,
    ("GET", "/_matrix/client/v3/devices/{deviceId}"): _DEVICE_NULLS,
    ("GET", "/_matrix/client/v3/voip/turnServer"): (
        "deliberate: with no TURN server configured the answer is {} (as Synapse's; clients read it "
        "as 'no relay'), which the spec's schema, written for a configured server, does not allow "
        "(homeserver/api/voip.py)"
    ),
}

CHECKS = [checks.not_a_server_error, checks.response_schema_conformance, checks.content_type_conformance]

schema = schemathesis.openapi.from_path(SPEC) if SPEC.exists() else None


def _operations() -> list[Any]:
    if schema is None:
        return []
    out = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            continue
        op = result.ok()
        key = (op.method.upper(), op.path)
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN[key])] if key in KNOWN else []
        out.append(pytest.param(op, id=f"{key[0]} {key[1]}", marks=marks))
    return out


@dataclass
class Live:
    srv: RunningServer
    token: str
    routes: list[tuple[str, re.Pattern[str]]]
    session: requests.Session
    # Real identifiers, so some generated requests get past the grammar checks to the handlers.
    ids: dict[str, str]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    threaded = ThreadedServer(str(tmp_path_factory.mktemp("schemathesis")))
    with threaded as srv:

        async def setup() -> tuple[str, dict[str, str]]:
            user_id = await srv.register("fuzz")
            token, device_id = await srv.hs.auth.create_session(user_id, None, None)
            room_id, alias = await srv.hs.rooms.create_room(user_id, {"room_alias_name": "fuzz"})
            event, _ = await srv.hs.creator.create_and_send(
                room_id=room_id,
                type="m.room.message",
                sender=user_id,
                content={"msgtype": "m.text", "body": "x"},
            )
            ids = {
                "userId": user_id,
                "roomId": room_id,
                "roomIdOrAlias": room_id,
                "roomAlias": alias or "",
                "eventId": event.event_id,
                "deviceId": device_id,
                "serverName": srv.server_name,
            }
            return token, ids

        token, ids = threaded.run(setup())
        routes = []
        for route in srv.runner.app.router.routes():
            pattern = route.resource.get_info().get("pattern") if route.resource else None
            if isinstance(pattern, re.Pattern):
                routes.append((route.method, pattern))
            elif route.resource is not None:
                routes.append((route.method, re.compile(re.escape(route.resource.canonical))))
        with requests.Session() as session:
            yield Live(srv, token, routes, session, ids)


def implemented(live: Live, method: str, path: str) -> bool:
    sample = re.sub(r"\{[^}]+\}", "x", path)
    return any(m == method and pattern.fullmatch(sample) for m, pattern in live.routes)


def _describe(failure: BaseException, case: Any) -> str:
    body = case.body if not isinstance(case.body, bytes) else case.body[:200]
    return f"{failure}\n--- request: {case.method} {case.formatted_path} query={case.query} body={body!r}"[
        :3000
    ]


@pytest.mark.skipif(schema is None, reason=f"{SPEC} not found")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("operation", _operations())
def test_operation(live: Live, operation: Any) -> None:
    method, path = operation.method.upper(), operation.path
    if (method, path) in EXCLUDED:
        pytest.skip("ends the test session")
    if not implemented(live, method, path):
        pytest.skip("not implemented by Sotto")
    headers = {"Authorization": f"Bearer {live.token}"}

    def run(strategy: Any, checks_: list[Any], examples: int) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def one(case: Any) -> None:
            response = case.call(
                base_url=live.srv.base_url, session=live.session, headers=headers, timeout=30
            )
            try:
                case.validate_response(response, checks=checks_, headers=headers)
            except (AssertionError, FailureGroup) as e:
                raise AssertionError(_describe(e, case)) from None

        try:
            one()
        except Unsatisfiable:
            # Nothing to vary (e.g. invalid data for an operation without inputs).
            pass

    known_ids = {p.name: live.ids[p.name] for p in operation.path_parameters if p.name in live.ids}
    # Valid data anywhere; valid data aimed at real rooms, users and events; invalid data (4xx only).
    run(operation.as_strategy(), CHECKS, EXAMPLES)
    if known_ids:
        run(operation.as_strategy(path_parameters=known_ids), CHECKS, EXAMPLES)
    run(
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        [checks.not_a_server_error],
        EXAMPLES // 2,
    )


def test_spec_covers_sotto_routes(live: Live) -> None:
    """Guard against silently fuzzing nothing: most of Sotto's client routes are in the spec."""
    if schema is None:
        pytest.skip("spec not found")
    fuzzed = sum(
        1
        for param in _operations()
        if implemented(live, param.values[0].method.upper(), param.values[0].path)
    )
    assert fuzzed >= 100, fuzzed
