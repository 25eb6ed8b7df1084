"""This engine and COLMAP's retrieval side by side, on the same features, in one run.

RootSIFT is extracted once (the engine's extractor and feature cache); both
systems get the same keypoints and descriptors of Holidays-811 and UKBench-1000.
The engine runs ``sift-bow``, ``sift-sv`` (10^6-word tree) and ``sift-he``,
``sift-he-sv``, ``sift-he-sv-qe`` (141^2-word tree + Hamming embedding); COLMAP
runs ``pycolmap.VisualIndex`` (flat k-means vocabulary + 64-bit Hamming
embedding) through its own retrieval path: the features are written to a
``pycolmap.Database``, the trained index to a file, and each query's ranked images
are read from ``pycolmap.VocabTreePairGenerator``, without and with its
vote-and-verify spatial verification of the top ``--verify-top`` (on keypoints in
image pixels, and rescaled to ``--colmap-image-size``, as its thresholds are in
pixels). (In pycolmap 4.2.1 ``VisualIndex.query`` leaves its output list empty.)
Both vocabularies are trained on the database descriptors of both sets.

Reports score, vocabulary build time, indexing time, query time (median, p95),
bytes per posting, and ratios to COLMAP measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pycolmap

from benchmarks.common import DEFAULT_DATA, benchmark_datasets, write_result
from bovw.extraction import iter_features
from bovw.features import LocalFeatures
from bovw.hamming import HammingEmbedding
from bovw.vocabulary import VocabularyTree
from cbir.evaluate import index_dataset, run_queries
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex, local_feature_cache, read_local_features
from index.datasets import Dataset


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cbir-bench-features"),
                        help="feature cache folder")
    parser.add_argument("--methods", default="sift-bow,sift-sv,sift-he,sift-he-sv,sift-he-sv-qe",
                        help="engine pipelines")
    parser.add_argument("--colmap-words", type=int, default=1 << 14, help="COLMAP visual words (default 2^14)")
    parser.add_argument("--colmap-iterations", type=int, default=10,
                        help="COLMAP k-means iterations (COLMAP's default: 100)")
    parser.add_argument("--colmap-rounds", type=int, default=1, help="COLMAP k-means restarts (COLMAP's default: 3)")
    parser.add_argument("--verify-top", type=int, default=100, help="images re-ranked by spatial verification")
    parser.add_argument("--colmap-image-size", type=int, default=1024,
                        help="for COLMAP's verification, keypoints are also given as if each image's longer side "
                             "were this many pixels (its thresholds are in pixels, set for large photos)")
    parser.add_argument("--threads", type=int, default=2, help="COLMAP vocabulary-building threads")
    parser.add_argument("--jobs", type=int, default=2, help="engine extraction threads")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run on the first 100 UKBench images; prints the table, writes no file")
    parser.add_argument("--name", default="colmap_side_by_side", help="result file name under benchmarks/results")
    return parser.parse_args()


@dataclass
class MethodRun:
    """Measurements of one retrieval method over the benchmark sets.

    Attributes:
        label: the method's name in the table.
        scores: dataset name -> mAP or N-S.
        vocabulary_s: seconds to build the vocabulary (and Hamming embedding).
        index_s: dataset name -> seconds to index its database.
        query_ms: dataset name -> (n_queries,) milliseconds per query.
        posting_bytes: bytes per posting of the inverted file.
        verified: whether the top of the ranking is spatially verified.
    """

    label: str
    scores: dict
    vocabulary_s: float
    index_s: dict
    query_ms: dict
    posting_bytes: float
    verified: bool


def ukbench_head(dataset: Dataset, n_images: int) -> Dataset:
    """The first ``n_images`` of UKBench (a multiple of 4) as a dataset of their own."""
    return dataclasses.replace(dataset, database=dataset.database[:n_images], queries=dataset.queries[:n_images],
                               _positives=dataset._positives[:n_images])


def database_features(dataset: Dataset, pipeline, cache: str, jobs: int) -> list[LocalFeatures]:
    """Features of every database image, in ``dataset.database`` order (from the cache when there)."""
    features = [f for _, f in iter_features(dataset.database_paths, lambda path: read_local_features(pipeline.build, path),
                                            local_feature_cache(pipeline.build, cache), n_jobs=jobs, verbose=False)]
    if len(features) != len(dataset.database):
        raise RuntimeError(f"{dataset.name}: {len(dataset.database) - len(features)} images could not be read")
    return features


def colmap_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """(n, 128) float32 unit-norm RootSIFT -> (n, 128) uint8 as COLMAP stores SIFT: min(255, round(512 x))."""
    return np.minimum(255, np.round(512 * descriptors)).astype(np.uint8)


def colmap_keypoints(features: LocalFeatures, image_size: int = 0) -> np.ndarray:
    """COLMAP's (n, 4) x, y, scale, orientation of an image's keypoints.

    Args:
        features: keypoints x, y, scale, angle (radians), OpenCV's pixel centres at integers.
        image_size: 0 keeps the image's pixels; else x, y and scale are given as if
            the image were resized to this longer side (angles are unchanged).

    Returns:
        (n, 4) float32 with COLMAP's pixel centres at +0.5.
    """
    factor = image_size / max(features.image_size) if image_size else 1.0
    keypoints = features.keypoints + np.array([0.5, 0.5, 0, 0], np.float32)
    return keypoints * np.array([factor, factor, factor, 1], np.float32)


def build_colmap_index(descriptors: np.ndarray, args, path: str) -> float:
    """Train a ``pycolmap.VisualIndex`` on (n, 128) uint8 descriptors, write it to ``path``; returns seconds.

    COLMAP turns uint8 SIFT into float by a plain cast, so it is trained on that.
    """
    options = pycolmap.VisualIndex.BuildOptions(num_visual_words=args.colmap_words,
                                                num_iterations=args.colmap_iterations,
                                                num_rounds=args.colmap_rounds, num_threads=args.threads)
    training = pycolmap.FeatureDescriptorsFloat(pycolmap.FeatureExtractorType.SIFT, descriptors.astype(np.float32))
    start = time.perf_counter()
    index = pycolmap.VisualIndex.create(128, 64)
    index.build(options, training)
    seconds = time.perf_counter() - start
    index.write(path)
    return seconds


def colmap_posting_bytes(vocabulary_path: str, features: list[LocalFeatures], workdir: str) -> float:
    """Bytes per posting of COLMAP's inverted file, measured: the growth of the written index file
    when ``features`` (one entry per image) are added, divided by their number of descriptors."""
    index = pycolmap.VisualIndex.read(vocabulary_path)
    options = pycolmap.VisualIndex.IndexOptions(num_threads=1)
    for image_id, image_features in enumerate(features, start=1):
        keypoints = pycolmap.FeatureKeypoints([pycolmap.FeatureKeypoint.from_shape_parameters(x, y, scale, scale,
                                                                                              angle, 0.0)
                                               for x, y, scale, angle in colmap_keypoints(image_features)])
        index.add(options, image_id, keypoints, pycolmap.FeatureDescriptorsFloat(
            pycolmap.FeatureExtractorType.SIFT, colmap_descriptors(image_features.descriptors).astype(np.float32)))
    index.prepare()
    indexed_path = os.path.join(workdir, "indexed.bin")
    index.write(indexed_path)
    added = os.path.getsize(indexed_path) - os.path.getsize(vocabulary_path)
    return added / sum(len(f) for f in features)


def write_colmap_database(path: str, dataset: Dataset, features: list[LocalFeatures], image_size: int = 0) -> list[int]:
    """A COLMAP database of the dataset's images, keypoints (see ``colmap_keypoints``) and uint8
    descriptors; returns the image ids in ``dataset.database`` order."""
    database = pycolmap.Database.open(path)
    height, width = features[0].image_size
    camera = database.write_camera(pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 1.2 * max(height, width),
                                                                          width, height))
    ids = []
    for name, image_features in zip(dataset.database, features):
        image_id = database.write_image(pycolmap.Image(name=name, camera_id=camera))
        database.write_keypoints(image_id, colmap_keypoints(image_features, image_size))
        database.write_descriptors(image_id, pycolmap.FeatureDescriptors(
            pycolmap.FeatureExtractorType.SIFT, colmap_descriptors(image_features.descriptors)))
        ids.append(image_id)
    database.close()
    return ids


def colmap_retrieval(database_path: str, vocabulary_path: str, query_ids: list[int], n_images: int,
                     verify: int) -> tuple[list[list[int]], float, np.ndarray]:
    """Run ``VocabTreePairGenerator`` (one thread) over a database, queries in ``query_ids`` order.

    Args:
        database_path: COLMAP database written by ``write_colmap_database``.
        vocabulary_path: trained ``VisualIndex`` file.
        query_ids: image ids of the queries.
        n_images: images retrieved per query.
        verify: spatially verify (and keep) the top ``n_images`` when > 0.

    Returns:
        per query its retrieved image ids, best first; seconds to index the
        database (the generator's construction); (n_queries,) milliseconds between
        consecutive results, i.e. per query, as the one worker thread runs them in turn.
    """
    options = pycolmap.VocabTreePairingOptions(vocab_tree_path=vocabulary_path, num_images=n_images,
                                               num_images_after_verification=n_images if verify else 0,
                                               num_threads=1)
    database = pycolmap.Database.open(database_path)
    start = time.perf_counter()
    generator = pycolmap.VocabTreePairGenerator(options, database, query_ids)
    index_s = time.perf_counter() - start
    rankings, times = [], []
    for query_id in query_ids:
        start = time.perf_counter()
        pairs = generator.next()
        times.append((time.perf_counter() - start) * 1e3)
        if pairs and pairs[0][0] != query_id:
            raise RuntimeError(f"results for image {pairs[0][0]} came where query {query_id} was expected")
        rankings.append([retrieved for _, retrieved in pairs])
    if not generator.has_finished():
        raise RuntimeError("the pair generator has more results than queries")
    database.close()
    return rankings, index_s, np.asarray(times)


def run_colmap(datasets: dict, features: dict, args, workdir: str) -> tuple[list[MethodRun], list[str]]:
    """COLMAP without verification, and with it on keypoints in the images' pixels and rescaled to
    ``args.colmap_image_size``, on every dataset; returns the three runs and notes on the rank order."""
    descriptors = np.concatenate([colmap_descriptors(f.descriptors) for fs in features.values() for f in fs])
    vocabulary_path = os.path.join(workdir, "visual_index.bin")
    vocabulary_s = build_colmap_index(descriptors, args, vocabulary_path)
    posting_bytes = colmap_posting_bytes(vocabulary_path, next(iter(features.values()))[:20], workdir)
    runs = [MethodRun(label, {}, vocabulary_s, {}, {}, posting_bytes, verified) for label, verified in [
        ("COLMAP", False),
        (f"COLMAP + verification of the top {args.verify_top}, image pixels", True),
        (f"COLMAP + verification of the top {args.verify_top}, keypoints as in {args.colmap_image_size}-px images",
         True)]]
    notes = []
    for name, dataset in datasets.items():
        # Fresh databases number the same images in the same order alike.
        databases = {size: os.path.join(workdir, f"{name}-{size}px.db") for size in {0, args.colmap_image_size}}
        for size, path in databases.items():
            ids = write_colmap_database(path, dataset, features[name], size)
        name_of = dict(zip(ids, dataset.database))
        id_of = dict(zip(dataset.database, ids))
        query_ids = [id_of[q.name] for q in dataset.queries]
        full = None
        for run, size in zip(runs, [0, 0, args.colmap_image_size]):
            rankings, run.index_s[name], run.query_ms[name] = colmap_retrieval(
                databases[size], vocabulary_path, query_ids, args.verify_top if run.verified else len(ids),
                verify=run.verified)
            if full is None:
                full = rankings
                notes.append(rank_order_note(name, query_ids, full))
            else:
                rankings = [verified_first(head, rest) for head, rest in zip(rankings, full)]
            run.scores[name] = score(dataset, [[name_of[i] for i in r] for r in rankings])
    return runs, notes


def verified_first(head: list[int], full: list[int]) -> list[int]:
    """The verified top ``head``, then the images of the unverified ranking ``full`` not in it."""
    seen = set(head)
    return head + [i for i in full if i not in seen]


def rank_order_note(name: str, query_ids: list[int], rankings: list[list[int]]) -> str:
    """One line checking that COLMAP's pairs come best first: the query itself should rank first,
    and the lists should not simply follow image ids."""
    found = [(q, r) for q, r in zip(query_ids, rankings) if r]
    self_first = np.mean([r[0] == q for q, r in found])
    by_id = np.mean([r == sorted(r) for _, r in found])
    lengths = [len(r) for _, r in found]
    return (f"{name}: {len(rankings) - len(found)} queries without results (no features); of the others, the "
            f"query is COLMAP's first result for {100 * self_first:.1f}%, {100 * by_id:.1f}% of the lists are in "
            f"image-id order, {min(lengths)}-{max(lengths)} images per list.")


def score(dataset: Dataset, rankings: list[list[str]]) -> float:
    """The dataset's single metric (mAP or N-S) of per-query rankings of database names."""
    (_, value), = dataset.score(rankings).items()
    return value


def run_engine(pipeline_names: list[str], datasets: dict, features: dict, args) -> list[MethodRun]:
    """Every engine pipeline on every dataset; pipelines with the same vocabulary share one index per dataset."""
    descriptors = np.concatenate([f.descriptors for fs in features.values() for f in fs])
    vocabularies, runs = {}, []
    for pipeline_name in pipeline_names:
        pipeline = get_pipeline(pipeline_name)
        key = (pipeline.build.vocabulary, pipeline.build.hamming)
        if key not in vocabularies:
            start = time.perf_counter()
            vocabulary = VocabularyTree.train(descriptors, pipeline.build.vocabulary, verbose=False)
            hamming = HammingEmbedding.learn(descriptors, vocabulary.quantize(descriptors, beam=pipeline.build.beam),
                                             vocabulary.n_words, pipeline.build.hamming_seed) \
                if pipeline.build.hamming else None
            vocabularies[key] = (vocabulary, hamming, time.perf_counter() - start, {}, {})
        vocabulary, hamming, vocabulary_s, indexes, index_s = vocabularies[key]
        run = MethodRun(pipeline_name, {}, vocabulary_s, index_s, {}, 0.0, pipeline.search.verification is not None)
        for name, dataset in datasets.items():
            if name not in indexes:
                indexes[name] = RetrievalIndex(pipeline, vocabulary, hamming=hamming, cache_dir=args.cache)
                start = time.perf_counter()
                index_dataset(indexes[name], dataset, n_jobs=args.jobs, progress=False)
                index_s[name] = time.perf_counter() - start
            index = indexes[name]
            result = run_queries(index, dataset, pipeline_name, progress=False)
            run.scores[name] = score(dataset, result.rankings)
            run.query_ms[name] = result.query_ms
            inverted = index.inverted_file
            run.posting_bytes = (inverted.image_slots.nbytes + sum(p.nbytes for p in inverted.payload.values())) \
                / inverted.n_postings
        runs.append(run)
        print(table_row(run, None, datasets), flush=True)
    return runs


def table_row(run: MethodRun, baseline: MethodRun | None, datasets: dict) -> str:
    """One markdown row; ratio cells (``run`` / ``baseline``) stay empty without a baseline."""
    names = list(datasets)

    def per_set(values, fmt):
        return " / ".join(format(values[n], fmt) for n in names)

    cells = [run.label, *(f"{run.scores[n]:.4f}" for n in names), f"{run.vocabulary_s:.0f}",
             per_set(run.index_s, ".1f"), per_set({n: np.median(run.query_ms[n]) for n in names}, ".1f"),
             per_set({n: np.percentile(run.query_ms[n], 95) for n in names}, ".1f"), f"{run.posting_bytes:.1f}"]
    if baseline is None:
        cells += ["", "", ""]
    else:
        cells += [per_set({n: run.scores[n] / baseline.scores[n] for n in names}, ".3f"),
                  f"{run.vocabulary_s / baseline.vocabulary_s:.3f}",
                  per_set({n: np.median(run.query_ms[n]) / np.median(baseline.query_ms[n]) for n in names}, ".2f")]
    return "| " + " | ".join(cells) + " |"


def main():
    args = parse_args()
    pycolmap.logging.minloglevel = 1  # COLMAP logs every image it indexes and queries at INFO level
    datasets = benchmark_datasets(args.data)
    if args.quick:
        datasets = {"ukbench": ukbench_head(datasets["ukbench"], 100)}
    base = get_pipeline("sift-bow")
    features = {name: database_features(d, base, args.cache, args.jobs) for name, d in datasets.items()}
    n_descriptors = sum(len(f) for fs in features.values() for f in fs)

    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="colmap-side-by-side-") as workdir:
        colmap_runs, notes = run_colmap(datasets, features, args, workdir)
    plain, _, verified = colmap_runs
    for run in colmap_runs:
        print(table_row(run, None, datasets), flush=True)
    engine_runs = run_engine(args.methods.split(","), datasets, features, args)
    load_at_end = os.getloadavg()[0]

    metric = {"holidays": "Holidays-811 mAP", "ukbench": "UKBench-1000 N-S"}
    sets = " / ".join(n[0].upper() for n in datasets)
    lines = [
        (f"Same RootSIFT features for both systems ({n_descriptors} descriptors of the database images of "
         f"{' + '.join(datasets)}; OpenCV SIFT, contrast threshold {base.build.sift.contrast_threshold}, images "
         f"down-scaled to {base.build.sift.image.max_side} px max). Both vocabularies are trained "
         "on all of them. COLMAP gets the descriptors as it stores SIFT, uint8 = min(255, round(512 x)) of the "
         "unit-norm RootSIFT (and casts them back to float), and the keypoints as x + 0.5, y + 0.5, scale, angle."),
        "",
        (f"- COLMAP (pycolmap {pycolmap.__version__}): `VisualIndex` with {args.colmap_words} words (flat k-means, "
         f"{args.colmap_iterations} iterations x {args.colmap_rounds} round(s), {args.threads} threads; COLMAP's "
         f"defaults are 100 x 3, {100 * 3 / (args.colmap_iterations * args.colmap_rounds):.0f} times the k-means "
         "work) + 64-bit Hamming embedding; its query options: 5 words per query descriptor, 64 checks. Rankings "
         "are read from `VocabTreePairGenerator` with one thread, whose construction indexes the database "
         "(indexing time). Without verification it returns every image with a score per query; with verification "
         f"it retrieves the top {args.verify_top}, re-ranks them by vote-and-verify, and the rest of the unverified "
         "ranking follows."),
        ("- COLMAP's vote-and-verify has fixed thresholds in pixels (100 px transfer error; translation bins "
         "spanning 4096 px), not exposed to Python, and loose for these ~320-px images. So it is run twice: on "
         "the keypoints in image pixels, and on the same keypoints with x, y and "
         f"scale multiplied as if each image's longer side were {args.colmap_image_size} px (what a photo given "
         "to COLMAP typically has). The verified engine pipelines are compared with the latter."),
        ("- Engine: `sift-bow`/`sift-sv`: 10^6-word tree; `sift-he*`: 141^2 = 19,881-word tree + 64-bit Hamming "
         "embedding (vocabulary time includes learning it); query time excludes reading the query's features "
         "from the cache; indexing reads them from the feature cache."),
        ("- Query ms for COLMAP is the time between consecutive results of its one-thread pair generator "
         "(which runs one query at a time, one ahead)."),
        (f"- Other jobs shared the 2 cores: 1-minute load average {load_at_start:.1f} at the start, "
         f"{load_at_end:.1f} at the end; times of rows measured at different moments compare only roughly."),
        ("- Bytes per posting: the engine's inverted-file arrays per posting (int32 image slot, + uint64 signature "
         "with Hamming embedding); for COLMAP, how much its written index grows per descriptor added (20 "
         "images); its inverted-file entry holds an int32 image id and feature index, float32 x, y, scale, "
         "orientation and a 64-bit signature. The engine keeps keypoints and words for verification in a "
         "separate per-image store (20 bytes per feature, + 8 with Hamming embedding)."),
        ("- Ratios are engine / COLMAP in this run: `sift-bow` and `sift-he` against COLMAP without "
         "verification, the verified pipelines against COLMAP with it (rescaled keypoints). Score ratio > 1: "
         "the engine is better; time ratio < 1: the engine is faster."),
        "",
        "Rank-order check: " + " ".join(notes),
        "",
        (f"| method | {' | '.join(metric[n] for n in datasets)} | vocabulary s | indexing s ({sets}) "
         f"| query ms median ({sets}) | query ms p95 ({sets}) | bytes per posting | score ratio ({sets}) "
         f"| vocabulary-time ratio | query-time ratio, median ({sets}) |"),
        "|" + "---|" * (9 + len(datasets)),
        *(table_row(run, None, datasets) for run in colmap_runs),
        *(table_row(run, verified if run.verified else plain, datasets) for run in engine_runs),
    ]
    body = "\n".join(lines)
    print(body)
    if not args.quick:
        print(f"written to {write_result(args.name, body)}")


if __name__ == "__main__":
    main()
