"""Where SIFT extraction time goes, before and after the faster decoding and worker processes,
with COLMAP's CPU SIFT extraction on the same photos in the same run.

Photos: the ten Sacre-Coeur photographs as they are (about 1024 px on the long side) and
the same photos as users have them from a phone: cropped to 4:3, up-scaled to 4032x3024
and saved as JPEG quality 92 in a temporary folder, the portrait ones stored sideways with
EXIF orientation 6 as phones do.

Measured, all in one run:

- per stage, on one core (OpenCV at one thread, CPU time of the calling thread, mean
  over the photos): file read + decode, EXIF orientation, gray conversion, resize, SIFT
  detect+compute, keypoints + RootSIFT, cache lookup and cache put; for today's decoding
  (``before``: full decode, ``ImageOps.exif_transpose``, ``convert("L")``, resize; a copy
  of that code is kept here) and the new one (``after``: JPEG DCT-domain reduction by
  2/4/8 decoding the luma only, when the photo is at least twice ``max_side``);
- per photo time of ``bovw.extraction.iter_features`` into a fresh feature cache, for 1
  and 2 workers: before (today's decoding, threads) and after (threads, and worker
  processes), wall time per photo (the run's wall time over the photos) and CPU time
  per photo (this process and its worker processes), median over ``--rounds``
  interleaved rounds of the timings taken on a quiet machine (see below); the engine's
  features per photo beside them; also with ``SiftOptions(max_features=2500)`` for
  reference;
- COLMAP's ``pycolmap.extract_features`` on the CPU (``Device.cpu``, SIFT,
  ``max_image_size`` 1024, a temporary database) with 1 and 2 threads: with its default
  SIFT options (at most 8,192 features, peak threshold 0.02/3, the equivalent of OpenCV's
  contrast threshold 0.04) and at the engine's threshold (peak 0.005/6 = OpenCV's 0.005,
  at most 32,768 features), its features per photo, and the ratio engine time / COLMAP time;
- whether the reduced decoding changes the features: on the 4032-px photos, the fraction of
  the full decode's keypoints matched (nearest neighbour, ratio test 0.8) by a keypoint
  of the reduced decode within 2 px, and the same between the full decode and the photo
  re-saved at JPEG quality 95 (a change nobody would see), for scale.

The machine is shared: before each timing two probe threads measure how many cores are
free, and the timing waits (``--max-wait``) until they get ``--quiet`` of the two; timings
quiet before and after are the ones summarised (all, marked, when none was), ratios between
a quiet and a busy timing are put in parentheses, and CPU times are given beside wall times.
"""
from __future__ import annotations

import argparse
import functools
import glob
import io
import os
import shutil
import tempfile
import time
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps

from benchmarks.common import DEFAULT_DATA, write_result
from bovw import images as image_module
from bovw.extraction import ExtractionReport, iter_features
from bovw.feature_cache import FeatureCache
from bovw.features import LocalFeatures, SiftOptions, root_sift, sift_from_array
from bovw.images import ImageOptions, ImageReadError, load_image, resize_to_max_side

#: The pipelines' SIFT (sift-bow, sift-sv, sift-he...).
ENGINE = SiftOptions(root=True, contrast_threshold=0.005)
#: A feature budget of 2,500 (how bovw/features.py applies it is said in the results).
BUDGET = SiftOptions(root=True, contrast_threshold=0.005, max_features=2500)
FULL_SIZE = (4032, 3024)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (sacre_coeur/)")
    parser.add_argument("--photos", type=int, default=10, help="how many Sacre-Coeur photos (at most 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the engine's timings")
    parser.add_argument("--quiet", type=float, default=1.8,
                        help="a timing counts as quiet when two probe threads get this many cores before and after "
                             "it; medians are over the quiet ones when there are any")
    parser.add_argument("--max-wait", type=float, default=60.0,
                        help="seconds to wait for a quiet machine before each timing")
    parser.add_argument("--no-colmap", action="store_true", help="skip COLMAP (pycolmap not installed)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 photos, 1 round, 1024-px COLMAP only; prints, writes no file")
    return parser.parse_args()


# ---- today's decoding, kept to time it --------------------------------------------------------

# Deliberate copy of the OLD engine code path (the baseline being timed); do not replace with load_image.
def load_image_before(path: str, options: ImageOptions = ImageOptions(), color: bool = False) -> np.ndarray:
    """``bovw.images.load_image`` as it was before DCT-domain reduction (commit 98b6963)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageReadError(path, "no such file")
    if os.path.isdir(path):
        raise ImageReadError(path, "is a directory, not an image")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > options.max_pixels:
                raise ImageReadError(path, f"{width}x{height} pixels exceeds the limit of {options.max_pixels}")
            if img.format == "PNG":
                img.verify()
        with Image.open(path) as img:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
            array = image_module._decoded_array(img, color)
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image data ({exc})") from exc
    if min(array.shape[:2]) < 2:
        raise ImageReadError(path, f"image too small ({array.shape[1]}x{array.shape[0]} pixels)")
    return resize_to_max_side(array, options.max_side)


def extract_before(options: SiftOptions, path: str) -> LocalFeatures:
    """Today's extraction: full decode, then SIFT."""
    return sift_from_array(load_image_before(path, options.image), options)


def extract_after(options: SiftOptions, path: str) -> LocalFeatures:
    """The new extraction (what ``cbir.retrieval_index.read_local_features`` does for SIFT)."""
    return options.extract(load_image(path, options.image, color=options.color))


# ---- photos -----------------------------------------------------------------------------------

def make_full_size(sources: list[str], folder: str) -> list[str]:
    """4032x3024 JPEGs (quality 92) of ``sources``: cropped to 4:3 and up-scaled; portrait photos
    stored sideways with EXIF orientation 6, as phones store them."""
    paths = []
    for source in sources:
        with Image.open(source) as img:
            img = img.convert("RGB")
        portrait = img.height > img.width
        if portrait:
            img = img.transpose(Image.Transpose.ROTATE_90)  # shown upright by orientation 6
        w, h = img.size
        cw, ch = (w, w * 3 // 4) if w * 3 // 4 <= h else (h * 4 // 3, h)
        img = img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
        img = img.resize(FULL_SIZE, Image.Resampling.LANCZOS)
        exif = img.getexif()
        if portrait:
            exif[0x0112] = 6
        path = os.path.join(folder, os.path.basename(source))
        img.save(path, quality=92, exif=exif)
        paths.append(path)
    return paths


# ---- CPU accounting -----------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _children() -> list[int]:
    pids = []
    for task in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            with open(task) as handle:
                pids += [int(p) for p in handle.read().split()]
        except OSError:
            pass
    return pids


def cpu_snapshot() -> dict[int, float]:
    """CPU seconds used so far by this process (all threads) and each of its live children."""
    times = os.times()
    snapshot = {0: times.user + times.system}
    for pid in _children():
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            snapshot[pid] = (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, IndexError, ValueError):
            pass
    return snapshot


def cpu_since(before: dict[int, float]) -> float:
    after = cpu_snapshot()
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def free_cores(seconds: float = 0.3) -> float:
    """How many cores two busy threads get now (CPU time over wall time of two threads hashing,
    which releases the GIL): 2.0 on an idle two-core machine."""
    import hashlib
    import threading

    data = bytes(8 << 20)

    def spin(until):
        while time.perf_counter() < until:
            hashlib.blake2b(data).digest()

    cpu, start = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=spin, args=(start + seconds,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.process_time() - cpu) / (time.perf_counter() - start)


def pressure() -> str:
    try:
        with open("/proc/pressure/cpu") as handle:
            some = handle.readline().split()
        return f"CPU pressure {some[1]} {some[2]}, load {os.getloadavg()[0]:.2f}"
    except OSError:
        return f"load {os.getloadavg()[0]:.2f}"


# ---- per-stage breakdown ------------------------------------------------------------------------

def _timed_cache_lookup(path: str, cache: FeatureCache):
    """Start a per-stage timing: (times, outputs, lap, start) after timing the cache lookup (a miss)."""
    clock, t, out = time.thread_time, {}, {}

    def lap(name, start):
        now = clock()
        t[name] = now - start
        return now

    start = clock()
    cache.get(path)
    start = lap("cache lookup (miss)", start)
    return t, out, lap, start


def stages_before(path: str, options: SiftOptions, cache: FeatureCache) -> tuple[dict, np.ndarray]:
    """CPU seconds of each stage of today's path, one image, in the calling thread."""
    t, out, lap, start = _timed_cache_lookup(path, cache)
    with Image.open(path) as img:
        img.size
    with Image.open(path) as img:
        img.load()
        start = lap("file read + decode", start)
        img = ImageOps.exif_transpose(img)
        start = lap("EXIF orientation", start)
        gray = image_module._decoded_array(img, False)
        start = lap("gray conversion", start)
    gray = resize_to_max_side(gray, options.image.max_side)
    start = lap("resize", start)
    out["image"] = gray
    _sift_stages(gray, options, cache, path, lap, start, out)
    return t, out


def stages_after(path: str, options: SiftOptions, cache: FeatureCache) -> tuple[dict, dict]:
    """CPU seconds of each stage of the new ``load_image`` (its steps, as it does them)."""
    t, out, lap, start = _timed_cache_lookup(path, cache)
    with Image.open(path) as img:
        width, height = img.size
        reduced = image_module._draft(img, options.image.max_side, False)
        img.load()
        orientation = img.getexif().get(image_module.ORIENTATION, 1)
        start = lap("file read + decode", start)
        gray = image_module._decoded_array(img, False)
        start = lap("gray conversion", start)
    gray = image_module._oriented(gray, orientation)
    start = lap("EXIF orientation", start)
    if reduced:
        upright = (height, width) if orientation in image_module._SWAPS_AXES else (width, height)
        gray = cv2.resize(gray, image_module._scaled_size(*upright, options.image.max_side),
                          interpolation=cv2.INTER_AREA)
    else:
        gray = resize_to_max_side(gray, options.image.max_side)
    start = lap("resize", start)
    out["image"] = gray
    _sift_stages(gray, options, cache, path, lap, start, out)
    return t, out


def _sift_stages(gray, options, cache, path, lap, start, out):
    """``bovw.features.sift_from_array`` in two timed parts, then the cache put."""
    sift = cv2.SIFT_create(contrastThreshold=options.contrast_threshold, edgeThreshold=options.edge_threshold)
    cv_keypoints, descriptors = sift.detectAndCompute(gray, None)
    start = lap("SIFT detect + compute", start)
    order = np.argsort([-kp.response for kp in cv_keypoints], kind="stable")
    if options.max_features > 0:
        order = order[: options.max_features]
    keypoints = np.array([(kp.pt[0], kp.pt[1], kp.size / 2.0, np.deg2rad(kp.angle)) for kp in cv_keypoints],
                         dtype=np.float32)[order]
    features = LocalFeatures(keypoints, root_sift(descriptors[order]), gray.shape[:2])
    start = lap("keypoints + RootSIFT", start)
    cache.put(path, features)
    lap("cache put", start)
    out["features"] = features


STAGES = ("cache lookup (miss)", "file read + decode", "EXIF orientation", "gray conversion", "resize",
          "SIFT detect + compute", "keypoints + RootSIFT", "cache put")


def stage_table(sets: dict[str, list[str]]) -> tuple[str, dict]:
    """Per-stage CPU ms per photo (median over photos), OpenCV at one thread; checks that the
    timed steps give what ``load_image_before`` / ``load_image`` give."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    columns, totals = {}, {}
    try:
        for label, paths in sets.items():
            for which, stages, reference in (("before", stages_before, load_image_before),
                                             ("after", stages_after, load_image)):
                folder = tempfile.mkdtemp(prefix="cbir-stage-cache-")
                try:
                    cache = FeatureCache(folder, ENGINE.key)
                    rows = []
                    for path in paths:
                        times, out = stages(path, ENGINE, cache)
                        expected = reference(path, ENGINE.image)
                        assert np.array_equal(out["image"], expected), f"{which} stages differ from the real path"
                        rows.append(times)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
                key = f"{label} {which}"
                columns[key] = {s: 1000 * float(np.mean([r[s] for r in rows])) for s in STAGES}
                totals[key] = 1000 * float(np.mean([sum(r.values()) for r in rows]))
    finally:
        cv2.setNumThreads(threads)
    lines = ["| stage | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(f"{c[stage]:.1f}" for c in columns.values()) + " |")
    lines.append("| **total** | " + " | ".join(f"**{totals[k]:.0f}**" for k in columns) + " |")
    return "\n".join(lines), totals


def sift_split(paths: list[str]) -> dict[str, float]:
    """CPU ms per photo (median, OpenCV at one thread) of SIFT detection alone, of describing all
    the detected keypoints, and of describing only the 2,500 strongest (what a feature budget
    applied before description would cost), on the photos as decoded."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    rows = []
    try:
        for path in paths:
            gray = load_image(path, ENGINE.image)
            sift = cv2.SIFT_create(contrastThreshold=ENGINE.contrast_threshold, edgeThreshold=ENGINE.edge_threshold)
            start = time.thread_time()
            keypoints = sift.detect(gray, None)
            detected = time.thread_time()
            sift.compute(gray, keypoints)
            described = time.thread_time()
            strongest = sorted(keypoints, key=lambda kp: -kp.response)[:BUDGET.max_features]
            budget_start = time.thread_time()
            sift.compute(gray, strongest)
            budget_end = time.thread_time()
            rows.append((detected - start, described - detected, budget_end - budget_start))
    finally:
        cv2.setNumThreads(threads)
    median = np.median(rows, axis=0) * 1000
    return {"detect": median[0], "describe all": median[1], "describe 2500": median[2]}


# ---- engine timings -----------------------------------------------------------------------------

def engine_configs(quick: bool) -> list[tuple[str, object, int, str, bool]]:
    """(label, extract, workers, backend, OpenCV one thread per worker thread)."""
    before, after = functools.partial(extract_before, ENGINE), functools.partial(extract_after, ENGINE)
    budget = functools.partial(extract_after, BUDGET)
    configs = [
        ("before, 1 worker (today's n_jobs=1)", before, 1, "threads", False),
        ("before, 2 threads (today's n_jobs=2)", before, 2, "threads", False),
        ("after, 1 worker", after, 1, "threads", False),
        ("after, 2 threads", after, 2, "threads", False),
        ("after, 2 threads, OpenCV at 1 thread", after, 2, "threads", True),
        ("after, 2 processes", after, 2, "processes", False),
        ("after, max_features=2500, 1 worker", budget, 1, "threads", False),
        ("after, max_features=2500, 2 processes", budget, 2, "processes", False),
    ]
    return configs[:1] + configs[2:3] + configs[5:6] if quick else configs


def run_engine(paths: list[str], extract, workers: int, backend: str, opencv_one: bool) -> tuple[float, float, float]:
    """(wall s per photo, CPU s per photo, features per photo) of one iter_features run into a
    fresh cache."""
    folder = tempfile.mkdtemp(prefix="cbir-speed-cache-")
    threads = cv2.getNumThreads()
    try:
        cache = FeatureCache(folder, "bench")
        if opencv_one:
            cv2.setNumThreads(1)
        report = ExtractionReport()
        cpu = cpu_snapshot()
        start = time.perf_counter()
        counts = [len(f) for _, f in iter_features(paths, extract, cache, report, n_jobs=workers,
                                                   verbose=False, backend=backend)]
        wall = time.perf_counter() - start
        cpu_s = cpu_since(cpu)
        assert report.extracted == len(paths), report.summary()
    finally:
        cv2.setNumThreads(threads)
        shutil.rmtree(folder, ignore_errors=True)
    return wall / len(paths), cpu_s / len(paths), float(np.mean(counts))


def measure_quiet(run, quiet: float, max_wait: float):
    """``run()`` once the machine has at least ``quiet`` free cores (waiting at most ``max_wait``
    seconds); returns (its result, the free cores just before and just after it)."""
    deadline = time.perf_counter() + max_wait
    before = free_cores(0.2)
    while before < quiet and time.perf_counter() < deadline:
        time.sleep(3.0)
        before = free_cores(0.2)
    result = run()
    return result, before, free_cores(0.2)


def summarize(samples: list, quiet: float) -> dict:
    """Median of each measured value over the quiet samples (free cores at least ``quiet`` before and
    after), or over all of them when none was quiet; with the counts and the free cores."""
    calm = [s for s in samples if min(s[1], s[2]) >= quiet]
    chosen = calm or samples
    values = np.array([s[0] for s in chosen], dtype=float)
    return {"median": tuple(np.median(values, axis=0)), "quiet": len(calm), "n": len(samples),
            "free": float(np.median([min(s[1], s[2]) for s in chosen]))}


def engine_table(sets: dict[str, list[str]], args, quick: bool) -> tuple[list[str], dict]:
    configs = engine_configs(quick)
    # worker processes start once per run (joblib's loky keeps them): time it apart
    start = time.perf_counter()
    warm = next(iter(sets.values()))[:2]
    list(iter_features(warm, functools.partial(extract_after, ENGINE), None, n_jobs=2, verbose=False,
                       backend="processes"))
    startup = time.perf_counter() - start
    samples: dict = {}
    rounds = 1 if quick else args.rounds
    for round_ in range(rounds):
        for label, paths in sets.items():
            for name, extract, workers, backend, opencv_one in configs:
                samples.setdefault((label, name), []).append(measure_quiet(
                    lambda: run_engine(paths, extract, workers, backend, opencv_one), args.quiet, args.max_wait))
        print(f"round {round_ + 1}/{rounds} done ({pressure()})", flush=True)
    return [name for name, *_ in configs], {"summary": {k: summarize(v, args.quiet) for k, v in samples.items()},
                                            "startup": startup}


# ---- COLMAP -------------------------------------------------------------------------------------

COLMAP_SETTINGS = {
    "COLMAP defaults (max 8192 features, peak 0.02/3)": dict(),
    "COLMAP at the engine's threshold (peak 0.005/6, max 32768)": dict(peak_threshold=0.005 / 6,
                                                                        max_num_features=32768),
}


def run_colmap(paths: list[str], threads: int, sift: dict) -> tuple[float, float, float]:
    """(wall s per photo, CPU s per photo, features per photo) of pycolmap.extract_features on
    the CPU into a temporary database."""
    import pycolmap

    folder = tempfile.mkdtemp(prefix="cbir-colmap-")
    try:
        options = pycolmap.FeatureExtractionOptions()
        options.max_image_size = 1024
        options.num_threads = threads
        options.use_gpu = False
        for name, value in sift.items():
            setattr(options.sift, name, value)
        database = os.path.join(folder, "features.db")
        cpu = cpu_snapshot()
        start = time.perf_counter()
        pycolmap.extract_features(database, os.path.dirname(paths[0]), image_names=[os.path.basename(p) for p in paths],
                                  extraction_options=options, device=pycolmap.Device.cpu)
        wall = time.perf_counter() - start
        cpu_s = cpu_since(cpu)
        db = pycolmap.Database.open(database)
        try:
            counts = [db.num_keypoints_for_image(image.image_id) for image in db.read_all_images()]
        finally:
            db.close()
        assert len(counts) == len(paths), f"COLMAP extracted {len(counts)} of {len(paths)} photos"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return wall / len(paths), cpu_s / len(paths), float(np.mean(counts))


# ---- reduced decoding: are the features as good? ----------------------------------------------

def matched_fraction(a: LocalFeatures, b: LocalFeatures, ratio: float = 0.8, pixels: float = 2.0) -> float:
    """Fraction of ``a``'s keypoints whose ratio-test nearest neighbour in ``b`` is within ``pixels``."""
    matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if not good:
        return 0.0
    near = np.linalg.norm(a.keypoints[[m.queryIdx for m in good], :2] - b.keypoints[[m.trainIdx for m in good], :2],
                          axis=1) <= pixels
    return float(near.sum()) / len(a)


def draft_quality(paths: list[str]) -> tuple[str, dict]:
    rows, fractions, references = [], [], []
    for path in paths:
        full = load_image_before(path, ENGINE.image)
        reduced = load_image(path, ENGINE.image)
        assert full.shape == reduced.shape
        resaved = io.BytesIO()
        with Image.open(path) as img:
            img.save(resaved, format="JPEG", quality=95, exif=img.getexif())
        folder = tempfile.mkdtemp(prefix="cbir-q95-")
        try:
            copy = os.path.join(folder, "q95.jpg")
            with open(copy, "wb") as handle:
                handle.write(resaved.getvalue())
            requality = load_image_before(copy, ENGINE.image)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        a, b, c = (sift_from_array(x, ENGINE) for x in (full, reduced, requality))
        fraction, reference = matched_fraction(a, b), matched_fraction(a, c)
        fractions.append(fraction)
        references.append(reference)
        rows.append(f"| {os.path.basename(path)} | {full.shape[1]}x{full.shape[0]} | "
                    f"{np.abs(full.astype(np.int16) - reduced).mean():.2f} | {len(a)} | {len(b)} | "
                    f"{fraction:.3f} | {reference:.3f} |")
    table = "\n".join(["| photo (4032x3024) | decoded to | mean abs. pixel difference | features, full decode | "
                       "features, reduced decode | matched: reduced | matched: full decode of a q95 re-save |",
                       "|---|---|---|---|---|---|---|", *rows,
                       f"| **mean** | | | | | **{np.mean(fractions):.3f}** | **{np.mean(references):.3f}** |"])
    return table, {"reduced": float(np.mean(fractions)), "resaved": float(np.mean(references))}


# ---- report -------------------------------------------------------------------------------------

def main():
    args = parse_args()
    photos = 3 if args.quick else min(args.photos, 10)
    sources = sorted(glob.glob(os.path.join(args.data, "sacre_coeur", "*.jpg")))[:photos]
    if not sources:
        raise SystemExit(f"no photos in {os.path.join(args.data, 'sacre_coeur')}")
    folder = tempfile.mkdtemp(prefix="cbir-full-size-")
    try:
        sets = {"1024 px": sources, "4032 px": make_full_size(sources, folder)}
        body = report(args, sets)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(body)
    if not args.quick:
        print("written to", write_result("extraction_speed", body))


def report(args, sets: dict[str, list[str]]) -> str:
    load_before = pressure()
    size_1024 = [Image.open(p).size for p in sets["1024 px"]]
    file_mb = {label: np.mean([os.path.getsize(p) for p in paths]) / 1e6 for label, paths in sets.items()}
    print("per-stage breakdown...", flush=True)
    stages, _ = stage_table(sets)
    split = sift_split(sets["1024 px"])
    print("engine timings...", flush=True)
    names, engine = engine_table(sets, args, args.quick)
    colmap = {}
    if not args.no_colmap:
        import pycolmap

        pycolmap.logging.minloglevel = 2
        colmap_sets = {"1024 px": sets["1024 px"]} if args.quick else sets
        print("COLMAP...", flush=True)
        for label, paths in colmap_sets.items():
            for setting, sift in COLMAP_SETTINGS.items():
                for threads in (1, 2):
                    colmap[(label, setting, threads)] = summarize([measure_quiet(
                        lambda: run_colmap(paths, threads, sift), args.quiet, args.max_wait)], args.quiet)
    print("reduced decoding quality...", flush=True)
    quality, fractions = draft_quality(sets["4032 px"])
    load_after = pressure()

    summary = engine["summary"]
    labels = list(sets)
    lines = [f"Photos: {len(sets['1024 px'])} Sacre-Coeur photographs as they are "
             f"({min(max(s) for s in size_1024)}-{max(max(s) for s in size_1024)} px on the long side, "
             f"{file_mb['1024 px']:.2f} MB each) and up-scaled to 4032x3024 JPEG q92 "
             f"({file_mb['4032 px']:.2f} MB each; portrait ones stored sideways with EXIF orientation 6). "
             f"Every path decodes to at most 1024 px and extracts the pipelines' RootSIFT "
             f"(`{ENGINE.key}`) into a fresh feature cache.",
             "",
             f"Machine load: before the run {load_before}; after it {load_after} (other work shares the two "
             f"cores, so wall times vary from round to round; CPU times are steadier).",
             "",
             "## Where the time goes (one core)",
             "",
             "CPU ms per photo in the calling thread, OpenCV at one thread, mean over the photos. "
             "`before`: today's decoding (full decode, `ImageOps.exif_transpose`, `convert('L')`, "
             "INTER_AREA resize); `after`: the new `load_image` (a JPEG at least twice 1024 px is decoded "
             "at 1/2, 1/4 or 1/8 by the JPEG decoder, luma only, then resized exactly; the EXIF "
             "orientation applied to the gray array). SIFT, RootSIFT and the cache are the same code in "
             "both (`bovw/features.py`, `bovw/feature_cache.py`).",
             "",
             stages,
             "",
             f"SIFT on the 1024-px photos, split (same conditions): detection alone {split['detect']:.0f} ms; "
             f"`compute` of all the detected keypoints {split['describe all']:.0f} ms, of the "
             f"{BUDGET.max_features} strongest only {split['describe 2500']:.0f} ms (each `compute` call builds "
             f"the Gaussian pyramid again, so `detectAndCompute` costs less than the two together). "
             f"A feature budget applied between detection and description would save most of the difference.",
             "",
             "## Per photo, 1 and 2 workers",
             "",
             f"`iter_features` over the photos into a fresh cache, {1 if args.quick else args.rounds} interleaved "
             f"round(s). Wall: the run's wall time over the number of photos; CPU: this process and its worker "
             f"processes. Before each timing the machine is probed (two hashing threads) until they get "
             f"{args.quiet} of the 2 cores (waiting at most {args.max_wait:.0f} s), and again after it: the "
             f"medians are over the timings quiet before and after (`quiet/n`), or over all when none was; "
             f"`free`: the cores the probes got (median). Worker processes start once per run (joblib's loky "
             f"keeps them between calls): {engine['startup']:.1f} s for 2 workers, not in the times below.",
             "",
             "| configuration | " + " | ".join(f"{l} wall ms | {l} CPU ms | {l} features | {l} quiet/n, free"
                                              for l in labels) + " |",
             "|---" * (1 + 4 * len(labels)) + "|"]
    for name in names:
        cells = []
        for label in labels:
            entry = summary[(label, name)]
            wall, cpu, feats = entry["median"]
            cells.append(f"{wall * 1000:.0f} | {cpu * 1000:.0f} | {feats:.0f} | "
                         f"{entry['quiet']}/{entry['n']}, {entry['free']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if colmap:
        lines += ["", "## COLMAP, same photos, same run", "",
                  "`pycolmap.extract_features` (pycolmap " + __import__("pycolmap").__version__ +
                  "), `Device.cpu`, SIFT, `max_image_size` 1024, `num_threads` 1 or 2, a temporary "
                  "database; L1-root (RootSIFT) descriptors, at most 2 orientations per keypoint. One timing "
                  "each, after waiting for a quiet machine as above.", "",
                  "| configuration | photos | wall ms | CPU ms | features | quiet, free |", "|---|---|---|---|---|---|"]
        for (label, setting, threads), entry in colmap.items():
            wall, cpu, feats = entry["median"]
            lines.append(f"| {setting}, {threads} thread{'s' if threads > 1 else ''} | {label} | "
                         f"{wall * 1000:.0f} | {cpu * 1000:.0f} | {feats:.0f} | "
                         f"{'yes' if entry['quiet'] else 'no'}, {entry['free']:.2f} |")
    import bovw.features as features_module
    how = ("chosen by `bovw.features.select_features` before description" if
           hasattr(features_module, "select_features") else "the strongest kept after describing all")
    lines += ["", f"`max_features=2500` rows: `{BUDGET.key}`, the budget applied as `bovw/features.py` did at "
                  f"the time of the run ({how})."]
    lines += ["", "## Ratios (wall time)", "", "| | " + " | ".join(labels) + " |", "|---" * (1 + len(labels)) + "|"]

    before_1, before_2 = "before, 1 worker (today's n_jobs=1)", "before, 2 threads (today's n_jobs=2)"
    speedups = [("after, 1 worker", before_1), ("after, 2 threads", before_1), ("after, 2 threads", before_2),
                ("after, 2 processes", before_1), ("after, 2 processes", before_2),
                ("after, 2 processes", "after, 2 threads")]
    def ratio(numerator, denominator):
        """numerator / denominator of two summaries' wall times; in parentheses unless both are quiet."""
        if not numerator or not denominator:
            return "-"
        value = numerator["median"][0] / denominator["median"][0]
        return f"{value:.2f}" if numerator["quiet"] and denominator["quiet"] else f"({value:.2f})"

    for faster, slower in speedups:
        cells = [ratio(summary.get((l, slower)), summary.get((l, faster))) for l in labels]
        lines.append(f"| speed-up: {faster} vs {slower} | " + " | ".join(cells) + " |")
    for setting in COLMAP_SETTINGS if colmap else ():
        for name, threads in (("after, 1 worker", 1), ("after, 2 threads", 2), ("after, 2 processes", 2)):
            cells = [ratio(summary.get((l, name)), colmap.get((l, setting, threads))) for l in labels]
            lines.append(f"| engine / COLMAP: {name} vs {setting}, {threads} thread{'s' if threads > 1 else ''} | "
                         + " | ".join(cells) + " |")
    lines += ["", "In parentheses: a side without a quiet timing (the machine was busy), not comparable."]
    lines += ["", "## Reduced decoding: same features?", "",
              "Fraction of the full decode's keypoints whose nearest neighbour (ratio test 0.8) among the "
              "other decode's keypoints lies within 2 px (same frame: both decodes are resized to the same "
              "size). For scale, the last column compares the full decode with the full decode of the photo "
              "re-saved at JPEG quality 95.", "", quality]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
