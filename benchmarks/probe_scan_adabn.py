"""Does re-estimating batch-norm statistics on the scan itself, without labels, help the
shipped bundle out of family, and its routing? (issue 11)

Out of family the scanner differs (more blur, lower dose, phase-contrast fringes), so
the statistics the networks' batch norms learnt on the training scans no longer match
their inputs. ``finetune`` already re-estimates them on the scan (AdaBN, Li et al. 2016)
but keeps them only where painted labels say they help. This probe asks whether doing
it label-free at segmentation time would help the shipped bundle: per test volume, a
copy of the bundle has the batch-norm statistics of f0, f1 and f2 re-estimated on that
volume's own slices (as ``finetune`` does: f0 on 8 evenly spaced slices, the patch
models on 64 evenly spaced patches of 4), and the benchmark's patch table is built with
it. Printed, per test set and variant: f0 / f1 / f2 everywhere, PaSeR at the default λ,
and the r of the policy's and of f0's entropy with the true per-patch gains (issue 11's
fourth line, as ``bench_testsets.gain_correlations``).

    python benchmarks/probe_scan_adabn.py --threads 2
"""

from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import numpy as np
import torch

from bench_testsets import SETS, gain_correlations
from common import PatchTable, build_table, make_volumes, scan_probe_parser, scan_probe_start
from napari_paser.train.finetune import _adabn, _scan_batches
from napari_paser.train.scan_planes import ScanPlanes, scan_volume


def adapted(bundle, image: np.ndarray, models: tuple[str, ...], share: float = 1.0):
    """A copy of ``bundle`` whose ``models`` have batch-norm statistics of ``image``,
    mixed with the trained ones: ``share`` of the scan's, ``1 - share`` of the training's."""
    out = copy.deepcopy(bundle)
    norm = out.normalization
    scan = ScanPlanes(scan_volume(image), out.patch_size, norm.get("low_percentile", 0.5), norm.get("high_percentile", 99.5))
    data = SimpleNamespace(scan=scan)
    for name in models:
        model = getattr(out, name)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        trained = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
        _adabn(model, _scan_batches(out, name, data))
        for bn, (mean, var) in zip(bns, trained, strict=True):
            bn.running_mean.mul_(share).add_((1 - share) * mean)
            bn.running_var.mul_(share).add_((1 - share) * var)
    return out


def merged(tables: list[PatchTable]) -> PatchTable:
    first = tables[0]
    cat = lambda key: np.concatenate([getattr(t, key) for t in tables])  # noqa: E731
    return PatchTable(conf=cat("conf"), ent=cat("ent"), cost=first.cost, costs=first.costs,
                      segs=[s for t in tables for s in t.segs],
                      conf_plain=cat("conf_plain") if first.conf_plain is not None else None,
                      seconds=tuple(np.concatenate([t.seconds[i] for t in tables]) for i in range(3)))


def main() -> None:
    ap = scan_probe_parser(__doc__, [])
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=["shipped", "f0", "f1,f2", "f0,f1,f2"],
                    help="shipped, or the comma-separated networks re-estimated, @ the share of the scan's statistics (default 1)")
    args = ap.parse_args()
    bundle = scan_probe_start(args)
    lam = float(bundle.default_lam)
    print(f"bundle {bundle.name}, default λ {lam}")
    for set_name, (dist, seeds) in SETS.items():
        vols = make_volumes(seeds[: args.volumes], args.slices, distribution=dist)
        for variant in args.variants:
            t0 = time.time()
            nets, _, share = variant.partition("@")
            models = () if variant == "shipped" else tuple(nets.split(","))
            tt = merged([build_table([v], adapted(bundle, v[0], models, float(share or 1)) if models else bundle) for v in vols])
            row = {m: tt.score(tt.constant(i), m)["mean_iou"] for i, m in enumerate(("f0", "f1", "f2"))}
            paser = tt.score(tt.paser(lam), "paser")
            gc = gain_correlations(tt, [lab for _, lab in vols])
            print(f"{set_name:14s} {variant:9s} f0 {row['f0']:.4f} f1 {row['f1']:.4f} f2 {row['f2']:.4f} "
                  f"PaSeR {paser['mean_iou']:.4f} (f0/f1/f2 {'/'.join(f'{100 * f:.1f}' for f in paser['fractions'])} %) | "
                  f"r f1 policy {gc['f1']['policy']:+.3f} entropy {gc['f1']['f0_entropy']:+.3f} | "
                  f"r f2 policy {gc['f2']['policy']:+.3f} entropy {gc['f2']['f0_entropy']:+.3f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
