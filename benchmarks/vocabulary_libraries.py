"""Benchmark: libraries for training a visual vocabulary and assigning descriptors to words.

Compares, on real RootSIFT descriptors of ``holidays`` and ``ukbench``:

* training (time and peak memory):
  - our ``VocabularyTree`` (faiss k-means per node) at 10k / 100k / 1M words, plus
    100k and 1M words on a synthetic 2M-descriptor set when fewer real descriptors exist
    (real descriptors sampled with replacement, Gaussian noise sigma 0.01, then
    L2-renormalised);
  - the same tree built with scikit-learn ``KMeans`` per node (defined here only);
  - flat k-means: faiss (``bovw.kmeans.kmeans``), scikit-learn ``MiniBatchKMeans``
    and FLANN's flat ``kmeans`` (estimated from a pilot, run only if it fits the cap);
  - FLANN's hierarchical k-means (``compute_cluster_centers``).
* quantization of held-out descriptors into the 100k and 1M vocabularies:
  tree descent (beam 0, 3, 10, 30), faiss exact flat search, faiss HNSW and FLANN
  randomised kd-trees; throughput and agreement with exact nearest-word assignment.

Each training runs in its own child process ('spawn'); its peak memory is the
child's high-water RSS (``VmHWM``) after the kernel's mark was reset (write "5"
to ``/proc/self/clear_refs``) once the library was imported and the training
data loaded, so "peak - data" is what the training itself added. (The child's
``getrusage().ru_maxrss`` is not used: Linux carries the parent's RSS at fork
time over the exec into it, so it reports at least the parent's size.)

Run ``python benchmarks/vocabulary_libraries.py --help``; results go to
``benchmarks/results/vocabulary_libraries.md`` (rewritten every run).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import multiprocessing as mp
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

FULL = dict(holdout=50_000, gt_queries=10_000, train_max=0, tree_depths=[4, 5, 6], synth=2_000_000,
            synth_depths=[5, 6], sk_tree_depths=[4, 5], flat_k=10_000, flat_n=200_000,
            flann_words=[10_000, 100_000, 1_000_000], quant_depths=[5, 6], cap=600.0)
QUICK = dict(holdout=5_000, gt_queries=2_000, train_max=100_000, tree_depths=[3, 4], synth=0,
             synth_depths=[4], sk_tree_depths=[3], flat_k=1_000, flat_n=20_000,
             flann_words=[1_000, 10_000], quant_depths=[3, 4], cap=120.0)


def words_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


# --------------------------------------------------------------------------- data

def image_paths(data: str) -> list[str]:
    paths = []
    for sub in ("holidays", "ukbench"):
        found = sorted(glob.glob(os.path.join(data, sub, "*")))
        paths += [p for p in found if p.lower().endswith((".jpg", ".jpeg", ".png"))]
    return paths


def load_descriptors(data: str, cache: str) -> tuple[list[np.ndarray], int]:
    from bovw.extraction import iter_features
    from bovw.feature_cache import FeatureCache
    from bovw.features import SiftOptions, extract_sift
    options = SiftOptions()
    paths = image_paths(data)
    if not paths:
        raise SystemExit(f"no images under {data}/holidays or {data}/ukbench")
    per_image = [f.descriptors for _, f in iter_features(
        paths, lambda p: extract_sift(p, options), FeatureCache(cache, options.key), verbose=False)]
    return per_image, len(paths)


def synthetic(train: np.ndarray, n: int, sigma: float, seed: int) -> np.ndarray:
    """n rows sampled with replacement from ``train`` + N(0, sigma^2) noise, L2-renormalised."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, train.shape[1]), np.float32)
    for start in range(0, n, 250_000):
        stop = min(n, start + 250_000)
        block = train[rng.integers(0, len(train), stop - start)]
        block = block + rng.normal(0.0, sigma, block.shape).astype(np.float32)
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        out[start:stop] = block
    return out


# --------------------------------------------------------------------------- training methods (child side)

def sklearn_tree(x: np.ndarray, b: int, depth: int, niter: int, seed: int) -> list[np.ndarray]:
    """The library's hierarchical k-means, with scikit-learn KMeans per node.

    Mirrors ``VocabularyTree.train``: each node's training set is sub-sampled to
    256 * b points (what faiss does inside ``bovw.kmeans.kmeans``), random
    initialisation, one run, ``niter`` Lloyd iterations, then every member is
    assigned with ``KMeans.predict``.
    """
    from sklearn.cluster import KMeans
    warnings.simplefilter("ignore")  # "fewer distinct clusters than n_clusters" on tiny nodes
    rng = np.random.default_rng(seed)
    node_of_point = np.zeros(len(x), dtype=np.int64)
    centers: list[np.ndarray] = []
    for level in range(depth):
        n_nodes = b ** level
        level_centers = np.zeros((n_nodes * b, x.shape[1]), np.float32)
        order = np.argsort(node_of_point, kind="stable")
        bounds = np.searchsorted(node_of_point[order], np.arange(n_nodes + 1))
        child_of_point = np.zeros(len(x), dtype=np.int64)
        for node in range(n_nodes):
            members = order[bounds[node]:bounds[node + 1]]
            if len(members) == 0:
                parent = centers[-1][node] if centers else x.mean(axis=0)
                level_centers[node * b:(node + 1) * b] = parent
                continue
            sub = x[members]
            if len(sub) <= b:
                node_centers = np.concatenate([sub, np.repeat(sub[:1], b - len(sub), axis=0)])
                labels = np.arange(len(sub))
            else:
                fit = sub if len(sub) <= 256 * b else sub[rng.choice(len(sub), 256 * b, replace=False)]
                km = KMeans(n_clusters=b, init="random", n_init=1, max_iter=niter, tol=0.0,
                            random_state=int(rng.integers(2 ** 31))).fit(fit)
                node_centers = km.cluster_centers_.astype(np.float32)
                labels = km.predict(sub)
            level_centers[node * b:(node + 1) * b] = node_centers
            child_of_point[members] = node * b + labels
        centers.append(level_centers)
        node_of_point = child_of_point
    return centers


def flann_cluster_centers(x: np.ndarray, branching: int, n_branches: int, niter: int,
                          seed: int) -> np.ndarray:
    """What ``pyflann.FLANN().hierarchical_kmeans(x, branching, n_branches, niter)`` does,
    through the same C entry point, but keeping the number of centres FLANN
    really returned (the wrapper drops it and returns uninitialised rows when
    FLANN cannot produce ``(branching - 1) * n_branches + 1`` centres)."""
    from ctypes import pointer
    from pyflann.bindings.flann_ctypes import FLANNParameters, flann
    x = np.ascontiguousarray(x, dtype=np.float32)
    asked = (branching - 1) * n_branches + 1
    params = FLANNParameters()
    params.update({"algorithm": "kmeans", "branching": branching, "iterations": niter,
                   "centers_init": "random", "random_seed": seed, "log_level": "warning"})
    out = np.zeros((asked, x.shape[1]), np.float32)
    got = flann.compute_cluster_centers[np.float32](x, len(x), x.shape[1], asked, out, pointer(params))
    if got <= 0:
        raise RuntimeError("FLANN clustering failed")
    return out[:got]


def _train(spec: dict, x: np.ndarray) -> tuple[object, dict]:
    method, seed, niter = spec["method"], spec["seed"], spec["niter"]
    if method == "faiss-tree":
        from bovw.vocabulary import VocabularyConfig, VocabularyTree
        tree = VocabularyTree.train(x, VocabularyConfig(spec["b"], spec["depth"], niter=niter, seed=seed),
                                    verbose=False)
        return tree.centers, {}
    if method == "sklearn-tree":
        return sklearn_tree(x, spec["b"], spec["depth"], niter, seed), {}
    if method == "faiss-flat":
        from bovw.kmeans import kmeans
        return kmeans(x, spec["k"], seed=seed, niter=niter), {}
    if method == "sklearn-minibatch":
        from sklearn.cluster import MiniBatchKMeans
        km = MiniBatchKMeans(n_clusters=spec["k"], init="random", n_init=1, batch_size=4096,
                             max_iter=niter, random_state=seed).fit(x)
        return km.cluster_centers_.astype(np.float32), {
            "note": f"init=random, batch 4096, max {niter} epochs, default early stop: "
                    f"{km.n_steps_} steps = {km.n_steps_ * 4096 / len(x):.1f} epochs"}
    if method == "flann-hkm":
        b = spec["b"]
        return flann_cluster_centers(x, b, (spec["k"] - 1) // (b - 1), niter, seed), {}
    if method == "flann-flat":
        import pyflann
        pilot_n, pilot_k, pilot_it = min(20_000, len(x) // 2), max(2, spec["k"] // 10), 2
        t0 = time.perf_counter()
        pyflann.FLANN().kmeans(x[:pilot_n], pilot_k, max_iterations=pilot_it, random_seed=seed)
        pilot = time.perf_counter() - t0
        estimate = pilot * (len(x) / pilot_n) * (spec["k"] / pilot_k) * (niter / pilot_it)
        note = (f"pilot k={pilot_k} on {pilot_n} pts, {pilot_it} iters: {pilot:.1f} s; "
                f"est. {estimate:.0f} s for {niter} iters (linear in n*k*iters)")
        if estimate > spec["cap"]:
            return None, {"skipped": f"skipped: {note} > cap {spec['cap']:.0f} s"}
        return pyflann.FLANN().kmeans(x, spec["k"], max_iterations=niter, random_seed=seed), {"note": note}
    raise ValueError(method)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> tuple[int, bool]:
    """Reset the high-water RSS mark; return (current RSS KiB, whether the reset worked)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        rss = _status_kib("VmRSS")
        if rss is not None and _status_kib("VmHWM") is not None:
            return rss, True
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False


def _peak_kib(reset_ok: bool) -> int:
    """Peak RSS since the reset: VmHWM, i.e. this process's own ru_maxrss. (getrusage's
    ru_maxrss also keeps the parent's RSS at fork time across fork+exec, so in a spawned
    child of a big parent it reports the parent's size, not the child's.)"""
    hwm = _status_kib("VmHWM") if reset_ok else None
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(spec: dict, conn) -> None:
    log = open(spec["log"], "w")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        threads = spec["threads"]
        if spec["lib"] == "faiss":
            import faiss
            import bovw.vocabulary  # noqa: F401  (imports counted in the baseline)
            faiss.omp_set_num_threads(threads)
        elif spec["lib"] == "sklearn":
            import sklearn.cluster  # noqa: F401
        elif spec["lib"] == "flann":
            import pyflann  # noqa: F401
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
        x = np.load(spec["data"])
        base_kib, reset_ok = _reset_peak()
        t0 = time.perf_counter()
        centres, info = _train(spec, x)
        seconds = time.perf_counter() - t0
        peak_kib = _peak_kib(reset_ok)
        result = {"ok": True, "seconds": seconds, "base_kib": base_kib, "peak_kib": peak_kib,
                  "reset_ok": reset_ok, "n_train": len(x), **info}
        if centres is not None:
            if isinstance(centres, list):
                np.savez(spec["out"], *centres)
            else:
                np.savez(spec["out"], centres)
        conn.send(result)
    except BaseException:
        conn.send({"ok": False, "error": traceback.format_exc()})
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_child(spec: dict, cap: float) -> dict:
    """Run one training in a spawned child; kill it after ``cap`` seconds."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, send), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    result = None
    if recv.poll(cap + 120.0):  # + start-up and data loading
        try:
            result = recv.recv()
        except EOFError:
            result = None
    wall = time.perf_counter() - t0
    if result is None:
        if proc.is_alive():
            proc.kill()
            proc.join()
            return {"ok": False, "killed": f"killed after {wall:.0f} s (cap {cap:.0f} s)"}
        proc.join()
        return {"ok": False, "error": f"child exited with code {proc.exitcode}; see {spec['log']}"}
    proc.join()
    return result


def load_centres(path: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


# --------------------------------------------------------------------------- measurements (parent side)

def distinct_rows(c: np.ndarray) -> int:
    c = np.ascontiguousarray(c)
    return int(np.unique(c.view(np.dtype((np.void, c.shape[1] * c.itemsize))).ravel()).size)


def exact_search(centres: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    import faiss
    index = faiss.IndexFlatL2(centres.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    t0 = time.perf_counter()
    d, i = index.search(np.ascontiguousarray(q, dtype=np.float32), 1)
    return d[:, 0], i[:, 0], time.perf_counter() - t0


def sq_dist(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    diff = q.astype(np.float64) - c.astype(np.float64)
    return np.einsum("ij,ij->i", diff, diff)


def quantization_rows(label: str, levels: list[np.ndarray], queries: np.ndarray, n_gt: int,
                      seed: int, log, exact=None) -> list[list[str]]:
    import faiss
    import pyflann
    from bovw.vocabulary import VocabularyTree
    tree = VocabularyTree(levels)
    leaves = tree.centers[-1]
    gt_q = queries[:n_gt]
    _, exact_i, exact_s = exact if exact is not None else exact_search(leaves, gt_q)
    exact_d = sq_dist(gt_q, leaves[exact_i])
    rows = []

    def add(method: str, build: float | None, words: np.ndarray, seconds: float, n: int) -> None:
        assigned = sq_dist(gt_q, leaves[words[:n_gt]])
        agree = float(np.mean(assigned <= exact_d + 1e-6))
        excess = float(assigned.mean() / exact_d.mean() - 1.0)
        rows.append([label, method, "-" if build is None else f"{build:.1f}", f"{n / seconds:,.0f}",
                     f"{100 * agree:.1f}", f"{100 * excess:+.2f}"])
        log(" | ".join(rows[-1]))

    rows.append([label, "faiss IndexFlatL2 (exact)", "-", f"{n_gt / exact_s:,.0f}", "100.0", "+0.00"])
    log(" | ".join(rows[-1]) + f"   ({n_gt} queries)")
    for beam in (0, 3, 10, 30):
        t0 = time.perf_counter()
        words = tree.quantize(queries, beam=beam)
        add(f"tree descent, beam={beam}" + (" (greedy)" if beam == 0 else ""), None, words,
            time.perf_counter() - t0, len(queries))
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(leaves.shape[1], 32)
    hnsw.add(leaves)
    build = time.perf_counter() - t0
    for ef in (16, 32, 64, 128):
        hnsw.hnsw.efSearch = ef
        t0 = time.perf_counter()
        _, i = hnsw.search(queries, 1)
        add(f"faiss HNSWFlat M=32, efSearch={ef}", build, i[:, 0], time.perf_counter() - t0, len(queries))
    flann = pyflann.FLANN()
    t0 = time.perf_counter()
    flann.build_index(leaves, algorithm="kdtree", trees=4, random_seed=seed)
    build = time.perf_counter() - t0
    for checks in (64, 256):
        t0 = time.perf_counter()
        i, _ = flann.nn_index(queries, 1, checks=checks)
        add(f"FLANN kd-tree x4, checks={checks}", build, np.asarray(i, np.int64),
            time.perf_counter() - t0, len(queries))
    flann.delete_index()
    return rows


def thread_sensitivity(x: np.ndarray, threads_list: list[int], calls: int = 20) -> list[list[str]]:
    """ms per node-sized faiss k-means (2560 x 128, k=10, 20 iters) + assignment, per thread count."""
    import faiss
    from bovw.kmeans import kmeans, nearest
    rows = []
    sub = np.ascontiguousarray(x[:2560])
    for threads in threads_list:
        faiss.omp_set_num_threads(threads)
        t0 = time.perf_counter()
        for i in range(calls):
            nearest(sub, kmeans(sub, 10, seed=i))
        rows.append([str(threads), f"{(time.perf_counter() - t0) / calls * 1000:.1f}",
                     ", ".join(f"{v:.2f}" for v in os.getloadavg())])
    return rows


# --------------------------------------------------------------------------- report

def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Compare faiss, scikit-learn and FLANN for visual-vocabulary training "
                    "(time, peak memory) and descriptor-to-word assignment (throughput, "
                    "agreement with exact nearest word) on RootSIFT descriptors of "
                    "holidays + ukbench. Each training runs in a spawned child process; peak "
                    "memory is that child's high-water RSS (VmHWM) after resetting it "
                    "once the training data is loaded.",
        epilog="Other defaults: --data <repo>/../shared/data, --cache <tempdir>/fcache, --out "
               "benchmarks/results/vocabulary_libraries.md, --threads 1, --niter 20, --seed 0.")
    parser.add_argument("--data", default=os.path.normpath(os.path.join(REPO, "..", "shared", "data")),
                        help="folder holding holidays/ and ukbench/")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "fcache"),
                        help="feature cache folder (bovw.feature_cache, key SiftOptions().key; made if absent, "
                             "which means extracting SIFT from every image)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                      "vocabulary_libraries.md"),
                        help="markdown results file, rewritten every run")
    parser.add_argument("--workdir", default=tempfile.gettempdir(),
                        help="where a temporary folder for data and centres is made (and removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--quick", action="store_true",
                        help="smoke configuration: 100k training descriptors, 1k/10k words")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for every library (faiss OpenMP, BLAS, scikit-learn); "
                             "FLANN 1.x here is single-threaded anyway")
    parser.add_argument("--holdout", type=int, default=None,
                        help="descriptors held out (whole images) for quantization "
                             f"(default {FULL['holdout']}, quick {QUICK['holdout']})")
    parser.add_argument("--gt-queries", type=int, default=None,
                        help="held-out descriptors with exact ground truth, for agreement and "
                             f"distortion (default {FULL['gt_queries']}, quick {QUICK['gt_queries']})")
    parser.add_argument("--synth", type=int, default=None,
                        help="size of the synthetic set for the 100k- and 1M-word trees when fewer real "
                             f"training descriptors exist; 0 disables (default {FULL['synth']})")
    parser.add_argument("--cap", type=float, default=None,
                        help="seconds allowed per training run; longer ones are killed or "
                             f"skipped on estimate (default {FULL['cap']:.0f}, quick {QUICK['cap']:.0f})")
    parser.add_argument("--niter", type=int, default=20, help="Lloyd iterations / epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cfg = dict(QUICK if args.quick else FULL)
    for key in ("holdout", "gt_queries", "synth", "cap"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    for var in THREAD_VARS:  # inherited by the spawned children before they import numpy
        os.environ[var] = str(args.threads)
    from threadpoolctl import threadpool_limits
    import faiss
    threadpool_limits(args.threads)
    faiss.omp_set_num_threads(args.threads)

    started = time.perf_counter()
    load_start = os.getloadavg()
    python = sys.executable
    if python.startswith(REPO + os.sep):
        python = os.path.relpath(python, REPO)
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO) if argv is None else __file__
    command = shlex.join([python, script, *(sys.argv[1:] if argv is None else argv)])
    work = tempfile.mkdtemp(prefix="vocab-bench-", dir=args.workdir)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    try:
        t0 = time.perf_counter()
        per_image, n_images = load_descriptors(os.path.abspath(args.data), args.cache)
        n_all = sum(len(d) for d in per_image)
        log(f"loaded {n_all} descriptors of {n_images} images in {time.perf_counter() - t0:.1f} s")

        # held-out split by whole images, then a random order of the held-out descriptors
        rng = np.random.default_rng(args.seed)
        held, count = [], 0
        for i in rng.permutation(len(per_image)):
            if count >= cfg["holdout"]:
                break
            held.append(i)
            count += len(per_image[i])
        held_set = set(held)
        queries = np.concatenate([per_image[i] for i in sorted(held_set)])
        queries = np.ascontiguousarray(queries[rng.permutation(len(queries))])
        train = np.concatenate([d for i, d in enumerate(per_image) if i not in held_set])
        del per_image
        if 0 < cfg["train_max"] < len(train):
            train = train[np.sort(rng.choice(len(train), cfg["train_max"], replace=False))]
        n_gt = min(cfg["gt_queries"], len(queries))
        gt_q = queries[:n_gt]
        log(f"train {len(train)} descriptors; held out {len(queries)} from {len(held)} images "
            f"({n_gt} with exact ground truth)")

        paths = {"train": os.path.join(work, "train.npy"), "flat": os.path.join(work, "flat.npy")}
        np.save(paths["train"], train)
        flat_n = min(cfg["flat_n"], len(train))
        np.save(paths["flat"], train[np.sort(rng.choice(len(train), flat_n, replace=False))])
        sizes = {"train": len(train), "flat": flat_n}
        use_synth = cfg["synth"] > len(train)
        if use_synth:
            t0 = time.perf_counter()
            paths["synth"] = os.path.join(work, "synth.npy")
            np.save(paths["synth"], synthetic(train, cfg["synth"], 0.01, args.seed + 1))
            sizes["synth"] = cfg["synth"]
            log(f"synthetic set of {cfg['synth']} made in {time.perf_counter() - t0:.1f} s")
        data_label = {"train": f"{len(train):,} real",
                      "flat": f"{flat_n:,} real (sample)",
                      "synth": f"{cfg['synth']:,} synthetic*"}

        # ---------------------------------------------------------------- training
        specs = []
        for depth in cfg["tree_depths"]:
            specs.append(dict(name="VocabularyTree (faiss k-means per node)", lib="faiss",
                              method="faiss-tree", b=10, depth=depth, k=10 ** depth, data="train"))
        for depth in cfg["synth_depths"] if use_synth else []:
            specs.append(dict(name="VocabularyTree (faiss k-means per node)", lib="faiss",
                              method="faiss-tree", b=10, depth=depth, k=10 ** depth, data="synth"))
        for depth in cfg["sk_tree_depths"]:
            specs.append(dict(name="same tree, sklearn KMeans per node", lib="sklearn",
                              method="sklearn-tree", b=10, depth=depth, k=10 ** depth, data="train"))
        specs.append(dict(name="flat k-means, faiss (bovw.kmeans)", lib="faiss", method="faiss-flat",
                          k=cfg["flat_k"], data="flat"))
        specs.append(dict(name="flat MiniBatchKMeans, sklearn", lib="sklearn",
                          method="sklearn-minibatch", k=cfg["flat_k"], data="flat"))
        specs.append(dict(name="flat kmeans, FLANN", lib="flann", method="flann-flat",
                          k=cfg["flat_k"], data="flat"))
        for k in cfg["flann_words"]:
            specs.append(dict(name="FLANN hierarchical k-means (b=10)", lib="flann",
                              method="flann-hkm", b=10, k=k, data="train"))

        train_rows, trained, flann_times = [], {}, {}
        for n, spec in enumerate(specs):
            spec.update(threads=args.threads, seed=args.seed, niter=args.niter, cap=cfg["cap"],
                        out=os.path.join(work, f"centres{n}.npz"), log=os.path.join(work, f"child{n}.log"))
            data_key = spec["data"]
            if spec["method"] == "flann-hkm" and spec["k"] > len(train) // 2 and use_synth:
                data_key = spec["data"] = "synth"
            spec["data"] = paths[data_key]
            shape = f"b=10, L={spec['depth']}" if "depth" in spec else ""
            row = [spec["name"], f"{words_label(spec['k'])}" + (f" ({shape})" if shape else ""),
                   data_label[data_key]]
            skip_note = None
            if spec["method"] == "flann-hkm" and len(flann_times) >= 2 and spec["k"] > max(flann_times):
                # FLANN builds the whole tree (cost ~independent of k), then cuts it with a loop
                # that is O(k^2): estimate from the two previous sizes.
                (k1, t1), (k2, t2) = sorted(flann_times.items())[-2:]
                cut2 = max(t2 - t1, 0.0)
                est = t2 * sizes[data_key] / sizes["train"] + cut2 * (spec["k"] / k2) ** 2
                if est > cfg["cap"]:
                    skip_note = (f"skipped: est. {est:,.0f} s > cap {cfg['cap']:.0f} s "
                                 f"(tree build ~{t2 - cut2:.0f} s scaled to the data, plus the "
                                 f"O(k^2) cut: {cut2:.1f} s at {words_label(k2)} x {(spec['k'] / k2) ** 2:.0f})")
            if skip_note:
                result = {"ok": False, "skipped": skip_note}
            else:
                log(f"training: {spec['name']} {words_label(spec['k'])} on {data_label[data_key]} ...")
                result = run_child(spec, cfg["cap"])
            if result.get("ok") and "skipped" not in result:
                levels = load_centres(spec["out"])
                leaves = levels[-1]
                exact = exact_search(leaves, gt_q)
                d = exact[0]
                distinct = distinct_rows(leaves)
                got = len(leaves)
                note = result.get("note", "")
                if not result["reset_ok"]:
                    note += " (peak not reset: baseline is high-water mark)"
                row += [f"{result['seconds']:.1f}", f"{result['peak_kib'] / 1024:,.0f}",
                        f"{(result['peak_kib'] - result['base_kib']) / 1024:,.0f}",
                        f"{got:,}" + ("" if got == spec["k"] else " returned"), f"{distinct:,}",
                        f"{float(d.mean()):.4f}", note]
                trained[(spec["method"], spec["k"], data_key)] = (spec["out"], exact)
                if spec["method"] == "flann-hkm" and data_key == "train":
                    flann_times[spec["k"]] = result["seconds"]
            else:
                reason = (result.get("skipped") or result.get("killed")
                          or "failed: " + result.get("error", "?").strip().splitlines()[-1])
                row += ["-", "-", "-", "-", "-", "-", reason]
            train_rows.append(row)
            log(" | ".join(row))

        # ---------------------------------------------------------------- quantization
        quant_rows = []
        for depth in cfg["quant_depths"]:
            k = 10 ** depth
            key = ("faiss-tree", k, "synth") if ("faiss-tree", k, "synth") in trained else \
                ("faiss-tree", k, "train")
            if key not in trained:
                log(f"no {words_label(k)} tree to quantize into")
                continue
            label = f"{words_label(k)} tree ({data_label[key[2]]})"
            log(f"quantization into {label} ...")
            quant_rows += quantization_rows(label, load_centres(trained[key][0]), queries, n_gt,
                                            args.seed, log, exact=trained[key][1])

        # ---------------------------------------------------------------- threads
        thread_rows = []
        n_cpu = os.cpu_count() or 1
        if n_cpu > 1:
            thread_rows = thread_sensitivity(train, sorted({args.threads, n_cpu}))
            faiss.omp_set_num_threads(args.threads)

        # ---------------------------------------------------------------- report
        import pyflann  # noqa: F401  (version below)
        import sklearn
        from importlib.metadata import version
        total = time.perf_counter() - started
        header = [
            "# Vocabulary libraries: training and nearest-word assignment",
            "",
            f"- Command: `{command}`",
            f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
            f"{n_cpu} CPUs (os.cpu_count), Python {platform.python_version()}",
            f"- Libraries: faiss-cpu {faiss.__version__}, scikit-learn {sklearn.__version__}, "
            f"pyflann-py3 {version('pyflann-py3')}, numpy {np.__version__}",
            f"- Threads per library: {args.threads} (OMP/BLAS env + threadpoolctl + "
            f"faiss.omp_set_num_threads); load average at start {', '.join(f'{v:.2f}' for v in load_start)}, "
            f"at end {', '.join(f'{v:.2f}' for v in os.getloadavg())}; total run {total / 60:.1f} min",
            f"- Data: RootSIFT (SiftOptions()) of {n_images} images of holidays + ukbench, "
            f"{n_all:,} descriptors; {len(queries):,} descriptors of {len(held)} random whole images "
            f"held out for quantization, the other {len(train):,} used for training.",
        ]
        if use_synth:
            header.append(f"- *synthetic: {cfg['synth']:,} descriptors sampled with replacement from "
                          "the training descriptors + Gaussian noise (sigma 0.01 per dimension), "
                          "L2-renormalised (there are fewer than that many real ones).")
        header += [
            "",
            "## Training",
            "",
            "Time: wall-clock of the training call only, in a fresh child process "
            "(multiprocessing 'spawn'). Peak RSS: the child's high-water RSS (`VmHWM`, its own "
            "ru_maxrss) after the mark was reset (`/proc/self/clear_refs` = 5) once the library "
            "was imported and the training data loaded; 'over data' = peak minus the RSS at that "
            "point, i.e. what training added. (getrusage's ru_maxrss in a spawned child also "
            "carries the parent's RSS at fork time over exec, so it is not used.) "
            "Distortion: mean squared L2 distance of "
            f"{n_gt:,} held-out descriptors to their exact nearest word (lower is better; "
            "compare at equal word counts). Distinct: distinct centre vectors (trees repeat "
            "centres in empty/tiny nodes). All k-means: random init, "
            f"{args.niter} iterations (or epochs); trees sub-sample each node to 256*b points "
            "(faiss default, mirrored in the sklearn tree); FLANN clusters all points of every "
            "node and always builds the full tree down to nodes of < b points, then cuts it "
            "to k centres.",
            "",
            table(["Method", "Words", "Training descriptors", "Time (s)", "Peak RSS (MiB)",
                   "Over data (MiB)", "Centres", "Distinct", "Distortion", "Notes"], train_rows),
            "",
            "## Quantization (assign held-out descriptors to words)",
            "",
            f"Throughput over all {len(queries):,} held-out descriptors (the exact search only over "
            f"the {n_gt:,} ground-truth ones), one thread. Agreement: share of the {n_gt:,} whose "
            "word is an exact nearest word (faiss IndexFlatL2 over the leaf centres; ties between "
            "repeated centres count as agreement). Distortion excess: mean squared distance to "
            "the assigned word over that of the exact nearest word. Build: index construction "
            "over the leaves.",
            "",
            table(["Vocabulary", "Method", "Build (s)", "Descriptors/s", "Agreement (%)",
                   "Distortion excess (%)"], quant_rows),
        ]
        if thread_rows:
            header += [
                "",
                "## faiss thread sensitivity (shared machine)",
                "",
                "One tree node's work (bovw.kmeans.kmeans on 2560 x 128, k=10, 20 iterations, "
                "then nearest), averaged over 20 calls, by faiss OpenMP thread count, measured at "
                "the end of the run.",
                "",
                table(["faiss threads", "ms per node", "load average (1, 5, 15 min)"], thread_rows),
            ]
        report = "\n".join(header) + "\n"
        print("\n" + report, flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as handle:
            handle.write(report)
        log(f"wrote {args.out}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
