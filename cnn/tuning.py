"""Training the backbone's last blocks with the head (``cbir train --from-block N``; torch).

Blocks N..15 and the head conv of EfficientNet-Lite0 train together with a GeM(-FC) head; the
stem and blocks 0..N-1 stay frozen, so they run ONCE per training image (``stage_inputs``) and
their output, the input of block N, is kept in memory (a ``MapBank``: float32 on the CPU,
float16 on CUDA; N = 0: the images as uint8). Each step then runs blocks N.. only (N = 11: the
stride-32 stages from the 112-channel stride-16 maps, 128 MiB for 1,000 photos of 320 x 240).
BatchNorm is frozen and the network stays in eval mode (no dropout, fixed statistics); the
backbone's parameters get ``TrainingConfig.backbone_lr``, the head ``lr`` (p ``lr * p_lr_factor``).
Hard negatives are re-mined every epoch from the current network's descriptors, and runs
checkpoint and resume, through the loop of the head training (``cnn.training.fit``).
Deterministic given the seed on the CPU (one torch thread).
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch import nn

from cnn.backbone import Backbone, _torch_threads, normalize_pixels, resolve_device, run_from, tuned_prefixes, \
    tuned_state
from cnn.heads import MapBank, build_head
from cnn.options import BackboneOptions
from cnn.training import EpochRecord, TrainingConfig, TrainingResult, fit, freeze_batchnorm, initial_whitening, \
    run_key
from cnn.whitening import PCAWhitening

logger = logging.getLogger("cbir")

#: Images per pass of the network when computing stage inputs or describing the training set.
BATCH = 32


class StageRunner(nn.Module):
    """Blocks ``start``.. and the head conv of ``net``: the input of block ``start`` -> the 'global' map.

    Args:
        net: the EfficientNet-Lite of a ``Backbone`` (BatchNorm frozen, eval mode).
        start: the first block run (0: the stem too, from uint8 images).
        amp: bfloat16 autocast (CUDA).
    """

    def __init__(self, net: nn.Module, start: int, amp: bool = False):
        super().__init__()
        self.net, self.start, self.amp = net, start, amp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) input of block ``start`` (for 0: (B, 3, H, W) pixel values 0..255, preprocessed here
        as ``Backbone.preprocess``) -> (B, 1280, h', w') float32 'global' map."""
        x = normalize_pixels(x) if self.start == 0 else x.float()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return run_from(self.net, x.contiguous(memory_format=torch.channels_last), self.start).float()


class TunedNetwork(nn.Module):
    """``stages`` (a ``StageRunner``) then ``head``: the input of the first trained block -> (B, k) descriptors.
    ``train()`` switches the head only: the backbone stays in eval mode (BatchNorm and dropout fixed)."""

    def __init__(self, stages: StageRunner, head: nn.Module):
        super().__init__()
        self.stages, self.head = stages, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x))

    def train(self, mode: bool = True) -> "TunedNetwork":
        self.training = mode
        self.head.train(mode)
        self.stages.eval()
        return self


def train_from(net: nn.Module, start: int) -> list[nn.Parameter]:
    """Freeze all of ``net`` but blocks ``start``..15 and the head conv (the stem too when 0), BatchNorm
    excluded (``freeze_batchnorm`` must have run); returns the parameters left to train."""
    prefixes = tuned_prefixes(start)
    trained = []
    for name, parameter in net.named_parameters():
        keep = parameter.requires_grad and name.startswith(prefixes)
        parameter.requires_grad_(keep)
        if keep:
            trained.append(parameter)
    return trained


@torch.no_grad()
def stage_inputs(net: nn.Module, images: list[np.ndarray], start: int, device: torch.device,
                 amp: bool = False) -> list[np.ndarray]:
    """The input of block ``start`` for each image: the frozen stem + blocks 0..start-1 run once.

    Args:
        net: the network (eval mode).
        images: n (H, W, 3) uint8 RGB images as the backbone sees them.
        start: the first trained block.
        device: where the network runs.
        amp: bfloat16 autocast (CUDA).

    Returns:
        n arrays: for ``start`` 0 the (3, H, W) uint8 images; else (C, H/s, W/s) float32 maps (s: the stride
        of block ``start``'s input; C = 112 at s = 16 for block 11).
    """
    chw = [np.ascontiguousarray(image.transpose(2, 0, 1)) for image in images]
    if start == 0:
        return chw
    out: list[np.ndarray | None] = [None] * len(chw)
    shapes: dict[tuple, list[int]] = {}
    for i, image in enumerate(chw):
        shapes.setdefault(image.shape, []).append(i)
    for members in shapes.values():
        for s in range(0, len(members), BATCH):
            rows = members[s:s + BATCH]
            x = normalize_pixels(torch.from_numpy(np.stack([chw[i] for i in rows])).to(device))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                maps = run_from(net, x.contiguous(memory_format=torch.channels_last), 0, start)
            for i, m in zip(rows, maps.float().cpu().numpy()):
                out[i] = m
    return out


@torch.no_grad()
def global_maps(runner: StageRunner, bank: MapBank) -> list[np.ndarray]:
    """n (1280, h, w) float32 'global' maps of the ``bank``'s images through ``runner``, in image order
    (what the head's initial whitening is learned from)."""
    return [runner(bank.groups[bank.group_of[i]][bank.row_of[i]][None])[0].cpu().numpy() for i in range(bank.n)]


def train_network(images: list[np.ndarray], pairs: np.ndarray, components: np.ndarray, config: TrainingConfig,
                  device: str = "auto", whitening: PCAWhitening | None = None, checkpoint: str | None = None,
                  progress: bool | None = None,
                  on_epoch: Callable[[EpochRecord, nn.Module], bool | None] | None = None,
                  cpu_threads: int = 1, amp: bool | None = None,
                  options: BackboneOptions = BackboneOptions()) -> TrainingResult:
    """Train blocks ``config.from_block``..15 + the head conv of the backbone with a ``config.head`` head.

    Args:
        images: n (H, W, 3) uint8 RGB training images as the backbone sees them (``FeatureMapExtractor.image``).
        pairs: (m, 2) verified positive pairs of image numbers.
        components: (n,) component of each image (negatives come from other components).
        config: the settings (``from_block`` set).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        whitening: the FC layer's start (gem-fc; None: learned from the images' maps through the network).
        checkpoint: a file to save the state to after every epoch and to resume from (None: none).
        progress: progress bar per epoch (None: only on a terminal).
        on_epoch: called after every epoch with its record and the ``TunedNetwork``; True stops there.
        cpu_threads: torch threads on the CPU (0: torch's setting).
        amp: bfloat16 autocast of the backbone (None: on CUDA).
        options: the backbone (ImageNet weights).

    Returns:
        the head (CPU, eval mode), the history, and ``tuned``: the trained blocks' weights.
    """
    start = config.from_block
    if start is None:
        raise ValueError("train_network trains backbone blocks: set TrainingConfig.from_block")
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    components = np.asarray(components, np.int64)
    if len(components) != len(images):
        raise ValueError(f"{len(images)} images but {len(components)} component labels")
    target = resolve_device(device)
    amp = target.type == "cuda" if amp is None else amp
    if start == 0 and target.type == "cpu":
        logger.warning("training the whole network (--from-block 0) is meant for a GPU: on a CPU it runs at "
                       "well under 1 tuple/s; --from-block 11 trains the stride-32 stages ~30x faster")
    torch.manual_seed(config.seed)
    with _torch_threads(cpu_threads if target.type == "cpu" else 0):
        net = Backbone(options, device=str(target), cpu_threads=0).net.to(memory_format=torch.channels_last)
        freeze_batchnorm(net)
        train_from(net, start)
        inputs = stage_inputs(net, images, start, target, amp)
        dtype = torch.uint8 if start == 0 else (torch.float16 if target.type == "cuda" else torch.float32)
        bank = MapBank(inputs, target, dtype, batch=BATCH)
        runner = StageRunner(net, start, amp)
        if whitening is None and config.head == "gem-fc":
            whitening = initial_whitening(global_maps(runner, bank), pairs, config)
        model = TunedNetwork(runner, build_head(config.head, 1280, config.p, True, whitening).to(target))
        history = fit(model, bank, pairs, components, config, run_key(config, inputs, pairs, components),
                      checkpoint, progress, on_epoch)
    model.eval()
    return TrainingResult(model.head.to("cpu"), history, tuned_state(net, start))
