"""Peak memory of ``cbir index`` as the collection grows, on photo-sized images.

Collections of N photo-sized images are made from the ten Sacre-Coeur photos
(~1024 px) by small random crops, flips and brightness changes (each copy has its
own bytes, so nothing is shared through the feature cache), then indexed by the
``cbir index`` command under ``/usr/bin/time -v``; the peak resident set size of
each run is reported. Learned parts come from 50 UKBench images (``--train-root``).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageEnhance

from benchmarks.common import DEFAULT_DATA, write_result

CBIR = os.path.join(os.path.dirname(sys.executable), "cbir")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--sizes", default="250,1000", help="collection sizes (comma-separated)")
    parser.add_argument("--methods", default="sift-he,blcf", help="pipelines (comma-separated)")
    parser.add_argument("--jobs", type=int, default=2, help="extraction threads")
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


def main():
    args = parse_args()
    photos = sorted(glob.glob(os.path.join(args.data, "sacre_coeur", "*.jpg")))
    train = sorted(glob.glob(os.path.join(args.data, "ukbench", "*.jpg")))[:50]
    lines = ["| pipeline | images | peak RSS GB | wall s |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        for size in (int(s) for s in args.sizes.split(",")):
            folder = os.path.join(scratch, f"photos{size}")
            os.makedirs(folder)
            make_collection(photos, size, folder)
            for method in args.methods.split(","):
                out = os.path.join(scratch, f"index-{method}-{size}")
                run = subprocess.run(["/usr/bin/time", "-v", CBIR, "index", folder, "-o", out, "--method", method,
                                      "--train-root", *train, "--cache", "", "--jobs", str(args.jobs)],
                                     capture_output=True, text=True)
                if run.returncode:
                    raise SystemExit(run.stderr[-2000:])
                peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1)) / 2 ** 20
                wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", run.stderr).group(1)
                seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
                lines.append(f"| {method} | {size} | {peak:.2f} | {seconds:.0f} |")
                print(lines[-1], flush=True)
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
