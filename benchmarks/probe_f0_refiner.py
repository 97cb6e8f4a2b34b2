"""Would a tiny full-resolution refiner on f0's output place boundaries like f1? (issue 11)

``probe_patch_texture.py`` found that in family 89 % of f0's extra wrong pixels over f1's
are boundary pixels, and that a third of every patch is boundary: f1's gain is better
boundary placement, spread over every patch. f0 computes at a quarter of the resolution
(space-to-depth stem 4). This probe trains, on fresh labelled volumes, a refiner
(``napari_paser.engine.models.Refiner``) that reads f0's MC-dropout mean probabilities
and the slice (two 3 × 3 convolutions and a 1 × 1 one, at full or half resolution, added to f0's log-probabilities,
the last layer zero-initialised so it starts as f0) and asks, on the development volumes,
how far it moves f0 towards f1 and whether oracle routing within f1 everywhere's GFLOPs
(and seconds) then beats f1: issue 11's second line for a perfect router. The refiner's
FLOPs (``torch.utils.flop_counter``) and measured seconds are charged to f0's analysis.

    python benchmarks/probe_f0_refiner.py paser-synth-v2.9 [--steps 3000] [--variants 1:4 1:8 2:32] [--threads 2]

``--distil W`` trains each variant twice, on the labels alone and with weight W on the KL
from the bundle's own refiner's prediction (a narrower refiner taught by the shipped one).

Training volumes: 8 fresh ``v2`` (seeds 7801-7808) and 4 fresh ``v1`` volumes (7851-7854),
16 slices each, disjoint from the bundle's, the development and the test volumes; made
once and kept in ``--cache``.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench_testsets import _lam_grid
from common import best_within, make_volumes, patch_confusion_np
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.flops import count_flops
from napari_paser.engine.metrics import dataset_iou_gains
from napari_paser.engine.models import Refiner, UNet, UNetConfig, centre_planes
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.uncertainty import mc_predict, slice_seed
from napari_paser.train.checkpoint import Checkpointer
from napari_paser.train.datasets import SliceBank, make_volume
from napari_paser.train.presets import get_preset
from napari_paser.train.stages import StageContext, distillation_loss, train_f0_refiner
from probe_f0_headroom import line_two_bounds
from probe_policy_choice import development_parser, development_tables

TRAIN = ["v2:7801-7808", "v1:7851-7854"]


def f0_outputs(bundle, volumes) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per volume: its planes as f0 reads them (Z, P, H, W), f0's MC mean probabilities
    (Z, 3, H, W; masks seeded per slice as the engine's) and the labels (Z, H, W)."""
    f0, out = bundle.f0, []
    for i, (image, labels) in enumerate(volumes):
        bank = SliceBank([make_volume(f"v{i}", image, labels, bundle.normalization)], bundle.patch_size, planes=f0.config.planes)
        x, y = bank.stacked()
        with torch.inference_mode():
            prob = torch.cat([mc_predict(f0, x[z : z + 1], bundle.mc_passes, seed=slice_seed(0, z))[0] for z in range(len(x))])
        out.append((x, prob, y))
    return out


def _make_volume(args: tuple[str, int, Path]) -> Path:
    """Make one 16-slice training volume and keep it in the cache (picklable for a pool)."""
    dist, seed, folder = args
    path = folder / f"vol_{dist}_{seed}.npz"
    if not path.exists():
        image, labels = make_volumes([seed], 16, distribution=dist)[0]
        np.savez_compressed(path, image=image, labels=labels)
    return path


def cached_volumes(folder: Path, sets: list[str], workers: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Labelled 16-slice volumes of ``sets`` (generator:first-last seeds), made once
    (``workers`` processes) and kept in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for text in sets:
        dist, span = text.split(":")
        lo, hi = (int(v) for v in span.split("-"))
        jobs += [(dist, seed, folder) for seed in range(lo, hi + 1)]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            paths = list(pool.map(_make_volume, jobs))
    else:
        paths = [_make_volume(job) for job in jobs]
    out = []
    for path in paths:
        with np.load(path) as v:
            out.append((v["image"], v["labels"]))
    return out


def parse_variant(text: str) -> tuple[int, int, int]:
    """``stem:width[:planes]`` → (stem, width, planes); planes 1 unless given."""
    values = [int(v) for v in text.split(":")]
    if len(values) not in (2, 3):
        raise ValueError(f"a refiner is stem:width or stem:width:planes, got {text!r}")
    return values[0], values[1], values[2] if len(values) == 3 else 1


def train_refiner(data, width: int, steps: int, stem: int = 1, seed: int = 0, crop: int = 64, batch: int = 16,
                  planes: int = 1, teacher: Refiner | None = None, distil: float = 0.0) -> Refiner:
    """Cross entropy on random crops of the training slices (Adam, cosine decay); the
    refiner reads the ``planes`` centre planes of f0's input. With a ``teacher`` refiner
    the loss is (1 - ``distil``) · cross entropy + ``distil`` · KL(teacher ‖ student)
    (``train.stages.distillation_loss``)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([centre_planes(d[0], planes) for d in data])
    p = torch.cat([d[1] for d in data])
    y = torch.cat([d[2] for d in data]).long()
    model = Refiner(width, stem, planes=planes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    h, w = y.shape[-2:]
    for _ in range(steps):
        i = torch.randint(0, len(y), (batch,), generator=g)
        r = int(torch.randint(0, h - crop + 1, (1,), generator=g))
        c = int(torch.randint(0, w - crop + 1, (1,), generator=g))
        win = (slice(None), slice(None), slice(r, r + crop), slice(c, c + crop))
        xs, ps = x[i][win], p[i][win]
        logits = model(xs, ps)
        loss = F.cross_entropy(logits, y[i][:, r : r + crop, c : c + crop])
        if teacher is not None and distil > 0:
            with torch.no_grad():
                target = teacher(centre_planes(xs, teacher.planes), ps)
            loss = (1 - distil) * loss + distil * distillation_loss(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def f0_with_refiner(f0: UNet, width: int, stem: int, planes: int, refiner: Refiner | None = None) -> UNet:
    """A copy of ``f0`` with a refiner of that shape: ``refiner``'s weights, or a fresh one
    (which returns its input until trained)."""
    config = UNetConfig(**{**f0.config.to_dict(), "refine_width": width, "refine_stem": stem, "refine_planes": planes})
    out = UNet(config)
    head = (refiner if refiner is not None else out.refiner).state_dict()
    out.load_state_dict({**f0.state_dict(), **{f"refiner.{k}": v for k, v in head.items()}})
    return out.eval()


def train_refiner_in_stage(bundle, volumes, width: int, steps: int, stem: int = 1, planes: int = 1) -> Refiner:
    """The same refiner trained by the train package's ``refine_f0`` stage instead: ``steps``
    batches of whole slices augmented as f0's own training (noise, blur, contrast, flips),
    f0's MC analysis run on every batch, f0 frozen (a copy of ``bundle`` is trained)."""
    refined = dataclasses.replace(bundle, f0=f0_with_refiner(bundle.f0, width, stem, planes))
    bank = SliceBank([make_volume(f"t{i}", image, labels, bundle.normalization) for i, (image, labels) in enumerate(volumes)],
                     bundle.patch_size, planes=bundle.f0.config.planes)
    cfg = get_preset("v2.16").replace(refine_steps=steps)
    with tempfile.TemporaryDirectory() as folder:
        ctx = StageContext(cfg=cfg, device=torch.device("cpu"), ckpt=Checkpointer(folder, {"probe": "refiner"}), seed=0,
                           log=print, progress=False)
        train_f0_refiner(ctx, refined, bank)
    return refined.f0.refiner.eval()


def refiner_costs(model, threads: int) -> tuple[int, float]:
    """FLOPs (``torch.utils.flop_counter``) and median seconds of ``model`` on one 224 × 256
    slice, timed in the channels-last layout the engine gives f0 (about twice as fast
    here) on ``threads`` threads."""
    x, prob = torch.randn(1, model.planes, 224, 256), torch.softmax(torch.randn(1, 3, 224, 256), 1)
    flops = count_flops(lambda: model(x, prob))
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x, prob = (t.contiguous(memory_format=torch.channels_last) for t in (x, prob))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for _ in range(3):
            model(x, prob)
        times = []
        for _ in range(30):
            t = time.perf_counter()
            model(x, prob)
            times.append(time.perf_counter() - t)
    torch.set_num_threads(before)
    return flops, float(np.median(times))


def refined_table(table, volumes, outputs, model: Refiner, seconds: float, flops: int):
    """``table`` with f0's patch confusions from the refined prediction and the refiner's
    seconds and FLOPs added to every slice's f0 analysis."""
    conf = table.conf.copy()
    n = 0
    check = 0
    for (_, labels), (x, prob, _) in zip(volumes, outputs):
        with torch.inference_mode():
            pred = model(centre_planes(x, model.planes), prob).argmax(1).numpy()
            plain = prob.argmax(1).numpy()
        for z in range(len(labels)):
            h, w = labels[z].shape
            conf[n, 0] = patch_confusion_np(pred[z, :h, :w], labels[z], table.segs[0][0].patch_size)
            check += int((patch_confusion_np(plain[z, :h, :w], labels[z], table.segs[0][0].patch_size) != table.conf[n, 0]).any())
            n += 1
    t_f0, t_policy, t_patch = table.seconds
    cost = dataclasses.replace(table.cost, f0_encode=table.cost.f0_encode + flops)
    return dataclasses.replace(table, conf=conf, seconds=(t_f0 + seconds, t_policy, t_patch), cost=cost), check


def routed_bests(table) -> dict:
    """Best IoU within f1 everywhere's GFLOPs and seconds of the bundle's policy over the λ
    grid, and of thresholds on f0's patch entropy (f0 below a0, f2 above a2, f1 between;
    charged like PaSeR), on ``table``."""
    f1 = table.score(table.constant(1), "f1")
    sweep = [table.score(table.paser(float(lam)), "paser") for lam in _lam_grid()]
    ent = table.ent[:, 0]
    rules = []
    for a0 in np.quantile(ent, np.linspace(0, 0.6, 25)):
        for a2 in np.quantile(ent, [0.9, 0.95, 0.98, 1.0]):
            routing = np.where(ent < a0, 0, np.where(ent > a2, 2, 1)).astype(np.uint8)
            rules.append(table.score(routing, "paser"))
    out = {}
    for key, points in (("policy", sweep), ("entropy", rules)):
        best = best_within(points, f1["gflops"], f1["seconds"])
        out[key] = best["mean_iou"] if best else float("nan")
    return out


def main() -> None:
    p = development_parser(__doc__)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--variants", nargs="+", default=["1:4", "1:8", "2:32"],
                   help="refiners as stem:width[:planes] (stem 1 full resolution, 2 half; planes of the stack read, 1 unless given)")
    p.add_argument("--train", nargs="+", default=TRAIN,
                   help="training volumes as generator:first-last seeds (16 slices each)")
    p.add_argument("--cache", type=Path, default=Path("runs/probe_f0_refiner"), help="where the training volumes are kept")
    p.add_argument("--stage", action="store_true",
                   help="train with the train package's refine_f0 stage (augmented whole slices, f0 run every step) instead")
    p.add_argument("--distil", type=float, default=0.0,
                   help="weight of the KL from the bundle's own refiner (the teacher) in each variant's loss; "
                        "each variant is then also trained without it, for comparison")
    p.add_argument("--workers", type=int, default=1, help="processes that make the training volumes")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundles[0])).eval()
    t = time.perf_counter()
    train_volumes = cached_volumes(args.cache, args.train, workers=args.workers)
    train = f0_outputs(bundle, train_volumes)
    print(f"training data: {sum(len(d[2]) for d in train)} slices ({time.perf_counter() - t:.0f} s)", flush=True)
    teacher = bundle.f0.refiner
    if args.distil and (teacher is None or args.stage):
        raise SystemExit("--distil needs a bundle whose f0 has a refiner, and trains without --stage")
    if teacher is not None:
        flops, seconds = refiner_costs(teacher, torch.get_num_threads())
        print(f"the bundle's own refiner {teacher.stem}:{teacher.body[0].out_channels}:{teacher.planes}: "
              f"{flops / 1e6:.1f} MFLOPs and {seconds * 1e3:.2f} ms per 224 × 256 slice", flush=True)
    refiners = {}
    for variant in args.variants:
        stem, width, planes = parse_variant(variant)
        if teacher is not None and planes < teacher.planes and args.distil:
            raise SystemExit(f"refiner {variant} reads fewer planes than the teacher's {teacher.planes}")
        for distil in ([0.0, args.distil] if args.distil else [0.0]):
            t = time.perf_counter()
            if args.stage:
                model = train_refiner_in_stage(bundle, train_volumes, width, args.steps, stem, planes)
            else:
                model = train_refiner(train, width, args.steps, stem, planes=planes, teacher=teacher if distil else None, distil=distil)
            flops, seconds = refiner_costs(model, torch.get_num_threads())
            name = variant + (f" distilled {distil:g}" if distil else "")
            refiners[name] = (model, flops, seconds)
            print(f"refiner {name} (stem:width[:planes]): trained {args.steps} steps in {time.perf_counter() - t:.0f} s; "
                  f"{flops / 1e6:.1f} MFLOPs and {seconds * 1e3:.2f} ms per 224 × 256 slice", flush=True)
    for name, bundle, table, volumes in development_tables(args, with_volumes=True):
        outputs = f0_outputs(bundle, volumes)
        rows = [("f0 as shipped", table, 0)]
        for variant, (model, flops, seconds) in refiners.items():
            rt, mismatched = refined_table(table, volumes, outputs, model, seconds, flops)
            # A bundle with a refiner of its own: the table's f0 is refined (no check of the
            # plain f0 applies), and the variant's seconds and FLOPs come on top of its refiner's.
            rows.append((f"f0 + refiner {variant}", rt, 0 if bundle.f0.refiner is not None else mismatched))
        if bundle.f0.refiner is not None:
            print(f"{name}: {bundle.name} refines f0 already; a variant replaces its refiner in f0's labels, but its seconds and "
                  "GFLOPs below are added to those of the bundle's refiner (compare the refiners' own milliseconds above)", flush=True)
        for label, tab, mismatched in rows:
            b = line_two_bounds(tab)
            gain = dataset_iou_gains(tab.conf)[:, 0]
            g, gs = b["gflops"], b["gflops_seconds"]
            real = routed_bests(tab)
            print(f"{name}, {label}: f0 / f1 everywhere {b['f0']:.4f} / {b['f1']:.4f}; f1's gain <= 0 on {(gain <= 0).mean():.1%} of patches; "
                  f"oracle within f1's GFLOPs {g['mean_iou'] if g else float('nan'):.4f}, within its GFLOPs and seconds "
                  f"{gs['mean_iou'] if gs else float('nan'):.4f}; within f1's GFLOPs and seconds, the bundle's policy {real['policy']:.4f}, "
                  f"an entropy rule {real['entropy']:.4f}; f0's analysis {b['analysis_seconds']:.3f} × f1's seconds"
                  + (f"; unrefined f0 differs from the engine's on {mismatched} slices" if mismatched else ""), flush=True)


if __name__ == "__main__":
    main()
