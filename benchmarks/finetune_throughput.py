"""LoRA fine-tuning throughput through the product: `orchestrator finetune` on random-weight
Qwen2 models of growing size (no weights can be downloaded) and a corpus of real `Net` code.

    python benchmarks/finetune_throughput.py                     # CPU sizes
    python benchmarks/finetune_throughput.py --sizes 1024x8,2048x16   # on a GPU

Prints, per size (hidden x layers): parameters, examples, tokens trained on, seconds and
tokens/s, as `orchestrator finetune` measured them (train_result.json).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from tests import replies  # noqa: E402
from tests.tiny_lm import build_tiny_qwen2  # noqa: E402

NETS = [replies.VALID_NET, replies.VALID_NET_WIDER, replies.NAN_NET, replies.RUNTIME_ERROR_NET]


def corpus(path: Path, examples: int) -> Path:
    with path.open("w") as f:
        for i in range(examples):
            f.write(json.dumps({"messages": [
                {"role": "system", "content": "You design PyTorch networks."},
                {"role": "user", "content": f"Write a Net for 10 classes (variant {i})."},
                {"role": "assistant", "content": NETS[i % len(NETS)]},
            ]}) + "\n")
    return path


def measure(work: Path, hidden: int, layers: int, examples: int, epochs: float) -> dict:
    model = build_tiny_qwen2(work / f"qwen2-{hidden}x{layers}", hidden=hidden, layers=layers)
    params = _params(model)
    out = work / f"ft-{hidden}x{layers}"
    subprocess.run([sys.executable, "-m", "orchestrator", "finetune",
                    str(corpus(work / "corpus.jsonl", examples)), "--base-model", str(model),
                    "--out", str(out), "--epochs", str(epochs), "--lr", "1e-4"], check=True)
    result = json.loads((out / "train_result.json").read_text())
    return {"size": f"{hidden}x{layers}", "params": params, "examples": examples,
            "tokens": result["tokens"], "seconds": round(result["seconds"], 1),
            "tokens_per_s": round(result["tokens_per_second"]),
            "loss_first_last": (round(result["losses"][0], 3), round(result["losses"][-1], 3))}


def _params(model: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x2,256x4", help="hidden x layers, comma-separated")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            hidden, layers = (int(x) for x in size.split("x"))
            rows.append(measure(Path(tmp), hidden, layers, args.examples, args.epochs))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
