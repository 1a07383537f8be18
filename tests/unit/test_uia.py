"""User-interactive auth sessions and flows: sessions in a real (migrated) SQLite database,
with an in-memory account store and a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from homeserver.clock import Clock
from homeserver.errors import InteractiveAuthRequired, MatrixError
from homeserver.handlers.auth import PasswordHasher
from homeserver.handlers.uia import (
    MAX_FAILED_ATTEMPTS,
    STAGE_DUMMY,
    STAGE_PASSWORD,
    STAGE_REGISTRATION_TOKEN,
    UserInteractiveAuth,
    qualify_user_id,
    user_id_from_identifier,
)
from homeserver.storage.accounts import AccountStore
from homeserver.storage.uia_sessions import UIASessionStore
from tests.support.database import migrated_sqlite

SERVER = "example.org"
ALICE = "@alice:example.org"


class FakeClock(Clock):
    def __init__(self) -> None:
        self.now = 1_000_000

    def time_ms(self) -> int:
        return self.now


class FakeAccounts:
    def __init__(self) -> None:
        self.users: dict[str, dict[str, object]] = {}
        self.tokens: set[str] = {"good-token"}

    async def get_user(self, user_id: str) -> dict[str, object] | None:
        return self.users.get(user_id)

    async def find_user_case_insensitive(self, user_id: str) -> str | None:
        return next((u for u in self.users if u.lower() == user_id.lower()), None)

    async def registration_token_valid(self, token: str, now_ms: int) -> bool:
        return token in self.tokens


class PlainPasswords(PasswordHasher):
    async def hash(self, password: str) -> str:
        return "plain:" + password

    async def check(self, password: str, password_hash: str | None) -> bool:
        return password_hash == "plain:" + password


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[UIASessionStore]:
    async with migrated_sqlite(tmp_path / "uia.db") as db:
        yield UIASessionStore(db)


@pytest.fixture
def uia(clock: FakeClock, sessions: UIASessionStore) -> UserInteractiveAuth:
    accounts = FakeAccounts()
    accounts.users[ALICE] = {"user_id": ALICE, "password_hash": "plain:secret", "deactivated": False}
    accounts.users["@gone:example.org"] = {
        "user_id": "@gone:example.org",
        "password_hash": "plain:secret",
        "deactivated": True,
    }
    return UserInteractiveAuth(
        cast(AccountStore, accounts),
        PlainPasswords(),
        clock,
        SERVER,
        sessions,
        session_ttl_ms=60_000,
        max_sessions=3,
    )


async def expect_401(coro: Any) -> dict[str, Any]:
    with pytest.raises(InteractiveAuthRequired) as info:
        await coro
    assert info.value.status == 401
    return info.value.body


def password_auth(session: str, user: str = "alice", password: str = "secret") -> dict[str, Any]:
    return {
        "type": STAGE_PASSWORD,
        "session": session,
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }


async def test_no_auth_gets_flows_params_and_session(uia: UserInteractiveAuth) -> None:
    body = await expect_401(uia.check(operation="op", flows=[[STAGE_DUMMY]], auth=None))
    assert body["flows"] == [{"stages": [STAGE_DUMMY]}]
    assert body["params"] == {}
    assert isinstance(body["session"], str) and body["session"]
    assert "completed" not in body and "errcode" not in body


async def test_dummy_completes_flow_and_finish_forgets_session(uia: UserInteractiveAuth) -> None:
    body = await expect_401(uia.check(operation="op", flows=[[STAGE_DUMMY]], auth=None))
    result = await uia.check(
        operation="op", flows=[[STAGE_DUMMY]], auth={"type": STAGE_DUMMY, "session": body["session"]}
    )
    assert result.completed == (STAGE_DUMMY,)
    await uia.finish(result)
    assert await uia.session_count() == 0


async def test_auth_without_session_starts_one(uia: UserInteractiveAuth) -> None:
    result = await uia.check(operation="op", flows=[[STAGE_DUMMY]], auth={"type": STAGE_DUMMY})
    assert result.completed == (STAGE_DUMMY,)


async def test_multi_stage_flow_reports_completed(uia: UserInteractiveAuth) -> None:
    flows = [[STAGE_REGISTRATION_TOKEN, STAGE_DUMMY]]
    body = await expect_401(uia.check(operation="op", flows=flows, auth=None))
    session = body["session"]
    body = await expect_401(
        uia.check(
            operation="op",
            flows=flows,
            auth={"type": STAGE_REGISTRATION_TOKEN, "token": "good-token", "session": session},
        )
    )
    assert body["completed"] == [STAGE_REGISTRATION_TOKEN]
    assert body["session"] == session
    # Retrying a completed stage does not fail, and a session-only retry reports progress.
    body = await expect_401(
        uia.check(
            operation="op",
            flows=flows,
            auth={"type": STAGE_REGISTRATION_TOKEN, "token": "good-token", "session": session},
        )
    )
    assert body["completed"] == [STAGE_REGISTRATION_TOKEN]
    result = await uia.check(operation="op", flows=flows, auth={"type": STAGE_DUMMY, "session": session})
    assert result.completed == (STAGE_REGISTRATION_TOKEN, STAGE_DUMMY)
    assert result.registration_token == "good-token"


async def test_stages_must_follow_flow_order(uia: UserInteractiveAuth) -> None:
    flows = [[STAGE_REGISTRATION_TOKEN, STAGE_DUMMY]]
    body = await expect_401(uia.check(operation="op", flows=flows, auth={"type": STAGE_DUMMY}))
    assert body["errcode"] == "M_FORBIDDEN"
    assert "completed" not in body


async def test_bad_registration_token_is_a_401_with_errcode(uia: UserInteractiveAuth) -> None:
    flows = [[STAGE_REGISTRATION_TOKEN]]
    body = await expect_401(
        uia.check(operation="op", flows=flows, auth={"type": STAGE_REGISTRATION_TOKEN, "token": "nope"})
    )
    assert body["errcode"] == "M_UNAUTHORIZED"
    assert body["flows"] == [{"stages": [STAGE_REGISTRATION_TOKEN]}]


async def test_unknown_stage_type_is_unrecognized(uia: UserInteractiveAuth) -> None:
    with pytest.raises(MatrixError) as info:
        await uia.check(operation="op", flows=[[STAGE_PASSWORD]], auth={"type": "m.login.recaptcha"})
    assert (info.value.status, info.value.errcode) == (400, "M_UNRECOGNIZED")


async def test_password_stage(uia: UserInteractiveAuth) -> None:
    flows = [[STAGE_PASSWORD]]
    body = await expect_401(uia.check(operation="op", flows=flows, auth=None, requester=ALICE))
    wrong = await expect_401(
        uia.check(
            operation="op", flows=flows, auth=password_auth(body["session"], password="x"), requester=ALICE
        )
    )
    assert wrong["errcode"] == "M_FORBIDDEN"
    result = await uia.check(
        operation="op", flows=flows, auth=password_auth(body["session"], user=ALICE), requester=ALICE
    )
    assert result.user_id == ALICE


async def test_password_stage_legacy_user_field(uia: UserInteractiveAuth) -> None:
    auth = {"type": STAGE_PASSWORD, "user": "ALICE", "password": "secret"}
    result = await uia.check(operation="op", flows=[[STAGE_PASSWORD]], auth=auth)
    assert result.user_id == ALICE


async def test_password_must_belong_to_requester(uia: UserInteractiveAuth) -> None:
    body = await expect_401(
        uia.check(
            operation="op",
            flows=[[STAGE_PASSWORD]],
            auth=password_auth("", user="alice"),
            requester="@bob:example.org",
        )
    )
    assert body["errcode"] == "M_FORBIDDEN"


async def test_deactivated_user_cannot_pass_password_stage(uia: UserInteractiveAuth) -> None:
    body = await expect_401(
        uia.check(operation="op", flows=[[STAGE_PASSWORD]], auth=password_auth("", user="gone"))
    )
    assert body["errcode"] == "M_USER_DEACTIVATED"


async def test_session_bound_to_operation_and_requester(uia: UserInteractiveAuth) -> None:
    body = await expect_401(uia.check(operation="op", flows=[[STAGE_DUMMY]], auth=None, requester=ALICE))
    auth = {"type": STAGE_DUMMY, "session": body["session"]}
    with pytest.raises(MatrixError) as info:
        await uia.check(operation="other", flows=[[STAGE_DUMMY]], auth=auth, requester=ALICE)
    assert info.value.status == 403
    with pytest.raises(MatrixError) as info:
        await uia.check(operation="op", flows=[[STAGE_DUMMY]], auth=auth, requester="@bob:example.org")
    assert info.value.status == 403


async def test_sessions_expire_and_are_bounded(uia: UserInteractiveAuth, clock: FakeClock) -> None:
    first = (await expect_401(uia.check(operation="op", flows=[[STAGE_DUMMY]], auth=None)))["session"]
    for _ in range(5):
        await expect_401(uia.check(operation="op", flows=[[STAGE_DUMMY]], auth=None))
    assert await uia.session_count() == 3
    clock.now += 61_000
    # An expired session is not an error: the client just gets a new one.
    body = await expect_401(uia.check(operation="op", flows=[[STAGE_PASSWORD]], auth={"session": first}))
    assert body["session"] != first
    assert await uia.session_count() == 1


async def test_client_params_remembered(uia: UserInteractiveAuth) -> None:
    body = await expect_401(
        uia.check(operation="op", flows=[[STAGE_DUMMY]], auth=None, client_params={"username": "x"})
    )
    result = await uia.check(
        operation="op", flows=[[STAGE_DUMMY]], auth={"type": STAGE_DUMMY, "session": body["session"]}
    )
    assert result.client_params == {"username": "x"}


async def test_too_many_failures_end_the_session(uia: UserInteractiveAuth) -> None:
    session = (await expect_401(uia.check(operation="op", flows=[[STAGE_PASSWORD]], auth=None)))["session"]
    for _ in range(MAX_FAILED_ATTEMPTS - 1):
        await expect_401(
            uia.check(operation="op", flows=[[STAGE_PASSWORD]], auth=password_auth(session, password="bad"))
        )
    with pytest.raises(MatrixError) as info:
        await uia.check(operation="op", flows=[[STAGE_PASSWORD]], auth=password_auth(session, password="bad"))
    assert info.value.status == 403
    assert await uia.session_count() == 0


async def test_reject_stage_undoes_completion(uia: UserInteractiveAuth) -> None:
    flows = [[STAGE_REGISTRATION_TOKEN]]
    result = await uia.check(
        operation="op", flows=flows, auth={"type": STAGE_REGISTRATION_TOKEN, "token": "good-token"}
    )
    with pytest.raises(InteractiveAuthRequired) as info:
        await uia.reject_stage(result, STAGE_REGISTRATION_TOKEN, flows, "M_X", "gone")
    body = info.value.body
    assert body["errcode"] == "M_X"
    assert "completed" not in body


def test_identifiers() -> None:
    assert qualify_user_id("bob", SERVER) == "@bob:example.org"
    assert qualify_user_id("@bob:other", SERVER) == "@bob:other"
    assert user_id_from_identifier({"identifier": {"type": "m.id.user", "user": "bob"}}, SERVER) == (
        "@bob:example.org"
    )
    assert user_id_from_identifier({"user": "@bob:example.org"}, SERVER) == "@bob:example.org"
    with pytest.raises(MatrixError) as info:
        user_id_from_identifier({"identifier": {"type": "m.id.thirdparty", "medium": "email"}}, SERVER)
    assert info.value.status == 403
    with pytest.raises(MatrixError) as info:
        user_id_from_identifier({"identifier": {"type": "m.id.weird"}}, SERVER)
    assert info.value.status == 400
    with pytest.raises(MatrixError) as info:
        user_id_from_identifier({}, SERVER)
    assert info.value.errcode == "M_MISSING_PARAM"
