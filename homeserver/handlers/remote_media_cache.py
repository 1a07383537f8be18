"""Media fetched from other servers, cached on disk under <media_store_path>/remote/.

Each item is a content file and its `.json` metadata, written after it (so metadata without
content never stands for a whole item), under a name hashed from the server and media ID.
A quarantined item keeps its metadata with `"quarantined": true` and loses its content: it
is served to no one and never fetched again, until released. Purging by age keeps those
markers. The functions here touch the disk: callers run them in a thread.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

REMOTE_CACHE = "remote"


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


class RemoteMediaCache:
    def __init__(self, media_root: str) -> None:
        self.root = os.path.join(media_root, REMOTE_CACHE)

    def paths(self, server: str, media_id: str) -> tuple[str, str]:
        """(content file, metadata file) of an item."""
        digest = hashlib.sha256(f"{server}/{media_id}".encode()).hexdigest()
        base = os.path.join(self.root, digest[:2], digest)
        return base, base + ".json"

    def read_meta(self, server: str, media_id: str) -> dict[str, Any] | None:
        meta_path = self.paths(server, media_id)[1]
        try:
            with open(meta_path) as f:
                meta: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            return None
        return meta

    def write(self, server: str, media_id: str, content: bytes, meta: dict[str, Any]) -> None:
        path, meta_path = self.paths(server, media_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(content)
        os.replace(path + ".tmp", path)
        self._write_meta(meta_path, meta)

    @staticmethod
    def _write_meta(meta_path: str, meta: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(meta_path), exist_ok=True)
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f)
        os.replace(meta_path + ".tmp", meta_path)

    def set_quarantined(self, server: str, media_id: str, flag: bool) -> None:
        """Quarantine (drop the content, keep a marker; also for an item not fetched yet) or
        release (the item is then fetched again when asked for)."""
        path, meta_path = self.paths(server, media_id)
        if flag:
            meta = self.read_meta(server, media_id) or {}
            self._write_meta(meta_path, {**meta, "quarantined": True})
            _unlink(path)
        else:
            _unlink(meta_path)
            _unlink(path)

    def delete(self, server: str, media_id: str) -> bool:
        """Drop a cached item (not a quarantine marker); whether there was one."""
        meta = self.read_meta(server, media_id)
        if meta is None or meta.get("quarantined"):
            return False
        path, meta_path = self.paths(server, media_id)
        _unlink(meta_path)  # the metadata first: without it the item is a cache miss
        _unlink(path)
        return True

    def purge(self, before_ts: int) -> int:
        """Drop the items fetched before `before_ts` (ms: the metadata's modification time);
        quarantine markers stay. Returns how many items went."""
        deleted = 0
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                if not name.endswith(".json"):
                    continue
                meta_path = os.path.join(dirpath, name)
                try:
                    fetched_ms = os.stat(meta_path).st_mtime * 1000
                    with open(meta_path) as f:
                        quarantined = bool(json.load(f).get("quarantined"))
                except (FileNotFoundError, ValueError):
                    continue
                if fetched_ms < before_ts and not quarantined:
                    _unlink(meta_path)
                    _unlink(meta_path.removesuffix(".json"))
                    deleted += 1
        return deleted
