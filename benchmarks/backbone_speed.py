"""Backbone time per image (EfficientNet-Lite0 feature maps), CPU and/or CUDA.

Images go through the network one by one at their own size (up to --max-side),
as the engine does; the first image is a warm-up and is not timed.
"""
from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import torch

from bovw.images import ImageOptions, load_image
from cnn.backbone import Backbone
from cnn.options import BackboneOptions


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", help="folder of images")
    parser.add_argument("--n", type=int, default=50, help="images timed")
    parser.add_argument("--devices", default="cpu", help="comma-separated: cpu, cuda")
    parser.add_argument("--max-side", type=int, default=1024, help="longest side fed to the network")
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(args.images, "*.jpg")))[:args.n + 1]
    images = [load_image(p, ImageOptions(max_side=args.max_side), color=True) for p in paths]
    reference = None
    for device in args.devices.split(","):
        backbone = Backbone(BackboneOptions(max_side=args.max_side), device=device, cpu_threads=args.cpu_threads)
        maps = backbone.feature_maps(images[0])
        if reference is None:
            reference = maps
        else:
            for name in ("local", "global"):
                scale = np.abs(reference[name]).max()
                print(f"{device} vs {args.devices.split(',')[0]}: {name} map max abs difference "
                      f"{np.abs(maps[name] - reference[name]).max() / scale:.2e} of its range")
            print(f"{device}: same top-1 class as {args.devices.split(',')[0]}: "
                  f"{int(np.argmax(maps['logits'])) == int(np.argmax(reference['logits']))}")
        times = []
        for image in images[1:]:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            backbone.feature_maps(image)  # returns numpy arrays: includes the copy back
            times.append((time.perf_counter() - start) * 1e3)
        name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({args.cpu_threads} thread(s))"
        print(f"{name}: {np.median(times):.1f} ms/image median, {np.percentile(times, 95):.1f} p95, "
              f"{len(times)} images of {images[1].shape[1]}x{images[1].shape[0]}")


if __name__ == "__main__":
    main()
