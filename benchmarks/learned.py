"""Learned descriptors (issue 14) against off-the-shelf ones, honest split, one run.

For each evaluated set (Holidays-811 mAP, UKBench-1000 N-S), everything learned is learned
on the *other* set: its verified pairs (``cbir.mining.mine_pairs``: no label), its
whitening. Rows: off-the-shelf ``gem`` and ``rmac`` with PCA whitening; GeM + learned
whitening from the mined pairs (a model trained for 0 epochs); ``gem-ft`` heads
(GeM p + FC initialised from Lw) trained with contrastive or triplet loss, hard or random
negatives; and NetVLAD heads (16 clusters from k-means + FC from Lw, ``netvlad-ft``), untrained
and trained. Learned models go through the product path: ``build_index("gem-ft",
model=...)`` (``netvlad-ft``), index, query. Reports training time, tuples seen and tuples/s.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import numpy as np

from benchmarks.common import DEFAULT_DATA, OTHER, benchmark_datasets, write_result
from cbir.build import build_index, learn_global_whitening
from cbir.evaluate import index_dataset, run_queries
from cbir.global_index import GlobalIndex
from cbir.learning import PIPELINE_OF_HEAD, TRAINED_PIPELINE, training_maps
from cbir.pipelines import get_pipeline
from cnn.heads import gem_exponent
from cnn.learned_model import LearnedModel, backbone_weights_version
from cnn.training import TrainingConfig, train_head

#: Rows of learned descriptors: label -> TrainingConfig changes (on top of --epochs/--lr/--max-tuples).
VARIANTS = {
    "gem + Lw (mined pairs, no training)": {"epochs": 0},
    "gem-ft contrastive, hard negatives": {},
    "gem-ft triplet, hard negatives": {"loss": "triplet"},
    "gem-ft contrastive, random negatives": {"hard_negatives": False},
    # a triplet margin of 0.1 (on squared distances) was already met by every hard negative of the
    # Lw-initialised head: zero loss, nothing learned; 0.5 is in reach of them
    "gem-ft triplet (margin 0.5), hard negatives": {"loss": "triplet", "margin": 0.5},
    "gem-ft contrastive, hard negatives and hard positives": {"hard_positives": True},
    "netvlad (16 k-means clusters) + Lw (mined pairs, no training)": {"head": "netvlad", "epochs": 0},
    "netvlad-ft contrastive, hard negatives": {"head": "netvlad"},
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "h14train"),
                        help="feature-map cache folder")
    parser.add_argument("--mined", default=os.path.join(tempfile.gettempdir(), "h14mined"),
                        help="folder with <dataset>/ mined pairs (MinedPairs saves); mined there when missing")
    parser.add_argument("--min-inliers", type=int, help="keep pairs with at least this many inliers "
                                                        "(default: mining's default)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-tuples", type=int, default=1000, help="tuples per epoch")
    parser.add_argument("--variants", default=",".join(str(i) for i in range(len(VARIANTS))),
                        help="comma-separated row numbers of VARIANTS")
    parser.add_argument("--evaluate", default="holidays,ukbench", help="evaluated sets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="learned", help="result file name under benchmarks/results")
    return parser.parse_args()


def mined_pairs(name: str, paths: list[str], args):
    from cbir.mining import DEFAULT_MIN_INLIERS, MinedPairs, mine_pairs
    folder = os.path.join(args.mined, name)
    if os.path.exists(os.path.join(folder, "manifest.json")):
        mined = MinedPairs.load(folder)
    else:
        mined = mine_pairs(paths, min_inliers=5, cache_dir=args.cache, progress=False)
        mined.save(folder)
    return mined.at_threshold(args.min_inliers or DEFAULT_MIN_INLIERS)


def score(index, dataset) -> float:
    index_dataset(index, dataset, progress=False)
    (_, value), = run_queries(index, dataset, progress=False).scores.items()
    return value


def main():
    args = parse_args()
    datasets = benchmark_datasets(args.data)
    evaluated = args.evaluate.split(",")
    backbone = get_pipeline(TRAINED_PIPELINE).build.backbone
    results: dict[str, dict[str, str]] = {}
    facts: dict[str, dict[str, str]] = {}
    mining_lines = []
    for target in evaluated:
        train = OTHER[target]
        train_paths = datasets[train].database_paths
        for method in ("gem", "rmac"):
            whitening, _ = learn_global_whitening(train_paths, method, args.cache, progress=False)
            value = score(GlobalIndex(method, whitening, args.cache), datasets[target])
            results.setdefault(f"{method} + PCA whitening (off the shelf)", {})[target] = f"{value:.4f}"
            print(method, target, value, flush=True)
        mined = mined_pairs(train, train_paths, args)
        mining_lines.append(f"- {train}: {mined.summary()}; mining {mined.settings.get('build_seconds', 0) + mined.settings.get('query_seconds', 0):.0f} s")
        maps_all, kept, _ = training_maps(mined.images, args.cache, progress=False)
        maps_all = [m[0] for m in maps_all]  # one scale (gem-ft)
        assert len(kept) == len(mined.images), "some mined images could not be read"
        for number in map(int, args.variants.split(",")):
            label, changes = list(VARIANTS.items())[number]
            config = TrainingConfig(**{"epochs": args.epochs, "lr": args.lr, "max_tuples": args.max_tuples,
                                       "seed": 0, **changes})
            result = train_head(maps_all, mined.pairs, mined.components, config, args.device, progress=False)
            model = LearnedModel(result.head.kind, backbone.key, backbone_weights_version(backbone.name),
                                 result.head.state_dict(), dataclasses.asdict(config))
            index = build_index(PIPELINE_OF_HEAD[config.head], model=model, cache_dir=args.cache)
            value = score(index, datasets[target])
            results.setdefault(label, {})[target] = f"{value:.4f}"
            speed = np.mean([r.tuples_per_s for r in result.history]) if result.history else float("nan")
            p = gem_exponent(result.head)
            facts.setdefault(label, {})[target] = (f"{result.seconds:.0f} s, {result.tuples_seen} tuples, "
                                                   f"{speed:.0f} t/s, p {'-' if p is None else f'{p.item():.2f}'}")
            print(label, target, value, facts[label][target], flush=True)
    header = " | ".join(f"{'Holidays-811 mAP' if t == 'holidays' else 'UKBench-1000 N-S'} (trained on {OTHER[t]})"
                        for t in evaluated)
    lines = ["Everything learned is learned on the other set: its mined pairs (no label) and whitening.",
             f"Training: Adam lr {args.lr}, {args.epochs} epochs of at most {args.max_tuples} tuples "
             f"(query, positive, 5 negatives), batch 32, 512-d FC initialised from Lw, device {args.device}.",
             "", "Mined pairs:", *mining_lines, "",
             f"| descriptor | {header} | training (time, tuples seen, tuples/s, final p) |",
             "|---|" + "---|" * len(evaluated) + "---|"]
    for label, cells in results.items():
        training = " / ".join(facts.get(label, {}).get(t, "-") for t in evaluated)
        lines.append(f"| {label} | " + " | ".join(cells.get(t, "-") for t in evaluated) + f" | {training} |")
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
