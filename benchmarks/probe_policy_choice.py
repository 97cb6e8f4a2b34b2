"""Which of two bundles routes better on development volumes? (issue 11)

Chooses between bundles that differ in their routing policy before the test sets are
run: development volumes no test set shares (in family: seeds 8001-8004 of the first
generator; out of family: 9201-9204 of ``--distribution oof``), 8 slices each, scored
with the benchmark's patch tables. For each bundle it prints f0 / f1 / f2 everywhere,
PaSeR at the bundle's default λ (IoU, × f2's IoU, × f2's GFLOPs), PaSeR's best IoU
within f1 everywhere's GFLOPs and seconds over the λ grid, and the Pearson r of the
policy's predicted gains and of f0's patch entropy with the true per-patch gains, and
the bounds of any policy over the bundle's networks (oracle routing): its best IoU within
25 % of f2 everywhere's GFLOPs (× f2's IoU; issue 11's first line) and within f1
everywhere's GFLOPs, and the latter again with f0's analysis and the policy free (their
FLOPs added to the budget): how much of that bound is what the routing itself costs.

    python benchmarks/probe_policy_choice.py runs/paser-synth-v2.7 runs/paser-synth-v2.8
"""

from __future__ import annotations

import argparse

import torch

from bench_testsets import _lam_grid, gain_correlations
from common import best_within, build_table, make_volumes, oracle_front
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.registry import resolve_bundle

DEVELOPMENT = {"in-family development": ("v1", (8001, 8002, 8003, 8004)), "out-of-family development": ("oof", (9201, 9202, 9203, 9204))}


def development_parser(doc: str) -> argparse.ArgumentParser:
    """Options of a probe over bundles on the development volumes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+", help="bundle names or folders")
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    return p


def development_tables(args: argparse.Namespace, with_volumes: bool = False):
    """Yield (set name, bundle, patch table) for every bundle of ``args`` on every development
    set; with ``with_volumes`` the set's labelled volumes [(image, labels)] come last."""
    torch.set_num_threads(args.threads)
    for name, (distribution, seeds) in DEVELOPMENT.items():
        volumes = make_volumes(seeds, args.slices, distribution=distribution)
        for ref in args.bundles:
            bundle = load_bundle(resolve_bundle(ref)).eval()
            table = build_table(volumes, bundle, seed=0)
            yield (name, bundle, table, volumes) if with_volumes else (name, bundle, table)


def main() -> None:
    args = development_parser(__doc__).parse_args()
    for name, bundle, table in development_tables(args):
        f0, f1, f2 = (table.score(table.constant(i), m) for i, m in enumerate(("f0", "f1", "f2")))
        lam = float(bundle.default_lam)
        paser = table.score(table.paser(lam), "paser")
        sweep = [table.score(table.paser(float(x)), "paser") for x in _lam_grid()]
        within = best_within(sweep, f1["gflops"], f1["seconds"])
        best = within["mean_iou"] if within else float("nan")
        r = gain_correlations(table)
        front = oracle_front(table)
        slices = sum(len(zs) for _, zs in table.segs)
        charge = slices * table.cost.slice_flops(0, 0) / 1e9  # f0's analysis and the policy
        oracle_quarter, oracle_f1, oracle_free = (
            best_within(front, budget)["mean_iou"] for budget in (0.25 * f2["gflops"], f1["gflops"], f1["gflops"] + charge))
        print(f"{name}, {bundle.name}: f0 / f1 / f2 {f0['mean_iou']:.4f} / {f1['mean_iou']:.4f} / {f2['mean_iou']:.4f}; "
              f"PaSeR at λ {lam:.3f} {paser['mean_iou']:.4f} ({paser['mean_iou'] / f2['mean_iou']:.4f} × f2) at "
              f"{paser['gflops'] / f2['gflops']:.3f} × its GFLOPs; best within f1's cost {best:.4f}; r with the true gains "
              f"(f1 / f2): policy {r['f1']['policy']:.3f} / {r['f2']['policy']:.3f}, f0 entropy "
              f"{r['f1']['f0_entropy']:.3f} / {r['f2']['f0_entropy']:.3f}; oracle within 0.25 × f2's GFLOPs "
              f"{oracle_quarter:.4f} ({oracle_quarter / f2['mean_iou']:.4f} × f2), within f1's GFLOPs {oracle_f1:.4f} "
              f"({oracle_free:.4f} with f0's analysis and the policy free: {charge / f1['gflops']:.3f} × f1's GFLOPs)", flush=True)


if __name__ == "__main__":
    main()
