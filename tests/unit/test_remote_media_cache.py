"""The cache of other servers' media on a real directory: quarantine markers (also for media
never fetched) survive purges and deletion, and release forgets the item."""

from __future__ import annotations

import os
import time
from pathlib import Path

from homeserver.handlers.remote_media_cache import RemoteMediaCache


def future() -> int:
    """A time after everything written so far (computed when used: the suite may run for
    many minutes after this module is imported)."""
    return int(time.time() * 1000) + 60_000


def test_quarantine_markers_outlive_purges(tmp_path: Path) -> None:
    cache = RemoteMediaCache(str(tmp_path))
    cache.write("other.example", "abc", b"bytes", {"content_type": "text/plain", "size": 5, "ts": 1})
    content, meta = cache.paths("other.example", "abc")
    assert os.path.exists(content) and cache.read_meta("other.example", "abc") == {
        "content_type": "text/plain",
        "size": 5,
        "ts": 1,
    }
    cache.set_quarantined("other.example", "abc", True)
    assert not os.path.exists(content)
    assert cache.read_meta("other.example", "abc") == {
        "content_type": "text/plain",
        "size": 5,
        "ts": 1,
        "quarantined": True,
    }
    # Never fetched, quarantined ahead.
    cache.set_quarantined("other.example", "later", True)
    assert cache.read_meta("other.example", "later") == {"quarantined": True}
    # A purge and a deletion leave the markers.
    assert cache.purge(future()) == 0
    assert not cache.delete("other.example", "abc")
    assert cache.read_meta("other.example", "abc") is not None
    # Released: gone, to be fetched again when asked for.
    cache.set_quarantined("other.example", "abc", False)
    assert cache.read_meta("other.example", "abc") is None and not os.path.exists(meta)
    # An ordinary item goes with a purge, or a deletion.
    cache.write("other.example", "x", b"1", {"ts": 1})
    cache.write("other.example", "y", b"2", {"ts": 1})
    assert cache.delete("other.example", "x") and not cache.delete("other.example", "x")
    assert cache.purge(1) == 0  # fetched after that time
    assert cache.purge(future()) == 1
    assert cache.read_meta("other.example", "y") is None
    assert cache.read_meta("other.example", "later") == {"quarantined": True}
