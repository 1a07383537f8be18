"""Imports every schema module so all tables are registered on one MetaData.

Area-specific schema modules (E2EE, federation, media ...) add themselves here.
"""

from __future__ import annotations

from bridge import schema as federation_schema  # noqa: F401
from homeserver.storage import (
    cs_schema,  # noqa: F401
    e2ee_schema,  # noqa: F401
    schema,  # noqa: F401
)
