"""Imports every schema module so all tables are registered on one MetaData.

Area-specific schema modules (E2EE, federation, media ...) add themselves here.
"""

from __future__ import annotations

from homeserver.storage import (
    e2ee_schema,  # noqa: F401
    schema,  # noqa: F401
)
