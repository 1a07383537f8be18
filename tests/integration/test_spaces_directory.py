"""Room aliases and the public room directory, driven by matrix-nio and mautrix."""

from __future__ import annotations

from mautrix.client import Client
from mautrix.errors import MNotFound
from mautrix.types import RoomAlias, RoomCreatePreset, RoomDirectoryVisibility, UserID
from nio import RoomCreateResponse, RoomDeleteAliasResponse, RoomPutAliasResponse, RoomResolveAliasResponse

from tests.support.nio_clients import nio_client
from tests.support.server import RunningServer


async def test_alias_create_resolve_delete(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bob") as bob:
        created = await alice.room_create()
        assert isinstance(created, RoomCreateResponse)
        room_id = created.room_id
        alias = f"#team:{server.server_name}"
        put = await alice.room_put_alias(alias, room_id)
        assert isinstance(put, RoomPutAliasResponse), put
        resolved = await bob.room_resolve_alias(alias)
        assert isinstance(resolved, RoomResolveAliasResponse) and resolved.room_id == room_id
        assert server.server_name in resolved.servers
        deleted = await alice.room_delete_alias(alias)
        assert isinstance(deleted, RoomDeleteAliasResponse), deleted
        gone = await bob.room_resolve_alias(alias)
        assert not isinstance(gone, RoomResolveAliasResponse)


async def test_mautrix_public_room_directory(server: RunningServer) -> None:
    await server.register("carol")
    carol = Client(mxid=UserID(f"@carol:{server.server_name}"), base_url=server.base_url)
    try:
        await carol.login(password="password")
        public = await carol.create_room(preset=RoomCreatePreset.PUBLIC, name="Lobby", topic="say hi",
                                         alias_localpart="lobby", is_direct=False,
                                         visibility=RoomDirectoryVisibility.PUBLIC)
        assert await carol.resolve_room_alias(RoomAlias(f"#lobby:{server.server_name}"))
        directory = await carol.get_room_directory()
        assert [r.room_id for r in directory.chunk] == [public]
        assert directory.chunk[0].name == "Lobby"
        try:
            await carol.resolve_room_alias(RoomAlias(f"#nothing:{server.server_name}"))
            raise AssertionError("unknown alias must not resolve")
        except MNotFound:
            pass
    finally:
        await carol.api.session.close()
