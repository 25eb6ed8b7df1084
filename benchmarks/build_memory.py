"""Peak memory of ``cbir index`` as the collection grows, on photo-sized images.

Collections of N photo-sized images are made from the ten Sacre-Coeur photos
(~1024 px) by small random crops, flips and brightness changes (each copy has its
own bytes, so nothing is shared through the feature cache), then indexed by the
``cbir index`` command. The resident set sizes of its process tree (the command and
its extraction worker processes) are sampled every 0.3 s: the peak of their sum is
reported (an upper bound: pages shared between processes count once per process),
and the peak of the largest process. Learned parts come from 50 UKBench images
(``--train-root``).
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageEnhance

from benchmarks.common import DEFAULT_DATA, write_result

CBIR = os.path.join(os.path.dirname(sys.executable), "cbir")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--sizes", default="250,1000", help="collection sizes (comma-separated)")
    parser.add_argument("--methods", default="sift-he,blcf", help="pipelines (comma-separated)")
    parser.add_argument("--jobs", type=int, default=2, help="extraction workers")
    parser.add_argument("--name", default="build_memory", help="result file name under benchmarks/results")
    return parser.parse_args()


def make_collection(photos: list[str], n: int, folder: str, seed: int = 0) -> None:
    """``n`` perturbed JPEG copies of ``photos`` in ``folder``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = Image.open(photos[i % len(photos)]).convert("RGB")
        w, h = image.size
        dx, dy = rng.integers(0, w // 10), rng.integers(0, h // 10)
        image = image.crop((dx, dy, w - rng.integers(0, w // 10), h - rng.integers(0, h // 10)))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
        image.save(os.path.join(folder, f"copy{i:05d}.jpg"), quality=90)


def tree_rss_gb(pid: int) -> tuple[float, float]:
    """(sum, largest) resident set size in GB of process ``pid`` and its descendants (from ``ps``)."""
    rows = [tuple(map(int, line.split())) for line in
            subprocess.run(["ps", "-eo", "pid,ppid,rss"], capture_output=True, text=True).stdout.splitlines()[1:]]
    tree, grown = {pid}, True
    while grown:
        grown = False
        for child, parent, _ in rows:
            if parent in tree and child not in tree:
                tree.add(child)
                grown = True
    sizes = [rss for child, _, rss in rows if child in tree]
    return sum(sizes) / 2 ** 20, max(sizes, default=0) / 2 ** 20


def peak_memory(command: list[str]) -> tuple[float, float, float]:
    """Run ``command``: (peak tree RSS GB, peak largest-process RSS GB, wall seconds)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    total = largest = 0.0
    while process.poll() is None:
        tree, one = tree_rss_gb(process.pid)
        total, largest = max(total, tree), max(largest, one)
        time.sleep(0.3)
    if process.returncode:
        raise SystemExit(process.stderr.read()[-2000:])
    return total, largest, time.perf_counter() - start


def main():
    args = parse_args()
    photos = sorted(glob.glob(os.path.join(args.data, "sacre_coeur", "*.jpg")))
    train = sorted(glob.glob(os.path.join(args.data, "ukbench", "*.jpg")))[:50]
    lines = ["| pipeline | images | peak RSS GB, process tree | peak RSS GB, largest process | wall s |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        for size in (int(s) for s in args.sizes.split(",")):
            folder = os.path.join(scratch, f"photos{size}")
            os.makedirs(folder)
            make_collection(photos, size, folder)
            for method in args.methods.split(","):
                out = os.path.join(scratch, f"index-{method}-{size}")
                total, largest, seconds = peak_memory([CBIR, "index", folder, "-o", out, "--method", method,
                                                       "--train-root", *train, "--cache", "", "--jobs", str(args.jobs)])
                lines.append(f"| {method} | {size} | {total:.2f} | {largest:.2f} | {seconds:.0f} |")
                print(lines[-1], flush=True)
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
