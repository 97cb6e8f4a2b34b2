"""How should an adapted bundle route? The trained policy's ranking, shifted, or f0's entropy?

Fine-tuning adapts f0, f1 and f2 to a scan, and the policy has to be told what the adapted
networks gain. On development volumes of the out-of-family generator (labels on slices
0-3, full or brush strokes over 15 %, scored on slices 8-15) this probe fine-tunes the
bundle once per volume and label kind with the default configuration, then compares the
ways ``FinetuneConfig.policy_gains`` offers of fitting the policy (each followed by the
default λ rule, the validated share of f2-everywhere's GFLOPs):

- ``shift``: the trained policy's gains, shifted so that their mean on the held-out
  patches is the measured mean gain (the rule before this probe);
- ``entropy``: the measured mean gain times each patch's f0 entropy over its held-out mean;
- ``keep``: the trained policy as it is.

For each it prints PaSeR's mean IoU on slices 8-15 (as a user runs it, ``PaserSegmenter``),
its share of f2-everywhere's GFLOPs and where the patches went, beside adapted f1 and f2
everywhere; and how well the trained policy's gains and f0's patch entropy track the true
per-patch gains on slices 8-15 (Pearson r).

    python benchmarks/probe_adapted_routing.py [--seeds 9201 9202] [--kinds full sparse]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from bench_finetune import SPARSE_FRACTION, TEST_SLICES, TRAIN_SLICES, load_volume, score

TRAIN, TEST = list(TRAIN_SLICES), list(TEST_SLICES)  # as lists: numpy indices and the segmenter's slices


def scan_and_labels(seed: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A development volume, its truth and the painted labels (slices 0-3), as the
    fine-tuning benchmark paints its test volumes."""
    from napari_paser.train.sparse_labels import UNLABELLED, simulate_strokes

    image, truth = load_volume(seed, None)
    labels = np.full_like(truth, UNLABELLED)
    labels[TRAIN] = truth[TRAIN] if kind == "full" else simulate_strokes(truth[TRAIN], SPARSE_FRACTION, seed=seed)
    return image, truth, labels


@torch.no_grad()
def tracking(bundle, data, truth: np.ndarray, seed: int) -> dict:
    """Pearson r of the trained policy's gains and of f0's patch entropy with the true
    per-patch gains of f1 and f2 on the test slices."""
    from napari_paser.engine.metrics import dataset_iou_gains
    from napari_paser.engine.patches import patchify
    from napari_paser.engine.uncertainty import ENTROPY_CHANNEL
    from napari_paser.train import finetune as ft

    ps = bundle.patch_size
    x = data.scan.stack(TEST, bundle.f0.config.planes)
    prob, gains, feats = ft._policy_gains(bundle, x, seed)
    n = gains.shape[0] * gains.shape[2] * gains.shape[3]
    preds = [patchify(prob.argmax(1, keepdim=True).float(), ps)[:, 0].long()]
    preds += [ft._patch_logits(m, x, ps, torch.arange(n)) for m in (bundle.f1, bundle.f2)]
    padded = torch.full((len(TEST), 1, *x.shape[-2:]), 255.0)
    padded[:, 0, : truth.shape[1], : truth.shape[2]] = torch.from_numpy(truth[TEST].astype(np.float32))
    truth_patches = patchify(padded, ps)[:, 0].long()
    confs = np.stack([np.stack([ft._confusion(p[i], truth_patches[i]) for p in preds]) for i in range(n)])
    true = dataset_iou_gains(confs[:, :, None, None])[:, :, 0, 0]
    policy = gains.transpose(0, 2, 3, 1).reshape(-1, 2)
    entropy = bundle.policy.patch_means(feats.float())[:, ENTROPY_CHANNEL].reshape(-1).numpy()
    r = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    return {
        "policy": [r(policy[:, j], true[:, j]) for j in range(2)],
        "entropy": [r(entropy, true[:, j]) for j in range(2)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[9201, 9202])
    p.add_argument("--kinds", nargs="+", default=["full", "sparse"], choices=["full", "sparse"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.pipeline import PaserSegmenter, drain
    from napari_paser.engine.registry import resolve_bundle
    from napari_paser.train import finetune as ft

    torch.set_num_threads(args.threads)
    shipped = load_bundle(resolve_bundle(args.bundle))
    print(f"bundle {shipped.name}; torch threads {args.threads}")
    for seed in args.seeds:
        for kind in args.kinds:
            image, truth, labels = scan_and_labels(seed, kind)
            t = time.perf_counter()
            adapted = ft.finetune(shipped, image, labels, ft.FinetuneConfig(policy_gains="keep")).bundle
            print(f"volume {seed}, {kind} labels: adapted in {time.perf_counter() - t:.0f} s")
            data = ft._prepare(adapted, image, labels, ft.FinetuneConfig())
            track = tracking(adapted, data, truth, 0)
            print("  r with true test gains of f1 / f2: trained policy {:.3f} / {:.3f}; f0 entropy {:.3f} / {:.3f}".format(*track["policy"], *track["entropy"]))
            truth_test = truth[TEST]
            seg = PaserSegmenter(adapted)
            seg.set_volume(image)
            single = {m: score(drain(seg.run(method=m, slices=TEST)).labels, truth_test) for m in ("f0", "f1", "f2")}
            print(f"  f0 everywhere {single['f0']:.4f}, f1 everywhere {single['f1']:.4f}, f2 everywhere {single['f2']:.4f}")
            for rule in ("shift", "entropy", "keep"):
                b = copy.deepcopy(adapted)
                lam, _, _, fit = ft._fit_policy_and_lam(b, data, ft.FinetuneConfig(policy_gains=rule))
                b.default_lam = lam
                seg = PaserSegmenter(b)
                seg.set_volume(image)
                res = drain(seg.run(method="paser", slices=TEST))
                route = ", ".join(f"{k} {v:.3f}" for k, v in res.route_fraction.items())
                print(f"  {rule:8s} λ {lam:.3f}: PaSeR {score(res.labels, truth_test):.4f}, GFLOPs {res.gflops_total / res.gflops_f2_everywhere:.3f} x f2's, route {route}", flush=True)


if __name__ == "__main__":
    main()
