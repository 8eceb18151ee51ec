"""Per-second growth of named kernel counters between two reads (disks, cgroups)."""

from __future__ import annotations


class CounterRate:
    """The summed growth per second since the previous `update`. A counter that appeared,
    vanished or went backwards (a reset) meanwhile says nothing about the interval."""

    def __init__(self) -> None:
        self._previous: tuple[float, dict[str, int]] | None = None

    def update(self, monotonic_now: float, current: dict[str, int]) -> float | None:
        """None on the first update, with no counters, or when no time passed."""
        previous, self._previous = self._previous, (monotonic_now, current)
        if previous is None or not current:
            return None
        then, before = previous
        elapsed = monotonic_now - then
        if elapsed <= 0:
            return None
        grown = sum(
            max(value - before[name], 0) for name, value in current.items() if name in before
        )
        return grown / elapsed
