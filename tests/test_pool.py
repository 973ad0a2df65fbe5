"""The warm-sandbox pool (orchestrator/sandbox/pool.py): its sizing rule and its bookkeeping.

The pool is generic over what it keeps; here it keeps plain tokens, so its own contract is
tested alone. The sandboxes that use it are tested with real runners in test_local_sandbox.py
and test_docker_sandbox.py.
"""

from __future__ import annotations

import threading

import pytest

from orchestrator.gpu.plan import CUDA_CONTEXT_BYTES, WARM_GPU_SHARE
from orchestrator.sandbox.pool import (
    AUTO_MAX_DEPTH,
    FIRST_DEPTH,
    WARM_MEMORY_SHARE,
    Footprint,
    PoolSize,
    Sizer,
    WarmPool,
)

GIB = 1 << 30
GPU_RUNNER = Footprint(rss_bytes=GIB, gpu_total_bytes=80 * GIB)  # holds a context, no data
WAIT = 30  # seconds an event wait may take before the test fails (never reached when passing)


def sizer(depth: int | None = None, share: float = 1.0, host: int = 64 * GIB) -> Sizer:
    return Sizer(PoolSize(depth=depth, share=share), host_memory=host)


def test_depth_covers_the_warmup_with_the_measured_cycle() -> None:
    s = sizer()
    assert s.depth() == FIRST_DEPTH  # nothing measured yet
    s.observe_warmup(8.0, GPU_RUNNER)
    s.observe_cycle(2.5)
    assert s.depth() == 4  # a sandbox started 4 takes ahead is warm: 4 x 2.5 s >= 8 s
    s.observe_cycle(2.5)
    s.observe_cycle(20.0)  # a slow LLM: the median cycle is still 2.5 s
    assert s.depth() == 4


def test_a_slow_llm_needs_one_warm_sandbox() -> None:
    s = sizer()
    s.observe_warmup(8.0, GPU_RUNNER)
    s.observe_cycle(11.0)  # a 7B model's generation and diagnosis outlast the warm-up
    assert s.depth() == 1


def test_depth_is_bounded_by_host_memory() -> None:
    s = sizer(host=16 * GIB, share=0.5)
    s.observe_warmup(60.0, GPU_RUNNER)
    s.observe_cycle(1.0)
    assert s.depth() == int(0.5 * WARM_MEMORY_SHARE * 16) == 2
    unbounded = sizer(host=1024 * GIB)
    unbounded.observe_warmup(60.0, GPU_RUNNER)
    unbounded.observe_cycle(1.0)
    assert unbounded.depth() == AUTO_MAX_DEPTH


def test_depth_is_bounded_by_gpu_memory() -> None:
    held = Footprint(rss_bytes=1, gpu_bytes=GIB - CUDA_CONTEXT_BYTES, gpu_total_bytes=80 * GIB)
    s = sizer(share=0.25)
    s.observe_warmup(60.0, held)
    s.observe_cycle(1.0)
    assert s.depth() == int(0.25 * WARM_GPU_SHARE * 80) == 2


def test_the_gpu_plans_reservation_bounds_the_depth() -> None:
    held = Footprint(rss_bytes=1, gpu_bytes=GIB - CUDA_CONTEXT_BYTES, gpu_total_bytes=80 * GIB)
    s = Sizer(PoolSize(share=0.25, gpu_bytes=3 * GIB), host_memory=64 * GIB)
    s.observe_warmup(60.0, held)
    s.observe_cycle(1.0)
    assert s.depth() == 3  # not a quarter of a tenth of 80 GiB (2): what the plan set aside


def test_never_less_than_one_and_a_fixed_depth_wins() -> None:
    s = sizer(host=GIB)
    s.observe_warmup(60.0, Footprint(rss_bytes=4 * GIB, gpu_total_bytes=80 * GIB))  # too big
    s.observe_cycle(0.0)
    assert s.depth() == 1
    fixed = sizer(depth=5)
    fixed.observe_warmup(0.1, Footprint(rss_bytes=GIB))
    fixed.observe_cycle(10.0)
    assert fixed.depth() == 5


@pytest.mark.parametrize("line, expected", [
    (b'READY {"rss_bytes": 5, "gpu_bytes": 7, "gpu_total_bytes": 9}', Footprint(5, 7, 9)),
    (b"READY", Footprint()),
    (b"READY {not json", Footprint()),
    (b'READY ["a list"]', Footprint()),
    (b'READY {"rss_bytes": -5, "gpu_bytes": "x"}', Footprint()),
])
def test_footprint_from_the_ready_line(line: bytes, expected: Footprint) -> None:
    assert Footprint.parse(line) == expected


class Tokens:
    """start/destroy for a pool of numbered tokens, with events to wait on."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.started: list[int] = []
        self.destroyed: list[int] = []
        self.fail_at = fail_at
        self.changed = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        self.calls = threading.Semaphore(0)  # one release per start() entered

    def start(self) -> int:
        self.calls.release()
        assert self.gate.wait(WAIT)
        with self.changed:
            n = len(self.started)
            self.started.append(n)
            self.changed.notify_all()
        if n == self.fail_at:
            raise OSError(f"token {n} could not start")
        return n

    def destroy(self, token: int) -> None:
        with self.changed:
            self.destroyed.append(token)
            self.changed.notify_all()

    def wait_started(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.started) >= count, WAIT)


def test_takes_in_start_order_and_starts_a_replacement_at_once() -> None:
    tokens = Tokens()
    pool = WarmPool(tokens.start, tokens.destroy, sizer(depth=3))
    tokens.wait_started(3)
    assert pool.take() == 0
    tokens.wait_started(4)  # the replacement starts when a sandbox is taken, not after its use
    assert [pool.take(), pool.take(), pool.take()] == [1, 2, 3]
    tokens.wait_started(7)  # 3 kept ahead of the 4 taken
    pool.close()
    assert tokens.started == list(range(7))
    assert sorted(tokens.destroyed) == [4, 5, 6]  # the unused ones, never the taken


def test_close_destroys_one_still_starting() -> None:
    tokens = Tokens()
    pool = WarmPool(tokens.start, tokens.destroy, sizer(depth=1))
    tokens.wait_started(1)
    tokens.gate.clear()  # the replacement blocks in start()
    assert pool.take() == 0
    assert tokens.calls.acquire(timeout=WAIT) and tokens.calls.acquire(timeout=WAIT)
    closing = threading.Thread(target=pool.close)
    closing.start()
    tokens.gate.set()
    closing.join(WAIT)
    assert not closing.is_alive()
    assert tokens.destroyed == [1]
    with pytest.raises(RuntimeError, match="closed"):
        pool.take()


def test_a_failed_start_is_raised_by_the_take_that_would_have_had_it() -> None:
    tokens = Tokens(fail_at=1)
    pool = WarmPool(tokens.start, tokens.destroy, sizer(depth=1))
    assert pool.take() == 0
    with pytest.raises(OSError, match="token 1 could not start"):
        pool.take()
    assert pool.take() == 2  # the pool goes on
    pool.close()


def test_on_a_cpu_only_host_the_next_warmup_waits_for_the_running_candidate() -> None:
    """A CPU runner's warm-up would compete with the candidate for the same cores: the auto
    pool keeps one sandbox, and starts the next when the taken one is released."""
    tokens = Tokens()
    pool = WarmPool(tokens.start, tokens.destroy, sizer())
    tokens.wait_started(1)
    pool.observe(3.0, 0.0, Footprint(rss_bytes=GIB))  # what a CPU runner's READY line says
    pool.observe(3.0, 0.0, Footprint(rss_bytes=GIB))  # and a cycle far shorter than 3 s
    assert pool.sizer.cpu_only and pool.depth() == 1
    assert pool.take() == 0
    assert tokens.started == [0]  # the candidate runs alone
    pool.release()
    tokens.wait_started(2)
    pool.close()
    assert tokens.destroyed == [1]
    gpu = sizer()
    gpu.observe_warmup(3.0, Footprint(rss_bytes=GIB, gpu_bytes=GIB, gpu_total_bytes=80 * GIB))
    assert not gpu.cpu_only and not sizer(depth=3).cpu_only
