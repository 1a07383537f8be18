"""Example bots, each runnable with `sotto-bot run clients/examples/NAME.py` (see docs/bots.md)."""
