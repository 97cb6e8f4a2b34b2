"""Would an f2 that has learnt the other scanner make out-of-family gains rankable? (issue 11)

``probe_refined_ranking`` found that out of family even the truth about where the
refined f0 errs does not rank f2's gains (its lead over f0's entropy −0.170): f2 fails on
the same patches as f0, because every network of the bundle learnt one scanner. Training
on many scanners (domain randomisation) is what a robust f2 would need, and it is a
GPU-sized job. This probe asks first whether it would pay: it continues the bundle's f2
on fresh scans of the bundle's training distribution *and of the out-of-family one*
(other seeds than every test and development set), the most that any randomisation could
teach f2 about that scanner (``--models f1 f2``: f1 too). The f2 goes into a copy of the
bundle (f0, its refiner, f1, the fusion weights and the policy unchanged) under ``--out``,
to be scored with

    python benchmarks/probe_refined_ranking.py runs/robust_f2/mixed --sets v1:8831-8850 oof:9631-9650 --lines-draws 60

If even this f2's gains stay unrankable out of family from what f0 knows (the truth
bounds ``f0 wrong`` and ``f0 IoU loss``), a scanner-robust f2 trained on a GPU would not
open issue 11's fourth line either.

    python benchmarks/probe_robust_f2.py paser-synth-v2.21 --train v2:7401-7406 oof:7501-7506 --steps 2000
"""

from __future__ import annotations

import copy
import time

import numpy as np

from common import make_volumes
from napari_paser.engine.bundle import save_bundle
from napari_paser.engine.normalize import normalize_volume
from napari_paser.train.datasets import SliceBank, Volume, class_weights
from probe_complementary_f1 import continuation_parser, continuation_start, train_patch_model
from probe_testset_draws import _parse_set


def main() -> None:
    ap = continuation_parser(__doc__, ["v2:7401-7406", "oof:7501-7506"], 2000, "runs/robust_f2/mixed")
    ap.add_argument("--models", nargs="+", choices=["f1", "f2"], default=["f2"], help="the patch models to continue")
    args = ap.parse_args()
    bundle = continuation_start(args)
    t0 = time.perf_counter()
    volumes = []
    for text in args.train:
        dist, seeds = _parse_set(text)
        for seed, (image, labels) in zip(seeds, make_volumes(seeds, 16, distribution=dist)):
            volumes.append(Volume(f"{dist}{seed}", normalize_volume(image).astype(np.float32), labels.astype(np.uint8)))
    print(f"{len(volumes)} scans made ({' + '.join(args.train)}; {time.perf_counter() - t0:.0f} s)", flush=True)
    variant = copy.deepcopy(bundle)
    for name in args.models:
        t0 = time.perf_counter()
        model = getattr(bundle, name)
        bank = SliceBank(volumes, bundle.patch_size, planes=model.config.planes)
        setattr(variant, name, train_patch_model(model, bank, class_weights(volumes), 0.0, args.steps, args.lr, seed=1, bf16=True))
        print(f"{name}: {args.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    models = " and ".join(args.models)
    variant.meta = {**variant.meta, "name": f"{bundle.name}-{'-'.join(args.models)}-{args.out.name}",
                    "description": f"{bundle.name} with {models} continued {args.steps} steps on {' + '.join(args.train)} "
                                   "(benchmarks/probe_robust_f2.py)"}
    print(f"-> {save_bundle(variant, args.out, overwrite=True)}", flush=True)


if __name__ == "__main__":
    main()
