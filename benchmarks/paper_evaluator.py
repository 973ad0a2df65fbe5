"""Baseline: the paper's public evaluator style, one fresh Python process per candidate.

    python paper_evaluator.py --candidate candidate.py --job job.json --data DATASET_ROOT \
        [--device auto|cpu|cuda] [--workers 2] [--spawn-time UNIX_SECONDS]

Run it with an interpreter that has torch AND torchvision. Nothing is pre-started: every
candidate pays for the interpreter, `import torch, torchvision`, the CUDA context and the data
set up again. The data path is the classic torchvision one: a `datasets`-style Dataset over uint8
HWC arrays that hands PIL images to `transforms.Compose([RandomCrop(H, padding), (Random-
HorizontalFlip()), ToTensor(), Normalize(mean, std)])`, and `DataLoader(batch_size, shuffle=True,
num_workers=2)`. Training: one epoch (job["epochs"]) of SGD with momentum and weight decay,
cosine annealing stepped per batch, `loss.item()` every step; then the test set through a
DataLoader, accuracy computed in the process (this baseline sees the test labels).

DATASET_ROOT is a dataset cache folder (docs/contracts.md): sandbox/{train_x,train_y,test_x}.npy
and labels/test_y.npy. The job JSON is the orchestrator's job.json (same hyper-parameters).

Instrumented: the last stdout line is `PAPER_RESULT {json}` with the phase times in seconds
(start, import, cuda_init, data, setup, train, predict), the accuracy, and `end_time`
(time.time() just before exit) so the caller can measure interpreter teardown.
"""

# ruff: noqa: E402  (the clocks start before anything is imported)
from __future__ import annotations

import time

_T0_WALL = time.time()
_T0 = time.perf_counter()

import argparse
import json
import math
import random
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidate", required=True, type=Path)
    p.add_argument("--job", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="dataset cache root")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--workers", type=int, default=2, help="DataLoader num_workers")
    p.add_argument("--spawn-time", type=float, default=None,
                   help="the caller's time.time() just before it started this process")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    times: dict[str, float] = {}
    times["start"] = _T0_WALL - args.spawn_time if args.spawn_time else 0.0

    # ---- import torch + torchvision (+ PIL through torchvision.transforms)
    t = time.perf_counter()
    import numpy as np
    import torch
    import torch.nn as nn
    import torchvision.transforms as transforms
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision.datasets import VisionDataset
    times["import"] = time.perf_counter() - t

    job = json.loads(args.job.read_text())
    seed = int(job["seed"])
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

    # ---- CUDA context
    t = time.perf_counter()
    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.init()
        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)
    times["cuda_init"] = time.perf_counter() - t

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # ---- data: arrays -> torchvision-style datasets with PIL transforms -> DataLoaders
    t = time.perf_counter()

    class ArrayDataset(VisionDataset):
        """Like torchvision.datasets.CIFAR10 / FashionMNIST: uint8 HWC (or HW) + int targets."""

        def __init__(self, data: np.ndarray, targets: np.ndarray, transform=None) -> None:
            super().__init__(root=None, transform=transform)
            self.data = data
            self.targets = [int(v) for v in targets]

        def __getitem__(self, index: int):
            img, target = self.data[index], self.targets[index]
            img = Image.fromarray(img)  # same as torchvision's CIFAR10 / MNIST datasets
            if self.transform is not None:
                img = self.transform(img)
            return img, target

        def __len__(self) -> int:
            return len(self.data)

    def to_hwc(x: np.ndarray) -> np.ndarray:  # NCHW cache layout -> what torchvision stores
        return np.ascontiguousarray(x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1))

    root = args.data
    train_x = to_hwc(np.load(root / "sandbox" / "train_x.npy"))
    train_y = np.load(root / "sandbox" / "train_y.npy")
    test_x = to_hwc(np.load(root / "sandbox" / "test_x.npy"))
    test_y = np.load(root / "labels" / "test_y.npy")
    size = int(job["input_shape"][1])
    augment = [transforms.RandomCrop(size, padding=int(job["crop_padding"]))]
    if job["flip"]:
        augment.append(transforms.RandomHorizontalFlip())
    to_tensor = [transforms.ToTensor(), transforms.Normalize(job["mean"], job["std"])]
    transform_train = transforms.Compose(augment + to_tensor)
    transform_test = transforms.Compose(to_tensor)
    trainset = ArrayDataset(train_x, train_y, transform_train)
    testset = ArrayDataset(test_x, test_y, transform_test)
    bs = int(job["batch_size"])
    trainloader = DataLoader(trainset, batch_size=bs, shuffle=True, num_workers=args.workers)
    testloader = DataLoader(testset, batch_size=bs, shuffle=False, num_workers=args.workers)
    times["data"] = time.perf_counter() - t

    # ---- the candidate
    t = time.perf_counter()
    namespace: dict = {"__name__": "candidate"}
    exec(compile(args.candidate.read_text(), str(args.candidate), "exec"), namespace)
    net = namespace["Net"]().to(device)
    sync()
    times["setup"] = time.perf_counter() - t

    # ---- train one epoch
    t = time.perf_counter()
    epochs = int(job.get("epochs", 1))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=job["lr"], momentum=job["momentum"],
                                weight_decay=job["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=math.ceil(len(trainset) / bs) * epochs)
    net.train()
    running_loss, steps, first_batch = 0.0, 0, None
    for _ in range(epochs):
        for inputs, labels in trainloader:
            if first_batch is None:
                first_batch = time.perf_counter() - t  # DataLoader worker start-up
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running_loss += loss.item()
            steps += 1
    sync()
    times["train"] = time.perf_counter() - t

    # ---- evaluate on the test set
    t = time.perf_counter()
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in testloader:
            inputs, labels = inputs.to(device), labels.to(device)
            predicted = net(inputs).argmax(1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    sync()
    times["predict"] = time.perf_counter() - t

    result = {
        "accuracy": correct / max(total, 1),
        "times": times,
        "steps": steps,
        "final_loss": loss.item() if steps else None,
        "mean_loss": running_loss / max(steps, 1),
        "first_batch_seconds": first_batch,
        "device": str(device),
        "torch": torch.__version__,
        "torchvision": sys.modules["torchvision"].__version__,
        "torch_threads": torch.get_num_threads(),
        "workers": args.workers,
        "params": sum(p.numel() for p in net.parameters()),
        "in_process_seconds": time.perf_counter() - _T0,
        "end_time": time.time(),
    }
    print("PAPER_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
