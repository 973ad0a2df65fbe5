"""Historical feedback memory: a sliding window of the last K diagnostic triples."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

from orchestrator.outcomes import INFRASTRUCTURE_CLASSES


@dataclass(frozen=True)
class Triple:
    """(problem identified, suggestion made, resulting outcome) for one iteration."""

    problem: str
    suggestion: str
    outcome: str

    def to_dict(self) -> dict:
        return asdict(self)


class FeedbackMemory:
    """The last `size` triples; K-order Markov: older attempts are forgotten."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._window: deque[Triple] = deque(maxlen=max(size, 0) or None)

    def add(self, triple: Triple) -> None:
        if self.size > 0:
            self._window.append(triple)

    def window(self) -> list[Triple]:
        return list(self._window)

    def __len__(self) -> int:
        return len(self._window)


def remembered(record: dict) -> bool:
    """Infrastructure faults say nothing about the design, so they stay out of the window."""
    return bool(record.get("triple")) and record.get("status") not in INFRASTRUCTURE_CLASSES
