"""Proxy fidelity: does the one-epoch ranking of a search survive full training?

    .venv/bin/python benchmarks/proxy_fidelity.py [--designs 10] [--epochs 30] [--seeds 1]
        [--train-samples N] [--test-samples M] [--device auto|cpu|cuda] [--json PATH]

Runs the product end to end, through its CLI: `orchestrator run` on real Fashion-MNIST against
`tests.fake_ollama.FakeOllama`, which answers the k-th generation with the k-th of --designs
distinct CNNs (width, depth and normalisation vary), selecting on the validation split; then
`orchestrator retrain RUN --top D --epochs E --seeds S`, and prints its table and the Spearman
and Kendall correlations between one-epoch and converged accuracy (from the retrain's
summary.json). Exit code 1 when a command fails or fewer than three designs converge.

On a GPU: `--designs 10 --epochs 30` on the full dataset (no subset flags) is the figure the
closing notes report; on a CPU, small subsets and few epochs (the defaults) keep it in minutes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.search_throughput import (  # noqa: E402
    DATASET,
    DEFAULT_DATA_DIR,
    FASHION_SOURCE,
    MODEL,
)
from orchestrator.data import datasets  # noqa: E402
from tests import replies  # noqa: E402
from tests.fake_ollama import FakeOllama, Reply  # noqa: E402

RUN = "fidelity"

# (widths of the conv stages, batch norm): from a linear-ish probe to a wide three-stage net.
FAMILY = [((4,), False), ((8,), True), ((16,), True), ((8, 16), False), ((16, 32), True),
          ((32, 64), True), ((8, 16, 32), True), ((16, 32, 64), False), ((32, 64, 128), True),
          ((64, 128), True), ((4, 8), True), ((24, 48, 96), True)]

TEMPLATE = '''```python
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        layers, cin = [], {in_channels}
        for cout in {widths}:
            layers += [nn.Conv2d(cin, cout, 3, padding=1), {norm}nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, {num_classes}))

    def forward(self, x):
        return self.head(self.features(x))
```
'''


def design(k: int, in_channels: int, num_classes: int) -> str:
    widths, norm = FAMILY[k % len(FAMILY)]
    return TEMPLATE.format(in_channels=in_channels, widths=widths, num_classes=num_classes,
                           norm="nn.BatchNorm2d(cout), " if norm else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--designs", type=int, default=6)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--train-samples", type=int, default=5000)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--full", action="store_true", help="The whole dataset (no subset).")
    p.add_argument("--device", default="auto")
    p.add_argument("--sandbox", default="local")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--results-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not 3 <= args.designs <= len(FAMILY):
        p.error(f"--designs must be in [3, {len(FAMILY)}]")
    return args


def run(cmd: list[str], log: Path) -> tuple[int, float, str]:
    print(f"$ {shlex.join(cmd)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    return proc.returncode, time.perf_counter() - started, proc.stdout


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir.expanduser().resolve()
    spec = datasets.prepare(DATASET, data_dir, FASHION_SOURCE, progress=False).spec
    results = (args.results_dir or Path(tempfile.mkdtemp(prefix="proxy-fidelity-"))).resolve()
    results.mkdir(parents=True, exist_ok=True)
    codes = [design(k, spec.input_shape[0], spec.num_classes) for k in range(args.designs)]
    calls = {"n": 0}

    def respond(body: dict) -> Reply:
        if body.get("format"):
            return Reply(content=replies.diagnosis_json("r", "i", "s"))
        calls["n"] += 1
        return Reply(content=codes[(calls["n"] - 1) % len(codes)])

    subset = [] if args.full else ["--train-samples", str(args.train_samples),
                                   "--test-samples", str(args.test_samples)]
    common = ["--results-dir", str(results)]
    with FakeOllama(models=[MODEL], default=respond) as server:
        search = [sys.executable, "-m", "orchestrator", "run", "--dataset", DATASET,
                  "--iterations", str(args.designs), "--sandbox", args.sandbox,
                  "--device", args.device, "--generator-model", MODEL, "--improver-model",
                  MODEL, "--no-pull", "--ollama-host", server.url, "--data-dir",
                  str(data_dir), "--name", RUN, "--timeout", f"{args.timeout:g}", *subset,
                  *common]
        rc, search_s, _ = run(search, results / "search.log")
    if rc != 0:
        print(f"search failed ({rc}); log: {results / 'search.log'}")
        return 1
    retrain = [sys.executable, "-m", "orchestrator", "retrain", RUN, "--top",
               str(args.designs), "--epochs", str(args.epochs), "--seeds", str(args.seeds),
               *common]
    rc, retrain_s, table = run(retrain, results / "retrain.log")
    if rc != 0:
        print(f"retrain failed ({rc}); log: {results / 'retrain.log'}")
        return 1
    summary = json.loads((results / RUN / "retrain" / "summary.json").read_text())
    print(table)
    print(f"search {search_s:.0f} s ({args.designs} designs, one epoch each); retrain "
          f"{retrain_s:.0f} s ({args.epochs} epochs x {args.seeds} seeds); results: {results}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "search_s": search_s, "retrain_s": retrain_s,
                                         "summary": summary}, indent=2))
    converged = [d for d in summary.get("designs", []) if d.get("test_mean") is not None]
    return 0 if len(converged) >= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
