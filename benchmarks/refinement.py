"""Ranking refinement on Holidays-811 and UKBench-1000: query expansion and diffusion for the CNN
pipelines, verified-edge diffusion, sift-he-sv-qe and the SIFT + CNN fusion.

Everything learned comes from the *other* set (CNN whitening; the sift-he vocabulary and
Hamming embedding); the diffusion graphs are built on the evaluated database itself
(unsupervised, no labels), as ``cbir eval`` does. Rows are what ``cbir eval --method M
--train-root OTHER --whiten-root OTHER`` (plus the listed search options) reports.

Verified-edge diffusion (``FusionConfig.verified_edges``): while the fusion index is
built, every added image queries its sift-he part with spatial verification (top 100);
pairs with at least ``--edge-inliers`` inliers join their images in the rmac kNN graph
with weight 1, and the CNN part's diffusion runs on that graph. Build times are given
with and without it (extraction comes from the feature cache in both).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, OTHER, benchmark_datasets, write_result
from cbir.build import build_index
from cbir.evaluate import index_dataset, run_queries
from cbir.pipelines import get_pipeline
from index.search_options import FusionConfig, SearchOptions

GLOBAL = ["spoc", "mac", "gem", "crow", "rmac"]
QE = {"aqe": "AQE (top 2)", "alpha-qe": "alpha-QE (top 2, alpha 3)", "diffusion": "global diffusion",
      "offline": "global diffusion, offline rows (top 100)"}
PARTS = ("global", "regional", "fusion")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join("work", "features"), help="feature cache folder")
    parser.add_argument("--methods", default=",".join(GLOBAL), help="global pipelines")
    parser.add_argument("--edge-inliers", type=int, default=10, help="inliers that make a verified edge")
    parser.add_argument("--jobs", type=int, default=2, help="extraction workers")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="which rows: global (each --methods pipeline refined), regional, fusion")
    parser.add_argument("--name", default="refinement", help="result file name under benchmarks/results")
    return parser.parse_args()


def evaluate(index, dataset, options) -> tuple[float, float]:
    """(score, median query ms) of ``options`` on ``index``."""
    result = run_queries(index, dataset, options, progress=False)
    (_, score), = result.scores.items()
    return score, float(np.median(result.query_ms))


def variants(pipeline) -> dict:
    """Label -> search options of a global pipeline: kNN, AQE, alpha-QE, global diffusion (solved per
    query, and from offline rows)."""
    base, qe, diffusion = pipeline.search, get_pipeline("rmac-qe").search, get_pipeline("rmac-diffusion").search
    return {"kNN": base,
            QE["aqe"]: dataclasses.replace(base, expansion=dataclasses.replace(qe.expansion, alpha=0.0)),
            QE["alpha-qe"]: dataclasses.replace(base, expansion=qe.expansion),
            QE["diffusion"]: dataclasses.replace(base, diffusion=diffusion.diffusion),
            QE["offline"]: dataclasses.replace(base, diffusion=dataclasses.replace(diffusion.diffusion, offline=100))}


def fusion_with_edges(inliers: int):
    """The ``fusion`` pipeline with verified edges of at least ``inliers`` inliers."""
    pipeline = get_pipeline("fusion")
    return dataclasses.replace(pipeline, search=SearchOptions(fusion=dataclasses.replace(
        pipeline.search.fusion, verified_edges=inliers)))


def built(pipeline, dataset, other, args):
    """(index of ``dataset`` built like ``pipeline`` with parts learned on ``other``, seconds to add the images)."""
    index = build_index(pipeline, train_paths=other, whiten_paths=other, cache_dir=args.cache, n_jobs=args.jobs,
                        progress=False)
    started = time.perf_counter()
    index_dataset(index, dataset, n_jobs=args.jobs, progress=False)
    return index, time.perf_counter() - started


def main():
    args = parse_args()
    datasets = benchmark_datasets(args.data)
    rows: dict[str, dict[str, tuple]] = {}
    builds: dict[str, dict[str, tuple]] = {}
    precompute: dict[str, dict[str, float]] = {}
    started = time.time()
    for name, dataset in datasets.items():
        other = datasets[OTHER[name]].database_paths
        parts = args.parts.split(",")
        for method in args.methods.split(",") if "global" in parts else []:
            pipeline = get_pipeline(method)
            index = build_index(pipeline, whiten_paths=other, cache_dir=args.cache, n_jobs=args.jobs, progress=False)
            index_dataset(index, dataset, n_jobs=args.jobs, progress=False)
            for label, options in variants(pipeline).items():
                if options.diffusion is not None and options.diffusion.offline:
                    started = time.perf_counter()
                    index.search(dataset.queries[0].path, options=options)  # precomputes the rows
                    precompute.setdefault(method, {})[name] = time.perf_counter() - started
                rows.setdefault(f"{method}, {label}", {})[name] = evaluate(index, dataset, options)
                print(f"{name} {method} {label}: {rows[f'{method}, {label}'][name]}", flush=True)
        if "regional" in parts:
            regional, _ = built("rmac-rr-diffusion", dataset, other, args)
            for label, options in (("rmac-rr (region re-ranking)", "rmac-rr"),
                                   ("rmac-rr-diffusion (regional diffusion)", "rmac-rr-diffusion")):
                rows.setdefault(label, {})[name] = evaluate(regional, dataset, options)
                print(f"{name} {label}: {rows[label][name]}", flush=True)
        if "fusion" not in parts:
            continue
        fusion, seconds = built("fusion", dataset, other, args)
        builds.setdefault("fusion", {})[name] = (seconds, 0.0)
        for label, index, options in (("sift-he", fusion.local, "sift-he"),
                                      ("sift-he-sv-qe", fusion.local, "sift-he-sv-qe"),
                                      ("rmac-diffusion (fusion's CNN part)", fusion.dense, "rmac-diffusion"),
                                      ("**fusion**", fusion, "fusion")):
            rows.setdefault(label, {})[name] = evaluate(index, dataset, options)
            print(f"{name} {label}: {rows[label][name]}", flush=True)
        pipeline = fusion_with_edges(args.edge_inliers)
        fusion, seconds = built(pipeline, dataset, other, args)
        builds.setdefault(f"fusion, verified edges >= {args.edge_inliers} inliers", {})[name] = (
            seconds, len(fusion.verified) / len(fusion))
        dense = dataclasses.replace(get_pipeline("rmac-diffusion").search, diffusion=dataclasses.replace(
            get_pipeline("rmac-diffusion").search.diffusion, verified_edges=args.edge_inliers))
        for label, index, options in (  # the fusion's first search builds the graph with the verified edges
                (f"**fusion with verified edges** (>= {args.edge_inliers} inliers)", fusion, pipeline.search),
                (f"rmac-diffusion on kNN + verified edges (>= {args.edge_inliers} inliers)", fusion.dense, dense)):
            rows.setdefault(label, {})[name] = evaluate(index, dataset, options)
            print(f"{name} {label}: {rows[label][name]} ({len(fusion.verified) / len(fusion):.1f} verified pairs "
                  f"per image)", flush=True)
    lines = ["Learned parts from the other set; graphs built on the evaluated database (no labels). "
             f"Total {(time.time() - started) / 60:.0f} min.", "",
             "| pipeline, refinement | Holidays-811 mAP | UKBench-1000 N-S | query ms median (H / U) |",
             "|---|---|---|---|"]
    for label, cells in rows.items():
        lines.append(f"| {label} | {cells['holidays'][0]:.4f} | {cells['ukbench'][0]:.4f} | "
                     f"{cells['holidays'][1]:.1f} / {cells['ukbench'][1]:.1f} |")
    if builds:
        lines += ["", "Adding the images to a fusion index (features from the cache; graph built by the first "
                  "search):", "", "| index | Holidays-811 s | UKBench-1000 s | verified pairs per image (H / U) |",
                  "|---|---|---|---|"]
        lines += [f"| {label} | {cells['holidays'][0]:.0f} | {cells['ukbench'][0]:.0f} | "
                  f"{cells['holidays'][1]:.2f} / {cells['ukbench'][1]:.2f} |" for label, cells in builds.items()]
    if precompute:
        lines += ["", "Offline rows precomputed by the first offline search (s, Holidays / UKBench): " + ", ".join(
            f"{method} {cells['holidays']:.1f} / {cells['ukbench']:.1f}" for method, cells in precompute.items())]
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
