"""An injectable clock, so time-based logic is testable without sleeps."""

from __future__ import annotations

import time


class Clock:
    def time_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()
