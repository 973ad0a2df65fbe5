"""A pool of warm sandboxes, deep enough that a candidate never waits on a warm-up it could hide.

A sandbox's warm-up (start, `import torch`, CUDA context, data onto the device, rehearsal) takes
seconds; a candidate's evaluation, on a GPU, about as long or less, and a fast LLM adds little
between them. One sandbox warmed after the last evaluation is then not ready in time. The pool
starts a replacement the moment a sandbox is taken and keeps `depth` of them warming or warm, so
a sandbox started `depth` candidates ago is the one taken now. Auto sizing picks the depth from
the measured warm-up time W and the measured time between takes (less the time a take waited
for its sandbox) C, as ceil(W / C), and bounds it by the memory the warm sandboxes may hold: a
share of the host's available memory and of the GPU's. On a CPU-only host a warm-up competes
with the candidate for the same cores, so it cannot be hidden behind an evaluation, only behind
the LLM: there the auto pool keeps one sandbox, started when the previous one is done. Each
sandbox still runs one candidate.
"""

from __future__ import annotations

import collections
import contextlib
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson

from orchestrator.gpu.plan import CUDA_CONTEXT_BYTES, WARM_GPU_SHARE

S = TypeVar("S")

WARM_MEMORY_SHARE = 0.25  # of the host's available memory, for every pool of the run together
AUTO_MAX_DEPTH = 8
FIRST_DEPTH = 1  # before anything is measured
SAMPLES = 8  # recent measurements the sizing looks at


@dataclass
class Footprint:
    """What one warm sandbox holds, from its runner's READY line."""

    rss_bytes: int = 0
    gpu_bytes: int = 0
    gpu_total_bytes: int = 0

    @classmethod
    def parse(cls, line: bytes) -> Footprint:
        """From `READY {json}`; anything unreadable counts as unknown (zeros)."""
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
            data = orjson.loads(line.partition(b"READY")[2].strip() or b"{}")
            if isinstance(data, dict):
                return cls(*(max(0, int(data.get(k) or 0)) for k in (
                    "rss_bytes", "gpu_bytes", "gpu_total_bytes")))
        return cls()

    @property
    def gpu_held(self) -> int:
        return self.gpu_bytes + CUDA_CONTEXT_BYTES if self.gpu_total_bytes else 0


def available_memory() -> int:
    """The host's available memory in bytes (MemAvailable), 0 when unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class PoolSize:
    """`depth` warm sandboxes, or None to size the pool from measurements. `share` is this
    pool's part of the memory the run's warm sandboxes may hold (1 / number of chains);
    `gpu_bytes`, where the GPU plan set it, the GPU memory this pool's warm sandboxes may hold
    (else `share` of WARM_GPU_SHARE of the GPU)."""

    depth: int | None = None
    share: float = 1.0
    gpu_bytes: int | None = None


class Sizer:
    """The auto depth: ceil(warm-up / cycle), bounded by memory."""

    def __init__(self, size: PoolSize, host_memory: int | None = None) -> None:
        self.size = size
        self.host_memory = available_memory() if host_memory is None else host_memory
        self.warmups: collections.deque[float] = collections.deque(maxlen=SAMPLES)
        self.cycles: collections.deque[float] = collections.deque(maxlen=SAMPLES)
        self.footprint = Footprint()

    def observe_warmup(self, seconds: float, footprint: Footprint) -> None:
        self.warmups.append(max(0.0, seconds))
        self.footprint = footprint

    def observe_cycle(self, seconds: float) -> None:
        """Time from one take to the next, less what the next waited for its sandbox."""
        self.cycles.append(max(0.0, seconds))

    @property
    def cpu_only(self) -> bool:
        """Auto-sized, and the runners reported no GPU."""
        held = self.footprint
        return self.size.depth is None and held.rss_bytes > 0 and not held.gpu_total_bytes

    def depth(self) -> int:
        if self.size.depth is not None:
            return self.size.depth
        if self.cpu_only:
            return 1
        if not self.warmups or not self.cycles:
            return min(FIRST_DEPTH, self.max_depth())
        need = math.ceil(statistics.median(self.warmups) / max(statistics.median(self.cycles),
                                                                0.05))
        return max(1, min(need, self.max_depth()))

    def max_depth(self) -> int:
        """How many warm sandboxes this pool's share of host and GPU memory holds (at least 1)."""
        bound = AUTO_MAX_DEPTH
        held = self.footprint
        if held.rss_bytes and self.host_memory:
            bound = min(bound, int(self.size.share * WARM_MEMORY_SHARE * self.host_memory
                                   // held.rss_bytes))
        if held.gpu_held:
            room = self.size.gpu_bytes if self.size.gpu_bytes is not None else int(
                self.size.share * WARM_GPU_SHARE * held.gpu_total_bytes)
            bound = min(bound, room // held.gpu_held)
        return max(1, bound)


class WarmPool(Generic[S]):
    """Keeps `sizer.depth()` sandboxes started ahead of need, in a background thread.

    `start()` makes a sandbox (it warms up on its own) and `destroy(s)` removes one. An
    exception from `start()` is raised by the `take()` that would have had that sandbox.
    `release()` says a taken sandbox is done; on a CPU-only host the pool counts the taken
    ones until then, so the next warm-up does not compete with the running candidate.
    """

    def __init__(self, start: Callable[[], S], destroy: Callable[[S], None],
                 sizer: Sizer, name: str = "sandbox-pool") -> None:
        self.start, self.destroy, self.sizer = start, destroy, sizer
        self._slots: collections.deque[S | BaseException] = collections.deque()
        self._starting = 0
        self._in_use = 0
        self._closed = False
        self._last_take: float | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._fill, daemon=True, name=name)
        self._thread.start()

    def take(self) -> S:
        """The oldest sandbox (maybe still warming up); its replacement starts now."""
        with self._cond:
            self._wait_for_one()
            slot = self._slots.popleft()
            self._in_use += 1
            self._cond.notify_all()
        if isinstance(slot, BaseException):
            self.release()
            raise slot
        return slot

    def release(self) -> None:
        """A sandbox that take() returned is done (destroyed)."""
        with self._cond:
            self._in_use -= 1
            self._cond.notify_all()

    def peek(self) -> S:
        """The sandbox the next take() returns, left in the pool (waits for one to exist)."""
        with self._cond:
            self._wait_for_one()
            slot = self._slots[0]
        if isinstance(slot, BaseException):
            raise slot
        return slot

    def observe(self, warmup: float | None, waited: float, footprint: Footprint) -> None:
        """After a take: the taken sandbox's warm-up time (None if it never got ready), how
        long the take waited for it, and what it holds."""
        now = time.monotonic()
        with self._cond:
            if warmup is not None:
                self.sizer.observe_warmup(warmup, footprint)
            if self._last_take is not None:
                self.sizer.observe_cycle(now - self._last_take - waited)
            self._last_take = now
            self._cond.notify_all()  # the depth may have grown

    def depth(self) -> int:
        with self._cond:
            return self.sizer.depth()

    def close(self) -> None:
        """Stop refilling and destroy every sandbox held (one being started included)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            slots, self._slots = list(self._slots), collections.deque()
        for slot in slots:
            self._discard(slot)

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._held() >= self.sizer.depth():
                    self._cond.wait()
                if self._closed:
                    return
                self._starting += 1
            try:
                slot: S | BaseException = self.start()
            except Exception as exc:  # handed to the take() that would have had the sandbox
                slot = exc
            with self._cond:
                self._starting -= 1
                if not self._closed:
                    self._slots.append(slot)
                    self._cond.notify_all()
                    continue
            self._discard(slot)
            return

    def _wait_for_one(self) -> None:
        """Until the pool holds a sandbox (call with the lock held)."""
        while not self._slots:
            if self._closed:
                raise RuntimeError("the sandbox pool is closed")
            self._cond.wait()

    def _held(self) -> int:
        """Sandboxes that count against the depth (call with the lock held)."""
        taken = self._in_use if self.sizer.cpu_only else 0
        return len(self._slots) + self._starting + taken

    def _discard(self, slot: S | BaseException) -> None:
        if not isinstance(slot, BaseException):
            with contextlib.suppress(Exception):  # its owner cleans up whatever is left
                self.destroy(slot)
