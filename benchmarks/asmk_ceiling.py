"""How much the binarisation of ASMK* costs on a saved ASMK*/HE index of conv words.

Scores every query of a dataset against its database with the aggregated match kernel on the
index's whitening and vocabulary: per shared word ``idf_w^2 * sigma(u)``, ``sigma(u) = sign(u)|u|^alpha``
for ``u >= tau`` (0 below), normalised so that K(X, X) = 1, where ``u`` is either

- ``bin``: ``1 - 2h/64`` of the 64-bit ASMK* signatures (learned on the training set, as
  ``cbir.build.asmk_from`` does: the index's own kernel), or
- ``full``: the cosine of the aggregated residuals themselves (no binarisation: ASMK, not ASMK*),
  optionally projected on the first D principal components of training residuals and rounded to
  int8 (``pcaD``), the storage a non-binarised kernel would need.

Database images aggregate with one word per feature, queries with the index's assignments, as the
index does. Dense (queries x images) scores: meant for the benchmark subsets, not large collections.

    python -m benchmarks.asmk_ceiling --index DIR --dataset ukbench --train-dataset holidays \
        --kernels bin:3:0,bin:1:0,full:1:-1,pca64:1:-1
"""
from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import DEFAULT_DATA, benchmark_datasets, write_result
from bovw.hamming import BITS, hamming_distance
from cbir.build import asmk_from, local_descriptors
from cbir.searchable import load_index
from index.asmk import aggregate, unit_residuals


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="saved blcf-he or blcf-asmk index of the dataset")
    parser.add_argument("--dataset", required=True, choices=("holidays", "ukbench"))
    parser.add_argument("--train-dataset", required=True, choices=("holidays", "ukbench"),
                        help="the set the index's whitening and vocabulary were learned on")
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", help="feature cache folder")
    parser.add_argument("--kernels", default="bin:3:0,bin:1:0,full:3:0,full:1:-1,pca64:1:-1",
                        help="comma-separated KIND:ALPHA:TAU, KIND bin, full or pcaD")
    parser.add_argument("--name", help="result file name under benchmarks/results (default: print only)")
    return parser.parse_args()


class Aggregates:
    """Unit aggregated residuals of a set of images: (m, d) ``rows``, their (m,) ``words`` and the
    (m,) ``image`` each belongs to, plus the (n_images, n_words)-sparse idf norms."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]]):
        self.words = np.concatenate([w for w, _ in parts])
        self.rows = np.concatenate([r for _, r in parts])
        self.image = np.concatenate([np.full(len(w), i) for i, (w, _) in enumerate(parts)])
        self.n_images = len(parts)

    def norms(self, idf: np.ndarray) -> np.ndarray:
        """(n_images,) sqrt(sum of idf^2 over each image's words)."""
        return np.sqrt(np.bincount(self.image, idf[self.words] ** 2, self.n_images))


def scores(queries: Aggregates, database: Aggregates, idf: np.ndarray, similarity, alpha: float,
           tau: float) -> np.ndarray:
    """(n_queries, n_images) normalised kernel values; ``similarity(qi, di)`` gives the (a, b) u of
    query rows qi and database rows di that share one word."""
    out = np.zeros((queries.n_images, database.n_images))
    q_order, d_order = np.argsort(queries.words, kind="stable"), np.argsort(database.words, kind="stable")
    q_words, d_words = queries.words[q_order], database.words[d_order]
    words, q_starts = np.unique(q_words, return_index=True)
    q_ends = np.r_[q_starts[1:], len(q_words)]
    d_starts = np.searchsorted(d_words, words)
    d_ends = np.searchsorted(d_words, words, side="right")
    for word, qs, qe, ds, de in zip(words, q_starts, q_ends, d_starts, d_ends):
        if ds == de:
            continue
        q, d = q_order[qs:qe], d_order[ds:de]
        u = similarity(q, d)
        votes = np.where(u >= tau, np.sign(u) * np.abs(u) ** alpha, 0.0) * idf[word] ** 2
        np.add.at(out, (queries.image[q][:, None], database.image[d][None, :]), votes)
    norms = queries.norms(idf)[:, None] * database.norms(idf)[None, :]
    return out / np.maximum(norms, 1e-12)


def main():
    args = parse_args()
    datasets = benchmark_datasets(args.data)
    dataset, train = datasets[args.dataset], datasets[args.train_dataset]
    index = load_index(args.index, cache_dir=args.cache)
    pipeline, vocabulary, whitening = index.pipeline, index.vocabulary, index.whitening
    centers, beam = vocabulary.centers[-1], pipeline.build.beam
    k = pipeline.search.query_assignments

    def whitened(path):
        return whitening.apply(index.query_features(path).descriptors)

    def aggregated(path, assignments):
        descriptors = whitened(path)
        words = vocabulary.quantize(descriptors, k=assignments, beam=beam).reshape(len(descriptors), assignments)
        return aggregate(descriptors, words, centers)

    database = Aggregates([aggregated(path, 1) for path in dataset.database_paths])
    queries = Aggregates([aggregated(query.path, k) for query in dataset.queries])
    df = np.bincount(database.words, minlength=len(centers))
    idf = np.log(database.n_images / np.maximum(df, 1))

    descriptors, _ = local_descriptors(train.database_paths, pipeline, args.cache, 1, progress=False)
    binarisation = asmk_from(descriptors, pipeline, vocabulary, 1, whitening).embedding
    query_bits = binarisation.signatures(queries.rows, queries.words)
    database_bits = binarisation.signatures(database.rows, database.words)
    training = whitening.apply(descriptors)
    training_words = vocabulary.quantize(training, k=1, beam=beam).ravel()
    _, axes = np.linalg.eigh(np.cov(unit_residuals(training, training_words, centers).T))
    axes = axes[:, ::-1]

    def hamming(q, d):
        return 1 - 2 * hamming_distance(query_bits[q][:, None], database_bits[d][None, :]) / BITS

    def projected(rows, dims, int8):
        x = rows @ axes[:, :dims]
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.round(x * 127).clip(-127, 127) / 127 if int8 else x

    names = list(dataset.database)
    lines = [f"ASMK kernels on `{args.index}` ({pipeline.name}: {len(centers)} words, {k} per query position; "
             f"whitening, vocabulary and binarisation learned on {args.train_dataset}), {args.dataset}", "",
             "| residual similarity | alpha | tau | score | stored per (image, word) |", "|---|---|---|---|---|"]
    for spec in args.kernels.split(","):
        kind, alpha, tau = spec.split(":")
        if kind == "bin":
            similarity, stored = hamming, "64 bits"
        elif kind == "full":
            def similarity(q, d):
                return queries.rows[q] @ database.rows[d].T
            stored = f"{queries.rows.shape[1]} float32"
        else:
            dims = int(kind[3:])
            query_rows, database_rows = projected(queries.rows, dims, False), projected(database.rows, dims, True)

            def similarity(q, d):
                return query_rows[q] @ database_rows[d].T
            stored = f"{dims} int8 (PCA of training residuals)"
        matrix = scores(queries, database, idf, similarity, float(alpha), float(tau))
        rankings = [[names[j] for j in np.argsort(-row, kind="stable")] for row in matrix]
        (metric, value), = dataset.score(rankings).items()
        lines.append(f"| {kind} | {alpha} | {tau} | {metric} {value:.4f} | {stored} |")
        print(lines[-1], flush=True)
    if args.name:
        body = "\n".join(lines)
        print(f"written to {write_result(args.name, body)}")


if __name__ == "__main__":
    main()
