"""Feature cache (bovw.feature_cache): bytes per photo, put/get/hash time, effect on visual words.

Compares the cache format before issue 12 (float32 keypoints, descriptors and image
size in an uncompressed ``np.savez``, reproduced here) with the current one
(RootSIFT as the uint8 SIFT integers, float32 keypoints, deflated),
on the Sacre-Coeur photos (~1024 px) and the first UKBench images (320x240), with
the SIFT settings of the pipelines (``sift-bow``).

The visual-word check trains a vocabulary on the UKBench images' RootSIFT
descriptors (what ``cbir.build.local_descriptors(paths, "sift-bow")`` returns) and
counts the descriptors whose word (``quantize(x, beam)``) changes when x goes
through the cache, and through two lossy forms for comparison. ``--blcf`` does
the same for BLCF's conv descriptors (stored as float16), whitened as the index
whitens them.

``--levels A,B`` compares zlib levels of the cache files (``bovw.feature_cache.write_npz``,
numpy's ``savez_compressed`` layout; numpy writes level 6) on the Sacre-Coeur photos: the
SIFT features of the pipelines' settings and without a budget, the backbone's feature maps
that ``rmac`` and the other CNN pipelines cache (float16), and BLCF's local features: bytes,
write time (the arrays a put stores, into a file) and read time (``FeatureCache.get`` or
``get_arrays`` of that file), each the fastest of ``--repeats`` with the levels interleaved.
The full run ends with that; ``--levels-only`` measures only that.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import io
import os
import tempfile
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, write_result
from bovw.feature_cache import COMPRESSION_LEVEL, FeatureCache, encode_features, write_npz
from bovw.features import LocalFeatures
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import read_local_features

MB = 1e6
TARGET_BYTES = 0.5 * MB


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (sacre_coeur/, ukbench/)")
    parser.add_argument("--ukbench", type=int, default=50, help="UKBench images measured and used for the vocabulary")
    parser.add_argument("--shape", default="141x2", help="SIFT vocabulary shape BxL (default 141x2: 19,881 words)")
    parser.add_argument("--beam", type=int, default=3, help="beam of the quantization")
    parser.add_argument("--blcf", action="store_true", help="also measure BLCF (conv features; imports torch)")
    parser.add_argument("--blcf-shape", default="64x2",
                        help="BLCF vocabulary shape for the word check (default 64x2: the pipeline's 158x2 "
                             "needs more descriptors than these images give)")
    parser.add_argument("--jobs", type=int, default=2, help="vocabulary training threads")
    parser.add_argument("--levels", default="6,1", help="zlib levels compared, the first as the reference")
    parser.add_argument("--levels-only", action="store_true", help="measure only the zlib levels")
    parser.add_argument("--repeats", type=int, default=5, help="timings per photo and level (fastest kept)")
    parser.add_argument("--name", default="feature_cache", help="result file name under benchmarks/results")
    return parser.parse_args()


def old_put(file: str, features: LocalFeatures) -> None:
    """The cache file of the previous format."""
    with open(file, "wb") as handle:
        np.savez(handle, keypoints=features.keypoints, descriptors=features.descriptors,
                 image_size=np.asarray(features.image_size, np.int64))


def old_get(file: str) -> LocalFeatures:
    with np.load(file, allow_pickle=False) as data:
        return LocalFeatures(data["keypoints"], data["descriptors"], tuple(data["image_size"]))


def compressed_bytes(**arrays: np.ndarray) -> int:
    """Size of ``np.savez_compressed`` of ``arrays``."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return len(buffer.getvalue())


def timed(function, *args):
    """(result, seconds)."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def file_hash_seconds(path: str, algorithm: str) -> float:
    """Seconds to hash a file's bytes, best of three."""
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        with open(path, "rb") as handle:
            hashlib.file_digest(handle, algorithm)
        best = min(best, time.perf_counter() - start)
    return best


def measure(paths: list[str], build, workdir: str) -> dict:
    """Extract every image once, store it in both formats; per-image numbers and what came back."""
    cache = FeatureCache(os.path.join(workdir, "new"), build.extractor.key)
    os.makedirs(os.path.join(workdir, "old"), exist_ok=True)
    rows = {k: [] for k in ["n", "extract", "old_bytes", "new_bytes", "descriptor_bytes", "keypoint_bytes",
                            "old_put", "old_get", "new_put", "new_get", "blake2b", "sha1", "key"]}
    fresh, back = [], []
    for i, path in enumerate(paths):
        features, extract_s = timed(read_local_features, build, path)
        old_file = os.path.join(workdir, "old", f"{i}.npz")
        _, old_put_s = timed(old_put, old_file, features)
        _, old_get_s = timed(old_get, old_file)
        _, new_put_s = timed(cache.put, path, features)
        got, new_get_s = timed(cache.get, path)
        _, key_s = timed(cache.path_for, path)
        stored = {k: v for k, v in cache.get_arrays(path).items() if k.startswith("descriptor")}
        for name, value in [("n", len(features)), ("extract", extract_s), ("old_bytes", os.path.getsize(old_file)),
                            ("new_bytes", os.path.getsize(cache.path_for(path))),
                            ("descriptor_bytes", compressed_bytes(**stored)),
                            ("keypoint_bytes", compressed_bytes(keypoints=features.keypoints)),
                            ("old_put", old_put_s), ("old_get", old_get_s), ("new_put", new_put_s),
                            ("new_get", new_get_s), ("blake2b", file_hash_seconds(path, "blake2b")),
                            ("sha1", file_hash_seconds(path, "sha1")), ("key", key_s)]:
            rows[name].append(value)
        fresh.append(features)
        back.append(got)
    rows = {k: np.asarray(v, np.float64) for k, v in rows.items()}
    return {"rows": rows, "fresh": fresh, "back": back}


def bit_exact(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def size_row(label: str, result: dict) -> str:
    r = result["rows"]
    exact = sum(bit_exact(f.descriptors, g.descriptors) and bit_exact(f.keypoints, g.keypoints)
                for f, g in zip(result["fresh"], result["back"]))
    per_feature = r["new_bytes"].sum() / r["n"].sum()
    return (f"| {label} | {len(r['n'])} | {r['n'].mean():.0f} ({r['n'].min():.0f}-{r['n'].max():.0f}) | "
            f"{r['old_bytes'].mean() / MB:.2f} | {r['new_bytes'].mean() / MB:.3f} "
            f"({r['new_bytes'].max() / MB:.3f}) | {r['old_bytes'].sum() / r['new_bytes'].sum():.1f}x | "
            f"{r['old_bytes'].sum() / r['n'].sum():.0f} -> {per_feature:.0f} "
            f"({r['descriptor_bytes'].sum() / r['n'].sum():.0f} + {r['keypoint_bytes'].sum() / r['n'].sum():.0f}) | "
            f"{exact}/{len(r['n'])} |")


def time_row(label: str, result: dict) -> str:
    r = {k: np.median(v) for k, v in result["rows"].items()}
    return (f"| {label} | {r['extract'] * 1000:.0f} | {r['blake2b'] * 1000:.2f} / {r['sha1'] * 1000:.2f} | "
            f"{r['key'] * 1000:.2f} | {r['old_put'] * 1000:.0f} / {r['new_put'] * 1000:.0f} | "
            f"{r['old_get'] * 1000:.0f} / {r['new_get'] * 1000:.0f} |")


def word_changes(vocabulary: VocabularyTree, beam: int, original: np.ndarray, variants: dict) -> list[str]:
    """Markdown rows: fraction of descriptors whose word changes under each variant."""
    words = vocabulary.quantize(original, beam=beam)
    rows = []
    for label, changed in variants.items():
        fraction = np.mean(vocabulary.quantize(changed, beam=beam) != words)
        rows.append(f"| {label} | {fraction:.4%} | {np.max(np.abs(changed - original)):.2e} |")
    return rows


def train(descriptors: np.ndarray, shape: str, jobs: int) -> VocabularyTree:
    branching, depth = (int(v) for v in shape.split("x"))
    return VocabularyTree.train(descriptors, VocabularyConfig(branching=branching, depth=depth, seed=0),
                                verbose=False, n_jobs=jobs)


def blcf_section(photos: list[str], ukbench: list[str], args, workdir: str) -> list[str]:
    """Bytes per photo and word changes of BLCF conv features (float16 in the cache)."""
    from cnn.whitening import PCAWhitening
    build = get_pipeline("blcf").build
    photos_result = measure(photos, build, os.path.join(workdir, "blcf-photos"))
    ukbench_result = measure(ukbench, build, os.path.join(workdir, "blcf-ukbench"))
    fresh = np.concatenate([f.descriptors for r in (photos_result, ukbench_result) for f in r["fresh"]])
    back = np.concatenate([f.descriptors for r in (photos_result, ukbench_result) for f in r["back"]])
    whitening = PCAWhitening.learn(fresh, build.local_whitening_dim)
    vocabulary = train(whitening.apply(fresh), args.blcf_shape, args.jobs)
    return ["", f"### BLCF ({build.extractor.key}; descriptors stored as float16)", "",
            "| set | photos | features/photo mean (min-max) | old MB/photo | new MB/photo mean (max) | old/new | "
            "bytes/feature old -> new (descriptors + keypoints) | bit-exact |", "|---|---|---|---|---|---|---|---|",
            size_row("Sacre-Coeur", photos_result), size_row(f"UKBench first {len(ukbench)}", ukbench_result), "",
            "| set | extract | hash blake2b / sha1 | key | put old / new | get old / new |", "|---|---|---|---|---|---|",
            time_row("Sacre-Coeur", photos_result), time_row(f"UKBench first {len(ukbench)}", ukbench_result), "",
            f"Word changes, PCA-whitened to {whitening.output_dim} as the index does, vocabulary "
            f"{vocabulary.n_words} words ({args.blcf_shape}, trained on these {len(fresh)} descriptors), "
            f"beam {args.beam}; max abs change is of the whitened vectors:", "",
            "| storage round trip | words changed | max abs change |", "|---|---|---|",
            *word_changes(vocabulary, args.beam, whitening.apply(fresh),
                          {"cache (float16)": whitening.apply(back)})]


def level_rows(label: str, paths: list[str], stored: list[dict], read, levels: list[int], repeats: int,
               workdir: str) -> list[str]:
    """Markdown rows, one per level: bytes, write and read ms per photo of the arrays ``stored[i]``
    of ``paths[i]`` at each level (fastest of ``repeats``, levels interleaved; medians over the
    photos).

    Args:
        read: ``FeatureCache`` -> path -> what the cache returns (``get`` or ``get_arrays``).
    """
    cache = FeatureCache(os.path.join(workdir, "levels"), "bench")
    sizes = np.zeros((len(levels), len(paths)))
    write_s = np.full((len(levels), len(paths)), np.inf)
    read_s = np.full((len(levels), len(paths)), np.inf)
    for i, (path, arrays) in enumerate(zip(paths, stored)):
        file = cache.path_for(path)
        os.makedirs(os.path.dirname(file), exist_ok=True)
        back = []
        for _ in range(repeats):
            for j, level in enumerate(levels):
                start = time.perf_counter()
                with open(file, "wb") as handle:
                    write_npz(handle, arrays, level)
                write_s[j, i] = min(write_s[j, i], time.perf_counter() - start)
                sizes[j, i] = os.path.getsize(file)
                got, seconds = timed(read(cache), path)
                read_s[j, i] = min(read_s[j, i], seconds)
                back.append(got)
        if not all(_same(back[0], other) for other in back[1:]):
            raise SystemExit(f"{label}: {path} does not read back the same at every level")
    rows = []
    for j, level in enumerate(levels):
        rows.append(f"| {label} | {level}{' (now)' if level == COMPRESSION_LEVEL else ''} | "
                    f"{np.median(sizes[j]) / MB:.3f} | {sizes[j].sum() / sizes[0].sum():.3f} | "
                    f"{np.median(write_s[j]) * 1000:.1f} | {np.median(write_s[j] - write_s[0]) * 1000:+.1f} | "
                    f"{np.median(read_s[j]) * 1000:.1f} | {np.median(read_s[j] - read_s[0]) * 1000:+.1f} |")
    return rows


def _same(a, b) -> bool:
    """Whether two things the cache returned (LocalFeatures or dicts of arrays) are identical."""
    if isinstance(a, LocalFeatures):
        return bit_exact(a.keypoints, b.keypoints) and bit_exact(a.descriptors, b.descriptors) \
            and a.image_size == b.image_size
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def levels_section(photos: list[str], args, workdir: str) -> list[str]:
    """Bytes, write and read time per photo of the cache files at each of ``args.levels``."""
    from cnn.feature_maps import FeatureMapExtractor
    levels = [int(level) for level in args.levels.split(",")]
    sift = get_pipeline("sift-bow").build
    unbudgeted = dataclasses.replace(sift, sift=dataclasses.replace(sift.sift, max_features=0))
    blcf = get_pipeline("blcf").build
    maps = FeatureMapExtractor(blcf.extractor.backbone)
    header = ["| stored | zlib level | MB per photo (median) | bytes vs first | write ms | vs first | "
              "read ms | vs first |", "|---|---|---|---|---|---|---|---|"]
    rows, counts = [], {}
    for label, build in ((f"SIFT, pipelines' settings ({sift.extractor.key})", sift),
                         (f"SIFT, no budget ({unbudgeted.extractor.key})", unbudgeted),
                         (f"BLCF local features ({blcf.extractor.key})", blcf)):
        features = [read_local_features(build, path) for path in photos]
        counts[label] = np.mean([len(f) for f in features])
        rows += level_rows(label, photos, [encode_features(f) for f in features], lambda c: c.get, levels,
                           args.repeats, workdir)
    stored_maps = []
    for path in photos:
        image = maps.image(path)
        computed = maps.backbone.feature_maps(image)
        stored_maps.append({"local": computed["local"].astype(np.float16),
                            "global": computed["global"].astype(np.float16),
                            "image_size": np.asarray(image.shape[:2], np.int64)})
    rows += level_rows(f"CNN feature maps ({maps.options.key}, float16)", photos, stored_maps,
                       lambda c: c.get_arrays, levels, args.repeats, workdir)
    return [f"### zlib level of the cache files ({len(photos)} Sacre-Coeur photos, ~1024 px)", "",
            "Features per photo: " + "; ".join(f"{label}: {n:,.0f}" for label, n in counts.items()) + ". "
            f"Write: `write_npz` of the arrays a put stores into the file; read: `FeatureCache.get` "
            f"(`get_arrays` for the maps) of that file, decoding included; fastest of {args.repeats} per photo "
            "with the levels interleaved, medians over the photos; `vs first`: median per-photo difference "
            "from the first level. Every level reads back identical arrays.", "", *header, *rows]


def main():
    args = parse_args()
    if args.levels_only:
        photos = sorted(glob.glob(os.path.join(args.data, "sacre_coeur", "*.jpg")))
        with tempfile.TemporaryDirectory() as workdir:
            body = "\n".join(levels_section(photos, args, workdir))
        print(body)
        print(f"written to {write_result(args.name, body)}")
        return
    photos = sorted(glob.glob(os.path.join(args.data, "sacre_coeur", "*.jpg")))
    ukbench = sorted(glob.glob(os.path.join(args.data, "ukbench", "*.jpg")))[:args.ukbench]
    build = get_pipeline("sift-bow").build
    with tempfile.TemporaryDirectory() as workdir:
        sacre = measure(photos, build, os.path.join(workdir, "photos"))
        small = measure(ukbench, build, os.path.join(workdir, "ukbench"))
        original = np.concatenate([f.descriptors for f in small["fresh"]])
        cached = np.concatenate([f.descriptors for f in small["back"]])
        start = time.perf_counter()
        vocabulary = train(original, args.shape, args.jobs)
        train_s = time.perf_counter() - start
        words = word_changes(vocabulary, args.beam, original, {
            "cache (uint8 SIFT integers)": cached,
            "float16": original.astype(np.float16).astype(np.float32),
            "uint8 of RootSIFT (round(255 x) / 255)": np.rint(original * 255).astype(np.float32) / 255})
        blcf = blcf_section(photos, ukbench, args, workdir) if args.blcf else []
        levels = ["", *levels_section(photos, args, workdir)]

    r = sacre["rows"]
    per_feature = r["new_bytes"].sum() / r["n"].sum()
    xy = np.concatenate([f.keypoints[:, :2] for f in sacre["fresh"]])
    xy16 = np.abs(xy.astype(np.float16).astype(np.float32) - xy).max()
    lines = [f"SIFT: `{build.extractor.key}` (pipelines' settings). Old: float32 `np.savez` of keypoints, "
             "descriptors, image size. New: `bovw.feature_cache` (RootSIFT kept as the uint8 SIFT integers it is "
             f"computed from, keypoints float32, deflated at zlib level {COMPRESSION_LEVEL}).", "",
             "| set | photos | features/photo mean (min-max) | old MB/photo | new MB/photo mean (max) | old/new | "
             "bytes/feature old -> new (descriptors + keypoints) | bit-exact |", "|---|---|---|---|---|---|---|---|",
             size_row("Sacre-Coeur (~1024 px)", sacre), size_row(f"UKBench first {len(ukbench)} (320x240)", small), "",
             f"Target <= {TARGET_BYTES / MB} MB per 1024-px photo: at {per_feature:.0f} bytes per feature that is "
             f"<= {TARGET_BYTES / per_feature:,.0f} features per photo; these photos have "
             f"{r['n'].mean():,.0f} on average, so {r['new_bytes'].mean() / MB:.2f} MB. The descriptors dominate: "
             f"zlib packs the 128 SIFT integers of a feature into {r['descriptor_bytes'].sum() / r['n'].sum():.0f} "
             "bytes.", "",
             "Times are medians per photo in ms (hash: the image file's bytes, as the cache keys it; key: "
             "`FeatureCache.path_for`, hash included):", "",
             "| set | extract | hash blake2b / sha1 | key | put old / new | get old / new |",
             "|---|---|---|---|---|---|",
             time_row("Sacre-Coeur", sacre), time_row(f"UKBench first {len(ukbench)}", small), "",
             f"Visual words: vocabulary {vocabulary.n_words} words ({args.shape}, {train_s:.0f} s) trained on the "
             f"{len(original):,} RootSIFT descriptors of the UKBench images, quantized with beam {args.beam}:", "",
             "| storage round trip | words changed | max abs change |", "|---|---|---|", *words, "",
             f"Keypoints are stored as float32, so x, y, scale and angle come back exactly; float16 x, y of these "
             f"photos would be off by up to {xy16:.3f} px (up to 1 px at 2048-4096 px).", *blcf, *levels]
    body = "\n".join(lines)
    print(body)
    print(f"written to {write_result(args.name, body)}")


if __name__ == "__main__":
    main()
