"""Feature budget (``SiftOptions.max_features`` with ``select_features``): Sacre-Coeur retrieval
among distractors, features, extraction time and index bytes per 1024-px photo.

The ten Sacre-Coeur photos (~1024 px) are indexed together with the 1,811 Holidays-811 +
UKBench-1000 images as distractors and each photo queries the collection. Reported per
pipeline and feature setting: the mean 1-based rank of the other nine photos (the query
itself excluded; best possible 5.0), their worst rank, and the mAP of the ten queries
(trapezoidal AP, ``index.evaluation.average_precision``). The whole photos find each other
easily, so a harder check follows: partial views, each photo's four quadrants (its 1024-px
image cut in 2 x 2, extracted with the setting) as 40 queries for the other nine photos,
where the part of a database photo that matches may be small: what spreading the budget
over the image is for.

Feature settings: ``none`` is what the pipelines extracted before the budget (``BEFORE``:
``cbir.pipelines.SIFT_FEATURES`` without budget and with one contrast threshold, 0.005, for every
image size); the others add a budget to it, spread over the image and scales (``spread`` 0.5, the
default), plain strongest-response selection (``spread`` 0), a higher contrast threshold for the
photos and their quadrants (``--thresholds``; the distractors, at most 400 x 300, keep 0.005), or
a contrast threshold rising with the image's pixel count above a reference (``--adaptive``,
``SiftOptions.contrast_reference_pixels`` and ``contrast_growth``: a 1024 x 768 photo and its
512 x 384 quadrants get different thresholds; images of at most the reference, the distractors
with the default 120,000 = 400 x 300, keep 0.005 and their features). Each setting gets its own
index (the pipeline with that ``SiftOptions``), distractors included: their features are those
of ``none``, extracted once through the feature cache (``--cache``), except for the few with more
features than the budget, extracted again with the budget (the table counts them).

Vocabularies: the demo's (``work/vocabulary-sift-10x6`` for sift-bow,
``work/vocabulary-sift-141x2`` for the Hamming-embedding pipelines), trained on Holidays +
UKBench only; the Hamming embedding is learned once on the same images' features (today's).

Per photo: features, extraction time (decoded grayscale image in, one OpenCV thread, the
fastest of ``--repeats`` runs with the settings interleaved: other processes share the cores), and
index bytes from the feature count: today's layout (inverted-file posting 4 B for sift-bow,
12 B with a Hamming signature; float32 keypoint 16 B; int32 word 4 B) and the compact one
being introduced (keypoint 8 B; word 4 B for 10^6 words, 2 B for 20k). Also the extraction
time of benchmark-size images (``--small`` Holidays images), whose features a budget of at
least 2,366 leaves unchanged (and which it describes in one OpenCV call, as without a budget:
``bovw.features.DESCRIBE_ALL_PIXELS_PER_FEATURE``).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import time

import cv2
import numpy as np

from benchmarks.common import DEFAULT_DATA, REPO, benchmark_datasets, write_result
from bovw.extraction import iter_features
from bovw.features import SiftOptions, sift_from_array
from bovw.images import load_image
from cbir.build import learn_hamming
from cbir.pipelines import SIFT_FEATURES, get_pipeline
from cbir.retrieval_index import RetrievalIndex, load_vocabulary, local_feature_cache, read_local_features
from index.evaluation import average_precision, ranks_without_junk

#: The pipelines' features before the budget: one contrast threshold, 0.005, no budget.
BEFORE = dataclasses.replace(SIFT_FEATURES, max_features=0, contrast_reference_pixels=0)
#: Index bytes per feature: (today, compact) for each build.
BYTES_PER_FEATURE = {"sift-bow": (4 + 16 + 4, 4 + 8 + 4), "sift-he": (12 + 16 + 4, 12 + 8 + 2)}
#: Which build (vocabulary, index) each measured pipeline searches.
BUILD_OF = {"sift-bow": "sift-bow", "sift-sv": "sift-bow", "sift-he": "sift-he", "sift-he-sv": "sift-he"}
VOCABULARY_OF = {"sift-bow": "vocabulary-sift-10x6", "sift-he": "vocabulary-sift-141x2"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (sacre_coeur/, holidays/, ukbench/)")
    parser.add_argument("--work", default=os.path.join(REPO, "work"),
                        help="folder holding the demo's vocabularies (vocabulary-sift-10x6, vocabulary-sift-141x2)")
    parser.add_argument("--cache", default=os.path.join(REPO, "work", "features"),
                        help="feature cache folder for the distractors")
    parser.add_argument("--pipelines", default="sift-bow,sift-he,sift-he-sv",
                        help=f"comma-separated, of {', '.join(BUILD_OF)}")
    parser.add_argument("--budgets", default="4000,3000,2500,2000,1500",
                        help="budgets measured with the default spread (0.5)")
    parser.add_argument("--spreads", default="0@2000,0@2500,1@2000",
                        help="other spreads as SPREAD@BUDGET, comma-separated (0: strongest responses only)")
    parser.add_argument("--thresholds", default="0.01@2500,0.02@2500",
                        help="other contrast thresholds as THRESHOLD@BUDGET (spread 0.5) or "
                             "PHOTOS/QUADRANTS@BUDGET (one for the photos, another for the quadrant queries), "
                             "comma-separated")
    parser.add_argument("--adaptive", default="",
                        help="contrast thresholds rising with image size as GROWTH@REFERENCE_PIXELS@BUDGET "
                             "(spread 0.5), comma-separated, e.g. 0.5@120000@2500")
    parser.add_argument("--paired", default="",
                        help="a setting's label: count the queries each setting answers better and worse than it")
    parser.add_argument("--small", type=int, default=100,
                        help="Holidays images whose extraction time is measured without and with a budget")
    parser.add_argument("--small-budget", type=int, default=2500, help="the budget of that measure")
    parser.add_argument("--repeats", type=int, default=3, help="extraction runs timed per image (fastest kept)")
    parser.add_argument("--jobs", type=int, default=2, help="threads for distractor extraction and quantization")
    parser.add_argument("--name", default="feature_budget", help="result file name under benchmarks/results")
    return parser.parse_args()


def settings(args) -> tuple[list[tuple[str, SiftOptions]], dict[str, SiftOptions]]:
    """(label, options) of every feature setting measured, ``none`` first, and label -> the options
    of the quadrant queries where they differ from the photos'."""
    rows = [("none", BEFORE)]
    rows += [(f"{b}", dataclasses.replace(BEFORE, max_features=int(b)))
             for b in args.budgets.split(",") if b]
    for item in filter(None, args.spreads.split(",")):
        spread, budget = item.split("@")
        rows.append((f"{budget}, spread {spread}",
                     dataclasses.replace(BEFORE, max_features=int(budget), spread=float(spread))))
    quadrant_options = {}
    for item in filter(None, args.thresholds.split(",")):
        thresholds, budget = item.split("@")
        photo, quadrant = (thresholds.split("/") + [thresholds])[:2]
        label = f"{budget}, photos c {photo}" + (f", quadrants c {quadrant}" if quadrant != photo else "")
        options = dataclasses.replace(BEFORE, max_features=int(budget), contrast_threshold=float(photo))
        rows.append((label, options))
        quadrant_options[label] = dataclasses.replace(options, contrast_threshold=float(quadrant))
    for item in filter(None, args.adaptive.split(",")):
        growth, reference, budget = item.split("@")
        options = dataclasses.replace(BEFORE, max_features=int(budget), contrast_reference_pixels=int(reference),
                                      contrast_growth=float(growth))
        rows.append((f"{budget if int(budget) else 'no budget'}, c x (pixels / {int(reference):,})^{growth}", options))
    return rows, quadrant_options


def extract_timed(images: list[np.ndarray], variants: list[tuple[str, SiftOptions]], repeats: int) -> dict:
    """label -> (features per image, fastest extraction seconds per image (n,)), settings interleaved."""
    features = {label: [] for label, _ in variants}
    seconds = {label: np.full(len(images), np.inf) for label, _ in variants}
    for i, gray in enumerate(images):
        for repeat in range(repeats):
            for label, options in variants:
                start = time.perf_counter()
                extracted = sift_from_array(gray, options)
                seconds[label][i] = min(seconds[label][i], time.perf_counter() - start)
                if repeat == 0:
                    features[label].append(extracted)
    return {label: (features[label], seconds[label]) for label, _ in variants}


def quadrants(gray: np.ndarray) -> list[np.ndarray]:
    """The four quarters (2 x 2) of an (h, w) image."""
    h, w = gray.shape[0] // 2, gray.shape[1] // 2
    return [gray[:h, :w], gray[:h, w:], gray[h:, :w], gray[h:, w:]]


def distractors(args) -> tuple[list[str], list[str], list]:
    """Paths, names and features before the budget (``BEFORE``, through the cache) of the Holidays +
    UKBench images."""
    paths, names = [], []
    for dataset_name, dataset in benchmark_datasets(args.data).items():
        paths += dataset.database_paths
        names += [f"{dataset_name}/{name}" for name in dataset.database]
    return paths, names, cached_features(paths, BEFORE, args)


def cached_features(paths: list[str], options: SiftOptions, args) -> list:
    """Features of ``paths`` extracted with ``options`` through the feature cache."""
    build = dataclasses.replace(get_pipeline("sift-bow").build, sift=options)
    features = [f for _, f in iter_features(paths, lambda path: read_local_features(build, path),
                                            local_feature_cache(build, args.cache), n_jobs=args.jobs,
                                            verbose=False)]
    if len(features) != len(paths):
        raise SystemExit(f"only {len(features)} of {len(paths)} distractor images could be read")
    return features


def retrieval(index: RetrievalIndex, pipeline: str, photo_names: list[str], queries: list) -> dict:
    """Search with each (source photo name, features) query: mean and worst 1-based rank of the
    other photos (the source excluded), mAP and each query's AP (``aps``), median query ms
    (quantization and ranking)."""
    ranks, aps, ms = [], [], []
    for source, features in queries:
        start = time.perf_counter()
        results = index.search(features, options=get_pipeline(pipeline).search)
        ms.append(1000 * (time.perf_counter() - start))
        positives = set(photo_names) - {source}
        found = ranks_without_junk([r.name for r in results], positives, {source})
        aps.append(average_precision(found, len(positives)))
        # A photo sharing no word with the query is not ranked: it counts as last.
        ranks.append(np.r_[found + 1, np.full(len(positives) - len(found), len(index) - 1)])
    ranks = np.concatenate(ranks)
    return {"mean_rank": ranks.mean(), "worst_rank": ranks.max(), "map": float(np.mean(aps)), "aps": np.array(aps),
            "query_ms": float(np.median(ms))}


def paired(cell: dict, reference: dict) -> str:
    """' (b+ / w-)': how many queries ``cell`` answers with a higher and a lower AP than ``reference``."""
    difference = cell["aps"] - reference["aps"]
    return f" ({np.sum(difference > 1e-9)}+ / {np.sum(difference < -1e-9)}-)"


def main():
    args = parse_args()
    cv2.setNumThreads(1)
    pipelines = [p for p in args.pipelines.split(",") if p]
    photos = sorted(glob.glob(os.path.join(args.data, "sacre_coeur", "*.jpg")))
    photo_names = [f"sacre_coeur/{os.path.basename(p)}" for p in photos]
    variants, quadrant_options = settings(args)
    if args.paired and args.paired not in dict(variants):
        raise SystemExit(f"--paired {args.paired!r} is none of the settings: {', '.join(dict(variants))}")
    grays = [load_image(path, BEFORE.image) for path in photos]

    print("extracting the photos", flush=True)
    extracted = extract_timed(grays, variants, args.repeats)
    parts = {label: [(name, sift_from_array(part, quadrant_options.get(label, options)))
                     for name, gray in zip(photo_names, grays) for part in quadrants(gray)]
             for label, options in variants}
    small_images = [load_image(path, BEFORE.image)
                    for path in benchmark_datasets(args.data)["holidays"].database_paths[:args.small]]
    small = extract_timed(small_images, [("none", BEFORE), (
        str(args.small_budget), dataclasses.replace(BEFORE, max_features=args.small_budget))], args.repeats)
    small_seconds = [seconds.mean() for _, seconds in small.values()]

    print("distractor features", flush=True)
    paths, names, features = distractors(args)
    counts = np.array([len(f) for f in features])
    vocabularies = {b: load_vocabulary(os.path.join(args.work, VOCABULARY_OF[b]))
                    for b in dict.fromkeys(BUILD_OF[p] for p in pipelines)}
    hamming = {b: learn_hamming(paths, b, vocabularies[b], args.cache, n_jobs=args.jobs, progress=False)[0]
               for b in vocabularies if get_pipeline(b).build.hamming}

    scores, changed = {}, {}
    for label, options in variants:
        # The distractors (at most 400 x 300) keep the threshold of ``none`` in the threshold rows.
        distractor_options = dataclasses.replace(options, contrast_threshold=BEFORE.contrast_threshold)
        over = np.flatnonzero(counts > options.max_features) if options.max_features else np.zeros(0, int)
        changed[label] = len(over)
        setting_features = list(features)
        for i, f in zip(over, cached_features([paths[i] for i in over], distractor_options, args)):
            setting_features[i] = f
        for build_name, vocabulary in vocabularies.items():
            pipeline = get_pipeline(build_name)
            build = dataclasses.replace(pipeline.build, sift=options)
            index = RetrievalIndex(dataclasses.replace(pipeline, build=build), vocabulary,
                                   hamming=hamming.get(build_name))
            for start in range(0, len(paths), 500):
                index.add_features(names[start:start + 500], setting_features[start:start + 500], n_jobs=args.jobs)
            index.add_features(photo_names, extracted[label][0])
            for name in (p for p in pipelines if BUILD_OF[p] == build_name):
                scores[name, label, "whole"] = retrieval(index, name, photo_names,
                                                         list(zip(photo_names, extracted[label][0])))
                scores[name, label, "parts"] = retrieval(index, name, photo_names, parts[label])
                print(name, label, *(f"{kind} mAP {scores[name, label, kind]['map']:.3f}"
                                      for kind in ("whole", "parts")), flush=True)
            del index

    none_seconds = extracted["none"][1].mean()
    lines = [
        f"Distractors: {len(paths)} images (Holidays-811 + UKBench-1000), {counts.mean():.0f} features per image "
        f"on average, at most {counts.max()}; images with more features than a budget (extracted again with it): "
        + (", ".join(f"{n} at {label}" for label, n in changed.items() if n) or "none") + ".",
        f"Photos: the {len(photos)} Sacre-Coeur photos, down-scaled to {BEFORE.image.max_side} px; the "
        f"budget applies to the queries too. Settings: `none` = before the budget (RootSIFT, contrast threshold "
        f"c = {BEFORE.contrast_threshold}, no budget); a number = that budget with spread 0.5; "
        f"`photos c` = another contrast threshold for the photos and quadrants (distractors keep "
        f"{BEFORE.contrast_threshold}); `c x (pixels / R)^g` = the threshold rising with the pixel count "
        f"above R pixels (`contrast_reference_pixels`, `contrast_growth`).",
        f"Benchmark-size images (first {args.small} of Holidays, one thread, fastest of {args.repeats}): "
        f"{small_seconds[0]:.4f} s per image without a budget, {small_seconds[1]:.4f} s with budget "
        f"{args.small_budget} (the same features).",
        "",
        "## Per photo",
        "",
        f"Extraction: fastest of {args.repeats} runs, mean over the photos. Index bytes from the feature count: "
        "today's layout / with 8-byte keypoints and the smallest word dtype.",
        "",
        "| setting | contrast threshold photos / quadrants (mean) | features (mean, min-max) | quadrant features "
        "(mean) | extraction s (1 thread) | vs none | sift-bow KB | sift-he KB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, options in variants:
        thresholds = [np.mean([kind.contrast_threshold_for(image.shape) for image in images]) for kind, images in (
            (options, grays), (quadrant_options.get(label, options), [p for gray in grays for p in quadrants(gray)]))]
        n = np.array([len(f) for f in extracted[label][0]])
        seconds = extracted[label][1].mean()
        kb = {b: " / ".join(f"{n.mean() * per / 1024:.1f}" for per in BYTES_PER_FEATURE[b]) for b in BYTES_PER_FEATURE}
        lines.append(f"| {label} | {thresholds[0]:.4f} / {thresholds[1]:.4f} | {n.mean():.0f} ({n.min()}-{n.max()}) | "
                     f"{np.mean([len(f) for _, f in parts[label]]):.0f} | {seconds:.3f} | "
                     f"{seconds / none_seconds:.2f} | {kb['sift-bow']} | {kb['sift-he']} |")
    for kind, title in (("whole", "Whole photos: 10 queries for the other 9 photos among 1,820 images"),
                        ("parts", "Partial views: 40 quadrant queries for the other 9 photos among 1,820 images")):
        lines += ["", f"## {title}", "",
                  "Mean rank (1-based, source photo excluded; 5.0 is perfect) / worst rank / mAP"
                  + (f" (queries with a higher / lower AP than `{args.paired}`)" if args.paired else "")
                  + "; median query ms.", "",
                  "| setting | " + " | ".join(pipelines) + " |", "|---|" + "---|" * len(pipelines)]
        for label, _ in variants:
            cells = [scores[p, label, kind] for p in pipelines]
            references = [scores[p, args.paired, kind] if args.paired and label != args.paired else None
                          for p in pipelines]
            lines.append(f"| {label} | " + " | ".join(
                f"{c['mean_rank']:.1f} / {c['worst_rank']} / {c['map']:.3f}"
                f"{paired(c, r) if r is not None else ''}; {c['query_ms']:.0f} ms"
                for c, r in zip(cells, references)) + " |")
    path = write_result(args.name, "\n".join(lines))
    print("\n".join(lines))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
