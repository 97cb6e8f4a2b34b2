"""Which cheap signal ranks the gains that f1 and f2 still make over a refined f0? (issue 11)

With the default bundle (v2.20) f0's prediction is refined at half resolution and fused
into f1's and f2's patches. The true gain of a patch is then the change of the set's mean
IoU from the refined f0's labels to the fused f1's (f2's), and BENCHMARKS.md finds that
v2.20's policy tracks it worse than f0's MC entropy. This probe scores, on fresh scans of
both test generators, per-patch signals that the analysis computes anyway or could at a
few full-resolution elementwise passes:

- ``entropy``: f0's MC-dropout entropy (the baseline of issue 11's fourth line);
- ``policy``: the bundle's predicted gains;
- ``policy network``: the same without the image-residual prior (the dense network alone;
  the policy itself when it has no prior);
- ``refined entropy`` and ``refined 1-max``: the refined probabilities' uncertainty;
- ``relabelled``: the share of pixels whose label the refiner changes;
- ``KL``: KL(refined ‖ MC mean), the refiner's correction;
- ``boundary``: the share of pixels with a 4-neighbour of another refined label;
- ``f_k relabels`` (a bound, not a signal any policy has): the share of pixels whose label
  the fused f1 (f2) changes from the refined f0's, known only once f1 (f2) has run;
- ``f0 wrong (truth)`` and ``f0 IoU loss (truth)`` (bounds): the number of pixels the
  refined f0 labels wrongly, and what the scan's mean IoU would gain to first order if
  the refined f0 were right on the whole patch, read from the truth. A head that predicts
  where f0 errs (a confidence head, as ConfidNet) can at best know these.

``relabelled``, ``KL`` and ``boundary`` are ``probe_refiner_gain.refiner_signals``.

For each it prints r with the true gains over all scans pooled and the median lead over the
entropy in drawn sets of four scans (as a test set holds), and the share of sets where the
lead is at least +0.1 for both f1 and f2. Nothing is fitted.

With ``--lines-draws N`` it also asks whether routing by the best of them would route
better: on N drawn sets of four it scores issue 11's lines 1-3 (GFLOPs only, as
``probe_testset_draws`` scores them) for PaSeR routed by the policy's gains, by its
network's alone, by the *mix* ``policy_k + β_k (KL − its mean)``, β_k the ratio of the two
spreads over the set's patches (no labels), and by the KL alone on the policy's mean and
spread, at the bundle's default λ and over the validation λ grid; and for each, the one λ
of the grid at which most sets meet lines 1 and 3 together.

    python benchmarks/probe_refined_ranking.py --sets v1:8831-8850 oof:9631-9650 [--lines-draws 200]
"""

from __future__ import annotations

import copy
import functools
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from bench_testsets import _corr
from common import build_table, make_volumes, scan_probe_parser, scan_probe_start
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.metrics import dataset_iou_gains, mean_iou
from napari_paser.engine.patches import patch_view
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.routing import route
from napari_paser.engine.uncertainty import analyse_slices, entropy, mc_predict, slice_seed
from probe_refiner_gain import refiner_signals
from probe_testset_draws import _parse_set, scans_table, table_lines

SIGNALS = ("entropy", "policy", "policy network", "refined entropy", "refined 1-max", "relabelled", "KL", "boundary", "f_k relabels",
           "f0 wrong (truth)", "f0 IoU loss (truth)")


def network_only(policy):
    """A copy of ``policy`` without its image-residual prior (the policy when it has none)."""
    net = copy.deepcopy(policy)
    if net.config.image_residual:
        net.residual_weight.zero_()
    return net


def same_networks(a, b) -> bool:
    """Whether bundles ``a`` and ``b`` hold tensor-equal f0, f1 and f2 and fuse them alike."""
    def equal(m, n):
        x, y = m.state_dict(), n.state_dict()
        return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    return tuple(a.fusion) == tuple(b.fusion) and all(equal(getattr(a, k), getattr(b, k)) for k in ("f0", "f1", "f2"))


def policy_inputs(seg, zs, config) -> list[torch.Tensor]:
    """The input (1, channels, ...) of a policy with ``config`` on each of the slices ``zs``
    of ``seg``'s volume, from f0's analysis as the engine runs it."""
    f0 = seg.bundle.f0
    out = []
    for z in zs:
        x = torch.from_numpy(seg._planes(z, f0.config.planes))[None]  # f0's input, as the engine stacks it
        out.append(analyse_slices(f0, config, x, seg.mc_passes, slice_seed(seg.seed, seg.first_slice + z))[2])
    return out


def policy_signals(seg, zs: list[int], policy, suffix: str = "") -> dict[str, np.ndarray]:
    """``policy NAME`` and ``policy network NAME`` (``suffix`` " NAME"): the predicted gains
    (slices, 2, GY, GX) of ``policy`` with and without its image-residual prior, on the
    slices ``zs`` of ``seg``'s volume, from f0's analysis as the engine runs it."""
    net = network_only(policy)
    whole, alone = [], []
    for z, features in zip(zs, policy_inputs(seg, zs, policy.config)):
        whole.append(policy.gains(features)[0].numpy())
        if policy is seg.bundle.policy:  # the probe's features are the engine's: the whole policy gives the engine's gains
            np.testing.assert_allclose(whole[-1], seg.gains(z), rtol=1e-4, atol=1e-6)
        alone.append(net.gains(features)[0].numpy())
    return {f"policy{suffix}": np.stack(whole), f"policy network{suffix}": np.stack(alone)}


@torch.no_grad()
def scan_signals(image: np.ndarray, labels: np.ndarray, bundle) -> dict:
    """Per-patch confusions (as PaSeR composes them) and every signal of one scan."""
    table = build_table([(image, labels)], bundle)
    seg, zs = table.segs[0]
    f0, ps = bundle.f0, seg.patch_size
    out: dict[str, list] = {}
    for z in zs:
        x = torch.from_numpy(seg._planes(z, f0.config.planes))[None]  # f0's input, as the engine stacks it
        prob, _ = mc_predict(f0, x, seg.mc_passes, seed=slice_seed(seg.seed, seg.first_slice + z))  # as the engine seeds it
        q = f0.refine(x, prob)[0].double()
        # The refiner's relabelling, KL and boundary share as probe_refiner_gain measures them.
        shared = refiner_signals(prob[0].double().numpy(), q.numpy(), ps)
        maps = {"refined entropy": entropy(q, dim=0), "refined 1-max": 1 - q.max(0).values}
        for name, m in maps.items():
            out.setdefault(name, []).append(patch_view(m.numpy(), ps).mean(axis=(-2, -1)))
        for name, key in (("relabelled", "disagreement"), ("KL", "KL"), ("boundary", "boundary share")):
            out.setdefault(name, []).append(shared[key])
        out.setdefault("entropy", []).append(seg.patch_entropy(z, 0))
        kept = seg.compose(z, routing=np.zeros(seg.grid, np.uint8))  # the refined f0's labels
        out.setdefault("f_k relabels", []).append(np.stack([
            patch_view((seg.compose(z, routing=np.full(seg.grid, k, np.uint8)) != kept).astype(np.float64), ps).mean(axis=(-2, -1))
            for k in (1, 2)]))
    return {"conf": table.conf, "plain": table.conf_plain, "ent_all": table.ent, "cost": table.cost,
            **{k: np.stack(v) for k, v in out.items()}, **policy_signals(seg, zs, bundle.policy)}


@torch.no_grad()
def other_policy_signals(volumes, bundle, suffix: str) -> list[dict]:
    """:func:`policy_signals` of another bundle's policy on each of ``volumes`` [(image, labels)]
    (f0's analysis only: the networks are the base bundle's)."""
    out = []
    for image, _ in volumes:
        seg = PaserSegmenter(bundle)
        seg.set_volume(image)
        out.append(policy_signals(seg, list(range(seg.num_slices)), bundle.policy, suffix))
    return out


def cached(path: Path | None, make):
    """``make()``, kept in ``path`` (pickled) and read back from it when it exists."""
    if path is not None and path.exists():
        return pickle.loads(path.read_bytes())
    value = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(value))
    return value


def wrong_pixels(conf: np.ndarray) -> np.ndarray:
    """Wrong pixels of confusions (..., truth, label): everything off the diagonal."""
    return conf.sum((-2, -1)) - np.trace(conf, axis1=-2, axis2=-1)


def truth_bounds(conf: np.ndarray) -> dict[str, np.ndarray]:
    """``f0 wrong (truth)`` and ``f0 IoU loss (truth)`` (slices, GY, GX) of one scan from its
    confusions (slices, models, GY, GX, truth, label); the IoU loss at the scan's own weights."""
    f0 = conf[:, 0].astype(np.float64)
    wrong = wrong_pixels(f0)
    perfect = np.zeros_like(f0)
    classes = np.arange(f0.shape[-1])
    perfect[..., classes, classes] = f0.sum(-1)  # every pixel labelled as its truth
    loss = dataset_iou_gains(np.stack([f0, perfect, perfect], axis=1))[:, 0]
    return {"f0 wrong (truth)": wrong, "f0 IoU loss (truth)": loss}


def mixed_gains(scans: list[dict], keep_policy: bool = True) -> np.ndarray:
    """The policy's gains plus the refiner's KL, standardised to the gains' spread over the
    set's patches (label-free): (patches, 2, GY, GX) pooled over ``scans``. Without
    ``keep_policy`` the KL alone, put on the policy's mean and spread (it ranks as the KL)."""
    g = np.concatenate([s["policy"] for s in scans])
    kl = np.concatenate([s["KL"] for s in scans])
    dev = kl - kl.mean()
    base = g if keep_policy else np.broadcast_to(g.mean((0, 2, 3)).reshape(1, 2, 1, 1), g.shape)
    return np.stack([base[:, k] + g[:, k].std() / max(kl.std(), 1e-12) * dev for k in range(2)], axis=1)


def routing_lines(scans: list[dict], gains: np.ndarray, costs: np.ndarray, lams: list[float], default: float) -> dict:
    """Issue 11's lines 1-3 on ``scans`` routed by ``gains`` at every λ (GFLOPs only)."""
    routes = {lam: route(gains, lam, costs) for lam in lams}
    return table_lines(scans_table(scans, costs), routes, routes[default])


def set_r(scans: list[dict], signals: list[str]) -> np.ndarray:
    """r of every signal with the true gains of f1 and f2 over ``scans`` pooled: (signals, 2)."""
    true = dataset_iou_gains(np.concatenate([s["conf"] for s in scans]))
    r = np.zeros((len(signals), 2))
    for i, name in enumerate(signals):
        v = np.concatenate([s[name] for s in scans])
        for k in range(2):
            r[i, k] = _corr(v[:, k] if v.ndim == 4 else v, true[:, k])  # (slices, 2, GY, GX): one value per model
    return r


def print_models(scans: list[dict]) -> None:
    """Each model's mean IoU over ``scans`` pooled (the refined f0, the fused f1 and f2, as
    PaSeR composes them), its wrong pixels, and per patch how its wrong pixels follow the
    refined f0's (r), and how f0's follow the pixels it fixes (r of f0's wrong pixels with
    f0's minus its). Then the pixels f1 and f2 relabel and the most of those relabels that
    can be right: of R relabels, F fix f0, B break it and W change one wrong label to
    another, so F − B is the fall in wrong pixels and F = (R + F − B − W) / 2 ≤ (R + F − B) / 2."""
    conf = np.concatenate([s["conf"] for s in scans]).astype(np.float64)  # (slices, models, GY, GX, truth, label)
    wrong = wrong_pixels(conf)  # (slices, models, GY, GX)
    total = conf[:, 0].sum()
    ious = [mean_iou(conf[:, k].sum((0, 1, 2))) for k in range(3)]
    w = [wrong[:, k].ravel() for k in range(3)]
    print(f"mean IoU refined f0 / fused f1 / fused f2: {' / '.join(f'{v:.4f}' for v in ious)}; "
          f"wrong pixels {' / '.join(f'{v.sum() / total * 100:.2f} %' for v in w)}; per patch, r of f0's wrong pixels with "
          f"f1's / f2's {_corr(w[0], w[1]):.3f} / {_corr(w[0], w[2]):.3f}, with the pixels f1 / f2 fix "
          f"{_corr(w[0], w[0] - w[1]):.3f} / {_corr(w[0], w[0] - w[2]):.3f}")
    pixels = conf[:, 0].sum((-2, -1))  # (slices, GY, GX)
    relabels = [(np.concatenate([s["f_k relabels"] for s in scans])[:, k - 1] * pixels).sum() for k in (1, 2)]
    net = [(w[0] - w[k]).sum() for k in (1, 2)]
    print(f"f1 / f2 relabel {' / '.join(f'{r / total * 100:.2f} %' for r in relabels)} of the refined f0's pixels; "
          f"at most {' / '.join(f'{(r + n) / 2 / r * 100:.1f} %' for r, n in zip(relabels, net))} of those relabels are right")


def print_ranking(scans: list[dict], signals: list[str], draws: int) -> None:
    """The table of each signal's pooled r with the true gains over ``scans`` and its lead
    over f0's entropy (the first signal) in ``draws`` drawn sets of four (line 4)."""
    pooled = set_r(scans, signals)
    rng = np.random.default_rng(0)
    drawn = np.stack([set_r([scans[i] for i in rng.choice(len(scans), 4, replace=False)], signals) for _ in range(draws)])
    lead = drawn - drawn[:, :1]  # over the entropy
    print("| signal | pooled r (f1 / f2) | median lead over the entropy, sets of four (f1 / f2) | sets with both leads ≥ 0.1 |")
    print("|---|---|---|---|")
    for i, name in enumerate(signals):
        both = np.mean((lead[:, i, 0] >= 0.1) & (lead[:, i, 1] >= 0.1)) * 100
        med = np.median(lead[:, i], axis=0)
        print(f"| {name} | {pooled[i, 0]:.3f} / {pooled[i, 1]:.3f} | {med[0]:+.3f} / {med[1]:+.3f} | {both:.1f} % |")


def main() -> None:
    ap = scan_probe_parser(__doc__, ["v1:8831-8850", "oof:9631-9650"], bundle=None)
    ap.add_argument("--policies", nargs="+", default=[], metavar="BUNDLE",
                    help="more bundles with the first's networks whose policies are scored on the same scans")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--lines-draws", type=int, default=0, help="sets of four to score lines 1-3 on (0: none)")
    ap.add_argument("--cache", type=Path, help="keep each set's scans and signals (and each other policy's) here and reuse them")
    args = ap.parse_args()
    bundle = scan_probe_start(args)
    others = {}
    for name in args.policies:
        other = load_bundle(resolve_bundle(name))
        if not same_networks(bundle, other):
            raise SystemExit(f"{name} does not hold {bundle.name}'s networks: its policy would be scored on other gains")
        others[Path(name).name] = other  # as given: a run's folder may hold a bundle of a shipped one's name
    signals = list(SIGNALS[:3]) + [f"{s} {n}" for n in others for s in SIGNALS[1:3]] + list(SIGNALS[3:])
    lams = {"": float(bundle.default_lam)} | {f" {n}": float(b.default_lam) for n, b in others.items()}
    print(f"bundle {bundle.meta.get('name')} {bundle.meta.get('version')}; signals over the refined f0's labels"
          + "".join(f"; policy {n} {b.meta.get('version')}" for n, b in others.items()))
    for text in args.sets:
        dist, seeds = _parse_set(text)
        t0 = time.perf_counter()
        stem = f"{text.replace(':', '_')}_{args.slices}_{bundle.name}-{bundle.meta.get('version')}"
        volumes = functools.partial(make_volumes, seeds, args.slices, distribution=dist)  # made again only when not cached
        scans = cached(args.cache and args.cache / f"{stem}.pkl", lambda: [scan_signals(img, lab, bundle) for img, lab in volumes()])
        for scan in scans:  # from the confusions, so that older caches hold them too
            scan.update(truth_bounds(scan["conf"]))
        for name, other in others.items():
            rows = cached(args.cache and args.cache / f"{stem}_policy_{name}-{other.meta.get('version')}.pkl",
                          lambda: other_policy_signals(volumes(), other, f" {name}"))
            for scan, row in zip(scans, rows):
                scan.update(row)
        print(f"\n{text} ({len(scans)} scans, {time.perf_counter() - t0:.0f} s)")
        print_models(scans)
        print_ranking(scans, signals, args.draws)
        if args.lines_draws:
            print_lines(scans, bundle, lams, args.lines_draws)


def print_lines(scans: list[dict], bundle, lams: dict[str, float], draws: int) -> None:
    """Lines 1-3 (and line 4 for the mix) on drawn sets of four, routed by each policy (at its
    bundle's default λ, ``lams`` by the signals' suffix), its network alone, and the mix."""
    from napari_paser.train.validation import LAM_GRID

    costs = bundle.costs().double().numpy()
    grid = {float(v) for v in LAM_GRID}
    routings = {f"{s}{key}": default for key, default in lams.items() for s in SIGNALS[1:3]}
    rng = np.random.default_rng(1)
    rows: dict[str, list] = {name: [] for name in [*routings, "policy + KL", "KL alone"]}
    lead4 = []
    for _ in range(draws):
        pick = [scans[i] for i in rng.choice(len(scans), 4, replace=False)]
        mix = mixed_gains(pick)
        for name, default in routings.items():
            rows[name].append(routing_lines(pick, np.concatenate([s[name] for s in pick]), costs, sorted(grid | {default}), default))
        rows["policy + KL"].append(routing_lines(pick, mix, costs, sorted(grid | {lams[""]}), lams[""]))
        rows["KL alone"].append(routing_lines(pick, mixed_gains(pick, keep_policy=False), costs, sorted(grid | {lams[""]}), lams[""]))
        true = dataset_iou_gains(np.concatenate([s["conf"] for s in pick]))
        ent = np.concatenate([s["entropy"] for s in pick])
        lead4.append([_corr(mix[:, k], true[:, k]) - _corr(ent, true[:, k]) for k in range(2)])
    lead4 = np.array(lead4)
    print(f"\nlines 1-3 on {draws} drawn sets of four (GFLOPs only), each policy at its bundle's default λ "
          f"({', '.join(f'{v:g}' for v in lams.values())}); share of sets meeting each line (median):")
    print("| routing | line 1 | line 2 (margin over f1) | line 3 | line 3 at the best λ where line 1 holds | line 3's bound |")
    print("|---|---|---|---|---|---|")
    lam_lists = {name: sorted(grid | {routings.get(name, lams[""])}) for name in rows}
    for name, res in rows.items():
        l1 = np.array([r["line1_iou"] >= 0.99 and r["line1_gflops"] <= 0.25 for r in res])
        m2 = np.array([r["line2_margin"] for r in res])
        l3 = np.array([r["line3"] for r in res])
        b3 = np.array([r["line3_bound"] for r in res])
        a3 = np.array([r["line3_best_within_line1"] for r in res])
        print(f"| {name} | {l1.mean() * 100:.1f} % ({np.median([r['line1_iou'] for r in res]):.4f} ×) | {np.mean(m2 > 0) * 100:.1f} % ({np.median(m2):+.4f}) "
              f"| {np.mean(l3 >= 1.3) * 100:.1f} % ({np.median(l3):.3f} ×) | {np.mean(a3 >= 1.3) * 100:.1f} % ({np.nanmedian(a3):.3f} ×) "
              f"| {np.mean(b3 >= 1.3) * 100:.1f} % |")
    print("\nOne λ for every set: the λ of the grid at which most sets meet lines 1 and 3 together "
          "(if none does, the best median line 3 where line 1 holds on 90 % of the sets)")
    print("| routing | λ | sets meeting lines 1 and 3 | line 1 | line 3 (median) |")
    print("|---|---|---|---|---|")
    for name, res in rows.items():
        one = np.array([r["sweep_line1"] for r in res])  # (draws, λ)
        three = np.array([r["sweep_line3"] for r in res])
        both13 = (one & (three >= 1.3)).mean(0)
        if both13.max() == 0:  # then the λ with the best median line 3 where line 1 mostly holds
            i = int(np.argmax(np.where(one.mean(0) >= 0.9, np.median(three, 0), -np.inf)))
        else:
            i = int(np.argmax(both13))
        print(f"| {name} | {lam_lists[name][i]:g} | {both13[i] * 100:.1f} % | {one[:, i].mean() * 100:.1f} % | {np.median(three[:, i]):.3f} × |")
    both = np.mean((lead4[:, 0] >= 0.1) & (lead4[:, 1] >= 0.1)) * 100
    med = np.median(lead4, axis=0)
    print(f"line 4 for the mix: median lead over the entropy {med[0]:+.3f} / {med[1]:+.3f}; sets with both ≥ 0.1: {both:.1f} %")


if __name__ == "__main__":
    main()
