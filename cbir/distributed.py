"""Building past one machine on a Dask cluster (``dask.distributed``): indexes and vocabularies.

An index build (``build_distributed``):

1. the images are named as ``SearchableIndex.add_images`` names them and split, in input
   order, into partitions of ``partition_size`` images;
2. the empty index (its learned parts) is saved once in a work folder beside the output;
   each partition is a Dask task that loads it memory-mapped, extracts its images (through
   the feature cache, when the workers share one), quantizes them and saves the partition's
   names, postings and keypoints (not the learned parts) in the work folder. A task whose worker dies is run again on another worker by the
   scheduler; a task that raises is retried (``retries``). Every image ends in exactly one
   partition's report, indexed or skipped with its reason;
3. the partitions are concatenated in order (``RetrievalIndex.concatenate``) into
   ``n_shards`` shards, one Dask task each: one shard is the merged index, exactly the
   index a single-process build of the same images makes; several make a
   ``cbir.sharded_index.ShardedIndex``, whose shards carry the collection's document
   frequencies (summed over the partitions by one more task) and rank exactly as the
   merged index.

The work folder, the output and the feature cache must be on storage that the caller and
every worker see. A vocabulary (``train_vocabulary(..., client=)`` in ``cbir.build``) runs
the independent per-node k-means of each tree level on the workers through joblib's Dask
backend (``on_cluster``); the training features are extracted by the caller.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from bovw.extraction import ExtractionReport
from cbir.retrieval_index import RetrievalIndex
from cbir.searchable import name_map, part_arrays
from cbir.sharded_index import UNSHARDABLE, ShardedIndex, commit_shards, shard_names, shards_like_merged
from index.image_store import ImageStore
from index.inverted_file import InvertedFile
from index.names import ImageNames
from index.persistence import IndexFormatError, load_arrays, save_arrays

logger = logging.getLogger("cbir")

#: Images per partition (one Dask task): about 10 s of SIFT extraction on one core, so that the
#: scheduler's overhead per task stays negligible and a lost worker costs little work.
PARTITION_SIZE = 256
#: A partition in the work folder: the parts of an index that hold its images (no learned part).
PARTITION_FORMAT, PARTITION_VERSION = "cbir-partition", 1
COLLECTION_PARTS = ("names", "inverted_file", "images")


class DistributedBuildError(ValueError):
    """A partition or a merge failed on the cluster, past its retries; the message names it."""


@contextlib.contextmanager
def connect(address: str):
    """A Dask client for the scheduler at ``address`` (``tcp://host:8786``, or a scheduler file), or for
    a cluster of this machine started for the duration: ``local`` (one worker process per core) or
    ``local:N`` (N worker processes), each with one thread."""
    from distributed import Client, LocalCluster
    if address == "local" or address.startswith("local:"):
        workers = int(address.partition(":")[2] or os.cpu_count() or 1)
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            yield client
    elif os.path.isfile(address):
        with Client(scheduler_file=address) as client:
            yield client
    else:
        with Client(address) as client:
            yield client


@contextlib.contextmanager
def on_cluster(client):
    """Run joblib's parallel calls inside the block on the Dask cluster of ``client`` (None: as they are)."""
    if client is None:
        yield
        return
    import joblib
    with joblib.parallel_config(backend="dask", client=client):
        yield


def index_partition(template: str, paths: Sequence[str], names: Sequence[str], cache_dir: str | None,
                    directory: str) -> ExtractionReport:
    """One partition of a distributed build (a Dask task): index ``paths`` as ``names`` into a copy of the
    empty index saved at ``template``, save its collection to ``directory`` (``save_partition``); returns
    what happened to each image."""
    import cv2
    cv2.setNumThreads(1)  # one image per Dask thread: give the workers one thread per core
    index = RetrievalIndex.load(template, cache_dir, verify=False, mmap=True)
    report = index.add_images(list(paths), list(names), n_jobs=1, progress=False)
    save_partition(index, directory)
    return report


def save_partition(index: RetrievalIndex, directory: str) -> None:
    """Atomically save the images of ``index`` (names, postings, keypoints) without its learned parts,
    which every partition shares with the template (a 10^6-word vocabulary weighs 0.5 GB)."""
    meta, arrays = index.state_dict()
    save_arrays(directory, PARTITION_FORMAT, PARTITION_VERSION, {part: meta[part] for part in COLLECTION_PARTS},
                {name: value for name, value in arrays.items() if name.split(".")[0] in COLLECTION_PARTS})


def load_partition(template: RetrievalIndex, directory: str) -> RetrievalIndex:
    """The index saved by ``save_partition`` at ``directory``, with the learned parts of ``template``
    (shared, memory-mapped from its files)."""
    meta, arrays = load_arrays(directory, PARTITION_FORMAT, PARTITION_VERSION, mmap=True)
    index = template.empty_like()
    try:
        index.names = ImageNames.from_state_dict(meta["names"], part_arrays(arrays, "names"))
        index.inverted_file = InvertedFile.from_state_dict(meta["inverted_file"], part_arrays(arrays, "inverted_file"))
        index.images = ImageStore.from_state_dict(meta["images"], part_arrays(arrays, "images"))
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{directory}: invalid partition ({exc})") from exc
    return index


def merge_partitions(template: str, sources: Sequence[str], directory: str,
                     collection: tuple[np.ndarray, int] | None, extended: str | None = None) -> int:
    """Concatenate saved partitions, after the index saved at ``extended`` when given, into one index
    saved at ``directory`` (a Dask task); ``collection``: the (document frequencies (n_words,) int64,
    images) of the whole collection when it is a shard. Returns its image count."""
    empty = RetrievalIndex.load(template, verify=False, mmap=True)
    indexes = [load_partition(empty, source) for source in sources]
    if extended is not None:
        indexes.insert(0, RetrievalIndex.load(extended, mmap=True))
    merged = RetrievalIndex.concatenate(indexes)
    if collection is not None:
        merged.inverted_file.set_collection(*collection)
    merged.save(directory)
    return len(merged)


def collection_statistics(template: str, sources: Sequence[str]) -> tuple[np.ndarray, int]:
    """(document frequencies (n_words,) int64 summed over saved partitions, their images) (a Dask task)."""
    empty = RetrievalIndex.load(template, verify=False, mmap=True)
    df, n_images = np.zeros(empty.vocabulary.n_words, np.int64), 0
    for source in sources:
        inverted = load_partition(empty, source).inverted_file
        df += inverted.document_frequency
        n_images += inverted.n_images
    return df, n_images


def build_distributed(index: RetrievalIndex, paths: Sequence[str], output: str, client, names: Sequence[str] | None = None,
                      n_shards: int = 1, partition_size: int = PARTITION_SIZE, retries: int = 2,
                      progress: bool | None = None) -> ExtractionReport:
    """Index ``paths`` on a Dask cluster into ``output`` (see the module's docstring).

    Args:
        index: the index to build into: empty (its learned parts and root are used), or, with one
            shard, the index saved at ``output`` itself, which the new images extend.
        paths: image files.
        output: directory written when every partition is done (atomically; nothing is written when
            no image could be indexed).
        client: a ``distributed.Client``.
        names: how each image is called (default: as ``add_images`` names them).
        n_shards: 1: one merged index; more: a sharded index of that many shards (at most one per
            partition).
        partition_size: images per task.
        retries: times a task that raised is run again before the build fails.
        progress: progress bar over the partitions (None: only on a terminal).

    Returns:
        the report: every path once, counted as extracted or cached, or skipped with its reason.

    Raises:
        DistributedBuildError: a task failed past its retries (or its worker died repeatedly).
        ValueError: a sharded build over a non-empty index, or a pipeline that does not shard.
    """
    if len(index) and n_shards != 1:
        raise ValueError("a sharded build starts from an empty index; add to a sharded index with add_images")
    if n_shards != 1 and not shards_like_merged(index.pipeline):
        raise ValueError(f"{index.pipeline.name} indexes do not shard ({UNSHARDABLE})")
    paths = [str(p) for p in paths]
    name_of = name_map(paths, names if names is not None or index.root is None else [index.name_for(p) for p in paths])
    report, todo, seen = ExtractionReport(), [], set(index.names)
    for path in paths:
        if name_of[path] in seen:
            report.skipped.append((path, f"an image named {name_of[path]!r} is already indexed"))
        else:
            seen.add(name_of[path])
            todo.append(path)
    work = output.rstrip(os.sep) + ".parts"
    template = os.path.join(work, "template")
    index.empty_like().save(template)
    if n_shards > 1:  # shards are made of whole partitions: at least one partition per shard
        partition_size = min(partition_size, max(1, -(-len(todo) // n_shards)))
    parts = [todo[start:start + partition_size] for start in range(0, len(todo), partition_size)]
    directories = [os.path.join(work, f"part-{position:05d}") for position in range(len(parts))]
    build = uuid.uuid4().hex[:8]
    logger.info("indexing %d images in %d partitions on %d Dask workers (dashboard: %s)", len(todo), len(parts),
                len(client.scheduler_info()["workers"]), client.dashboard_link)
    futures = [client.submit(index_partition, template, part, [name_of[p] for p in part], index.cache_dir, directory,
                             key=f"cbir-partition-{position:05d}-{build}", retries=retries)
               for position, (part, directory) in enumerate(zip(parts, directories))]
    reports = _results(futures, "partitions", progress)
    for part_report in reports:
        report.extracted += part_report.extracted
        report.cached += part_report.cached
        report.skipped += part_report.skipped
    if len(todo) - sum(len(r.skipped) for r in reports) > 0:
        _merge(index, output, template, directories, n_shards, client, build, retries, progress)
    shutil.rmtree(work, ignore_errors=True)
    return report


def _merge(index: RetrievalIndex, output: str, template: str, directories: list[str], n_shards: int, client,
           build: str, retries: int, progress: bool | None) -> None:
    """Concatenate the saved partitions ``directories`` (after the index at ``output`` when ``index`` is
    not empty) into ``n_shards`` shards saved at ``output``."""
    if n_shards == 1:
        _results([client.submit(merge_partitions, template, directories, output, None, output if len(index) else None,
                                key=f"cbir-merge-{build}", retries=retries)], "merge", progress)
        return
    groups = [list(group) for group in np.array_split(directories, min(n_shards, len(directories)))]
    collection = client.submit(collection_statistics, template, directories, key=f"cbir-statistics-{build}",
                               retries=retries)
    names = shard_names(len(groups))
    os.makedirs(output, exist_ok=True)
    counts = _results([client.submit(merge_partitions, template, group, os.path.join(output, name), collection,
                                     key=f"cbir-shard-{position:04d}-{build}", retries=retries)
                       for position, (group, name) in enumerate(zip(groups, names))], "shards", progress)
    commit_shards(output, names, counts, index.pipeline, index.root, ShardedIndex.FORMAT)


def _results(futures: list, what: str, progress: bool | None) -> list:
    """The results of Dask ``futures`` in their order, with a progress bar as they complete.

    Raises:
        DistributedBuildError: naming the first task that failed and why.
    """
    from distributed import as_completed
    position = {future.key: i for i, future in enumerate(futures)}
    results = [None] * len(futures)
    with tqdm(total=len(futures), desc=what, unit="task", disable=None if progress is None else not progress) as bar:
        for future in as_completed(futures):
            try:
                results[position[future.key]] = future.result()
            except Exception as exc:  # whatever the task raised, or distributed.KilledWorker
                for other in futures:
                    other.cancel()
                raise DistributedBuildError(f"task {future.key} failed: {type(exc).__name__}: {exc}") from exc
            bar.update()
    return results

