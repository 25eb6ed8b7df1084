"""A local-feature index split into shards that ranks exactly as the merged index would.

tf-idf (and the Hamming-embedding kernel, weighted by idf^2 and normalised by tf-idf
norms) needs the whole collection's document frequencies: every shard's inverted file
weighs by the df vector summed over all shards (``InvertedFile.set_collection``), summed
again after every addition and removal, so each shard scores its images exactly as the
merged index scores them. A query is prepared once; each shard shortlists its best
images; the lists merge by score, ties by position in the merged order (shard after
shard, as ``RetrievalIndex.concatenate`` lays them out); window search, spatial
verification and query expansion then run on the merged shortlist, reading keypoints
and signatures from the shard that owns each image and scoring an expanded query on
every shard (``index.shard_views``).

Saved as a directory: a ``cbir-sharded-index`` manifest listing shard directories inside
it, each a complete ``cbir-index`` save that carries the collection statistics. A save
writes new shard directories, then replaces the manifest, then removes the old ones, so
a crash leaves the old or the new index whole. New images go to the last shard, so that
slots keep the merged order.

Every local pipeline shards but ASMK* (``sift-asmk*``), whose ranking is not routed
across shards yet. ``ShardedGlobalIndex`` shards a CNN global-descriptor index the same
way (dense scores need no collection statistics; diffusion, which needs the whole
collection's graph, is refused).
"""
from __future__ import annotations

import os
import shutil
import uuid
from typing import Sequence

import numpy as np

from cbir.global_index import GlobalIndex, GlobalQuery
from cbir.pipelines import Pipeline
from cbir.retrieval_index import RetrievalIndex
from cbir.searchable import SearchableIndex, part_arrays
from index.names import ImageNames
from index.persistence import MANIFEST, IndexFormatError, load_arrays, read_manifest, save_arrays
from index.ranking import LocalQuery, RankedImage, local_scores, rank_global, rerank_local, shortlist
from index.search_options import SearchOptions
from index.shard_views import ShardedDense, ShardedImages, ShardedPostings, shard_of

SHARDED_VERSION = 1


#: What does not shard, as users are told.
UNSHARDABLE = "fusion, diffusion and ASMK* pipelines do not"


def shards_like_merged(pipeline: Pipeline) -> bool:
    """Whether indexes of ``pipeline`` rank across shards exactly as one merged index (not fusion, whose
    parts are searched together; not diffusion, on the whole collection's graph; not ASMK*, whose
    ranking is not routed across shards)."""
    return pipeline.kind != "fusion" and pipeline.search.diffusion is None and \
        not (pipeline.kind == "local" and pipeline.build.asmk)


class ShardedIndex(SearchableIndex):
    """Local-feature shards searched as one index, with exactly the merged index's ranking and scores.

    Args:
        shards: local-feature indexes (not ASMK*) with one pipeline, root and learned parts; their images, in order,
            are the collection (slot ``i`` of shard ``s`` is slot ``sum(len(shards[:s])) + i``).
        cache_dir: feature cache for additions and queries (default: the first shard's).

    Raises:
        ValueError: no shard, a pipeline that does not shard, or a shard built otherwise than the first.
    """

    FORMAT = "cbir-sharded-index"
    KIND = "local"
    QUERY_TYPE = LocalQuery
    #: Class of the shards.
    SHARD_CLASS: type = RetrievalIndex

    def __init__(self, shards: Sequence[SearchableIndex], cache_dir: str | None = None):
        if not shards:
            raise ValueError("a sharded index needs at least one shard")
        first = shards[0]
        if not isinstance(first, self.SHARD_CLASS):
            raise ValueError(f"a {type(self).__name__} holds {self.SHARD_CLASS.__name__} shards, not "
                             f"{type(first).__name__}")
        if not shards_like_merged(first.pipeline):
            raise ValueError(f"{first.pipeline.name} indexes do not shard ({UNSHARDABLE}); build one merged index")
        for position, shard in enumerate(shards[1:], 1):
            if not first.built_like(shard):
                raise ValueError(f"shard {position} has another pipeline, root or learned parts than shard 0")
        super().__init__(first.pipeline, cache_dir if cache_dir is not None else first.cache_dir)
        self.shards = list(shards)
        for shard in self.shards:
            shard.cache_dir = self.cache_dir
        self.root = first.root
        self.names = ImageNames([name for shard in self.shards for name in shard.names])
        self._statistics_stale = True
        self.share_statistics()

    @classmethod
    def split(cls, index: SearchableIndex, n_shards: int) -> "ShardedIndex":
        """``index``'s images in ``n_shards`` shards of consecutive slots (sizes differing by one at most);
        the index itself is left as it is."""
        bounds = np.linspace(0, len(index), n_shards + 1).round().astype(int)
        shards = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            shard = cls.SHARD_CLASS.concatenate([index])
            shard.remove([index.names[slot] for slot in range(len(index)) if not start <= slot < end])
            shards.append(shard)
        return cls(shards)

    def _comparable_build(self, build):
        return self.shards[0]._comparable_build(build)

    def _starts(self) -> np.ndarray:
        """(n_shards + 1,) int64 first slot of each shard in the merged order, then the image count."""
        return np.cumsum([0] + [len(shard) for shard in self.shards])

    def owner(self, slot: int) -> tuple[SearchableIndex, int]:
        """(the shard holding the collection's image ``slot``, the image's slot in that shard)."""
        starts = self._starts()
        shard = shard_of(starts, slot)
        return self.shards[shard], int(slot - starts[shard])

    def share_statistics(self) -> None:
        """Give every shard the document frequencies and image count of the whole collection (summed
        over the shards); shards that already weigh by them are left as they are."""
        files = [shard.inverted_file for shard in self.shards]
        df = np.zeros(files[0].n_words, np.int64)
        for inverted in files:
            df += inverted.document_frequency
        n_images = sum(inverted.n_images for inverted in files)
        for inverted in files:
            collection = inverted.collection
            if collection is None or collection[1] != n_images or not np.array_equal(collection[0], df):
                inverted.set_collection(df, n_images)
        self._statistics_stale = False

    # ---- building -----------------------------------------------------------------------------

    def _feature_source(self):
        return self.shards[-1]._feature_source()

    def _item_bytes(self, item) -> int:
        return self.shards[-1]._item_bytes(item)

    def _add_batch(self, names: list[str], items: list, n_jobs: int) -> None:
        with self._lock.writing():
            self.shards[-1]._add_batch(names, items, n_jobs)
            self.names.add(list(names))
            self._statistics_stale = True

    def _remove_slots(self, slots: list[int]) -> None:
        starts = self._starts()
        slots = np.asarray(slots, np.int64)
        for shard, start, end in zip(self.shards, starts[:-1], starts[1:]):
            local = slots[(slots >= start) & (slots < end)] - start
            if len(local):
                shard.remove([shard.names[int(slot)] for slot in local])
        self.share_statistics()

    def _pending(self) -> bool:
        return self._statistics_stale or any(shard._pending() for shard in self.shards)

    def _consolidate(self) -> None:
        for shard in self.shards:
            shard.consolidate()
        self.share_statistics()

    # ---- searching ----------------------------------------------------------------------------

    def query_features(self, query, box=None):
        return self.shards[0].query_features(query, box)

    def extracted_query_image(self, query, box=None) -> np.ndarray:
        return self.shards[0].extracted_query_image(query, box)

    def prepare_query(self, query, box=None, options: SearchOptions | str | None = None) -> LocalQuery:
        return self.shards[0].prepare_query(query, box, self.search_options(options))

    def _is_empty_query(self, prepared: LocalQuery) -> bool:
        return len(prepared.words) == 0

    def _rank(self, prepared: LocalQuery, options: SearchOptions, top_k: int | None, n_jobs: int):
        if options.hamming is not None and options.hamming.inter_image:
            raise ValueError("inter-image burstiness weighs each query feature by the images it votes for in the "
                             "whole collection; a sharded index does not gather those counts: search a merged index")
        files = [shard.inverted_file for shard in self.shards]
        wanted = len(self) if top_k is None else min(top_k, len(self))
        count = max(wanted, options.shortlist)
        merged = [RankedImage(entry.slot + int(start), entry.score)
                  for inverted, start in zip(files, self._starts())
                  for entry in shortlist(local_scores(prepared, inverted, options), count)]
        merged.sort(key=lambda entry: (-entry.score, entry.slot))  # the merged index's order: ties by slot
        return rerank_local(prepared, merged[:count], ShardedPostings(files),
                            ShardedImages([shard.images for shard in self.shards]), options, wanted, n_jobs)

    # ---- persistence and facts ----------------------------------------------------------------

    def _info(self) -> dict:
        facts = {"format_version": SHARDED_VERSION, "shards": len(self.shards),
                 "images_per_shard": [len(shard) for shard in self.shards]}
        if self.KIND == "local":
            facts.update(postings=sum(int(shard.inverted_file.n_postings) for shard in self.shards),
                         features=sum(shard.images.n_features for shard in self.shards))
        return facts

    def _parts(self) -> dict:
        return {f"shard{position:04d}.{prefix}": part for position, shard in enumerate(self.shards)
                for prefix, part in {"names": shard.names, **shard._parts()}.items()}

    @classmethod
    def _from_parts(cls, pipeline: Pipeline, meta: dict, arrays: dict, cache_dir: str | None) -> "ShardedIndex":
        shards = []
        while f"shard{len(shards):04d}.names" in meta:
            prefix = f"shard{len(shards):04d}"
            shard_meta = {key[len(prefix) + 1:]: value for key, value in meta.items() if key.startswith(prefix + ".")}
            shard_meta.update(pipeline=meta["pipeline"], collection_root=meta.get("collection_root"))
            shards.append(cls.SHARD_CLASS.from_state_dict(shard_meta, part_arrays(arrays, prefix), cache_dir))
        return cls(shards, cache_dir)

    def save(self, directory: str) -> None:
        """Atomically save as shard directories and a manifest listing them (see the module's docstring)."""
        names = shard_names(len(self.shards))
        with self._reading():
            os.makedirs(directory, exist_ok=True)
            for name, shard in zip(names, self.shards):
                shard.save(os.path.join(directory, name))
            commit_shards(directory, names, [len(shard) for shard in self.shards], self.pipeline, self.root,
                          self.FORMAT)

    @classmethod
    def load(cls, directory: str, cache_dir: str | None = None, verify: bool = True,
             mmap: bool = False) -> "ShardedIndex":
        """Load a saved sharded index (arguments as ``SearchableIndex.load``).

        Raises:
            IndexFormatError: the manifest is unusable, or a shard is missing, unreadable, holds
                another image count than listed, or was built otherwise (the message names it).
        """
        meta, _ = load_arrays(directory, cls.FORMAT, SHARDED_VERSION)
        names, counts = meta.get("shards"), meta.get("images")
        if not isinstance(names, list) or not isinstance(counts, list) or len(names) != len(counts) or not names:
            raise IndexFormatError(f"{os.path.join(directory, MANIFEST)}: malformed shard list")
        shards, learned = [], None
        for name, count in zip(names, counts):
            path = os.path.join(directory, str(name))
            if not isinstance(name, str) or os.path.basename(name) != name or name.startswith("."):
                raise IndexFormatError(f"{directory}: shard {name!r} is not a directory inside the index")
            try:
                shard = cls.SHARD_CLASS.load(path, cache_dir, verify=verify, mmap=mmap)
                checksums = _learned_checksums(path, shard._learned_parts())
            except IndexFormatError as exc:
                raise IndexFormatError(f"{directory}: shard {name} cannot be loaded: {exc}") from exc
            if len(shard) != count:
                raise IndexFormatError(f"{directory}: shard {name} holds {len(shard)} images, the manifest lists {count}")
            if learned is None:
                learned = checksums
            elif checksums == learned:  # the same files: share the first shard's parts (read once)
                for part in shard._learned_parts():
                    setattr(shard, part, getattr(shards[0], part))
            shards.append(shard)
        try:
            return cls(shards, cache_dir)
        except ValueError as exc:
            raise IndexFormatError(f"{directory}: {exc}") from exc


class ShardedGlobalIndex(ShardedIndex):
    """CNN global-descriptor shards searched as one index, with exactly the merged index's ranking and
    scores: each shard's inner products, then query expansion and region re-ranking over every shard
    (``index.shard_views.ShardedDense``). Diffusion needs the whole collection's graph: it is refused.

    Args:
        shards: global indexes with one pipeline (without diffusion), root and learned parts.
        cache_dir: feature-map cache for additions and queries (default: the first shard's).
    """

    FORMAT = "cbir-sharded-global-index"
    KIND = "global"
    QUERY_TYPE = GlobalQuery
    SHARD_CLASS = GlobalIndex

    def share_statistics(self) -> None:
        """Nothing to share: inner products of global descriptors need no collection statistics."""
        self._statistics_stale = False

    def _is_empty_query(self, prepared: GlobalQuery) -> bool:
        return False

    def _rank(self, prepared: GlobalQuery, options: SearchOptions, top_k: int | None, n_jobs: int):
        if options.diffusion is not None:
            raise ValueError("diffusion needs the whole collection's graph, which a sharded index does not "
                             "hold; search a merged index")
        return rank_global(prepared.descriptor, prepared.rows, ShardedDense([shard.dense for shard in self.shards]),
                           options, top_k)


def split_index(index: SearchableIndex, n_shards: int) -> ShardedIndex:
    """``index``'s images in ``n_shards`` shards: a ``ShardedGlobalIndex`` for a global index, else a
    ``ShardedIndex``."""
    return (ShardedGlobalIndex if isinstance(index, GlobalIndex) else ShardedIndex).split(index, n_shards)


def shard_names(count: int) -> list[str]:
    """Directory names for the ``count`` shards of a new save (a fresh generation: no name of an earlier save)."""
    generation = uuid.uuid4().hex[:8]
    return [f"shard-{position:04d}-{generation}" for position in range(count)]


def commit_shards(directory: str, names: Sequence[str], counts: Sequence[int], pipeline: Pipeline,
                  root: str | None, fmt: str) -> None:
    """Make the shard directories ``names`` (saved in ``directory``, holding ``counts`` images, built
    for ``pipeline`` with image names relative to ``root``) the sharded index of format ``fmt``
    (``ShardedIndex.FORMAT`` or ``ShardedGlobalIndex.FORMAT``) saved in ``directory``: one atomic
    manifest replacement, then the shard directories it no longer lists are removed."""
    meta = {"pipeline": pipeline.to_dict(), "collection_root": root, "shards": list(names),
            "images": [int(count) for count in counts]}
    save_arrays(directory, fmt, SHARDED_VERSION, meta, {})
    for entry in os.listdir(directory):
        if entry.startswith("shard-") and entry not in names:
            shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def _learned_checksums(directory: str, parts) -> dict:
    """Array name -> CRC-32 of the learned ``parts`` (names) of a saved index, from its manifest."""
    arrays = read_manifest(directory)["arrays"]
    return {name: entry.get("crc32") for name, entry in arrays.items() if name.split(".")[0] in parts}
