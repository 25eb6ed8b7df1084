"""Building a large index through the public API: one call against batches of 1000, at growing sizes.

Synthetic images (no decoding or extraction): each has ``--features`` local
features with 8-d descriptors drawn around the words of a 10^4-word vocabulary tree
(10^4), so the figures measure quantization plus the index's own bookkeeping
(name registry, image store, inverted file). ``RetrievalIndex.add_features`` is
what ``add_images`` calls for every batch of 1000 extracted images; "one call"
passes all images at once. If adding is linear, the time per 1000 images stays
flat as the collection grows, in both modes.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from benchmarks.common import write_result
from bovw.features import LocalFeatures
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from cbir.retrieval_index import RetrievalIndex


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,30000,100000", help="collection sizes (comma-separated)")
    parser.add_argument("--features", type=int, default=300, help="features per synthetic image")
    parser.add_argument("--batch", type=int, default=1000, help="images per add_features call in batched mode")
    parser.add_argument("--name", default="incremental_add", help="result file name under benchmarks/results")
    return parser.parse_args()


def synthetic_images(vocabulary_centers: np.ndarray, n: int, features: int, seed: int) -> list[LocalFeatures]:
    """n images of ``features`` (x, y, scale, angle) keypoints and 8-d descriptors near random words."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, len(vocabulary_centers), n * features)
    descriptors = (vocabulary_centers[words] + rng.normal(0, 0.01, (n * features, 8))).astype(np.float32)
    keypoints = np.c_[rng.random((n * features, 2)) * 1000, np.ones((n * features, 2))].astype(np.float32)
    return [LocalFeatures(keypoints[i * features:(i + 1) * features], descriptors[i * features:(i + 1) * features],
                          (768, 1024)) for i in range(n)]


def build(vocabulary, images: list[LocalFeatures], batch: int) -> float:
    """Seconds to add ``images`` in batches of ``batch`` (0: one call) and run one search."""
    index = RetrievalIndex("sift-bow", vocabulary)
    names = [f"img{i:07d}" for i in range(len(images))]
    step = batch or len(images)
    start = time.perf_counter()
    for first in range(0, len(images), step):
        index.add_features(names[first:first + step], images[first:first + step])
    index.search(images[0], top_k=10)  # joins whatever is pending
    return time.perf_counter() - start


def main():
    args = parse_args()
    rng = np.random.default_rng(0)
    centers = rng.random((20_000, 8)).astype(np.float32)
    start = time.perf_counter()
    vocabulary = VocabularyTree.train(centers, VocabularyConfig(branching=10, depth=4, seed=0), verbose=False)
    train_s = time.perf_counter() - start
    leaves = vocabulary.quantize(centers)
    lines = [f"Vocabulary {vocabulary.n_words} words (10^4, {train_s:.0f} s); {args.features} features per image "
             f"(8-d descriptors); pipeline sift-bow (beam 3 descent, hard assignment of database features).", "",
             "| images | features | one call s | batches of 1000 s | batched / one call | "
             "one call ms per 1000 images | batched ms per 1000 images | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|"]
    for size in (int(s) for s in args.sizes.split(",")):
        images = synthetic_images(centers[np.unique(leaves)], size, args.features, seed=size)
        batched = build(vocabulary, images, args.batch)
        whole = build(vocabulary, images, 0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        lines.append(f"| {size} | {size * args.features} | {whole:.1f} | {batched:.1f} | {batched / whole:.2f} | "
                     f"{1000 * whole / size * 1e3:.0f} | {1000 * batched / size * 1e3:.0f} | {peak:.1f} |")
        print(lines[-1], flush=True)
        del images
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
