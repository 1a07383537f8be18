"""The error a bad configuration raises (homeserver.config re-exports it)."""


class ConfigError(ValueError):
    pass
