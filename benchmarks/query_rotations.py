"""What searching a query at several rotations costs a user: end-to-end query time (decoding,
feature extraction of every turned view, search) with and without ``query_rotations``.

Each query image is searched both ways in turn (so both share the machine's load), from its
file, with no feature cache: the query's features are extracted as a user's query's are.
Scores are measured by ``cbir eval --index DIR --rotations 0,90,270`` (RESULTS.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import time

import numpy as np

from benchmarks.common import write_result


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", action="append", required=True,
                        help="LABEL=DIR: a saved index and the glob of its query images follow with --queries")
    parser.add_argument("--queries", action="append", required=True,
                        help="glob of query images, one per --index, in the same order")
    parser.add_argument("--count", type=int, default=50, help="queries per index (the first of the sorted glob)")
    parser.add_argument("--rotations", default="0,90,270", help="angles searched (degrees, counter-clockwise)")
    parser.add_argument("--name", default="query_rotations", help="result file name under benchmarks/results")
    return parser.parse_args()


def timed(search) -> float:
    """Milliseconds ``search()`` takes."""
    start = time.perf_counter()
    search()
    return (time.perf_counter() - start) * 1e3


def main():
    args = parse_args()
    if len(args.index) != len(args.queries):
        raise SystemExit("give one --queries glob per --index")
    from cbir.searchable import load_index
    rotations = tuple(int(angle) for angle in args.rotations.split(","))
    lines = [f"End-to-end query time (file -> top 10: decoding, extraction of each view, search), median over "
             f"the first {args.count} query images, each searched plainly and at rotations {args.rotations} in "
             f"turn; no feature cache.", "",
             "| index | query images | plain ms | rotated ms | rotated / plain |", "|---|---|---|---|---|"]
    for spec, pattern in zip(args.index, args.queries):
        label, directory = spec.split("=", 1)
        index = load_index(directory, cache_dir=None)
        turned = dataclasses.replace(index.pipeline.search, query_rotations=rotations)
        queries = sorted(glob.glob(pattern))[:args.count]
        index.search(queries[0], top_k=10)  # warm-up: the backbone's first run
        plain, rotated = [], []
        for query in queries:
            plain.append(timed(lambda: index.search(query, top_k=10)))
            rotated.append(timed(lambda: index.search(query, top_k=10, options=turned)))
        plain_ms, rotated_ms = float(np.median(plain)), float(np.median(rotated))
        lines.append(f"| {label} | {len(queries)} x `{os.path.basename(pattern)}` | {plain_ms:.0f} | "
                     f"{rotated_ms:.0f} | {rotated_ms / plain_ms:.2f} |")
        print(lines[-1], flush=True)
    print("wrote", write_result(args.name, "\n".join(lines)))


if __name__ == "__main__":
    main()
