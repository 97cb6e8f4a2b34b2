"""At which λ could issue 11's first and third lines hold together? (development volumes)

The benchmark measures the IoU-matched IDK cascade at the bundle's default λ only. This
probe walks PaSeR's λ grid on the development volumes of ``probe_policy_choice`` (no test
scan) and prints, for every λ at which the routing changes: PaSeR's IoU as a share of f2
everywhere's, its GFLOPs and seconds as shares of f2's, the GFLOPs the IoU-matched IDK
cascade needs over PaSeR's (line 3 asks ≥ 1.3) and over oracle routing's at the same IoU
(the most any policy over these networks could reach). Then, over the λs where line 1
holds (≥ 0.99 × f2's IoU at ≤ 25 % of its GFLOPs and ≤ 33 % of its seconds), the best of
the two ratios.

    python benchmarks/probe_lambda_lines.py paser-synth-v2.16 --threads 2
    python benchmarks/probe_lambda_lines.py runs/paser-synth-v2.18 --lams 0.005 0.0055 0.006 0.007 0.008 0.009 0.010

``--lams`` walks those λs instead of the benchmark's grid.
"""

from __future__ import annotations

from bench_testsets import _lam_grid
from common import cheapest_reaching, idk_grid, match_idk, oracle_front
from probe_policy_choice import development_parser, development_tables


def line_one(row: dict, f2: dict) -> bool:
    """Issue 11's first line at one operating point."""
    return row["mean_iou"] >= 0.99 * f2["mean_iou"] and row["gflops"] <= 0.25 * f2["gflops"] and row["seconds"] <= 0.33 * f2["seconds"]


def main() -> None:
    parser = development_parser(__doc__)
    parser.add_argument("--lams", type=float, nargs="+", help="the λs to walk (default: the benchmark's grid)")
    args = parser.parse_args()
    lams = sorted(args.lams) if args.lams else [float(x) for x in _lam_grid()]
    for name, bundle, table in development_tables(args):
        f2 = table.score(table.constant(2), "f2")
        grid = idk_grid(table, steps=61)
        front = oracle_front(table)
        print(f"\n{name}, {bundle.name} (default λ {bundle.default_lam:.3f}); f1 / f2 everywhere "
              f"{table.score(table.constant(1), 'f1')['mean_iou']:.4f} / {f2['mean_iou']:.4f}")
        print("| λ | IoU (× f2's) | GFLOPs, seconds (× f2's) | routed f0 / f1 / f2 | IDK-matched / PaSeR | IDK-matched / oracle | line 1 |")
        print("|---|---|---|---|---|---|---|")
        held, previous = [], None
        for lam in lams:
            routing = table.paser(float(lam))
            if previous is not None and (routing == previous).all():
                continue  # the same routing as the λ before: the same row
            previous = routing
            row = table.score(routing, "paser")
            matched = match_idk(grid, row["mean_iou"])
            idk = table.score(table.idk(matched["a0"], matched["a1"]), "idk")
            oracle = cheapest_reaching(front, row["mean_iou"])
            vs_paser = idk["gflops"] / row["gflops"]
            vs_oracle = idk["gflops"] / oracle["gflops"] if oracle else float("nan")
            ok = line_one(row, f2)
            if ok:
                held.append((float(lam), vs_paser, vs_oracle))
            fractions = " / ".join(f"{100 * f:.1f} %" for f in row["fractions"])
            print(f"| {lam:.4g} | {row['mean_iou']:.4f} ({row['mean_iou'] / f2['mean_iou']:.4f}) | {row['gflops'] / f2['gflops']:.3f}, "
                  f"{row['seconds'] / f2['seconds']:.3f} | {fractions} | {vs_paser:.3f} | {vs_oracle:.3f} | {'yes' if ok else 'no'} |")
        if held:
            best = max(held, key=lambda h: h[1])
            bound = max(held, key=lambda h: h[2])
            print(f"where line 1 holds (λ {held[0][0]:.4g}-{held[-1][0]:.4g} of the rows above): IDK-matched / PaSeR at most "
                  f"{best[1]:.3f} (λ {best[0]:.4g}); IDK-matched / oracle at most {bound[2]:.3f} (λ {bound[0]:.4g})")
        else:
            print("line 1 holds at no λ of the grid")


if __name__ == "__main__":
    main()
