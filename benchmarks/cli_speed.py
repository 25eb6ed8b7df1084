"""How long ``cbir query`` takes from the shell: one query (process start, imports, index load,
search) and a batch of queries in one call against the same work done from Python.

Runs on the indexes ``make demo`` builds under ``work/`` (``--index`` to choose others).
The Python side is timed in this process after its imports, the way a notebook user
works: load the index, search every query. Both sides extract the query features
(queries are not in the feature cache unless indexed from the same cache).
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

from benchmarks.common import REPO, write_result

CBIR = os.path.join(os.path.dirname(sys.executable), "cbir")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", action="append",
                        help="index directories (default: the demo's sift-he and sift-bow Holidays indexes)")
    parser.add_argument("--queries", default=os.path.join(REPO, "..", "shared", "data", "holidays", "1*00.jpg"),
                        help="glob of query images (default: Holidays' query images)")
    parser.add_argument("--batch", type=int, default=100, help="queries in the batch comparison")
    parser.add_argument("--repeats", type=int, default=5, help="runs of the single-query command")
    parser.add_argument("--name", default="cli_speed", help="result file name under benchmarks/results")
    return parser.parse_args()


def wall(command: list[str]) -> float:
    """Seconds a command takes (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    return time.perf_counter() - start


def main():
    args = parse_args()
    indexes = args.index or [os.path.join(REPO, "work", "index-sift-141x2-he-holidays"),
                             os.path.join(REPO, "work", "index-sift-10x6-holidays")]
    queries = sorted(glob.glob(args.queries))[:args.batch]
    lines = [f"Single query: `cbir query QUERY --index INDEX --top-k 10 --cache ''` (median of {args.repeats}; "
             f"process start, imports, index load and search); batch: {len(queries)} Holidays queries in one "
             f"`cbir query` call against `load_index` + `search` of each in Python.", "",
             "| index | load | single query s (median) | batch CLI s | batch Python s | CLI / Python |",
             "|---|---|---|---|---|---|"]
    from cbir.searchable import load_index
    for directory in indexes:
        for mmap in (False, True):
            flags = [] if mmap else ["--checksums"]
            single = np.median([wall([CBIR, "query", queries[0], "--index", directory, "--top-k", "10",
                                      "--cache", "", *flags]) for _ in range(args.repeats)])
            with tempfile.TemporaryDirectory() as scratch:
                cli = wall([CBIR, "query", *queries, "--index", directory, "--top-k", "10", "--cache", "",
                            "--format", "jsonl", "-o", os.path.join(scratch, "out.jsonl"), *flags])
            start = time.perf_counter()
            index = load_index(directory, verify=not mmap, mmap=mmap)
            for query in queries:
                index.search(query, top_k=10)
            python = time.perf_counter() - start
            lines.append(f"| {os.path.basename(directory)} ({index.pipeline.name}, {len(index)} images) | "
                         f"{'mmap' if mmap else 'read + checksums'} | {single:.2f} | {cli:.1f} | {python:.1f} | "
                         f"{cli / python:.2f} |")
            print(lines[-1], flush=True)
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
