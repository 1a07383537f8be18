"""Sotto: a lightweight, Matrix-compatible homeserver."""

__version__ = "0.1.0"
