"""Smoke test of the evaluator benchmark's building blocks (no torchvision, a few seconds).

The benchmark itself (benchmarks/evaluator_speed.py) trains real networks for minutes; here we
only check that its reference candidates honour the `Net()` contract for both input shapes it
uses, and that its synthetic data and job follow docs/contracts.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import reference_nets

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", reference_nets.NAMES)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_reference_net_builds_and_outputs_logits(name: str, shape: tuple[int, int, int]) -> None:
    namespace: dict = {}
    exec(compile(reference_nets.source(name, shape[0], 10), name, "exec"), namespace)
    model = namespace["Net"]()  # the contract: no arguments
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert tuple(out.shape) == (2, 10)
    assert out.is_floating_point() and torch.isfinite(out).all()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].in_channels == shape[0]  # the channel count is baked into the source


def test_reference_nets_span_small_to_resnet18() -> None:
    sizes = {}
    for name in reference_nets.NAMES:
        namespace: dict = {}
        exec(reference_nets.source(name), namespace)
        sizes[name] = sum(p.numel() for p in namespace["Net"]().parameters())
    assert sizes["tiny"] < 100_000 < sizes["vgg"] < 5_000_000 < sizes["resnet18"]
    assert 11_000_000 < sizes["resnet18"] < 11_500_000  # ResNet-18 for 32x32, 10 classes
    with pytest.raises(KeyError):
        reference_nets.source("nope")


def test_synthetic_data_and_job_follow_the_contracts(tmp_path) -> None:
    from benchmarks import evaluator_speed as bench

    prepared = bench.synthetic_cifar(tmp_path, train=300, test=100)
    sandbox = prepared.sandbox_dir
    assert sorted(p.name for p in sandbox.iterdir()) == ["test_x.npy", "train_x.npy",
                                                          "train_y.npy"]
    train_x = np.load(sandbox / "train_x.npy")
    assert train_x.shape == (300, 3, 32, 32) and train_x.dtype == np.uint8
    labels = prepared.test_labels()
    assert labels.shape == (100,) and labels.dtype == np.uint8 and set(labels) <= set(range(10))
    meta = json.loads((prepared.root / "meta.json").read_text())
    assert meta["train_count"] == 300 and meta["flip"] is True and len(meta["mean"]) == 3
    job = bench.loop_job(prepared, seed=7, device="cpu")
    assert job["input_shape"] == [3, 32, 32] and job["mean"] == meta["mean"]
    assert (job["batch_size"], job["lr"], job["momentum"], job["weight_decay"]) == (
        128, 0.01, 0.9, 0.0005)
    assert job["seed"] == 7 and job["crop_padding"] == 4 and job["epochs"] == 1
    again = bench.synthetic_cifar(tmp_path, train=300, test=100)  # cached, same data
    assert again.fingerprint == prepared.fingerprint


def test_gpu_tenants_checks_peaks_against_budgets_and_refuses_to_run_without_a_gpu(
        tmp_path, monkeypatch) -> None:
    """benchmarks/gpu_tenants.py needs a GPU; here its verdict on a run's records, and its
    answer where NVML sees none."""
    from types import SimpleNamespace

    from benchmarks import gpu_tenants, search_throughput

    cycle = search_throughput.build_cycle(["tiny"])
    (tmp_path / "candidates").mkdir()
    records = []
    for i, (status, peak) in enumerate([("ok", 3 << 30), ("shape_error", None)], start=1):
        reply = tmp_path / f"candidates/iter_{i:04d}.reply.md"
        reply.write_text(cycle[i - 1].content)
        metrics = {"gpu_budget_bytes": 4 << 30, **({"gpu_peak_bytes": peak} if peak else {})}
        records.append({"iteration": i, "chain": 0, "status": status, "metrics": metrics,
                        "reply_file": str(reply.relative_to(tmp_path))})
    args = SimpleNamespace(parallel=1, iterations=2)
    assert gpu_tenants.checks(0, records, tmp_path, cycle, args, intact=True) == []
    records[0]["metrics"]["gpu_peak_bytes"] = 5 << 30
    records[1]["error"] = {"type": "CrowdedOut"}
    problems = gpu_tenants.checks(0, records, tmp_path, cycle, args, intact=False)
    assert problems == ["chain 0 it 1: peak 5368709120 over its budget 4294967296",
                        "chain 0 it 2: crowded out of its budget",
                        "the server's held memory changed under the candidates"]
    monkeypatch.setattr(gpu_tenants, "gpu_memory", lambda: [])
    assert gpu_tenants.main([]) == 2
