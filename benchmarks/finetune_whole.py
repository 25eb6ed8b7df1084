"""Fine-tuning of EfficientNet-Lite0 (whole, or its last blocks) on SIFT-mined pairs (issue 14).

Three modes:

``--prepare``  (here): re-encode the UKBench training images (JPEG q80, their 320-px size) and
    the mined pairs (``cbir.mining.MinedPairs``, T = 10 inliers, no labels) into ``.gpu/``, an
    ignored folder that travels to the GPU machine (``carry``).
``--train``    (GPU machine; here on the CPU with ``--from-block``): the product's training of the last
    blocks (``cnn.tuning.train_network``, what ``cbir train --from-block`` runs): Lite0's 'global' map
    (1280 ch) -> GeM (learnable p) -> FC initialised from learned whitening (Lw) of the mined pairs -> L2,
    the WHOLE network trained, or with ``--from-block N`` blocks N..15 + the head conv only (the
    frozen stem + blocks 0..N-1 run once per training image, their output kept in memory: each
    step runs blocks N.. only; N = 11: the stride-32 stages from the 112-ch stride-16 maps)
    (BatchNorm frozen, the net kept in eval mode: no dropout, BN statistics fixed),
    contrastive loss (``cnn.losses``), hard negatives re-mined every epoch from the current
    network's descriptors (``cnn.tuples``: one per component, other components only), Adam
    with a small lr on the backbone and a larger one on the head, bf16 autocast for the
    backbone on CUDA (fp32 on the CPU). Writes ``model/``, a ``cbir train`` model directory (the
    trained head and the tuned blocks in fp32, usable with ``--method gem-ft --model DIR/model``),
    the initial head (``init_head.pt``) and a JSON log. The time budget is checked between epochs.
``--evaluate DIR`` (here, CPU): Holidays-811 mAP of the fine-tuned backbone + trained head
    against the off-the-shelf backbone + the same initial head (Lw, no training), in one run.

``--evaluate-rmac DIR`` (here, CPU): rmac-ft, the ``rmac-lw`` descriptor (multi-scale R-MAC, regional Lw
    from the UKBench mined pairs) with its regions pooled from the fine-tuned backbone, against the
    off-the-shelf one.

Honest split: trained on UKBench mined pairs only, evaluated on Holidays.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np
import torch

from cnn.heads import GemHead, build_head
from cnn.losses import DEFAULT_MARGINS
from cnn.training import TrainingConfig, initial_whitening

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


def on_epoch_saver(args, out: str, log: dict, paths: list[str], pairs, components, config, started: float):
    """``cnn.training.fit``'s ``on_epoch``: log the epoch, save the model (``cnn.learned_model``, tuned blocks
    included) every ``--save-every`` epochs and at the last, and stop once the next epoch would end past
    ``--time-budget`` seconds of training."""
    from cnn.backbone import tuned_state
    from cnn.learned_model import LearnedModel, backbone_weights_version, data_fingerprint
    from cnn.options import BackboneOptions

    def on_epoch(record, network) -> bool:
        entry = {**dataclasses.asdict(record), "steps_s": round(record.tuples / max(record.tuples_per_s, 1e-9), 2)}
        log["epochs"].append(entry)
        print(json.dumps(entry), flush=True)
        elapsed = time.perf_counter() - started
        last = record.epoch == args.epochs or elapsed * (record.epoch + 1) / record.epoch > args.time_budget
        if last or record.epoch % args.save_every == 0:
            head = {k: v.detach().float().cpu() for k, v in network.head.state_dict().items()}
            LearnedModel("gem-fc", BackboneOptions().key, backbone_weights_version(), head, dataclasses.asdict(config),
                         data_fingerprint(paths, pairs, components), log["epochs"], tuned=tuned_state(
                             network.stages.net, args.from_block), from_block=args.from_block).save(
                os.path.join(out, "model"))
            log.update(epochs_done=record.epoch, training_s=round(elapsed, 1))
            with open(os.path.join(out, "log.json"), "w") as handle:
                json.dump(log, handle, indent=1)
        if last and record.epoch < args.epochs:
            print(f"stopping after epoch {record.epoch}: time budget {args.time_budget} s", flush=True)
        return last
    return on_epoch


def train(args) -> None:
    """``cnn.tuning.train_network`` on the re-encoded training set, the FC layer starting from Lw of the
    off-the-shelf maps (saved as ``init_head.pt``, the evaluation's baseline head)."""
    from cnn.backbone import Backbone, resolve_device
    from cnn.options import LAST_BLOCK
    from cnn.tuning import train_network
    out = args.out or os.environ.get("OUT", "/tmp/finetune_out")
    os.makedirs(out, exist_ok=True)
    device = resolve_device(args.device)
    if not 0 <= args.from_block <= LAST_BLOCK:
        raise SystemExit(f"--from-block must be in 0..{LAST_BLOCK}")
    # cudnn.benchmark stays off: a batch's unique images split into a landscape and a portrait
    # group of varying sizes, so nearly every step has new shapes, and benchmark mode re-tunes
    # every conv for each: the likely reason why the first H200 run (with it on, two runs sharing
    # the GPU) finished no epoch in ~350 s.
    torch.backends.cudnn.benchmark = False
    started = time.perf_counter()
    names, images, pairs, components, meta = load_training_set(args.limit)
    config = TrainingConfig(dim=args.dim, p=3.0, loss="contrastive", margin=args.margin, negatives=args.negatives,
                            epochs=args.epochs, batch=args.batch, lr=args.lr * args.head_lr_factor, p_lr_factor=10.0,
                            from_block=args.from_block, backbone_lr=args.lr, lr_decay=args.lr_decay,
                            max_tuples=args.max_tuples, seed=args.seed)
    # Lw initialisation: GeM(p=3) of the off-the-shelf maps + the mined pairs (as cnn.training does)
    backbone = Backbone(device=str(device), cpu_threads=args.threads)
    whitening = initial_whitening([backbone.feature_maps(image)["global"] for image in images], pairs, config)
    del backbone
    torch.save(build_head("gem-fc", 1280, 3.0, True, whitening).state_dict(), os.path.join(out, "init_head.pt"))
    log = {"settings": {k: v for k, v in vars(args).items()}, "mined": meta.get("summary"),
           "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "setup_s": round(time.perf_counter() - started, 1), "epochs": []}
    print(f"setup {log['setup_s']} s (images, Lw): {len(names)} images, {len(pairs)} pairs, "
          f"{len(np.unique(components))} components; training blocks {args.from_block}..{LAST_BLOCK} + head conv "
          f"on {device}", flush=True)
    paths = [os.path.join(GPU_DIR, "ukbench", name) for name in names]
    result = train_network(images, pairs, components, config, str(device), whitening, progress=False,
                           on_epoch=on_epoch_saver(args, out, log, paths, pairs, components, config,
                                                   time.perf_counter()),
                           cpu_threads=args.threads, amp=False if args.no_amp else None)
    tuples = sum(r.tuples for r in result.history)
    steps = sum(r.tuples / r.tuples_per_s for r in result.history)
    print(f"done: {len(result.history)} epochs, {tuples} tuples, {tuples / steps:.1f} tuples/s, total "
          f"{time.perf_counter() - started:.1f} s", flush=True)


# ---------------------------------------------------------------- evaluate (CPU)
def tuned_backbone(directory: str | None):
    """A CPU ``Backbone`` with the tuned blocks of the model ``directory/model`` (None: the ImageNet one)."""
    from cnn.backbone import Backbone
    from cnn.learned_model import LearnedModel
    from cnn.options import BackboneOptions
    options = BackboneOptions()
    if directory:
        options = LearnedModel.load(os.path.join(directory, "model")).inference_head().tuned.options(options)
    return Backbone(options, device="cpu", cpu_threads=0).eval()


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
    from cnn.global_descriptors import embed
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
    for label, tuned in (("off-the-shelf Lite0 (= rmac-lw)", None),
                         (f"fine-tuned Lite0 ({args.evaluate_rmac})", args.evaluate_rmac)):
        started = time.perf_counter()
        backbone = tuned_backbone(tuned)
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
    from cnn.options import LAST_BLOCK
    from cnn.learned_model import LearnedModel
    from index.datasets import holidays
    dataset = holidays(os.path.join(args.data, "holidays"))
    paths = dataset.database_paths
    trained_head = LearnedModel.load(os.path.join(args.evaluate, "model")).state
    init_head = torch.load(os.path.join(args.evaluate, "init_head.pt"), map_location="cpu", weights_only=True)
    with open(os.path.join(args.evaluate, "log.json")) as handle:
        log = json.load(handle)
    s = log["settings"]
    start = s["from_block"]
    tuned = "fine-tuned Lite0" + (f" (blocks {start}..{LAST_BLOCK})" if start else "")
    rows = []
    for label, weights, head_state in (
            ("off-the-shelf Lite0 + GeM(p=3) + FC = Lw (no training)", None, init_head),
            (f"{tuned} + trained GeM/FC head", args.evaluate, trained_head),
            (f"{tuned} + initial head (Lw, p=3)", args.evaluate, init_head)):
        backbone = tuned_backbone(weights)
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
    mode.add_argument("--evaluate", metavar="DIR", help="folder with model/, init_head.pt, log.json (--train's)")
    mode.add_argument("--evaluate-rmac", metavar="DIR", help="rmac-ft: rmac-lw's R-MAC and regional Lw from the "
                                                             "fine-tuned backbone in DIR (model/)")
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
