"""Fine-tuning of EfficientNet-Lite0 (whole, or its last blocks) on SIFT-mined pairs (issue 14).

Three modes:

``--prepare``  (here): re-encode the UKBench training images (JPEG q80, their 320-px size) and
    the mined pairs (``cbir.mining.MinedPairs``, T = 10 inliers, no labels) into ``.gpu/``, an
    ignored folder that travels to the GPU machine (``carry``).
``--train``    (GPU machine; here on the CPU with ``--from-block``): Lite0's 'global' map (1280 ch)
    -> GeM (learnable p) -> FC initialised from learned whitening (Lw) of the mined pairs -> L2,
    the WHOLE network trained, or with ``--from-block N`` blocks N..15 + the head conv only (the
    frozen stem + blocks 0..N-1 run once per training image, their output kept in memory: each
    step runs blocks N.. only; N = 11: the stride-32 stages from the 112-ch stride-16 maps)
    (BatchNorm frozen, the net kept in eval mode: no dropout, BN statistics fixed),
    contrastive loss (``cnn.losses``), hard negatives re-mined every epoch from the current
    network's descriptors (``cnn.tuples``: one per component, other components only), Adam
    with a small lr on the backbone and a larger one on the head, bf16 autocast for the
    backbone on CUDA (fp32 on the CPU). Writes the backbone as an fp16 state_dict of its changes
    (fine-tuned - ImageNet weights, ``backbone_delta.pt``, ~9 MB; zero for frozen blocks), the
    heads (trained and initial) in fp32 (``heads.pt``, ~5 MB) and a JSON log.
``--evaluate DIR`` (here, CPU): Holidays-811 mAP of the fine-tuned backbone + trained head
    against the off-the-shelf backbone + the same initial head (Lw, no training), in one run.

``--evaluate-rmac DIR`` (here, CPU): rmac-ft, the ``rmac-lw`` descriptor (multi-scale R-MAC, regional Lw
    from the UKBench mined pairs) with its regions pooled from the fine-tuned backbone, against the
    off-the-shelf one.

Honest split: trained on UKBench mined pairs only, evaluated on Holidays.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from cnn.heads import GemHead, build_head, in_input_order
from cnn.losses import DEFAULT_MARGINS, tuple_loss
from cnn.training import TrainingConfig, freeze_batchnorm, initial_whitening
from cnn.tuples import epoch_tuples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_DIR = os.path.join(REPO, ".gpu")


# ---------------------------------------------------------------- prepare (here)
def prepare(args) -> None:
    import cv2

    from cbir.mining import MinedPairs
    mined = MinedPairs.load(args.mined).at_threshold(args.min_inliers)
    out = os.path.join(GPU_DIR, "ukbench")
    os.makedirs(out, exist_ok=True)
    names = []
    for path in mined.images:
        name = os.path.basename(path)
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        cv2.imwrite(os.path.join(out, name), image, [cv2.IMWRITE_JPEG_QUALITY, args.quality])
        names.append(name)
    np.save(os.path.join(GPU_DIR, "pairs.npy"), np.asarray(mined.pairs, np.int64))
    np.save(os.path.join(GPU_DIR, "components.npy"), np.asarray(mined.components, np.int64))
    with open(os.path.join(GPU_DIR, "mined.json"), "w") as handle:
        json.dump({"names": names, "summary": mined.summary(), "min_inliers": args.min_inliers}, handle)
    print(mined.summary())


# ---------------------------------------------------------------- train (GPU)
def load_training_set(limit: int | None):
    import cv2
    with open(os.path.join(GPU_DIR, "mined.json")) as handle:
        meta = json.load(handle)
    names = meta["names"]
    pairs = np.load(os.path.join(GPU_DIR, "pairs.npy"))
    components = np.load(os.path.join(GPU_DIR, "components.npy"))
    if limit:
        names, components = names[:limit], components[:limit]
        pairs = pairs[(pairs < limit).all(axis=1)]
    images = [cv2.cvtColor(cv2.imread(os.path.join(GPU_DIR, "ukbench", n)), cv2.COLOR_BGR2RGB) for n in names]
    return names, images, pairs, components, meta


#: Blocks of Lite0 (``net._blocks``); ``--from-block`` is in 0..LAST_BLOCK.
LAST_BLOCK = 15


def run_from(net: torch.nn.Module, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """Lite0 from the input of block ``start`` to the input of block ``stop`` (None: to the 'global' map,
    the head conv after BN + ReLU6, as ``cnn.backbone.Backbone.forward``).

    Args:
        net: the EfficientNet-Lite0 of a ``Backbone``.
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


def train_from(net: torch.nn.Module, start: int) -> list[torch.nn.Parameter]:
    """Freeze everything of ``net`` before block ``start`` (and the unused ImageNet classifier) and
    return the trained parameters: blocks ``start``..15 + the head conv (+ the stem when 0), BatchNorm
    excluded (``freeze_batchnorm`` must have run)."""
    trained = ([net._conv_stem] if start == 0 else []) + list(net._blocks[start:]) + [net._conv_head]
    keep = {id(p) for module in trained for p in module.parameters() if p.requires_grad}
    for parameter in net.parameters():
        parameter.requires_grad_(id(parameter) in keep)
    return [p for p in net.parameters() if p.requires_grad]


class StageBank:
    """The training set as the input of block ``start``, one stack per shape (landscape, portrait).

    ``start`` 0: the images as uint8 (N, 3, H, W), preprocessed at every use. ``start`` > 0: the output
    of the frozen stem + blocks 0..start-1, computed ONCE here without gradient, kept as (N, C, h, w)
    float32 on the CPU and float16 on CUDA (the training there runs in bf16 autocast anyway); each
    forward then runs blocks ``start``.. only.
    """

    def __init__(self, images: list[np.ndarray], net: torch.nn.Module, start: int, device: torch.device,
                 amp: bool, batch: int = 32):
        shapes: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            shapes.setdefault(image.shape, []).append(i)
        self.n, self.start, self.device = len(images), start, device
        self.stacks, self.group_of, self.row_of = [], np.empty(self.n, np.int64), np.empty(self.n, np.int64)
        for g, members in enumerate(shapes.values()):
            stack = torch.from_numpy(np.stack([images[i] for i in members])).permute(0, 3, 1, 2).contiguous()
            self.stacks.append(stack.to(device))
            self.group_of[members] = g
            self.row_of[members] = np.arange(len(members))
        if start > 0:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            with torch.no_grad():
                self.stacks = [torch.cat([self._run(net, stack[s:s + batch], amp, 0, start).to(dtype)
                                          for s in range(0, len(stack), batch)]) for stack in self.stacks]

    @staticmethod
    def _run(net: torch.nn.Module, stored: torch.Tensor, amp: bool, start: int, stop: int | None = None):
        """``run_from(net, x, start, stop)`` of stored rows: uint8 images preprocessed as
        ``Backbone.preprocess`` (``(x - 127) / 128``), cached maps made float32; channels_last,
        bf16 autocast when ``amp``."""
        x = stored.float()
        if stored.dtype == torch.uint8:
            x = (x - 127.0) / 128.0
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            return run_from(net, x.contiguous(memory_format=torch.channels_last), start, stop)

    def maps(self, net: torch.nn.Module, indices: np.ndarray,
             amp: bool) -> tuple[list[torch.Tensor], list[np.ndarray]]:
        """'global' maps of ``indices``, group by group: ([(m_g, 1280, h_g, w_g) float32], [(m_g,) positions
        in ``indices``])."""
        indices = np.asarray(indices, np.int64)
        parts, order = [], []
        for g in np.unique(self.group_of[indices]):
            where = np.flatnonzero(self.group_of[indices] == g)
            rows = torch.from_numpy(self.row_of[indices[where]]).to(self.device)
            stored = self.stacks[g].index_select(0, rows)
            parts.append(self._run(net, stored, amp, self.start).float())
            order.append(where)
        return parts, order

    def forward(self, net: torch.nn.Module, head: GemHead, indices: np.ndarray, amp: bool) -> torch.Tensor:
        """(len(indices), k) descriptors in ``indices`` order."""
        parts, order = self.maps(net, indices, amp)
        return in_input_order([head(m) for m in parts], order)

    @torch.no_grad()
    def describe_all(self, net: torch.nn.Module, head: GemHead, amp: bool, batch: int = 128) -> np.ndarray:
        """(n, k) float32 descriptors of every image (no gradient)."""
        parts = [self.forward(net, head, np.arange(s, min(s + batch, self.n)), amp)
                 for s in range(0, self.n, batch)]
        return torch.cat(parts).float().cpu().numpy()

    @torch.no_grad()
    def global_maps(self, net: torch.nn.Module, batch: int = 32) -> list[np.ndarray]:
        """n (1280, h, w) float32 'global' maps computed in fp32, in image order (what the Lw
        initialisation pools)."""
        out: list[np.ndarray] = [None] * self.n
        for s in range(0, self.n, batch):
            indices = np.arange(s, min(s + batch, self.n))
            for part, where in zip(*self.maps(net, indices, amp=False)):
                for i, m in zip(indices[where], part.cpu().numpy()):
                    out[i] = m
        return out


def fp32_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def delta_state(module: torch.nn.Module, original: dict) -> dict:
    """fp16 ``fine-tuned - original`` of every float tensor (the changes are small, so fp16 keeps
    them to ~1e-3 relative, where fp16 weights would round each weight by up to 5e-4 relative,
    as much as a few hundred Adam steps move it); non-float tensors as they are."""
    return {k: ((v.detach().float().cpu() - original[k]).half() if v.is_floating_point() else v.detach().cpu())
            for k, v in module.state_dict().items()}


def load_delta(net: torch.nn.Module, delta: dict) -> None:
    """Add a ``delta_state`` to the (original) weights of ``net``."""
    state = net.state_dict()
    net.load_state_dict({k: (state[k].float() + d.float()) if d.is_floating_point() else d
                         for k, d in delta.items()}, strict=True)


def train(args) -> None:
    from cnn.backbone import Backbone
    from cnn.options import BackboneOptions
    out = args.out or os.environ.get("OUT", "/tmp/finetune_out")
    os.makedirs(out, exist_ok=True)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = device.type == "cuda" and not args.no_amp
    if not 0 <= args.from_block <= LAST_BLOCK:
        raise SystemExit(f"--from-block must be in 0..{LAST_BLOCK}")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # cudnn.benchmark stays off: a batch's unique images split into a landscape and a portrait
    # group of varying sizes, so nearly every step has new shapes, and benchmark mode re-tunes
    # every conv for each: the likely reason why the first H200 run (with it on, two runs sharing
    # the GPU) finished no epoch in ~350 s.
    torch.backends.cudnn.benchmark = False
    started = time.perf_counter()
    names, images, pairs, components, meta = load_training_set(args.limit)
    backbone = Backbone(BackboneOptions(), device=str(device), cpu_threads=0)
    backbone.net.to(memory_format=torch.channels_last)
    backbone.eval()
    freeze_batchnorm(backbone)
    net = backbone.net
    original = {k: v.detach().float().cpu().clone() for k, v in net.state_dict().items()}
    backbone_params = train_from(net, args.from_block)
    bank = StageBank(images, net, args.from_block, device, amp)
    del images
    print(f"bank (input of block {args.from_block}) ready at {time.perf_counter() - started:.1f} s: "
          f"{sum(t.numel() * t.element_size() for t in bank.stacks) / 2 ** 20:.0f} MiB, shapes "
          f"{[tuple(t.shape) for t in bank.stacks]}", flush=True)
    config = TrainingConfig(dim=args.dim, p=3.0, loss="contrastive", margin=args.margin, negatives=args.negatives)
    # Lw initialisation: GeM(p=3) of the off-the-shelf maps + the mined pairs (as cnn.training does)
    whitening = initial_whitening(bank.global_maps(net), pairs, config)
    head = build_head("gem-fc", 1280, 3.0, True, whitening).to(device)
    init_head_state = fp32_state(head)
    groups = [{"params": backbone_params, "lr": args.lr},
              {"params": [head.mean, head.projection], "lr": args.lr * args.head_lr_factor},
              {"params": [head.pool.p], "lr": args.lr * args.head_lr_factor * 10}]
    optimizer = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)
    print(f"setup {time.perf_counter() - started:.1f} s: {len(names)} images, {len(pairs)} pairs, "
          f"{len(np.unique(components))} components, {sum(p.numel() for p in backbone_params)} backbone params "
          f"trained (blocks {args.from_block}..{LAST_BLOCK} + head conv), device {device}, amp {amp}, "
          f"{torch.get_num_threads()} torch threads", flush=True)
    log = {"settings": {k: v for k, v in vars(args).items()}, "mined": meta.get("summary"),
           "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "setup_s": round(time.perf_counter() - started, 1), "epochs": []}
    margin = DEFAULT_MARGINS["contrastive"] if args.margin is None else args.margin
    training_started = time.perf_counter()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([args.seed, epoch])
        descriptors = bank.describe_all(net, head, amp)
        tuples = epoch_tuples(descriptors, pairs, components, args.negatives, rng, True, False, args.max_tuples)
        t1 = time.perf_counter()
        total, count = 0.0, 0
        for start in range(0, len(tuples), args.batch):
            batch = tuples.subset(np.arange(start, min(start + args.batch, len(tuples))))
            unique, inverse = np.unique(np.concatenate([batch.queries, batch.positives, batch.negatives.ravel()]),
                                        return_inverse=True)
            out_desc = bank.forward(net, head, unique, amp)
            t = len(batch)
            inverse = torch.from_numpy(inverse).to(device)
            loss = tuple_loss("contrastive", out_desc[inverse[:t]], out_desc[inverse[t:2 * t]],
                              out_desc[inverse[2 * t:]].reshape(t, args.negatives, -1), margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                head.pool.p.clamp_(min=1.0)
            total += loss.item() * t
            count += t
            step = start // args.batch + 1
            if step % args.print_every == 0:
                print(f"  epoch {epoch + 1} step {step}: {count} tuples, loss {total / count:.4f}, "
                      f"{count / (time.perf_counter() - t1):.1f} tuples/s", flush=True)
            if time.perf_counter() - training_started > args.time_budget:
                print(f"time budget {args.time_budget} s reached inside epoch {epoch + 1}", flush=True)
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        scheduler.step()
        record = {"epoch": epoch + 1, "loss": total / max(count, 1), "tuples": count,
                  "mining_s": round(t1 - t0, 2), "steps_s": round(t2 - t1, 2),
                  "tuples_per_s": round(count / max(t2 - t1, 1e-9), 1), "p": round(head.pool.p.item(), 4)}
        log["epochs"].append(record)
        print(json.dumps(record), flush=True)
        elapsed = time.perf_counter() - training_started
        last = epoch + 1 == args.epochs or elapsed * (epoch + 2) / (epoch + 1) > args.time_budget
        if last or (epoch + 1) % args.save_every == 0:
            torch.save(delta_state(net, original), os.path.join(out, "backbone_delta.pt"))
            torch.save({"trained": fp32_state(head), "init": init_head_state}, os.path.join(out, "heads.pt"))
            log["epochs_done"] = epoch + 1
            log["training_s"] = round(elapsed, 1)
            with open(os.path.join(out, "log.json"), "w") as handle:
                json.dump(log, handle, indent=1)
        if last:
            if epoch + 1 < args.epochs:
                print(f"stopping after epoch {epoch + 1}: time budget {args.time_budget} s", flush=True)
            break
    steps = sum(r["steps_s"] for r in log["epochs"])
    print(f"done: {log['epochs_done']} epochs, {sum(r['tuples'] for r in log['epochs'])} tuples, "
          f"{sum(r['tuples'] for r in log['epochs']) / steps:.1f} tuples/s, total {time.perf_counter() - started:.1f} s",
          flush=True)


# ---------------------------------------------------------------- evaluate (CPU)
def head_from(state: dict) -> GemHead:
    from cnn.heads import head_from_state
    return head_from_state("gem-fc", {k: v.float() for k, v in state.items()}).eval()


def describe(backbone, head, paths, threads: int) -> np.ndarray:
    from bovw.images import ImageOptions, load_image
    out = []
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for path in paths:
            image = load_image(path, ImageOptions(max_side=backbone.options.max_side), color=True)
            x = backbone.preprocess(image)
            maps = backbone(x)["global"]
            out.append(head(maps.float())[0].numpy())
    return np.stack(out)


def holidays_map(dataset, descriptors: np.ndarray) -> float:
    position = {name: i for i, name in enumerate(dataset.database)}
    names = np.asarray(dataset.database)
    rankings = []
    for query in dataset.queries:
        scores = descriptors @ descriptors[position[query.name]]
        rankings.append(list(names[np.argsort(-scores, kind="stable")]))
    (_, value), = dataset.score(rankings).items()
    return value


def rmac_rows(backbone, paths: list[str], scales: tuple[float, ...]) -> list[np.ndarray]:
    """Per image, its (r, 1280) L2-normalised R-MAC region vectors at ``scales`` (the pipeline's
    ``raw_vectors``) from ``backbone``'s head maps."""
    from bovw.images import ImageOptions, load_image, rescale
    from cnn.global_descriptors import GlobalDescriptorConfig, raw_vectors
    config = GlobalDescriptorConfig("rmac")
    rows = []
    for path in paths:
        image = load_image(path, ImageOptions(max_side=backbone.options.max_side), color=True)
        rows.append(raw_vectors([backbone.feature_maps(rescale(image, s))["global"] for s in scales], config))
    return rows


def evaluate_rmac(args) -> None:
    """rmac-ft: ``rmac-lw`` (R-MAC at its scales, regional Lw from the UKBench mined pairs) with the regions
    pooled from the fine-tuned backbone, against the same on the off-the-shelf one, Holidays-811 mAP."""
    from benchmarks.common import write_result
    from cbir.pipelines import get_pipeline
    from cnn.backbone import Backbone
    from cnn.global_descriptors import embed
    from cnn.options import BackboneOptions
    from cnn.whitening import regional_learned_whitening
    from index.datasets import holidays
    torch.set_num_threads(args.threads)
    dataset = holidays(os.path.join(args.data, "holidays"))
    with open(os.path.join(GPU_DIR, "mined.json")) as handle:
        train_paths = [os.path.join(args.data, "ukbench", name) for name in json.load(handle)["names"]]
    pairs = np.load(os.path.join(GPU_DIR, "pairs.npy"))
    build = get_pipeline("rmac-lw").build
    lines = [f"rmac-ft: R-MAC regions at image scales {build.scales} (the rmac-lw pipeline's), regional Lw learned "
             f"on the UKBench-1000 images' {len(pairs)} mined pairs through the same network; evaluated on "
             f"Holidays-811 (honest split). Command: `python -m benchmarks.finetune_whole --evaluate-rmac "
             f"{args.evaluate_rmac} --name {args.name}`.", "",
             "| backbone | Holidays-811 mAP | seconds |", "|---|---|---|"]
    for label, delta in (("off-the-shelf Lite0 (= rmac-lw)", None),
                         (f"fine-tuned Lite0 ({args.evaluate_rmac})", "backbone_delta.pt")):
        started = time.perf_counter()
        backbone = Backbone(BackboneOptions(), device="cpu", cpu_threads=0)
        if delta:
            path = os.path.join(args.evaluate_rmac, delta)
            load_delta(backbone.net, torch.load(path, weights_only=True, map_location="cpu"))
        backbone.eval()
        whitening = regional_learned_whitening(rmac_rows(backbone, train_paths, build.scales), pairs)
        descriptors = np.stack([embed(rows, whitening, build.descriptor)[0]
                                for rows in rmac_rows(backbone, dataset.database_paths, build.scales)])
        value = holidays_map(dataset, descriptors)
        lines.append(f"| {label} | {value:.4f} | {time.perf_counter() - started:.0f} |")
        print(lines[-1], flush=True)
    if args.name:
        print(f"written to {write_result(args.name, chr(10).join(lines))}")


def evaluate(args) -> None:
    from benchmarks.common import write_result
    from cnn.backbone import Backbone
    from cnn.options import BackboneOptions
    from index.datasets import holidays
    dataset = holidays(os.path.join(args.data, "holidays"))
    paths = dataset.database_paths
    heads = torch.load(os.path.join(args.evaluate, "heads.pt"), map_location="cpu", weights_only=True)
    with open(os.path.join(args.evaluate, "log.json")) as handle:
        log = json.load(handle)
    s = log["settings"]
    start = s.get("from_block", 0)  # logs before --from-block trained the whole network
    tuned = "fine-tuned Lite0" + (f" (blocks {start}..{LAST_BLOCK})" if start else "")
    rows = []
    for label, weights, head_state in (
            ("off-the-shelf Lite0 + GeM(p=3) + FC = Lw (no training)", None, heads["init"]),
            (f"{tuned} + trained GeM/FC head", "backbone_delta.pt", heads["trained"]),
            (f"{tuned} + initial head (Lw, p=3)", "backbone_delta.pt", heads["init"])):
        backbone = Backbone(BackboneOptions(), device="cpu", cpu_threads=0)
        if weights:
            state = torch.load(os.path.join(args.evaluate, weights), map_location="cpu", weights_only=True)
            load_delta(backbone.net, state)
        backbone.eval()
        head = head_from(head_state)
        t0 = time.perf_counter()
        descriptors = describe(backbone, head, paths, args.threads)
        value = holidays_map(dataset, descriptors)
        rows.append((label, value, head.pool.p.item(), time.perf_counter() - t0))
        print(f"{label}: Holidays mAP {value:.4f} (p {head.pool.p.item():.3f}, {time.perf_counter() - t0:.0f} s)",
              flush=True)
    if not args.name:
        return
    epochs = log["epochs"]
    tuples = sum(r["tuples"] for r in epochs)
    steps = sum(r["steps_s"] for r in epochs)
    base = rows[0][1]
    on_gpu = log["device"] != "cpu"
    trained = (f"the last blocks of EfficientNet-Lite0 (blocks {start}..{LAST_BLOCK} + head conv; the stem and "
               f"blocks 0..{start - 1} frozen, their output cached once per training image)" if start
               else "the WHOLE EfficientNet-Lite0")
    lines = [
        f"Issue 14: {trained} fine-tuned on pairs mined by the SIFT engine (no labels).",
        "Honest split: trained on UKBench-1000 mined pairs only, evaluated on Holidays-811.",
        "",
        f"Training (`python -m benchmarks.finetune_whole --train --from-block {start}`): {log['device']}"
        + ("" if on_gpu else f" ({s['threads']} torch thread(s), 2 cores shared with other benchmarks)")
        + f", torch {log['torch']}; "
        f"evaluation (`--evaluate`): this CPU, same run for all rows.",
        f"Mined pairs: {log['mined']}. Training images re-encoded as JPEG q{s.get('quality', 80)} at their "
        f"320x240 size" + (f"; the first {s['limit']} images only." if s.get("limit") else "."),
        f"Settings: 'global' map (1280 ch) -> GeM (p learnable, start 3) -> FC {s['dim']}-d initialised from Lw "
        f"(learned on the off-the-shelf GeM vectors of the mined pairs) -> L2; contrastive loss, margin "
        f"{s['margin'] if s['margin'] is not None else DEFAULT_MARGINS['contrastive']}; {s['negatives']} hard "
        f"negatives per tuple re-mined every epoch with the current network (one per component, other components "
        f"only); every verified pair in both directions"
        + (f" (at most {s['max_tuples']} a epoch)" if s.get("max_tuples") else "")
        + f"; batch {s['batch']} tuples; Adam, backbone lr {s['lr']:g}, FC lr {s['lr'] * s['head_lr_factor']:g}, "
        f"p lr {s['lr'] * s['head_lr_factor'] * 10:g}, lr x{s['lr_decay']} per epoch; BatchNorm frozen (net in "
        f"eval mode); " + ("bf16 autocast for the backbone" if on_gpu and not s["no_amp"] else "fp32")
        + f"; seed {s['seed']}.",
        f"Ran {log['epochs_done']} epochs ({s['epochs']} asked, time budget {s['time_budget']} s), {tuples} tuples, "
        f"{tuples / steps:.1f} tuples/s on the optimisation steps, {log['training_s']} s of training in all "
        f"(hard-negative mining included; set-up before it, the cached block inputs and the Lw, "
        f"{log.get('setup_s', '?')} s)."
        + (" The GPU had one run." if on_gpu else ""),
        "",
        "| descriptor (512-d) | Holidays-811 mAP | vs baseline | final p |",
        "|---|---|---|---|",
    ]
    for label, value, p, _ in rows:
        lines.append(f"| {label} | {value:.4f} | {value / base:.3f}x | {p:.2f} |")
    lines += ["", "Loss per epoch: " + ", ".join(f"{r['loss']:.4f}" for r in epochs),
              "Tuples/s per epoch: " + ", ".join(f"{r['tuples_per_s']:.1f}" for r in epochs)]
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", action="store_true", help="write .gpu/ (training images and mined pairs)")
    mode.add_argument("--train", action="store_true",
                      help="fine-tune (GPU machine; on the CPU with a large --from-block)")
    mode.add_argument("--evaluate", metavar="DIR", help="folder with backbone_delta.pt, heads.pt, log.json")
    mode.add_argument("--evaluate-rmac", metavar="DIR", help="rmac-ft: rmac-lw's R-MAC and regional Lw from the "
                                                             "fine-tuned backbone in DIR (backbone_delta.pt)")
    parser.add_argument("--mined", default="/tmp/h14mined/ukbench", help="MinedPairs save of UKBench")
    parser.add_argument("--min-inliers", type=int, default=10)
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the re-encoded images")
    parser.add_argument("--out", help="output folder of --train (default $OUT)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--time-budget", type=float, default=240.0,
                        help="stop after the epoch past which the next one would end later than this (s)")
    parser.add_argument("--save-every", type=int, default=5, help="save weights every this many epochs")
    parser.add_argument("--print-every", type=int, default=20, help="progress line every this many steps")
    parser.add_argument("--batch", type=int, default=16, help="tuples per Adam step")
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--margin", type=float, default=None)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--from-block", type=int, default=0,
                        help="train blocks N..15 + head conv only; the output of the frozen stem + blocks "
                             "0..N-1 is computed once per training image (0: the whole network; 11: the "
                             "stride-32 stages from the stride-16 maps; 15: the last block)")
    parser.add_argument("--lr", type=float, default=5e-6, help="backbone learning rate")
    parser.add_argument("--head-lr-factor", type=float, default=10.0, help="FC lr = lr x this; p lr x10 more")
    parser.add_argument("--lr-decay", type=float, default=0.97, help="lr multiplied by this every epoch")
    parser.add_argument("--max-tuples", type=int, default=None, help="tuples per epoch at most")
    parser.add_argument("--limit", type=int, default=None, help="first N training images only (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on the CPU (--evaluate, and --train on the CPU)")
    parser.add_argument("--name", default=None, help="result file under benchmarks/results (--evaluate)")
    return parser.parse_args()


def main():
    args = parse_args()
    if args.prepare:
        prepare(args)
    elif args.train:
        train(args)
    elif args.evaluate_rmac:
        evaluate_rmac(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
