"""Trainable retrieval heads on the backbone's conv maps (torch).

``GemHead``: a (B, C, H, W) activation map -> GeM pooling with a learnable exponent p
-> L2 -> optional affine layer ``(x - mean) @ projection`` initialised from a whitening
(PCA or learned whitening, Radenovic et al. 2018's "Lw" FC initialisation) -> L2.
``NetVladHead``: NetVLAD (Arandjelovic et al., CVPR 2016) -> the same affine layer -> L2.
``LocalWhiteningHead``: HOW's training head (Tolias et al., ECCV 2020) for BLCF's conv features: the
same affine layer on every position, L2, summed over the positions, L2; what it trains is the local
whitening (``blcf-how``), the sum exists only for the loss.
Normalisations follow cirtorch: ``x / (||x|| + eps)``.

The affine layer is kept as (mean, projection) rather than (weight, bias): the same
parameterisation as ``cnn.whitening.PCAWhitening``, so a trained head is applied at
search time by the numpy code (``cnn.learned_model.LearnedHead``) without torch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnn.whitening import PCAWhitening

#: Head kinds this module can build (saved in a model's manifest).
HEAD_KINDS = ("gem-fc", "gem", "netvlad", "blcf-how")
#: NetVLAD's assignment sharpness at initialisation (the paper's alpha).
NETVLAD_ALPHA = 100.0


def l2n(x: torch.Tensor, eps: float = 1e-6, dim: int = -1) -> torch.Tensor:
    """``x`` divided by its L2 norm over ``dim`` + eps (cirtorch's ``L2N``; rows of (B, d) by default)."""
    return x / (torch.linalg.vector_norm(x, dim=dim, keepdim=True) + eps)


def affine_parameters(module: nn.Module, whitening: PCAWhitening, input_dim: int, learn: bool) -> None:
    """Give ``module`` the affine layer ``(x - mean) @ projection`` of ``whitening`` as ``mean`` (d,) and
    ``projection`` (d, k): parameters when ``learn``, buffers otherwise."""
    if whitening.input_dim != input_dim:
        raise ValueError(f"whitening takes {whitening.input_dim} dims, the head gives {input_dim}")
    for name, value in (("mean", whitening.mean), ("projection", whitening.projection)):
        tensor = torch.from_numpy(np.array(value, np.float32))
        if learn:
            setattr(module, name, nn.Parameter(tensor))
        else:
            module.register_buffer(name, tensor)


class GeM(nn.Module):
    """Generalized-mean pooling ``(mean_{h,w} max(x, eps)^p)^(1/p)`` over each channel.

    Args:
        p: initial exponent (3: cirtorch's start; 1 = average, large = max pooling).
        learn_p: make p a trained parameter.
        eps: activations are clamped to at least this before the power.
    """

    def __init__(self, p: float = 3.0, learn_p: bool = True, eps: float = 1e-6):
        super().__init__()
        value = torch.tensor([float(p)])
        if learn_p:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) non-negative maps -> (B, C)."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class GemHead(nn.Module):
    """GeM(p) -> L2 -> [affine ``(x - mean) @ projection`` -> L2].

    Args:
        channels: C of the input maps (1280 for the backbone's 'global' map).
        p: initial GeM exponent.
        learn_p: train p.
        whitening: initial affine layer (its mean (C,) and projection (C, k)); None: no
            affine layer, the head outputs the L2-normalised GeM vector (C dims).
        learn_whitening: train the affine layer (False: keep it as initialised).
    """

    def __init__(self, channels: int = 1280, p: float = 3.0, learn_p: bool = True,
                 whitening: PCAWhitening | None = None, learn_whitening: bool = True):
        super().__init__()
        self.channels = channels
        self.pool = GeM(p, learn_p)
        if whitening is not None:
            affine_parameters(self, whitening, channels, learn_whitening)
        else:
            self.mean = self.projection = None

    @property
    def kind(self) -> str:
        """``gem-fc`` with an affine layer, ``gem`` without."""
        return "gem-fc" if self.projection is not None else "gem"

    @property
    def output_dim(self) -> int:
        return self.projection.shape[1] if self.projection is not None else self.channels

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) activations -> (B, k) unit-norm descriptors."""
        x = l2n(self.pool(maps))
        if self.projection is not None:
            x = l2n((x - self.mean) @ self.projection)
        return x

    def export(self) -> dict[str, np.ndarray]:
        """The head's numbers as numpy: {'p': (1,), and with an affine layer 'mean': (C,),
        'projection': (C, k)} float32."""
        state = {"p": self.pool.p.detach().float().cpu().numpy().reshape(1)}
        if self.projection is not None:
            state["mean"] = self.mean.detach().float().cpu().numpy()
            state["projection"] = self.projection.detach().float().cpu().numpy()
        return state


class NetVladHead(nn.Module):
    """NetVLAD -> L2 -> affine ``(x - mean) @ projection`` -> L2.

    Each position's C-vector is L2-normalised, softly assigned to K clusters by a 1x1 conv
    (``softmax_k(weight_k . x + bias_k)``, initialised as ``softmax(alpha (2 c_k . x - ||c_k||^2))``),
    its residuals to the centroids ``c_k`` are summed per cluster with those weights, each
    cluster's sum is L2-normalised (intra-normalisation), then the whole (K * C) vector.

    Args:
        centroids: (K, C) initial cluster centres (k-means of L2-normalised positions).
        whitening: initial affine layer, mean (K * C,) and projection (K * C, k); None: no affine
            layer, the head outputs the VLAD vector (K * C dims: what the whitening is learned from).
        alpha: assignment sharpness at initialisation.
        learn_whitening: train the affine layer (False: keep it as initialised).
    """

    kind = "netvlad"

    def __init__(self, centroids: np.ndarray, whitening: PCAWhitening | None, alpha: float = NETVLAD_ALPHA,
                 learn_whitening: bool = True):
        super().__init__()
        centroids = torch.from_numpy(np.array(centroids, np.float32))
        self.clusters, self.channels = centroids.shape
        self.centroids = nn.Parameter(centroids)
        self.assign_weight = nn.Parameter(2.0 * alpha * centroids)
        self.assign_bias = nn.Parameter(-alpha * centroids.pow(2).sum(dim=1))
        if whitening is not None:
            affine_parameters(self, whitening, self.clusters * self.channels, learn_whitening)
        else:
            self.mean = self.projection = None

    @property
    def output_dim(self) -> int:
        return self.projection.shape[1] if self.projection is not None else self.clusters * self.channels

    def vlad(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) activations -> (B, K * C) unit-norm, intra-normalised VLAD vectors."""
        x = l2n(maps.flatten(2), dim=1)  # (B, C, N)
        logits = torch.einsum("kc,bcn->bkn", self.assign_weight, x) + self.assign_bias[:, None]
        soft = torch.softmax(logits, dim=1)  # (B, K, N)
        residuals = soft @ x.transpose(1, 2) - soft.sum(dim=2, keepdim=True) * self.centroids  # (B, K, C)
        return l2n(l2n(residuals).flatten(1))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) activations -> (B, k) unit-norm descriptors."""
        x = self.vlad(maps)
        return x if self.projection is None else l2n((x - self.mean) @ self.projection)


class LocalWhiteningHead(nn.Module):
    """A local whitening trained through the image descriptor it pools to (HOW's training).

    Input "maps" are an image's kept conv positions as columns, (B, C, n, 1) (``MapBank`` of
    ``rows.T[:, :, None]``): each position x -> ``l2((x - mean) @ projection)``, the positions summed,
    L2. The positions are the ones BLCF keeps (largest activation norm, HOW's attention as a
    selection); they enter L2-normalised and with equal weight, as the inverted file scores them.

    Args:
        whitening: the start, mean (C,) and projection (C, k): the closed-form Lw of ``blcf-lw``.
    """

    kind = "blcf-how"

    def __init__(self, whitening: PCAWhitening):
        super().__init__()
        affine_parameters(self, whitening, whitening.input_dim, True)

    @property
    def output_dim(self) -> int:
        return self.projection.shape[1]

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, n, 1) positions -> (B, k) unit-norm sums of their whitened, unit-norm vectors."""
        positions = maps.flatten(2).transpose(1, 2)  # (B, n, C)
        return l2n(l2n((positions - self.mean) @ self.projection).sum(dim=1))


def gem_exponent(module: nn.Module) -> torch.Tensor | None:
    """The GeM exponent p (1,) of a ``GemHead`` (or of the one inside ``module``); None without one."""
    return next((m.pool.p for m in module.modules() if isinstance(m, GemHead)), None)


def build_head(kind: str, channels: int = 1280, p: float = 3.0, learn_p: bool = True,
               whitening: PCAWhitening | None = None, centroids: np.ndarray | None = None) -> nn.Module:
    """A head of ``kind`` (``gem-fc`` needs ``whitening`` to start from, ``gem`` has none; ``netvlad``
    needs ``centroids`` (K, C) and a ``whitening`` of K * C dims; ``blcf-how`` a whitening of C dims)."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown head {kind!r}; known: {', '.join(HEAD_KINDS)}")
    if kind in ("gem-fc", "netvlad", "blcf-how") and whitening is None:
        raise ValueError(f"a {kind} head starts from a whitening (mean, projection)")
    if kind == "netvlad":
        if centroids is None or centroids.shape[1] != channels:
            raise ValueError(f"a netvlad head starts from centroids of {channels} dims")
        return NetVladHead(centroids, whitening)
    if kind == "blcf-how":
        return LocalWhiteningHead(whitening)
    return GemHead(channels, p, learn_p, whitening if kind == "gem-fc" else None)


def head_from_state(kind: str, state: dict[str, torch.Tensor], channels: int = 1280) -> nn.Module:
    """A head of ``kind`` holding a ``state_dict`` written by its ``state_dict()``."""
    whitening = None
    if kind in ("gem-fc", "netvlad", "blcf-how"):
        whitening = PCAWhitening(state["mean"].numpy(), state["projection"].numpy())
    centroids = state["centroids"].numpy() if kind == "netvlad" else None
    p = float(state["pool.p"].reshape(-1)[0]) if "pool.p" in state else 3.0
    head = build_head(kind, channels, p, True, whitening, centroids)
    head.load_state_dict(state, strict=True)
    return head


class MapBank:
    """Feature maps of a training set held as a few stacked tensors, one per map shape.

    Photos of one collection mostly share a size, so their maps stack; a batch of
    image indices is then pooled group by group.

    Args:
        maps: n arrays (C, H, W) float32/float16 (or uint8 images (3, H, W), ``cnn.tuning``).
        device: where the tensors live.
        dtype: storage dtype (float32 default; float16 halves memory, computed in float32).
        batch: images per pass of ``describe_all``.
    """

    def __init__(self, maps: list[np.ndarray], device: torch.device | str = "cpu", dtype=torch.float32,
                 batch: int = 256):
        self.n, self.batch = len(maps), batch
        self.device = torch.device(device)
        shapes: dict[tuple, list[int]] = {}
        for i, m in enumerate(maps):
            shapes.setdefault(tuple(m.shape), []).append(i)
        self.groups = []  # (tensor (G, C, H, W), members (G,) int64)
        self.group_of = np.empty(self.n, np.int64)
        self.row_of = np.empty(self.n, np.int64)
        for g, (shape, members) in enumerate(shapes.items()):
            stacked = torch.from_numpy(np.stack([np.asarray(maps[i]) for i in members]))
            self.groups.append(stacked.to(device=self.device, dtype=dtype))
            self.group_of[members] = g
            self.row_of[members] = np.arange(len(members))

    def __len__(self) -> int:
        return self.n

    def forward(self, head: nn.Module, indices: np.ndarray) -> torch.Tensor:
        """(len(indices), k) head outputs for the images ``indices``, in that order."""
        indices = np.asarray(indices, np.int64)
        results = []
        order = []
        for g in np.unique(self.group_of[indices]):
            where = np.flatnonzero(self.group_of[indices] == g)
            rows = torch.from_numpy(self.row_of[indices[where]]).to(self.device)
            results.append(head(self.groups[g].index_select(0, rows).float()))
            order.append(where)
        return in_input_order(results, order)

    @torch.no_grad()
    def describe_all(self, head: nn.Module) -> np.ndarray:
        """(n, k) float32 descriptors of every image (no gradient), ``batch`` images at a time."""
        parts = [self.forward(head, np.arange(start, min(start + self.batch, self.n)))
                 for start in range(0, self.n, self.batch)]
        return torch.cat(parts).float().cpu().numpy()


def in_input_order(parts: list[torch.Tensor], order: list[np.ndarray]) -> torch.Tensor:
    """Rows computed group by group, put back in input order.

    Args:
        parts: (m_g, k) tensors, one per group.
        order: (m_g,) int positions in the input of each group's rows (together a permutation of 0..n-1).

    Returns:
        (n, k) tensor, row i the one computed for input position i.
    """
    stacked = torch.cat(parts)
    inverse = torch.empty(len(stacked), dtype=torch.int64, device=stacked.device)
    inverse[torch.from_numpy(np.concatenate(order)).to(stacked.device)] = torch.arange(
        len(stacked), device=stacked.device)
    return stacked.index_select(0, inverse)
