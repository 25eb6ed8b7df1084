"""Ranking refinement on Holidays-811 and UKBench-1000: query expansion and diffusion for the CNN
pipelines, verified-edge diffusion, sift-he-sv-qe and the SIFT + CNN fusion.

Everything learned comes from the *other* set (CNN whitening; the sift-he vocabulary and
Hamming embedding); the diffusion graphs are built on the evaluated database itself
(unsupervised, no labels), as ``cbir eval`` does. Rows are what ``cbir eval --method M
--train-root OTHER --whiten-root OTHER`` (plus the listed search options) reports.

Verified-edge diffusion: every database image queries the sift-he index with spatial
verification (``sift-he-sv``, top 100); pairs with at least ``--edge-inliers`` inliers
are added to the rmac kNN graph's affinities with weight 1, then rmac-diffusion runs
on that graph. (Measured here, not yet an index option.)
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
from cbir.fusion_index import FusionIndex
from cbir.pipelines import get_pipeline
from index.diffusion import graph_from_affinity, pair_affinity

GLOBAL = ["spoc", "mac", "gem", "crow", "rmac"]
QE = {"aqe": "AQE (top 2)", "alpha-qe": "alpha-QE (top 2, alpha 3)", "diffusion": "global diffusion"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join("work", "features"), help="feature cache folder")
    parser.add_argument("--methods", default=",".join(GLOBAL), help="global pipelines")
    parser.add_argument("--edge-inliers", type=int, default=10, help="inliers that make a verified edge")
    parser.add_argument("--jobs", type=int, default=2, help="extraction workers")
    parser.add_argument("--name", default="refinement", help="result file name under benchmarks/results")
    return parser.parse_args()


def evaluate(index, dataset, options) -> tuple[float, float]:
    """(score, median query ms) of ``options`` on ``index``."""
    result = run_queries(index, dataset, options, progress=False)
    (_, score), = result.scores.items()
    return score, float(np.median(result.query_ms))


def variants(pipeline) -> dict:
    """Label -> search options of a global pipeline: kNN, AQE, alpha-QE, global diffusion."""
    base, qe, diffusion = pipeline.search, get_pipeline("rmac-qe").search, get_pipeline("rmac-diffusion").search
    return {"kNN": base,
            QE["aqe"]: dataclasses.replace(base, expansion=dataclasses.replace(qe.expansion, alpha=0.0)),
            QE["alpha-qe"]: dataclasses.replace(base, expansion=qe.expansion),
            QE["diffusion"]: dataclasses.replace(base, diffusion=diffusion.diffusion)}


def verified_graph_scores(fusion: FusionIndex, dataset, inliers: int) -> tuple[float, float, float]:
    """(score, median query ms, verified edges per image) of rmac-diffusion on its kNN graph plus
    the verified SIFT pairs of the database."""
    dense, local = fusion.dense, fusion.local
    options = dense.pipeline.search
    dense.search(dataset.queries[0].path)  # builds the kNN graph
    path_of = dict(zip(dataset.database, dataset.database_paths))
    pairs = []
    for slot in range(len(local)):
        for result in local.search(path_of[local.names[slot]], top_k=100, options="sift-he-sv"):
            if result.inliers is not None and result.inliers >= inliers and result.slot != slot:
                pairs.append((slot, result.slot))
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    extra = pair_affinity(pairs, np.ones(len(pairs), np.float32), len(dense))
    knn = dense.graph
    dense.graph = dataclasses.replace(knn, graph=graph_from_affinity(knn.graph.affinity.maximum(extra),
                                                                     knn.graph.k, knn.graph.gamma))
    score, ms = evaluate(dense, dataset, options)
    dense.graph = knn
    return score, ms, extra.nnz / len(dense)


def main():
    args = parse_args()
    datasets = benchmark_datasets(args.data)
    rows: dict[str, dict[str, tuple]] = {}
    started = time.time()
    for name, dataset in datasets.items():
        other = datasets[OTHER[name]].database_paths
        for method in args.methods.split(","):
            pipeline = get_pipeline(method)
            index = build_index(pipeline, whiten_paths=other, cache_dir=args.cache, n_jobs=args.jobs, progress=False)
            index_dataset(index, dataset, n_jobs=args.jobs, progress=False)
            for label, options in variants(pipeline).items():
                rows.setdefault(f"{method}, {label}", {})[name] = evaluate(index, dataset, options)
                print(f"{name} {method} {label}: {rows[f'{method}, {label}'][name]}", flush=True)
        regional = build_index("rmac-rr-diffusion", whiten_paths=other, cache_dir=args.cache, n_jobs=args.jobs,
                               progress=False)
        index_dataset(regional, dataset, n_jobs=args.jobs, progress=False)
        for label, options in (("rmac-rr (region re-ranking)", "rmac-rr"),
                               ("rmac-rr-diffusion (regional diffusion)", "rmac-rr-diffusion")):
            rows.setdefault(label, {})[name] = evaluate(regional, dataset, options)
            print(f"{name} {label}: {rows[label][name]}", flush=True)
        fusion = build_index("fusion", train_paths=other, whiten_paths=other, cache_dir=args.cache,
                             n_jobs=args.jobs, progress=False)
        index_dataset(fusion, dataset, n_jobs=args.jobs, progress=False)
        for label, index, options in (("sift-he", fusion.local, "sift-he"),
                                      ("sift-he-sv-qe", fusion.local, "sift-he-sv-qe"),
                                      ("rmac-diffusion (fusion's CNN part)", fusion.dense, "rmac-diffusion"),
                                      ("**fusion**", fusion, "fusion")):
            rows.setdefault(label, {})[name] = evaluate(index, dataset, options)
            print(f"{name} {label}: {rows[label][name]}", flush=True)
        score, ms, edges = verified_graph_scores(fusion, dataset, args.edge_inliers)
        label = f"rmac-diffusion on kNN + verified edges (>= {args.edge_inliers} inliers)"
        rows.setdefault(label, {})[name] = (score, ms)
        print(f"{name} {label}: {score} ({edges:.1f} verified edges per image)", flush=True)
    lines = ["Learned parts from the other set; graphs built on the evaluated database (no labels). "
             f"Total {(time.time() - started) / 60:.0f} min.", "",
             "| pipeline, refinement | Holidays-811 mAP | UKBench-1000 N-S | query ms median (H / U) |",
             "|---|---|---|---|"]
    for label, cells in rows.items():
        lines.append(f"| {label} | {cells['holidays'][0]:.4f} | {cells['ukbench'][0]:.4f} | "
                     f"{cells['holidays'][1]:.1f} / {cells['ukbench'][1]:.1f} |")
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
