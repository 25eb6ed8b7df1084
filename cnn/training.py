"""The training loop of a retrieval head on cached feature maps (torch).

Each epoch: describe every training image with the current head, build the epoch's
tuples (``cnn.tuples.epoch_tuples``: verified positives, hard negatives re-mined with the
current descriptors), then Adam steps over batches of tuples. Deterministic given a seed
on the CPU: the epoch's randomness comes from ``default_rng([seed, epoch])`` and nothing in
the head is random, so a run resumed from an epoch checkpoint continues exactly as an
uninterrupted one. The backbone is not trained here (its maps are inputs): ``cnn.tuning``
trains its last blocks with the head through the same loop (``fit``), BatchNorm frozen
(``freeze_batchnorm``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from cnn.heads import HEAD_KINDS, MapBank, NetVladHead, build_head, gem_exponent
from cnn.losses import DEFAULT_MARGINS, tuple_loss
from cnn.options import LAST_BLOCK
from cnn.tuples import epoch_tuples
from cnn.whitening import PCAWhitening

logger = logging.getLogger("cbir")

#: Heads learned in closed form from the mined pairs rather than trained here.
CLOSED_FORM_HEADS = ("rmac-lw", "blcf-lw")
#: Version of the checkpoint layout (``save_checkpoint``).
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainingConfig:
    """How a head is trained (saved in the model's manifest).

    Attributes:
        head: ``gem-fc`` (GeM with learnable p, then an affine layer), ``gem`` (p only), ``netvlad``
            (NetVLAD of ``clusters`` clusters initialised by k-means, then an affine layer), or
            ``rmac-lw`` (R-MAC with a regional learned whitening) or ``blcf-lw`` (the same whitening of
            BLCF's conv features), both learned in closed form by ``cbir.learning.train_model``: no
            torch training, the other settings do not apply; or ``blcf-how``: ``blcf-lw``'s whitening
            trained further through the sum of the whitened positions (``cnn.heads.LocalWhiteningHead``,
            HOW's training; ``init`` and ``dim`` do not apply: it starts from ``blcf-lw`` at the
            pipeline's whitening dimensions).
        init: what the affine layer starts from, learned on the training images:
            ``lw`` (learned whitening from the verified pairs) or ``pca`` (PCA whitening).
        dim: output dimensions of the affine layer.
        p: initial GeM exponent.
        clusters: NetVLAD's K (its VLAD vector has K * C dims).
        loss: ``contrastive`` or ``triplet``.
        margin: the loss margin (None: 0.85 contrastive, 0.1 triplet).
        negatives: N negatives per tuple.
        hard_negatives: nearest negatives re-mined each epoch (False: random ones).
        hard_positives: one tuple per image with its farthest verified partner (False: every
            verified pair, both directions).
        epochs: passes; 0 keeps the initial head (GeM p=3 + the whitening: "Lw only").
        batch: tuples per Adam step.
        lr: Adam learning rate (the affine layer); p gets ``lr * p_lr_factor``.
        p_lr_factor: p's learning rate multiplier (cirtorch: 10).
        from_block: also train the backbone's blocks ``from_block``..15 and its head conv (``cnn.tuning``;
            0: the whole network, meant for a GPU); None: the head only, on cached maps.
        backbone_lr: Adam learning rate of the trained backbone blocks (smaller than the head's).
        lr_decay: every learning rate is multiplied by this after each epoch (1: constant).
        weight_decay: Adam's L2 penalty (0: with Adam, a penalty alone moves every weight by ~lr a step
            once the loss is 0, which lowered Holidays mAP from 0.773 to 0.766 in a run with a margin met).
        max_tuples: tuples per epoch at most (None: all).
        seed: all randomness.
    """

    head: str = "gem-fc"
    init: str = "lw"
    dim: int = 512
    p: float = 3.0
    clusters: int = 16
    loss: str = "contrastive"
    margin: float | None = None
    negatives: int = 5
    hard_negatives: bool = True
    hard_positives: bool = False
    epochs: int = 10
    batch: int = 32
    lr: float = 1e-4
    p_lr_factor: float = 10.0
    from_block: int | None = None
    backbone_lr: float = 1e-5
    lr_decay: float = 1.0
    weight_decay: float = 0.0
    max_tuples: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.head not in HEAD_KINDS + CLOSED_FORM_HEADS:
            raise ValueError(f"unknown head {self.head!r}; known: {', '.join(HEAD_KINDS + CLOSED_FORM_HEADS)}")
        if self.loss not in DEFAULT_MARGINS:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(DEFAULT_MARGINS)}")
        if self.init not in ("lw", "pca"):
            raise ValueError(f"unknown initialisation {self.init!r}; known: lw, pca")
        if self.epochs < 0 or self.batch < 1 or self.negatives < 1 or self.clusters < 1:
            raise ValueError("epochs must be >= 0, batch, negatives and clusters >= 1")
        if self.from_block is not None and not (0 <= self.from_block <= LAST_BLOCK and self.head in ("gem-fc", "gem")):
            raise ValueError(f"from_block must be in 0..{LAST_BLOCK} and the head gem-fc or gem (got {self.from_block} "
                             f"with {self.head})")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1] (got {self.lr_decay})")

    @property
    def loss_margin(self) -> float:
        return DEFAULT_MARGINS[self.loss] if self.margin is None else self.margin


@dataclass
class EpochRecord:
    """What one epoch did: mean loss, tuples, seconds (tuple mining included), tuples per second
    (of the optimisation steps), and the GeM p at its end (None: the head has none)."""

    epoch: int
    loss: float
    tuples: int
    seconds: float
    tuples_per_s: float
    p: float | None


@dataclass
class TrainingResult:
    """The trained head and its history; with ``cnn.tuning``, the trained backbone blocks
    (``cnn.backbone.tuned_state``: name -> float32 tensor, of blocks ``TrainingConfig.from_block``..)."""

    head: torch.nn.Module
    history: list[EpochRecord] = field(default_factory=list)
    tuned: dict | None = None

    @property
    def tuples_seen(self) -> int:
        return sum(r.tuples for r in self.history)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.history)


def freeze_batchnorm(module: torch.nn.Module) -> None:
    """Put every BatchNorm layer in eval mode with its parameters frozen (cirtorch trains with
    frozen BN: batches of one tuple give useless statistics)."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.eval()
            for parameter in layer.parameters():
                parameter.requires_grad_(False)


def pooled_gem(maps: list[np.ndarray], p: float = 3.0) -> np.ndarray:
    """(n, C) L2-normalised GeM vectors of (C, H, W) maps (what the whitening starts from)."""
    from cnn.pooling import gem, l2_normalize
    return l2_normalize(np.stack([gem(m, p) for m in maps]))


def initial_whitening(maps: list[np.ndarray], pairs: np.ndarray, config: TrainingConfig) -> PCAWhitening:
    """The affine layer's start, learned on the training images' GeM vectors (p = ``config.p``):
    learned whitening from the verified pairs (``lw``) or PCA whitening (``pca``)."""
    return learn_whitening(pooled_gem(maps, config.p), pairs, config)


def learn_whitening(vectors: np.ndarray, pairs: np.ndarray, config: TrainingConfig) -> PCAWhitening:
    """``config.init``'s whitening of (n, d) vectors to ``config.dim`` dims: ``lw`` from the verified
    ``pairs`` (m, 2) or ``pca``."""
    if config.init == "lw":
        return PCAWhitening.learn_from_pairs(vectors, np.asarray(pairs), config.dim)
    return PCAWhitening.learn(vectors, config.dim)


def span_whitening(vectors: np.ndarray, pairs: np.ndarray, config: TrainingConfig, eps: float = 1e-6) -> PCAWhitening:
    """``learn_whitening`` of (n, d) vectors with n << d (NetVLAD's K * C dims), learned in the span of the
    centred vectors (r <= n - 1 dims, found from their n x n Gram matrix) and lifted back to d dims.

    The pairs' differences and the population's deviations lie in that span, so Lw and PCA find the
    same directions as in d dims, without a d x d eigen-decomposition.
    """
    x = np.asarray(vectors, np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    values, vectors_n = np.linalg.eigh(centred @ centred.T)
    keep = values > eps * values[-1]
    basis = centred.T @ (vectors_n[:, keep] / np.sqrt(values[keep]))  # (d, r) orthonormal columns
    inner = learn_whitening(centred @ basis, pairs, config)
    return PCAWhitening(mean + basis @ inner.mean, basis @ inner.projection, inner.method)


def position_centroids(maps: list[np.ndarray], clusters: int, seed: int, per_image: int = 64) -> np.ndarray:
    """(clusters, C) k-means centres (faiss, one thread: repeatable) of L2-normalised conv positions,
    ``per_image`` of each (C, H, W) map drawn with ``default_rng(seed)``: NetVLAD's initial centroids."""
    from bovw.kmeans import faiss_threads, kmeans
    from cnn.pooling import l2_normalize
    rng = np.random.default_rng(seed)
    samples = []
    for m in maps:
        positions = np.asarray(m, np.float32).reshape(m.shape[0], -1).T
        samples.append(positions[rng.choice(len(positions), min(per_image, len(positions)), replace=False)])
    with faiss_threads(1):
        return kmeans(l2_normalize(np.concatenate(samples)), clusters, seed, max_points_per_centroid=1024)


def initial_head(maps: list[np.ndarray], bank: MapBank, pairs: np.ndarray, config: TrainingConfig,
                 whitening: PCAWhitening | None = None) -> torch.nn.Module:
    """The head before training: GeM (p = ``config.p``) with ``initial_whitening``, or NetVLAD with
    ``position_centroids`` and a ``span_whitening`` of its VLAD vectors of the ``bank``'s images.
    ``whitening``: the affine layer's start instead (gem-fc, netvlad; needed by blcf-how)."""
    channels = maps[0].shape[0]
    if config.head == "blcf-how":  # its start, blcf-lw's whitening, comes from cbir.learning.train_model
        return build_head("blcf-how", channels, whitening=whitening)
    if config.head == "netvlad":
        centroids = position_centroids(maps, config.clusters, config.seed)
        if whitening is None:
            vectors = bank.describe_all(NetVladHead(centroids, None).to(bank.device))
            whitening = span_whitening(vectors, pairs, config)
        return build_head("netvlad", channels, whitening=whitening, centroids=centroids)
    if config.head == "gem-fc" and whitening is None:
        whitening = initial_whitening(maps, pairs, config)
    return build_head(config.head, channels, config.p, True, whitening if config.head == "gem-fc" else None)


def resolve(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    from cnn.backbone import resolve_device
    return resolve_device(device)


def train_head(maps: list[np.ndarray], pairs: np.ndarray, components: np.ndarray,
               config: TrainingConfig = TrainingConfig(), device: str = "auto",
               whitening: PCAWhitening | None = None, checkpoint: str | None = None,
               progress: bool | None = None, on_epoch: Callable[[EpochRecord, torch.nn.Module], None] | None = None,
               cpu_threads: int = 1) -> TrainingResult:
    """Train a head on the cached maps of a training collection.

    Args:
        maps: n (C, H, W) activation maps (the backbone's 'global' map), float16 or float32.
        pairs: (m, 2) verified positive pairs of image numbers.
        components: (n,) component of each image (negatives come from other components).
        config: the settings.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        whitening: start of the affine layer (None: learned on the training images, see ``initial_head``).
        checkpoint: a file to save the state to after every epoch and to resume from when it
            holds a run of the same settings and data (None: no checkpoint).
        progress: progress bar per epoch (None: only on a terminal).
        on_epoch: called after every epoch with its record and the head; returning True stops there.
        cpu_threads: torch threads on the CPU while training (restored afterwards; 0: torch's
            setting). 1 by default: on the shared 2-core machine, 2 threads ran the head 3-10x
            slower (spinning OpenMP workers), and a fixed count keeps the sums' order, so runs repeat.

    Returns:
        the head (on the CPU, eval mode) and the per-epoch history.
    """
    if config.head in CLOSED_FORM_HEADS:
        raise ValueError(f"a {config.head} head is learned in closed form (cbir.learning.train_model), not trained")
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    components = np.asarray(components, np.int64)
    if len(components) != len(maps):
        raise ValueError(f"{len(maps)} maps but {len(components)} component labels")
    torch.manual_seed(config.seed)
    target = resolve(device)
    bank = MapBank(maps, target)
    from cnn.backbone import _torch_threads
    with _torch_threads(cpu_threads if target.type == "cpu" else 0):
        head = initial_head(maps, bank, pairs, config, whitening).to(target)
        history = fit(head, bank, pairs, components, config, run_key(config, maps, pairs, components),
                      checkpoint, progress, on_epoch)
    head.to("cpu").eval()
    return TrainingResult(head, history)


def fit(module: torch.nn.Module, bank: MapBank, pairs: np.ndarray, components: np.ndarray, config: TrainingConfig,
        fingerprint: str, checkpoint: str | None = None, progress: bool | None = None,
        on_epoch: Callable[[EpochRecord, torch.nn.Module], bool | None] | None = None) -> list[EpochRecord]:
    """The epochs of ``config`` (resumed from ``checkpoint`` when it holds the run ``fingerprint``): Adam on
    ``module`` (a head, or ``cnn.tuning.TunedNetwork``), ``bank`` giving its inputs by image number.

    ``on_epoch`` is called after every epoch with its record and the module; returning True stops the
    training there. Returns the history (resumed epochs included)."""
    optimizer = torch.optim.Adam(_parameter_groups(module, config), lr=config.lr, weight_decay=config.weight_decay)
    history, start_epoch = _resume(checkpoint, fingerprint, module, optimizer, config)
    _train_epochs(module, bank, optimizer, pairs, components, config, start_epoch, history, checkpoint,
                  fingerprint, progress, on_epoch)
    return history


def _resume(checkpoint: str | None, fingerprint: str, head: torch.nn.Module, optimizer,
            config: TrainingConfig) -> tuple[list[EpochRecord], int]:
    """Load the state of ``checkpoint`` into ``head`` and ``optimizer`` when it holds the run ``fingerprint``.

    Returns:
        (the history so far, the epoch to start at); ([], 0) without such a checkpoint.
    """
    if not (checkpoint and os.path.exists(checkpoint)):
        return [], 0
    state = load_checkpoint(checkpoint)
    if state["run_key"] != fingerprint:
        logger.info("%s holds another run (settings or data differ): starting afresh", checkpoint)
        return [], 0
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    start_epoch = int(state["epoch"])
    logger.info("resuming training at epoch %d of %d from %s", start_epoch + 1, config.epochs, checkpoint)
    return [EpochRecord(**record) for record in state["history"]], start_epoch


def _train_epochs(head, bank, optimizer, pairs, components, config, start_epoch, history, checkpoint, fingerprint,
                  progress, on_epoch) -> None:
    for epoch in range(start_epoch, config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * config.lr_decay ** epoch
        record = _run_epoch(head, bank, optimizer, pairs, components, config, epoch, progress)
        history.append(record)
        if checkpoint:
            save_checkpoint(checkpoint, {"version": CHECKPOINT_VERSION, "run_key": fingerprint, "epoch": epoch + 1,
                                         "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                                         "history": [dataclasses.asdict(r) for r in history]})
        if on_epoch is not None and on_epoch(record, head):
            break


def _parameter_groups(module: torch.nn.Module, config: TrainingConfig) -> list[dict]:
    """Adam's groups: GeM's p (``lr * p_lr_factor``), the backbone's trained parameters of a
    ``cnn.tuning.TunedNetwork`` (``backbone_lr``), the rest of the head (``lr``)."""
    groups = []
    p = gem_exponent(module)
    if isinstance(p, torch.nn.Parameter):
        groups.append({"params": [p], "lr": config.lr * config.p_lr_factor, "weight_decay": 0.0})
    backbone = [q for q in module.stages.parameters() if q.requires_grad] if hasattr(module, "stages") else []
    if backbone:
        groups.append({"params": backbone, "lr": config.backbone_lr})
    taken = {id(q) for q in backbone} | {id(p)}
    rest = [q for q in module.parameters() if q.requires_grad and id(q) not in taken]
    if rest:
        groups.append({"params": rest})
    return groups


def _run_epoch(head: torch.nn.Module, bank: MapBank, optimizer, pairs: np.ndarray, components: np.ndarray,
               config: TrainingConfig, epoch: int, progress: bool | None) -> EpochRecord:
    started = time.perf_counter()
    rng = np.random.default_rng([config.seed, epoch])
    head.eval()
    descriptors = bank.describe_all(head)
    tuples = epoch_tuples(descriptors, pairs, components, config.negatives, rng, config.hard_negatives,
                          config.hard_positives, config.max_tuples)
    head.train()
    steps_started = time.perf_counter()
    total, count = 0.0, 0
    p = gem_exponent(head)
    bar = tqdm(total=len(tuples), desc=f"epoch {epoch + 1}/{config.epochs}", unit="tuple",
               disable=None if progress is None else not progress, leave=False)
    for start in range(0, len(tuples), config.batch):
        batch = tuples.subset(np.arange(start, min(start + config.batch, len(tuples))))
        images, inverse = np.unique(np.concatenate([batch.queries, batch.positives, batch.negatives.ravel()]),
                                    return_inverse=True)
        out = bank.forward(head, images)
        t = len(batch)
        inverse = torch.from_numpy(inverse).to(out.device)
        anchors = out[inverse[:t]]
        positives = out[inverse[t:2 * t]]
        negatives = out[inverse[2 * t:]].reshape(t, config.negatives, -1)
        loss = tuple_loss(config.loss, anchors, positives, negatives, config.loss_margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if p is not None:
            with torch.no_grad():  # GeM needs p >= 1 (a mean at least); cirtorch has no such clamp but never goes there
                p.clamp_(min=1.0)
        total += loss.item() * t
        count += t
        bar.update(t)
        bar.set_postfix(loss=f"{total / count:.4f}", **({} if p is None else {"p": f"{p.item():.2f}"}))
    bar.close()
    ended = time.perf_counter()
    return EpochRecord(epoch + 1, total / max(count, 1), count, ended - started,
                       count / max(ended - steps_started, 1e-9), None if p is None else p.item())


def run_key(config: TrainingConfig, maps: list[np.ndarray], pairs: np.ndarray, components: np.ndarray) -> str:
    """Identifies a run: the settings (but the epoch count, so a run can be extended) and the data."""
    import hashlib
    digest = hashlib.sha256(repr(dataclasses.replace(config, epochs=0)).encode())
    digest.update(np.ascontiguousarray(pairs, np.int64).tobytes())
    digest.update(np.ascontiguousarray(components, np.int64).tobytes())
    for m in maps[:: max(1, len(maps) // 64)]:  # a sample of the maps: cheap, and catches another backbone
        digest.update(np.ascontiguousarray(m, np.float16).tobytes())
    digest.update(str(len(maps)).encode())
    return digest.hexdigest()


def save_checkpoint(path: str, state: dict) -> None:
    """Atomically write a checkpoint (torch.save to a temporary file in the same folder, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by ``save_checkpoint`` (``weights_only=True``: tensors and plain data only).

    Raises:
        ValueError: unreadable, or of another layout version (message names the file).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise ValueError(f"{path}: not a readable training checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a version-{CHECKPOINT_VERSION} training checkpoint")
    return state
