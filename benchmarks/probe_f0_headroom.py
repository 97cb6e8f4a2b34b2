"""How good would f0 have to be for routing to beat f1 at f1's cost? (issue 11)

Issue 11's second line asks for a λ at which PaSeR's IoU is above f1 everywhere's at no
more GFLOPs and seconds. Oracle routing (it knows the truth) over the shipped networks
stays below f1 in family, and ``probe_f0_planes.py`` found that f0 trained further lifts
the bound only a little. This probe asks what *any* f0 of today's cost could do, without
training one: on the development volumes it replaces f0's prediction on a share ``q`` of
the patches by f1's, taking the patches where f1 gains least over f0 (the most
favourable f0 one could hope to train: exactly as good as f1 where f1 matters least, f0's
analysis cost unchanged; patches where f0 is already as good as f1 stay as they are).
For each ``q`` it prints f0 everywhere's IoU and oracle routing's best IoU within f1
everywhere's GFLOPs, and within its GFLOPs *and* seconds (both are issue 11's line),
beside f1 everywhere.

    python benchmarks/probe_f0_headroom.py paser-synth-v2.9 runs/paser-synth-v2.10 [--shares 0 0.1 0.2 0.3 0.4 0.5]
"""

from __future__ import annotations

import dataclasses

import numpy as np

from common import best_within, oracle_front, oracle_gains
from probe_policy_choice import development_parser, development_tables


def with_f0_as_f1(table, share: float):
    """A copy of ``table`` where f0 predicts like f1 on the ``share`` of patches where
    f1's true gain over f0 is smallest but positive (where f0 is already at least as good
    it stays as it is); f0's seconds and GFLOPs unchanged."""
    gain = oracle_gains(table)[:, 0]
    easiest = np.argsort(np.where(gain > 0, gain, np.inf), axis=None)[: min(int(round(share * gain.size)), int((gain > 0).sum()))]
    conf = table.conf.copy()
    n, gy, gx = np.unravel_index(easiest, gain.shape)
    conf[n, 0, gy, gx] = conf[n, 1, gy, gx]
    return dataclasses.replace(table, conf=conf)


def line_two_bounds(table) -> dict:
    """f0 and f1 everywhere and oracle routing's best IoU within f1's GFLOPs, and within
    its GFLOPs and seconds."""
    f0, f1 = table.score(table.constant(0), "f0"), table.score(table.constant(1), "f1")
    front = oracle_front(table)
    return {
        "f0": f0["mean_iou"],
        "f1": f1["mean_iou"],
        "gflops": best_within(front, f1["gflops"]),
        "gflops_seconds": best_within(front, f1["gflops"], f1["seconds"]),
        "analysis_seconds": f0["seconds"] / f1["seconds"],
    }


def main() -> None:
    p = development_parser(__doc__)
    p.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    args = p.parse_args()
    for name, bundle, table in development_tables(args):
        f2 = table.score(table.constant(2), "f2")["mean_iou"]
        for share in args.shares:
            b = line_two_bounds(with_f0_as_f1(table, share))
            g, gs = b["gflops"], b["gflops_seconds"]
            routed = " / ".join(f"{100 * x:.1f}%" for x in g["fractions"])
            print(f"{name}, {bundle.name} (f2 {f2:.4f}), f0 as f1 on {100 * share:.0f} % of the patches: f0 {b['f0']:.4f}, "
                  f"f1 {b['f1']:.4f}; oracle within f1's GFLOPs {g['mean_iou']:.4f} ({g['mean_iou'] - b['f1']:+.4f}; routed {routed}), "
                  f"within its GFLOPs and seconds {gs['mean_iou'] if gs else float('nan'):.4f} "
                  f"(f0's analysis {b['analysis_seconds']:.3f} × f1's seconds)", flush=True)


if __name__ == "__main__":
    main()
