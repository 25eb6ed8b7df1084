"""Would a whitening shipped with the package beat no whitening? (issue 12)

A CNN global pipeline (``gem``, ``rmac``...) whitens its descriptors with a PCA
whitening learned on images. A user with one folder of photos has nothing else to
learn it on; learning it on the collection itself is what the engine does today.
This benchmark compares, on images the whitening never saw:

- none: L2-normalised pooled vectors, no whitening;
- shipped: a whitening learned on public images (Holidays-811 and/or UKBench-1000);
- self: learned on the evaluated collection itself (what a user gets today).

(A) Sacre-Coeur: the 10 photos of ``sacre_coeur/`` (about 1024 px) among distractors;
    every photo queries, the other 9 are its positives (the query removed from its
    own list); mAP (revisitop's trapezoidal AP, as for Holidays) and the mean and
    worst 1-based rank of the positives. W_H (learned on Holidays) is evaluated with
    the UKBench images as distractors, W_U with the Holidays ones; W_both with both
    sets as distractors (which that whitening *saw*). The distractors are ~325 px
    images, the photos 1024 px: the size alone sets them apart, so the same is also
    measured with copies of the photos down-scaled to 325 px (``--small-copies``).
    A "user folder" of 250 photos (the 10 + 240 random distractors of the set the
    whitening did not see, 5 draws) measures the self-learned whitening at the size
    of the user trial.
(B) Holidays-811 mAP with W_U, UKBench-1000 N-S with W_H (the engine's standard
    "other set" protocol, benchmarks/RESULTS.md), against none and self.
(C) self-learned: on Sacre-Coeur + its distractors, and each set on itself.
(D) variants: kept dimensions and eigenvalue floor ``eps`` of ``PCAWhitening.learn``,
    on every held-out score above, plus a split in which the whitening is learned on
    the even-numbered groups of *both* sets and evaluated on the odd ones (and on
    Sacre-Coeur among those odd-group images): a both-sets whitening scored on
    images it never saw. Gains against no whitening are averaged over the "cross"
    columns (whitening learned on the other set: the user's photos unlike the
    training images) and the "split" ones (like them), with the worst column.

Descriptors are computed with the engine's own functions (``raw_vectors``,
``PCAWhitening.learn``, ``embed``) from cached feature maps and ranked by inner
product (ties by index, like ``index.kernels.top_indices``); ``--check``
also runs the public API end to end (``learn_global_whitening``, ``GlobalIndex``,
``run_queries``, ``GlobalIndex.search``) and asserts the same scores. Each whitening
that could be shipped is saved as ``<out>/<pipeline>-<trainset>[-<variant>].npz``
(mean, projection and the json meta) in float32 and float16.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, benchmark_datasets, write_result
from bovw.extraction import ExtractionReport, iter_features
from cbir.pipelines import get_pipeline
from cnn.feature_maps import FeatureMapExtractor
from cnn.global_descriptors import embed, raw_vectors
from cnn.whitening import PCAWhitening
from index.datasets import Dataset, Query
from index.evaluation import mean_average_precision, ranks_without_junk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_FOLDER = 250
SMALL_DRAWS = 5


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/, sacre_coeur/)")
    parser.add_argument("--cache", default=os.path.join(REPO, "work", "features"), help="feature-map cache folder")
    parser.add_argument("--pipelines", default="rmac,gem,spoc", help="global pipelines (comma-separated)")
    parser.add_argument("--dims", default="all,512,256,128",
                        help="kept whitened dimensions tried in the variants table ('all': every component)")
    parser.add_argument("--eps", default="1e-6,1e-3,1e-2,1e-1,1",
                        help="eigenvalue floors (fraction of the largest) tried in the variants table")
    parser.add_argument("--self-eps", default="0.01,0.1",
                        help="extra eps tried for the self-learned whitening of the user-sized folders (all dims)")
    parser.add_argument("--ship", default="",
                        help="extra variants to save, PIPELINE:DIM:EPS comma-separated (e.g. rmac:512:1e-2)")
    parser.add_argument("--jobs", type=int, default=2, help="images read/extracted in parallel")
    parser.add_argument("--check", action="store_true",
                        help="also run the public API end to end for the first pipeline and assert equal scores")
    parser.add_argument("--out", default="/tmp/whitening", help="folder for the saved whitenings")
    parser.add_argument("--small-copies", default="/tmp/whitening/sacre_coeur_325",
                        help="folder for the Sacre-Coeur photos down-scaled to the distractors' size (written if absent)")
    parser.add_argument("--name", default="shipped_whitening", help="result file name under benchmarks/results")
    return parser.parse_args()


# ---- data -----------------------------------------------------------------------------------------


def load_sets(data: str) -> tuple[dict, list[str]]:
    datasets = benchmark_datasets(data)
    sacre = sorted(glob.glob(os.path.join(data, "sacre_coeur", "*.jpg")))
    if len(sacre) != 10:
        raise SystemExit(f"expected 10 Sacre-Coeur photos in {data}/sacre_coeur, found {len(sacre)}")
    return datasets, sacre


SMALL_SIDE = 325


def small_copies(sacre: list[str], folder: str) -> list[str]:
    """The photos down-scaled to SMALL_SIDE px on the long side (Holidays' size), EXIF-upright,
    Lanczos, JPEG quality 92; written to ``folder`` once."""
    from PIL import Image, ImageOps
    os.makedirs(folder, exist_ok=True)
    out = []
    for path in sacre:
        target = os.path.join(folder, os.path.basename(path))
        if not os.path.exists(target):
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img).convert("RGB")
                scale = SMALL_SIDE / max(img.size)
                img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS).save(
                    target, quality=92)
        out.append(target)
    return out


def keyed_paths(datasets: dict, sacre: list[str], small: list[str]) -> dict[str, str]:
    """'set/name' -> path for every image used (S: the photos, s: their small copies)."""
    keys = {f"{name}/{n}": p for name, d in datasets.items() for n, p in zip(d.database, d.database_paths)}
    keys.update({f"S/{os.path.basename(p)}": p for p in sacre})
    keys.update({f"s/{os.path.basename(p)}": p for p in small})
    return keys


def raw_rows(keys: dict[str, str], pipelines: list, cache: str, jobs: int) -> dict[str, dict[str, np.ndarray]]:
    """pipeline name -> key -> (r, 1280) raw L2-normalised pooled rows (one map read per image)."""
    backbone = pipelines[0].build.backbone
    if any(p.build.backbone != backbone for p in pipelines):
        raise SystemExit("the pipelines must share a backbone")
    extractor = FeatureMapExtractor(backbone, cache)
    report = ExtractionReport()
    by_path = {p: k for k, p in keys.items()}
    rows = {p.name: {} for p in pipelines}
    start = time.perf_counter()
    for path, maps in iter_features(list(keys.values()), extractor, None, report, n_jobs=jobs, verbose=False):
        for pipeline in pipelines:
            rows[pipeline.name][by_path[path]] = raw_vectors([maps["global"]], pipeline.build.descriptor)
    if report.skipped:
        raise SystemExit(f"unreadable images: {report.summary()}")
    # (the extractor reads its own cache: the report counts every image as extracted)
    print(f"feature maps of {len(keys)} images read in {time.perf_counter() - start:.0f} s", flush=True)
    return rows


# ---- evaluation -----------------------------------------------------------------------------------


def subset(dataset: Dataset, prefix: str, keep_group) -> Dataset:
    """The dataset restricted to the images whose group passes ``keep_group`` (database and queries),
    names prefixed with ``prefix/``."""
    number = (lambda n: int(os.path.splitext(n)[0]) // 100) if dataset.name == "holidays" else \
        (lambda n: int(n[len("ukbench"):-4]) // 4)
    database = [f"{prefix}/{n}" for n in dataset.database if keep_group(number(n))]
    out = Dataset(dataset.name, dataset.root, database=database, metric=dataset.metric)
    for query, positives in zip(dataset.queries, dataset._positives):
        if keep_group(number(query.name)):
            out.queries.append(Query(f"{prefix}/{query.name}", query.path, remove_self=query.remove_self))
            out._positives.append({f"{prefix}/{n}" for n in positives})
    return out


def sacre_dataset(sacre_keys: list[str], distractors: list[str]) -> Dataset:
    out = Dataset("sacre", "", database=list(sacre_keys) + list(distractors), metric="mAP")
    for key in sacre_keys:
        out.queries.append(Query(key, key, remove_self=True))
        out._positives.append(set(sacre_keys) - {key})
    return out


def descriptors(rows: dict[str, np.ndarray], keys, whitening: PCAWhitening | None, config) -> dict[str, np.ndarray]:
    """key -> final descriptor, by the engine's ``embed`` (one whitening matmul for all images)."""
    keys = list(keys)
    stacked = np.concatenate([rows[k] for k in keys])
    whitened = whitening.apply(stacked) if whitening is not None else stacked
    out, start = {}, 0
    for key in keys:
        count = len(rows[key])
        # embed() on pre-whitened rows with no whitening only re-normalises (a no-op on unit rows)
        out[key] = embed(whitened[start:start + count], None, config)[0]
        start += count
    return out


def rankings(dataset: Dataset, desc: dict[str, np.ndarray]) -> list[list[str]]:
    database = np.stack([desc[n] for n in dataset.database])
    queries = np.stack([desc[q.name] for q in dataset.queries])
    scores = queries @ database.T
    index = np.arange(len(dataset.database))
    names = np.asarray(dataset.database, dtype=object)
    return [list(names[np.lexsort((index, -row))]) for row in scores]


def evaluate(dataset: Dataset, desc: dict[str, np.ndarray]) -> dict:
    """Score (mAP or N-S); for the Sacre-Coeur sets also the mean and worst rank of the positives."""
    return evaluate_rankings(dataset, rankings(dataset, desc))


def evaluate_rankings(dataset: Dataset, ranked: list[list[str]]) -> dict:
    (metric, score), = dataset.score(ranked).items()
    out = {"metric": metric, "score": score}
    if dataset.name == "sacre":
        ranks = []
        for query, ranking, positives in zip(dataset.queries, ranked, dataset._positives):
            ranks += (ranks_without_junk(ranking, positives, {query.name}) + 1).tolist()
        top9 = [[n for n in r if n != q.name][:9] for q, r in zip(dataset.queries, ranked)]
        out.update(mean_rank=float(np.mean(ranks)), worst_rank=int(np.max(ranks)),
                   p9=float(np.mean([len(set(t) & p) / 9 for t, p in zip(top9, dataset._positives)])))
    return out


def learn(rows: dict[str, np.ndarray], keys, dim, eps: float = 1e-6) -> PCAWhitening:
    return PCAWhitening.learn(np.concatenate([rows[k] for k in keys]), dim, eps)


# ---- saving ---------------------------------------------------------------------------------------


def save_whitening(whitening: PCAWhitening, path: str, info: dict) -> tuple[int, int]:
    """Save float32 ``path`` and float16 ``path`` with .f16.npz; returns both file sizes in bytes."""
    meta, arrays = whitening.state_dict()
    meta = dict(meta, **info)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sizes = []
    for target, dtype in ((path, np.float32), (path[:-4] + ".f16.npz", np.float16)):
        np.savez(target, meta=np.asarray(json.dumps(meta)), **{k: v.astype(dtype) for k, v in arrays.items()})
        sizes.append(os.path.getsize(target))
    return sizes[0], sizes[1]


def load_whitening(path: str) -> PCAWhitening:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return PCAWhitening.from_state_dict({k: meta[k] for k in ("kind", "version")},
                                            {k: data[k].astype(np.float32) for k in ("mean", "projection")})


# ---- the API check --------------------------------------------------------------------------------


def api_check(pipeline, datasets: dict, sacre: list[str], cache: str, jobs: int, expected: dict) -> list[str]:
    """Public API end to end: W_U on Holidays, W_H on UKBench, W_H on Sacre-Coeur among UKBench."""
    from cbir.build import learn_global_whitening
    from cbir.evaluate import index_dataset, run_queries
    from cbir.global_index import GlobalIndex
    lines = []
    for name, other in (("holidays", "ukbench"), ("ukbench", "holidays")):
        whitening, _ = learn_global_whitening(datasets[other].database_paths, pipeline, cache_dir=cache,
                                              n_jobs=jobs, progress=False)
        index = GlobalIndex(pipeline, whitening, cache_dir=cache)
        index_dataset(index, datasets[name], n_jobs=jobs, progress=False)
        (metric, score), = run_queries(index, datasets[name], progress=False).scores.items()
        ok = abs(score - expected[name]) < 1e-9
        lines.append(f"API `{pipeline.name}` {name} {metric} with W_{other[0].upper()}: {score:.4f} "
                     f"(this script: {expected[name]:.4f}) {'same' if ok else 'DIFFERENT'}")
        print(lines[-1], flush=True)
        if name == "ukbench":  # Sacre-Coeur among UKBench, same whitening (W_H)
            keys = [f"S/{os.path.basename(p)}" for p in sacre]
            index.add_images(sacre, keys, n_jobs=jobs, progress=False)
            dataset = sacre_dataset(keys, [])
            ranked = [[r.name for r in index.search(p, top_k=None)] for p in sacre]
            sc = evaluate_rankings(dataset, ranked)
            ok2 = abs(sc["score"] - expected["sacre"]["score"]) < 1e-9 and \
                abs(sc["mean_rank"] - expected["sacre"]["mean_rank"]) < 1e-9
            lines.append(f"API `{pipeline.name}` Sacre-Coeur among UKBench with W_H: mAP {sc['score']:.4f}, mean "
                         f"rank {sc['mean_rank']:.2f} (this script: {expected['sacre']['score']:.4f}, "
                         f"{expected['sacre']['mean_rank']:.2f}) {'same' if ok2 else 'DIFFERENT'}")
            print(lines[-1], flush=True)
            ok = ok and ok2
        if not ok:
            raise SystemExit("the API and this script disagree")
    return lines


# ---- main -----------------------------------------------------------------------------------------


def fmt_sacre(r: dict) -> str:
    return f"{r['score']:.4f} | {r['mean_rank']:.1f} | {r['worst_rank']:.0f} | {r['p9']:.3f}"


def mean_of(results: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in results])) for k in ("score", "mean_rank", "worst_rank", "p9")}


def main():
    args = parse_args()
    started = time.perf_counter()
    datasets, sacre = load_sets(args.data)
    small_paths = small_copies(sacre, args.small_copies)
    pipelines = [get_pipeline(p) for p in args.pipelines.split(",")]
    keys = keyed_paths(datasets, sacre, small_paths)
    all_rows = raw_rows(keys, pipelines, args.cache, args.jobs)

    H = [f"holidays/{n}" for n in datasets["holidays"].database]
    U = [f"ukbench/{n}" for n in datasets["ukbench"].database]
    photos = {"S": [f"S/{os.path.basename(p)}" for p in sacre], "s": [f"s/{os.path.basename(p)}" for p in sacre]}
    hol = subset(datasets["holidays"], "holidays", lambda g: True)
    ukb = subset(datasets["ukbench"], "ukbench", lambda g: True)
    hol_odd, ukb_odd = (subset(datasets[n], n, lambda g: g % 2 == 1) for n in ("holidays", "ukbench"))
    hol_even, ukb_even = (subset(datasets[n], n, lambda g: g % 2 == 0) for n in ("holidays", "ukbench"))
    half_train = hol_even.database + ukb_even.database
    half_test = hol_odd.database + ukb_odd.database
    trains = {"H": H, "U": U, "both": H + U, "half": half_train}
    # Sacre-Coeur sets: (photo version, distractor set) -> Dataset
    distractor_sets = {"U": U, "H": H, "both": H + U, "odd": half_test}
    sc = {(v, d): sacre_dataset(photos[v], dk) for v in photos for d, dk in distractor_sets.items()}
    unseen = {"U": "H", "H": "U", "both": "both", "odd": "half"}  # distractors -> the shipped whitening
    rng = np.random.default_rng(0)
    draws = {d: [sorted(rng.choice(dk, SMALL_FOLDER - 10, replace=False), key=dk.index) for _ in range(SMALL_DRAWS)]
             for d, dk in (("U", U), ("H", H))}
    small = {(v, d): [sacre_dataset(photos[v], draw) for draw in draws[d]] for v in photos for d in draws}

    dims = [None if d == "all" else int(d) for d in args.dims.split(",")]
    epss = [float(e) for e in args.eps.split(",")]
    self_epss = [float(e) for e in filter(None, args.self_eps.split(","))]
    n_rows = {p.name: {s: float(np.mean([len(all_rows[p.name][k]) for k in ks]))
                       for s, ks in (("H", H), ("U", U), ("S", photos["S"]), ("s", photos["s"]))} for p in pipelines}

    body = [f"Images: Holidays-811 (H) and UKBench-1000 (U) at their own size (~325x243, 320x240); the 10 "
            f"Sacre-Coeur photos as given (S, ~1024 px, fed at up to 1024 px) and down-scaled to {SMALL_SIDE} px "
            f"(s, Lanczos copies in `{args.small_copies}`): the distractors are ~325 px images and "
            f"the photo size alone sets S apart from them. Backbone {pipelines[0].build.backbone.name}, maps from "
            f"the cache `{os.path.relpath(args.cache, REPO)}`. Rows per image that a whitening is learned on "
            f"(R-MAC regions; 1 otherwise): "
            + ", ".join(f"`{p}` " + " / ".join(f"{k} {v:.1f}" for k, v in c.items()) for p, c in n_rows.items())
            + ".", "",
            "Scores: Sacre-Coeur = mAP over the 10 queries (revisitop trapezoidal AP, query removed, the other 9 "
            "positive), mean and worst 1-based rank of the 90 positives (5.0 and 9 are perfect), P@9 (share of "
            "the first 9 results that are positives); Holidays mAP (300 queries, same AP, query removed); UKBench "
            "N-S (1000 queries, query counted). `none` = no whitening (L2 only); W_H / W_U / W_both = learned on "
            "all Holidays / UKBench / both database images with the pipeline's defaults (its `dim`, eps 1e-6); "
            "W_half = learned on the even-numbered groups of both sets (H groups id//100, U objects id//4), "
            "evaluated on the odd ones; `self` = learned on the evaluated collection itself (what the engine does "
            "for a user today).", ""]
    check_lines, saved = [], []

    for pipeline in pipelines:
        t0 = time.perf_counter()
        rows = all_rows[pipeline.name]
        config = pipeline.build.descriptor
        default_dim = config.whitening_dim
        dim_label = "all" if default_dim is None else default_dim
        learned, memo = {}, {}

        def W(train: str, dim=default_dim, eps=1e-6):
            if (train, dim, eps) not in learned:
                learned[(train, dim, eps)] = learn(rows, trains[train], dim, eps)
            return learned[(train, dim, eps)]

        def score(dataset, whitening):
            """Scores with a shared whitening (or none): every image described once per whitening."""
            if id(whitening) not in memo:
                memo[id(whitening)] = (whitening, descriptors(rows, keys, whitening, config))
            return evaluate(dataset, memo[id(whitening)][1])

        def self_score(dataset, dim=default_dim, eps=1e-6):
            whitening = learn(rows, dataset.database, dim, eps)
            return evaluate(dataset, descriptors(rows, dataset.database, whitening, config))

        body += [f"## `{pipeline.name}` (default whitening: {dim_label} dims; {pipeline.description})", ""]
        print(f"--- {pipeline.name}", flush=True)

        # (A) Sacre-Coeur
        body += ["### (A) Sacre-Coeur among distractors", "",
                 "| photos | distractors | whitening | saw the distractors? | mAP | mean rank | worst rank | P@9 |",
                 "|---|---|---|---|---|---|---|---|"]
        dist_label = {"U": "UKBench-1000", "H": "Holidays-811", "both": "both (1811)",
                      "odd": "odd groups of both (905)"}
        for v in photos:
            for d in distractor_sets:
                shipped = unseen[d]
                body.append(f"| {v} | {dist_label[d]} | none | - | {fmt_sacre(score(sc[v, d], None))} |")
                body.append(f"| {v} | {dist_label[d]} | W_{shipped} (shipped) | {'**yes**' if d == 'both' else 'no'} "
                            f"| {fmt_sacre(score(sc[v, d], W(shipped)))} |")
                if d != "odd":
                    body.append(f"| {v} | {dist_label[d]} | self | yes (+ the photos) | "
                                f"{fmt_sacre(self_score(sc[v, d]))} |")
        body += ["", f"User-sized folder: the 10 photos + {SMALL_FOLDER - 10} random distractors from one set "
                 f"({SMALL_DRAWS} draws, seed 0; means over the draws):", "",
                 "| photos | distractors from | whitening | mAP | mean rank | worst rank | P@9 |",
                 "|---|---|---|---|---|---|---|"]
        for v in photos:
            for d in draws:
                shipped = unseen[d]
                for label, results in (("none", [score(x, None) for x in small[v, d]]),
                                       (f"W_{shipped} (shipped, unseen)", [score(x, W(shipped)) for x in small[v, d]]),
                                       ("self (the 250 photos)", [self_score(x) for x in small[v, d]])):
                    body.append(f"| {v} | {dist_label[d]} | {label} | {fmt_sacre(mean_of(results))} |")
                for eps in self_epss:
                    results = [self_score(x, None, eps) for x in small[v, d]]
                    body.append(f"| {v} | {dist_label[d]} | self, all dims, eps {eps:g} | {fmt_sacre(mean_of(results))} |")
        print(f"(A) done {time.perf_counter() - t0:.0f} s", flush=True)

        # (B) + (C) benchmark sets
        body += ["", "### (B) benchmark sets with a whitening learned without them, (C) self-learned", "",
                 "| set | none | shipped (learned without the set) | self (learned on the set) | W_both (saw the set) |",
                 "|---|---|---|---|---|"]
        b = {}
        for label, dataset, other in (("Holidays-811 mAP", hol, "U"), ("UKBench-1000 N-S", ukb, "H"),
                                      ("Holidays odd groups (150 queries) mAP", hol_odd, "half"),
                                      ("UKBench odd objects (500 queries) N-S", ukb_odd, "half")):
            r = [score(dataset, None)["score"], score(dataset, W(other))["score"], self_score(dataset)["score"]]
            both = f"{score(dataset, W('both'))['score']:.4f}" if other != "half" else "-"
            b[label] = r
            body.append(f"| {label} | {r[0]:.4f} | {r[1]:.4f} (W_{other}) | {r[2]:.4f} | {both} |")
        print(f"(B) done {time.perf_counter() - t0:.0f} s", flush=True)

        if args.check and pipeline is pipelines[0]:
            check_lines += api_check(pipeline, datasets, sacre, args.cache, args.jobs,
                                     {"holidays": b["Holidays-811 mAP"][1], "ukbench": b["UKBench-1000 N-S"][1],
                                      "sacre": score(sc["S", "U"], W("H"))})

        # (D) variants
        tests = [("S\\|U", sc["S", "U"], "H", 1), ("S\\|H", sc["S", "H"], "U", 1), ("s\\|U", sc["s", "U"], "H", 1),
                 ("s\\|H", sc["s", "H"], "U", 1), ("s\\|odd", sc["s", "odd"], "half", 1),
                 ("Hol", hol, "U", 1), ("UKB", ukb, "H", 4), ("Hol-odd", hol_odd, "half", 1),
                 ("UKB-odd", ukb_odd, "half", 4)]
        split_cols = {"s\\|odd", "Hol-odd", "UKB-odd"}
        columns = [t[0] for t in tests] + ["S250", "s250"]
        best_of = {name: m for name, _, _, m in tests}
        best_of.update(S250=1, s250=1)

        def row_scores(whitening_of):
            vals = {name: score(d, whitening_of(train))["score"] for name, d, train, _ in tests}
            for v in photos:
                vals[f"{v}250"] = float(np.mean([score(x, whitening_of(unseen[d]))["score"]
                                                 for d in draws for x in small[v, d]]))
            return vals

        base = row_scores(lambda train: None)
        body += ["", "### (D) variants: kept dims x eigenvalue floor eps (each score on images the whitening "
                 "never saw)", "",
                 "Columns: S\\|U, S\\|H = Sacre-Coeur (1024 px) mAP among UKBench with W_H, among Holidays with W_U; "
                 "s\\|... = the 325-px copies, s\\|odd among the odd groups of both with W_half; Hol = Holidays-811 "
                 "mAP with W_U; UKB = UKBench-1000 N-S with W_H; Hol-odd / UKB-odd = odd groups with W_half; "
                 "S250 / s250 = mAP averaged over the 10 user-sized folders (both distractor sources) with W_H or "
                 "W_U. Gains are score - none in points (mAP x 100; N-S / 4 x 100), averaged over: 'all' the 11 "
                 "columns; 'cross' the 8 where the whitening was learned on the other set only (the user's "
                 "images unlike any training image); 'split' the 3 odd-group columns (W_half: the user's images "
                 "like the training ones); 'worst' = the largest loss (most negative change) of any column. "
                 "eps = 1 with all dims is mean-centering only (every eigenvalue floored to the largest); eps "
                 "floors each eigenvalue at eps x the largest before dividing by its square root.", "",
                 "| dims | eps | " + " | ".join(columns) + " | gain all | gain cross | gain split | worst |",
                 "|" + "---|" * (len(columns) + 6),
                 "| none | - | " + " | ".join(f"{base[c]:.4f}" for c in columns) + " | 0 | 0 | 0 | 0 |"]
        variants = []
        for dim in dims:
            for eps in epss:
                vals = row_scores(lambda train, dim=dim, eps=eps: W(train, dim, eps))
                gains = {c: 100 * (vals[c] - base[c]) / best_of[c] for c in columns}
                g_all = float(np.mean(list(gains.values())))
                g_cross = float(np.mean([gains[c] for c in columns if c not in split_cols]))
                g_split = float(np.mean([gains[c] for c in split_cols]))
                worst = min(gains.values())
                variants.append((g_all, g_cross, g_split, worst, dim, eps))
                body.append(f"| {'all' if dim is None else dim} | {eps:g} | "
                            + " | ".join(f"{vals[c]:.4f}" for c in columns)
                            + f" | {g_all:+.2f} | {g_cross:+.2f} | {g_split:+.2f} | {worst:+.2f} |")
                print(body[-1], flush=True)
                if (dim, eps) != (default_dim, 1e-6):  # bounded memory: drop this variant's whitenings
                    for key in [k for k in learned if k[1:] == (dim, eps)]:
                        memo.pop(id(learned.pop(key)), None)
        def describe_variant(v):
            return (f"dims {'all' if v[4] is None else v[4]}, eps {v[5]:g} (gain {v[0]:+.2f} all, {v[1]:+.2f} "
                    f"cross, {v[2]:+.2f} split, worst column {v[3]:+.2f})")

        best = max(variants)
        safest = max(variants, key=lambda v: (v[3], v[0]))
        default = [x for x in variants if x[4:] == (default_dim, 1e-6)]
        body += ["", f"Best variant by mean gain: {describe_variant(best)}. Best by worst column: "
                 f"{describe_variant(safest)}."
                 + (f" The pipeline's default: {describe_variant(default[0])}."
                    if default else ""), ""]
        print(f"(D) done {time.perf_counter() - t0:.0f} s", flush=True)

        # saving what could be shipped
        to_save = [("holidays", "H", default_dim, 1e-6), ("ukbench", "U", default_dim, 1e-6),
                   ("both", "both", default_dim, 1e-6), ("both", "both", best[4], best[5]),
                   ("both", "both", safest[4], safest[5])]
        for spec in filter(None, args.ship.split(",")):
            name, dim, eps = spec.split(":")
            if name == pipeline.name:
                to_save.append(("both", "both", None if dim == "all" else int(dim), float(eps)))
        done = set()
        for trainset, train, dim, eps in to_save:
            suffix = "" if (dim, eps) == (default_dim, 1e-6) else f"-d{'all' if dim is None else dim}-eps{eps:g}"
            path = os.path.join(args.out, f"{pipeline.name}-{trainset}{suffix}.npz")
            if path in done:
                continue
            done.add(path)
            w = W(train, dim, eps)
            sizes = save_whitening(w, path, {"pipeline": pipeline.name, "trained_on": trainset,
                                             "images": len(trains[train]), "dim": w.output_dim, "eps": eps,
                                             "backbone": pipeline.build.backbone.key})
            w16 = load_whitening(path[:-4] + ".f16.npz")
            same = [(score(d, w16)["score"], score(d, w)["score"]) for d in (sc["S", "both"], hol, ukb)]
            saved.append(f"| `{os.path.basename(path)}` | {w.input_dim} x {w.output_dim} | {sizes[0]:,} | "
                         f"{sizes[1]:,} | " + " / ".join(f"{a:.4f} vs {b_:.4f}" for a, b_ in same) + " |")
        body.append(f"(`{pipeline.name}`: {time.perf_counter() - t0:.0f} s)")
        body.append("")

    body += ["## Saved whitenings", "",
             f"In `{args.out}` (np.savez, uncompressed: mean, projection and the json meta). Last column: scores "
             "with the float16 file (read back as float32) vs the float32 one, on Sacre-Coeur among both sets, "
             "Holidays-811, UKBench-1000 (sets these whitenings saw: a storage check, not an evaluation).", "",
             "| file | matrix | bytes float32 | bytes float16 | float16 vs float32 scores |", "|---|---|---|---|---|"]
    body += saved
    if check_lines:
        body += ["", "## API check", ""] + [f"- {line}" for line in check_lines]
    body += ["", f"Total run time {time.perf_counter() - started:.0f} s."]
    print(f"written to {write_result(args.name, chr(10).join(body))}")


if __name__ == "__main__":
    main()
