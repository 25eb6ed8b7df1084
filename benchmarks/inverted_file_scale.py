"""Inverted file at scale: 10k, 100k and 1M synthetic images with the real word statistics.

The word distribution and the number of features per image are measured on the
real RootSIFT features of Holidays-811 + UKBench-1000, quantized into the
``sift-bow`` vocabulary (10^6-word tree, beam-3 descent); synthetic images draw
their feature counts from the real per-image counts and their words
independently from the measured word frequencies (so there is less burstiness
than in real images). For each collection size: build time (adding images in
batches), bytes per posting, save and load time (memory-mapped, and fully
verified), and the latency of 1000-word queries without re-ranking (scores of
every image + the best 100), against the previous numpy implementation
(postings gathered, ``np.bincount``, ``np.argpartition``) in the same run.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, RESULTS_DIR, benchmark_datasets, write_result
from bovw.extraction import iter_features
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import local_feature_cache, read_local_features
from index.inverted_file import InvertedFile
from index.kernels import top_indices
from index.persistence import load_arrays, save_arrays

TABLE_RESOLUTION = 1 << 24  # word table entries: probabilities resolved to 6e-8


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cbir-bench-features"),
                        help="feature cache folder")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="collection sizes (images)")
    parser.add_argument("--shape", default="10x6", help="vocabulary shape BxL (default 10x6: the sift-bow tree)")
    parser.add_argument("--query-words", type=int, default=1000, help="features per query (1 word each)")
    parser.add_argument("--queries", type=int, default=200, help="queries timed per collection")
    parser.add_argument("--batch", type=int, default=100_000, help="images added per batch")
    parser.add_argument("--work", default=tempfile.gettempdir(), help="folder for the saved indexes")
    parser.add_argument("--jobs", type=int, default=2, help="extraction threads")
    parser.add_argument("--name", default="inverted_file_scale", help="result file name under benchmarks/results")
    return parser.parse_args()


def real_word_statistics(args) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Word frequencies and per-image feature counts of the real data.

    Returns:
        (p (n_words,) float64 word probabilities, counts (n_images,) int features
        per real image, n_words, seconds spent training the vocabulary).
    """
    pipeline = get_pipeline("sift-bow")
    features = [f for d in benchmark_datasets(args.data).values() for _, f in iter_features(
        d.database_paths, lambda path: read_local_features(pipeline.build, path),
        local_feature_cache(pipeline.build, args.cache), n_jobs=args.jobs, verbose=False)]
    descriptors = np.concatenate([f.descriptors for f in features])
    b, depth = (int(v) for v in args.shape.split("x"))
    start = time.perf_counter()
    vocabulary = VocabularyTree.train(descriptors, VocabularyConfig(branching=b, depth=depth, seed=0), verbose=False)
    train_s = time.perf_counter() - start
    words = vocabulary.quantize(descriptors, beam=pipeline.build.beam)
    frequency = np.bincount(words, minlength=vocabulary.n_words).astype(np.float64)
    return frequency / frequency.sum(), np.array([len(f) for f in features]), vocabulary.n_words, train_s


class SyntheticImages:
    """Images whose feature counts and words follow the measured statistics.

    Args:
        p: (n_words,) word probabilities.
        counts: (m,) features per real image, resampled per synthetic image.
        seed: random seed.
    """

    def __init__(self, p: np.ndarray, counts: np.ndarray, seed: int = 0):
        cdf = np.cumsum(p)
        self.table = np.minimum(np.searchsorted(cdf, (np.arange(TABLE_RESOLUTION) + 0.5) / TABLE_RESOLUTION),
                                len(p) - 1).astype(np.int32)
        self.counts = counts
        self.rng = np.random.default_rng(seed)

    def words(self, n: int) -> np.ndarray:
        """(n,) int32 word ids drawn independently."""
        return self.table[self.rng.integers(0, TABLE_RESOLUTION, n)]

    def images(self, n: int) -> list[np.ndarray]:
        """n images, each (n_i,) int32 words."""
        sizes = self.rng.choice(self.counts, n)
        return np.split(self.words(int(sizes.sum())), np.cumsum(sizes)[:-1])


def numpy_scores(inverted: InvertedFile, words: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The previous implementation, as the in-run baseline: gather postings, ``np.bincount``."""
    starts, ends = inverted.offsets[words], inverted.offsets[words + 1]
    lengths = ends - starts
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    postings = np.arange(int(lengths.sum()), dtype=np.int64) + shift
    weights = np.repeat(values * inverted.idf[words], lengths)
    scores = np.bincount(inverted.image_slots[postings], weights=weights, minlength=inverted.n_images)
    norms = inverted.image_norms
    return np.divide(scores, norms, out=np.zeros(len(scores)), where=norms > 0).astype(np.float32)


def numpy_top(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def time_queries(inverted: InvertedFile, queries: list[np.ndarray], engine: bool) -> np.ndarray:
    """(n_queries,) ms per query: tf-idf vector, scores of every image, best 100."""
    times = []
    for words in queries:
        start = time.perf_counter()
        vector = inverted.query_vector(words)
        if engine:
            top_indices(inverted.vector_scores(*vector), 100)
        else:
            numpy_top(numpy_scores(inverted, *vector), 100)
        times.append((time.perf_counter() - start) * 1e3)
    return np.asarray(times)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def measure(size: int, synthetic: SyntheticImages, n_words: int, args) -> dict:
    """Build, save, load and query one collection of ``size`` images."""
    inverted = InvertedFile(n_words)
    start = time.perf_counter()
    for first in range(0, size, args.batch):
        inverted.add(synthetic.images(min(args.batch, size - first)))
    row = {"images": size, "postings": inverted.n_postings, "build_s": time.perf_counter() - start,
           "imbalance": inverted.imbalance_factor, "peak_rss_gb": peak_rss_gb()}
    meta, arrays = inverted.state_dict()
    row["bytes_per_posting"] = sum(a.nbytes for a in arrays.values()) / inverted.n_postings
    directory = os.path.join(args.work, f"cbir-scale-{size}")
    start = time.perf_counter()
    save_arrays(directory, "cbir-scale-benchmark", 1, meta, arrays)
    row["save_s"] = time.perf_counter() - start
    del inverted, arrays
    for label, verify, mmap in (("load_mmap_s", False, True), ("load_verified_s", True, False)):
        start = time.perf_counter()
        loaded = InvertedFile.from_state_dict(*load_arrays(directory, "cbir-scale-benchmark", 1,
                                                           verify=verify, mmap=mmap))
        row[label] = time.perf_counter() - start
        if mmap:
            mapped = loaded
    queries = [synthetic.words(args.query_words) for _ in range(args.queries)]
    time_queries(mapped, queries[:5], engine=True)  # compile, and touch the pages of the mapped file
    row["engine_ms"] = time_queries(mapped, queries, engine=True)
    row["numpy_ms"] = time_queries(loaded, queries[:max(20, args.queries // 5)], engine=False)
    row["postings_per_query"] = float(np.median([np.diff(loaded.offsets)[np.unique(q)].sum() for q in queries]))
    del loaded, mapped
    shutil.rmtree(directory)
    return row


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = [r["images"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("engine_ms", "engine (numba kernels)"), ("numpy_ms", "numpy bincount (previous)")):
        left.plot(sizes, [np.median(r[key]) for r in rows], "o-", label=f"{label}, median")
        left.plot(sizes, [np.percentile(r[key], 95) for r in rows], "o--", label=f"{label}, p95")
    left.set(xscale="log", yscale="log", xlabel="images", ylabel="ms per 1000-word query",
             title="query latency (no re-ranking)")
    left.legend(fontsize=7)
    right.plot(sizes, [r["postings"] * r["bytes_per_posting"] / 2 ** 30 for r in rows], "o-", label="index size")
    right.plot(sizes, [r["peak_rss_gb"] for r in rows], "o--", label="peak RSS while building")
    right.set(xscale="log", yscale="log", xlabel="images", ylabel="GiB", title="memory")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    args = parse_args()
    p, counts, n_words, train_s = real_word_statistics(args)
    imbalance = float(n_words * np.square(p).sum())
    synthetic = SyntheticImages(p, counts)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows.append(measure(size, synthetic, n_words, args))
        r = rows[-1]
        print(f"{size}: build {r['build_s']:.1f} s, load {r['load_mmap_s']:.2f} s, "
              f"query {np.median(r['engine_ms']):.1f} ms (numpy {np.median(r['numpy_ms']):.1f})", flush=True)
    lines = [f"Word statistics: {len(counts)} real images (Holidays-811 + UKBench-1000), "
             f"{counts.sum()} RootSIFT features, {counts.mean():.0f} per image; vocabulary {n_words} words "
             f"({args.shape}, trained in {train_s:.0f} s on those features), beam-3 descent; imbalance factor of "
             f"the real words {imbalance:.2f}. Queries: {args.query_words} features drawn from the same "
             f"distribution, one word each, no re-ranking; latency = tf-idf query vector + scores of every "
             f"image + best 100. Loads are from a warm page cache (the index was just written). Peak RSS is "
             f"the process maximum so far (sizes run in increasing order).", "",
             "| images | postings | imbalance | build s | bytes/posting | save s | load s (mmap) | "
             "load s (CRC-verified) | postings/query | query ms median | p95 | numpy median | p95 | "
             "speed-up (median) | peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        engine, baseline = r["engine_ms"], r["numpy_ms"]
        lines.append(
            f"| {r['images']:,} | {r['postings']:,} | {r['imbalance']:.2f} | {r['build_s']:.1f} | "
            f"{r['bytes_per_posting']:.2f} | {r['save_s']:.1f} | {r['load_mmap_s']:.2f} | {r['load_verified_s']:.1f} | "
            f"{r['postings_per_query']:,.0f} | {np.median(engine):.1f} | {np.percentile(engine, 95):.1f} | "
            f"{np.median(baseline):.1f} | {np.percentile(baseline, 95):.1f} | "
            f"{np.median(baseline) / np.median(engine):.1f}x | {r['peak_rss_gb']:.1f} |")
    png = os.path.join(RESULTS_DIR, f"{args.name}.png")
    plot(rows, png)
    lines += ["", f"Plot: `{os.path.relpath(png, os.path.dirname(RESULTS_DIR))}`"]
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
