"""Shared pieces of the benchmark suite: data, per-patch tables, scoring, IDK tuning.

A :class:`PatchTable` holds, for every slice and patch of some labelled volumes, the
confusion matrix of f0, f1 and f2 against the truth, each model's mean patch entropy
and (on request) cross entropy, all taken from the engine's own caches
(:class:`~napari_paser.engine.pipeline.PaserSegmenter`). Any routing of those patches is
then scored exactly (dataset-level IoU from one pooled confusion matrix, FLOPs from the
engine's :class:`~napari_paser.engine.flops.CostModel` with the same charging rules as
the engine's methods), so threshold grids, λ sweeps and random mixes cost no network
calls. The headline rows are also run through the real pipeline and checked against it.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from blend_scoring import BlendedConfusions, blended_confusions, blended_engine, engine_like
from napari_paser.engine.baselines import cascade_routing, random_routing
from napari_paser.engine.metrics import dataset_iou_gains, iou_per_class, mean_iou
from napari_paser.engine.patches import patch_view
from napari_paser.engine.pipeline import PaserSegmenter
from napari_paser.engine.uncertainty import mc_predict, slice_seed

# Seeds of the held-out data (training of the bundled model used synth base seed 1000,
# i.e. volume seeds volume_seed(1000, k): hashed 32-bit values, disjoint from these).
TEST_SEEDS = (9001, 9002, 9003, 9004)
# The out-of-family test set: synth distribution "oof" (a microstructure family and a
# scanner outside the training distribution). Nothing is tuned on it.
OOF_SEEDS = (9101, 9102, 9103, 9104)
VAL_SEEDS = (8001, 8002)
RETRAIN_SEEDS = (7001, 7002, 7003)
NOISE_SEED = 4242
LAM_IDK = 0.01  # paper B4 (their grid search over [0, 1] picked 0.01)
TIMING_ROUNDS = 3
"""Runs of the networks whose median gives a test table its seconds (:func:`median_seconds`)."""


def environment() -> dict:
    import napari_paser

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "napari_paser": napari_paser.__version__,
    }
    try:
        import sklearn

        info["scikit_learn"] = sklearn.__version__
    except ImportError:
        info["scikit_learn"] = None
    try:
        import subprocess

        root = __import__("pathlib").Path(__file__).resolve().parent.parent
        info["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        info["bundle_commit"] = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s", "--", "src/napari_paser/models"],
                                               capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def salt_and_pepper(image: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Copy of a (Z,Y,X) stack with ``fraction`` of each slice's pixels set to its min / max."""
    rng = np.random.default_rng(seed)
    out = image.copy()
    for z in range(out.shape[0]):
        u = rng.random(out.shape[1:])
        lo, hi = out[z].min(), out[z].max()
        out[z][u < fraction / 2] = lo
        out[z][(u >= fraction / 2) & (u < fraction)] = hi
    return out


def generator_record() -> dict:
    """Which synthetic generator made the volumes: its version and the fewest slices it makes whole."""
    from napari_paser.train.synth import GENERATOR_VERSION, MIN_SLICES

    return {"version": GENERATOR_VERSION, "min_slices": MIN_SLICES}


def make_volumes(seeds, slices: int, size=(224, 256), distribution: str = "v1",
                 depth: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Labelled test volumes; ``v1`` (the in-family test set of every bundle so far) by
    default; ``depth``: cut thinner ones from volumes this deep (the generator's default)."""
    from napari_paser.train.synth import generate_volume

    deep = {} if depth is None else {"depth": depth}
    return [generate_volume(s, slices, size, distribution=distribution, **deep)[:2] for s in seeds]


# (flip rows, flip columns, transpose): the eight symmetries of a pixel grid, the
# identity first and the four that keep a non-square slice's shape (no transpose) next.
DIHEDRAL = [(fy, fx, tr) for tr in (False, True) for fy in (False, True) for fx in (False, True)]


def dihedral(x: torch.Tensor, t: tuple[bool, bool, bool]) -> torch.Tensor:
    """``x`` (..., rows, columns) under the symmetry ``t`` of :data:`DIHEDRAL`."""
    fy, fx, tr = t
    x = x.flip(-2) if fy else x
    x = x.flip(-1) if fx else x
    return x.transpose(-2, -1) if tr else x


def undo_dihedral(x: torch.Tensor, t: tuple[bool, bool, bool]) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, t), t)`` is ``x``."""
    fy, fx, tr = t
    x = x.transpose(-2, -1) if tr else x
    x = x.flip(-1) if fx else x
    return x.flip(-2) if fy else x


def scan_probe_parser(doc: str, sets: list[str], *, threads: int = 2, bundle: str | None = "paser-synth-v2.21") -> argparse.ArgumentParser:
    """The arguments of a probe that scores a bundle on sets of fresh scans: the bundle,
    ``--sets`` (``generator:first-last``; may be empty where ``sets`` is), ``--slices`` and
    ``--threads``, with these defaults. The probe adds its own."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", default=bundle)
    ap.add_argument("--sets", nargs="+" if sets else "*", default=sets, help="fresh scans, generator:first-last (e.g. v1:8831-8850)")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--threads", type=int, default=threads)
    return ap


def scan_probe_start(args: argparse.Namespace):
    """Torch threads as ``args`` asks; the bundle it names, loaded."""
    from napari_paser.engine.bundle import load_bundle
    from napari_paser.engine.registry import resolve_bundle

    torch.set_num_threads(args.threads)
    return load_bundle(resolve_bundle(args.bundle))


# --------------------------------------------------------------------------- tables


@dataclass
class PatchTable:
    """Per-patch scores of f0 / f1 / f2 on labelled slices (see the module docstring).

    Attributes
    ----------
    conf : (N, 3, GY, GX, C, C) int64
        What PaSeR composes from each model on each patch (f1 / f2 with f0 fused in,
        for a bundle that fuses: ``Bundle.fusion``); routings and the oracle use these.
    conf_plain : (N, 3, GY, GX, C, C) int64 or None
        The patch models' own outputs (what f1 / f2 everywhere return), if they differ.
    ent : (N, 3, GY, GX) float64
        Mean patch entropy per model (f0: MC-dropout mean softmax).
    ce : (N, 3, GY, GX) float64 or None
        Mean pixel cross entropy per patch and model.
    seconds : tuple of arrays or None
        Measured compute seconds (``PaserSegmenter.timings``): f0's analysis (N,), the
        policy (N,) and every patch forward (N, 3, GY, GX).
    segs : list of (PaserSegmenter, slice indices)
        Segmenters whose caches hold the outputs (for PaSeR routings).
    cost : CostModel
    costs : (3,) parameter-ratio costs C(f)
    kept_flops : float
        FLOPs a patch pays only when it stays on f0, beyond f0's analysis (e.g. a refiner
        run on that patch alone); 0 for the engine's bundles.
    blended, blended_plain : BlendedConfusions or None
        Set by :func:`blended_table`: every routing's composition with the patches blended
        across their borders (:mod:`blend_scoring`), and the patch models' own outputs
        blended, if they differ. Routings are then scored blended; the per-patch ``conf``
        (the oracle's and line 4's gains) stays the cropped patches'.
    """

    conf: np.ndarray
    ent: np.ndarray
    cost: object
    costs: np.ndarray
    segs: list = field(default_factory=list)
    conf_plain: np.ndarray | None = None
    ce: np.ndarray | None = None
    seconds: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    num_classes: int = 3
    kept_flops: float = 0.0
    blended: BlendedConfusions | None = None
    blended_plain: BlendedConfusions | None = None

    @property
    def n(self) -> int:
        return self.conf.shape[0]

    @property
    def patches(self) -> int:
        return int(np.prod(self.conf.shape[:1] + self.conf.shape[2:4]))

    def pooled(self, routing: np.ndarray, plain: bool = False) -> np.ndarray:
        """Dataset confusion of ``routing``; ``plain``: the patch models' own outputs."""
        if self.blended is not None:
            return (self.blended_plain if plain and self.blended_plain is not None else self.blended).pooled(routing)
        conf = self.conf_plain if plain and self.conf_plain is not None else self.conf
        n, _, gy, gx, c, _ = conf.shape
        idx = np.broadcast_to(routing.reshape(n, 1, gy, gx, 1, 1).astype(np.int64), (n, 1, gy, gx, c, c))
        return np.take_along_axis(conf, idx, axis=1).sum((0, 1, 2, 3))

    @staticmethod
    def runs_f0(routing: np.ndarray, kind: str) -> bool:
        """Whether method ``kind`` runs f0's analysis on ``routing`` (and so composes f1 / f2
        with f0 fused in): RandPol only when it keeps patches on f0, f1 / f2 everywhere never."""
        if kind in ("f1", "f2"):
            return False
        return kind != "random" or bool((routing == 0).any())

    def flops(self, routing: np.ndarray, kind: str) -> float:
        """GFLOPs of ``routing`` charged like the engine's method ``kind``."""
        cm = self.cost
        n1, n2 = int((routing == 1).sum()), int((routing == 2).sum())
        if kind in ("f1", "f2"):
            return self.patches * cm.patch[int(kind[1])] / 1e9
        if kind == "f0":
            return (self.n * cm.f0_mc + self.patches * self.kept_flops) / 1e9
        if kind == "f1+f0":
            return (self.n * cm.f0_mc + self.patches * cm.patch[1]) / 1e9
        total = int((routing == 0).sum()) * self.kept_flops if self.runs_f0(routing, kind) else 0
        if kind == "paser":
            total += self.n * (cm.f0_mc + cm.policy) + n1 * cm.patch[1] + n2 * cm.patch[2]
        elif kind == "idk":
            total += self.n * cm.f0_mc + (n1 + n2) * cm.patch[1] + n2 * cm.patch[2]
        elif kind == "random":
            total += (self.n * cm.f0_mc if self.runs_f0(routing, kind) else 0) + n1 * cm.patch[1] + n2 * cm.patch[2]
        else:
            raise ValueError(kind)
        return total / 1e9

    def compute_seconds(self, routing: np.ndarray, kind: str) -> float:
        """Measured compute seconds of ``routing``, charged like :meth:`flops` (and like the
        engine's ``compute_seconds``)."""
        t_f0, t_policy, t_patch = self.seconds
        r = routing.astype(int)
        if kind in ("f1", "f2"):
            return float(t_patch[:, int(kind[1])].sum())
        if kind == "f0":
            return float(t_f0.sum())
        if kind == "f1+f0":
            return float(t_f0.sum() + t_patch[:, 1].sum())
        f1, f2 = t_patch[:, 1][r == 1].sum(), t_patch[:, 2][r == 2].sum()
        if kind == "paser":
            return float(t_f0.sum() + t_policy.sum() + f1 + f2)
        if kind == "idk":
            return float(t_f0.sum() + t_patch[:, 1][r >= 1].sum() + f2)
        if kind == "random":
            return float((t_f0.sum() if self.runs_f0(routing, kind) else 0.0) + f1 + f2)
        raise ValueError(kind)

    def mean_cost(self, routing: np.ndarray, kind: str) -> float:
        """Mean over patches of the paper's cost C (Eq. 3) of the models run on the patch."""
        c = self.costs
        per = c[routing.astype(int)]
        if kind == "idk":
            per = per + np.where(routing == 2, c[1], 0.0)
        return float(per.mean())

    def score(self, routing: np.ndarray, kind: str) -> dict:
        """IoU, GFLOPs, seconds and shares of ``routing`` charged like method ``kind``
        (``"f1+f0"``: f1 everywhere with f0's analysis fused in)."""
        cm = self.pooled(routing, plain=not self.runs_f0(routing, kind))
        iou = mean_iou(cm)
        g = self.flops(routing, kind)
        frac = np.bincount(routing.reshape(-1).astype(int), minlength=3) / routing.size
        timed = {}
        if self.seconds is not None:
            secs = self.compute_seconds(routing, kind)
            timed = {"seconds": secs, "seconds_ratio_f2": secs / self.compute_seconds(self.constant(2), "f2")}
        return {
            **timed,
            "mean_iou": iou,
            "iou_per_class": [None if np.isnan(v) else float(v) for v in iou_per_class(cm)],
            "gflops": g,
            "iou_per_gflop": iou / g if g > 0 else float("nan"),
            "mean_cost": self.mean_cost(routing, kind),
            "fractions": frac.tolist(),
            "sent_up": float(frac[1] + frac[2]),
        }

    # routings -----------------------------------------------------------------
    def constant(self, m: int) -> np.ndarray:
        return np.full((self.n, *self.conf.shape[2:4]), m, dtype=np.uint8)

    def paser(self, lam: float) -> np.ndarray:
        return np.concatenate([np.stack([seg.routing(lam, z) for z in zs]) for seg, zs in self.segs])

    def idk(self, a0: float, a1: float) -> np.ndarray:
        return cascade_routing(self.ent[:, 0], self.ent[:, 1], a0, a1)

    def random(self, probs, seed: int = 0) -> np.ndarray:
        out = []
        for seg, zs in self.segs:
            out.append(np.stack([random_routing(seg.grid, probs, seed, z) for z in zs]))
        return np.concatenate(out)


def patch_confusion_np(pred: np.ndarray, truth: np.ndarray, patch_size, num_classes: int = 3) -> np.ndarray:
    """(GY, GX, C, C) confusion per patch of one slice (sizes multiples of the patch)."""
    p = patch_view(pred.astype(np.int64), patch_size)
    t = patch_view(truth.astype(np.int64), patch_size)
    gy, gx = p.shape[:2]
    code = (np.arange(gy * gx).reshape(gy, gx, 1, 1) * num_classes + t) * num_classes + p
    return np.bincount(code.ravel(), minlength=gy * gx * num_classes**2).reshape(gy, gx, num_classes, num_classes)


@torch.no_grad()
def _cross_entropy(seg: PaserSegmenter, z: int, truth: np.ndarray) -> np.ndarray:
    """Mean pixel CE per patch (3, GY, GX) of f0 (MC mean, same seed as the engine), f1, f2."""
    x = torch.from_numpy(seg._planes(z, seg.bundle.f0.config.planes))[None]  # the planes f0 reads
    ps = seg.patch_size
    y = torch.from_numpy(truth.astype(np.int64))
    prob0, _ = mc_predict(seg.bundle.f0, x, seg.mc_passes, seed=slice_seed(seg.seed, z), estimate=seg.mc_estimate)
    out = np.zeros((3, *seg.grid))
    nll0 = -torch.log(prob0[0].gather(0, y[None]).clamp_min(1e-8))[0].numpy()
    out[0] = patch_view(nll0, ps).mean((-2, -1))
    yp = torch.from_numpy(np.ascontiguousarray(patch_view(truth.astype(np.int64), ps))).reshape(-1, *ps)
    cells = [(gy, gx) for gy in range(seg.grid[0]) for gx in range(seg.grid[1])]
    for m in (1, 2):
        net = seg.bundle.segmenters()[m]
        patches = torch.from_numpy(np.stack([seg._patch_window(z, gy, gx, net.config.halo, net.config.planes) for gy, gx in cells]))
        logits = net(patches)
        ce = torch.nn.functional.cross_entropy(logits, yp, reduction="none").mean((-2, -1))
        out[m] = ce.reshape(seg.grid).numpy()
    return out


def build_table(volumes, bundle, *, mc_passes=None, seed: int = 0, with_ce: bool = False, batch_size: int = 32,
                device: str = "cpu", timing_rounds: int = 1) -> PatchTable:
    """Run f0's analysis, f1 and f2 on every patch of ``volumes`` [(image, labels)] via the
    engine; its seconds are the median of ``timing_rounds`` runs (:func:`median_seconds`)."""
    confs, plains, ents, ces, segs = [], [], [], [], []
    fuses = any(bundle.fusion)
    cost = None
    for image, labels in volumes:
        seg = PaserSegmenter(bundle, mc_passes=mc_passes, seed=seed, batch_size=batch_size, device=device)
        seg.set_volume(image)
        h, w = seg.shape[1:]
        ph, pw = seg.patch_size
        if h % ph or w % pw:
            raise ValueError("benchmark volumes must be whole patch grids")
        seg.result(method="f0")
        seg.result(method="f1")
        seg.result(method="f2")
        for z in range(seg.num_slices):
            confs.append(np.stack([patch_confusion_np(seg.compose(z, routing=np.full(seg.grid, m)), labels[z], seg.patch_size) for m in range(3)]))
            if fuses:
                plains.append(np.stack([patch_confusion_np(seg.compose(z, routing=np.full(seg.grid, m), fused=False), labels[z], seg.patch_size)
                                        for m in range(3)]))
            ents.append(np.stack([seg.patch_entropy(z, m) for m in range(3)]))
            if with_ce:
                ces.append(_cross_entropy(seg, z, labels[z]))
        segs.append((seg, list(range(seg.num_slices))))
        cost = seg.cost_model
    return PatchTable(
        conf=np.stack(confs).astype(np.int64),
        ent=np.stack(ents).astype(np.float64),
        cost=cost,
        costs=bundle.costs().double().numpy(),
        segs=segs,
        conf_plain=np.stack(plains).astype(np.int64) if fuses else None,
        ce=np.stack(ces) if with_ce else None,
        seconds=median_seconds(segs, timing_rounds, blend_borders=False),
    )


def engine_seconds(engines: list[tuple[PaserSegmenter, list[int]]], model: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ``PatchTable.seconds`` holds, read from the engines' timings of their slices:
    f0's analysis (N,), the policy (N,) and every patch of each model (N, 3, GY, GX), or of
    ``model`` only (the others' rows zero)."""
    times = [seg.timings(z) for seg, zs in engines for z in zs]
    patches = np.stack([t[2] for t in times])
    if model is not None:
        patches = np.where(np.arange(3)[None, :, None, None] == model, patches, 0.0)
    return np.array([t[0] for t in times]), np.array([t[1] for t in times]), patches


def median_seconds(engines: list[tuple[PaserSegmenter, list[int]]], rounds: int, *,
                   blend_borders: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute seconds of the slices of ``engines`` [(engine, slices)] that have run f0, f1
    and f2 everywhere: each the median over ``rounds`` runs, the first the engines' own.

    Every further round runs each model on fresh engines like these (f1 and f2 after an
    untimed analysis, so that they fuse f0 in as the first round's did), the models in
    another order each round. On the shared cores of a benchmark machine one pass can meet
    a busy stretch that slows one model only: in one run f1 everywhere took 0.188 × f2's
    seconds in one table and 0.164 × in another. The median of rotated rounds is not moved
    by one such stretch.
    """
    first = engine_seconds(engines)
    if rounds <= 1:
        return first
    runs = [first]
    for r in range(1, rounds):
        per_model = {}
        for m in (r % 3, (r + 1) % 3, (r + 2) % 3):
            fresh = [(engine_like(seg, blend_borders=blend_borders), zs) for seg, zs in engines]
            for seg, _ in fresh:
                seg.result(method="f0")
                if m:
                    seg.result(method=f"f{m}")
            per_model[m] = engine_seconds(fresh, model=m)
        t_f0, t_policy, _ = per_model[0]
        runs.append((t_f0, t_policy, per_model[1][2] + per_model[2][2]))
    t_f0, t_policy, t_patches = (np.median(np.stack([run[i] for run in runs]), axis=0) for i in range(3))
    return t_f0, t_policy, t_patches


def blended_table(table: PatchTable, truths: list[np.ndarray], timing_rounds: int = 1) -> PatchTable:
    """``table``'s slices composed by engines that blend the patches across their borders
    (``blend_borders``): every routing is scored blended, exactly (:mod:`blend_scoring`),
    and the seconds are those of these engines, which also keep f1's and f2's predictions
    over their halos. The per-patch ``conf`` and entropies stay ``table``'s.

    ``truths``: each volume's labels, in the order of ``table.segs``; ``timing_rounds``: as
    :func:`build_table`'s.
    """
    segs = []
    for seg, zs in table.segs:
        blender = blended_engine(seg)
        for method in ("f0", "f1", "f2"):
            blender.result(method=method)
        segs.append((blender, zs))
    plain = blended_confusions(segs, truths, models=(1, 2), fused=False) if table.conf_plain is not None else None
    return replace(table, segs=segs, blended=blended_confusions(segs, truths), blended_plain=plain,
                   seconds=median_seconds(segs, timing_rounds, blend_borders=True))


# --------------------------------------------------------------------------- IDK tuning


def tune_idk(val: PatchTable, lam_idk: float = LAM_IDK, steps: int = 11) -> dict:
    """Paper B4: grid over mean ± 1 sd of each model's patch entropy on validation data,
    minimising l_IDK = CE(routed model) + λ_IDK · C (cumulative cost of the models run)."""
    if val.ce is None:
        raise ValueError("validation table needs cross entropies")
    e0, e1 = val.ent[:, 0], val.ent[:, 1]
    g0 = np.linspace(e0.mean() - e0.std(), e0.mean() + e0.std(), steps)
    g1 = np.linspace(e1.mean() - e1.std(), e1.mean() + e1.std(), steps)
    best, grid = None, []
    for a0 in g0:
        for a1 in g1:
            r = val.idk(a0, a1)
            ce = np.take_along_axis(val.ce, r[:, None].astype(np.int64), axis=1)[:, 0].mean()
            loss = float(ce + lam_idk * val.mean_cost(r, "idk"))
            grid.append((float(a0), float(a1), loss))
            if best is None or loss < best[2]:
                best = (float(a0), float(a1), loss)
    return {
        "thresholds": [best[0], best[1]],
        "loss": best[2],
        "lam_idk": lam_idk,
        "range_f0": [float(g0[0]), float(g0[-1])],
        "range_f1": [float(g1[0]), float(g1[-1])],
        "entropy_mean_sd": {"f0": [float(e0.mean()), float(e0.std())], "f1": [float(e1.mean()), float(e1.std())]},
        "grid_size": [steps, steps],
    }


def idk_grid(table: PatchTable, steps: int = 61) -> list[dict]:
    """IDK cascade over a dense threshold grid (quantiles of the table's own entropies)."""
    e0, e1 = table.ent[:, 0].ravel(), table.ent[:, 1].ravel()
    q = np.linspace(0, 1, steps)
    g0 = np.unique(np.concatenate([np.quantile(e0, q), [e0.max() + 1e-6]]))
    g1 = np.unique(np.concatenate([np.quantile(e1, q), [e1.max() + 1e-6]]))
    out = []
    for a0 in g0:
        for a1 in g1:
            s = table.score(table.idk(a0, a1), "idk")
            out.append({"a0": float(a0), "a1": float(a1), **s})
    return out


def pareto(points: list[dict], x: str = "gflops", y: str = "mean_iou") -> list[dict]:
    """Upper-left front: for increasing x, strictly increasing y."""
    pts = sorted(points, key=lambda p: (p[x], -p[y]))
    front, best = [], -np.inf
    for p in pts:
        if p[y] > best:
            front.append(p)
            best = p[y]
    return front


def match_idk(grid: list[dict], target_iou: float, tol: float = 1e-3) -> dict:
    """Paper Table 2: thresholds whose IoU is within ``tol`` of ``target_iou`` (least upper
    bound preferred), cheapest in GFLOPs; else the least IoU above the target, else the best."""
    within = [g for g in grid if abs(g["mean_iou"] - target_iou) <= tol]
    above = [g for g in within if g["mean_iou"] >= target_iou]
    if above:
        return {**min(above, key=lambda g: g["gflops"]), "match": f"within {tol} (at or above)"}
    if within:
        return {**min(within, key=lambda g: g["gflops"]), "match": f"within {tol} (below)"}
    higher = [g for g in grid if g["mean_iou"] >= target_iou]
    if higher:
        g = min(higher, key=lambda g: (g["mean_iou"], g["gflops"]))
        return {**g, "match": f"no grid point within {tol}; least IoU above the target"}
    g = max(grid, key=lambda g: g["mean_iou"])
    return {**g, "match": "the cascade never reaches the target IoU; its best IoU"}


# --------------------------------------------------------------------------- oracle


def oracle_gains(table: PatchTable) -> np.ndarray:
    """First-order change of the table's dataset mean IoU when one patch moves from f0
    to f1 or f2, (N, 2, GY, GX); uses the truth, so no real policy can know it."""
    return dataset_iou_gains(table.conf)


def oracle_front(table: PatchTable, points: int = 240, cost: str = "gflops") -> list[dict]:
    """Upper bound of any patch policy with these f0/f1/f2: route every patch by its
    true first-order IoU gain minus ``lam`` times its cost (see :func:`gain_front`)."""
    return gain_front(table, oracle_gains(table), points, cost)


def gain_front(table: PatchTable, gains: np.ndarray, points: int = 240, cost: str = "gflops") -> list[dict]:
    """Pareto front of routing every patch by ``gains`` (N, 2, GY, GX) of f1 and f2 over
    f0 minus ``lam`` times its cost, over a sweep of ``lam``; charged like PaSeR (f0's
    analysis and the policy on every slice). ``cost`` is each model's GFLOPs on a patch,
    or ``"seconds"``: its measured seconds on that patch (on a CPU f2's seconds are a
    smaller multiple of f1's than its FLOPs). A patch kept on f0 is priced at the
    table's ``kept_flops`` (GFLOPs sweep only)."""
    kept_cost = 0.0
    if cost == "gflops":
        patch_cost = np.broadcast_to((np.asarray(table.cost.patch[1:], float) / 1e9).reshape(1, 2, 1, 1), gains.shape)
        kept_cost = table.kept_flops / 1e9
    elif cost == "seconds":
        patch_cost = table.seconds[2][:, 1:]
    else:
        raise ValueError(f"cost must be 'gflops' or 'seconds', not {cost!r}")
    extra = patch_cost - kept_cost  # what sending a patch up costs over keeping it: sets the sweep's range
    scale = np.abs(gains).max() / extra[extra > 0].min()
    out = []
    for lam in np.concatenate([[0.0], np.geomspace(1e-4, 1.0, points - 1)]) * scale:
        utility = np.concatenate([np.full_like(gains[:, :1], -lam * kept_cost), gains - lam * patch_cost], axis=1)
        routing = utility.argmax(1).astype(np.uint8)
        out.append({f"lam_{cost}": float(lam), **table.score(routing, "paser")})
    return pareto(out)


def oracle_within(table: PatchTable, gflops: float, seconds: float, front: list[dict] | None = None) -> dict | None:
    """Oracle routing's best point within ``gflops`` and ``seconds``: the better of its
    fronts swept over each patch's GFLOPs and over its measured seconds."""
    points = (front if front is not None else oracle_front(table)) + oracle_front(table, cost="seconds")
    return best_within(points, gflops, seconds)


def best_within(points: list[dict], gflops: float, seconds: float | None = None) -> dict | None:
    """The point with the highest IoU whose GFLOPs are at most ``gflops`` (and, if given,
    whose measured seconds are at most ``seconds``)."""
    ok = [p for p in points if p["gflops"] <= gflops and (seconds is None or p["seconds"] <= seconds)]
    return max(ok, key=lambda p: p["mean_iou"]) if ok else None


def cheapest_reaching(points: list[dict], target_iou: float) -> dict | None:
    """The point with the fewest GFLOPs whose IoU is at least ``target_iou``."""
    ok = [p for p in points if p["mean_iou"] >= target_iou]
    return min(ok, key=lambda p: p["gflops"]) if ok else None


# --------------------------------------------------------------------------- pipeline runs


def run_methods(table: PatchTable, truths: list[np.ndarray], methods: list[str], lam: float | None, check: dict | None = None) -> dict:
    """Run methods through the engine on the table's segmenters: IoU, GFLOPs, seconds.

    ``seconds`` is the measured compute the engine charges the method
    (``SegmentationResult.compute_seconds``, independent of shared caches).
    ``check`` maps method -> routing kind: the engine's numbers must equal the table's.
    """
    out = {}
    for name in methods:
        cm_total = np.zeros((3, 3), dtype=np.int64)
        gflops = secs = 0.0
        routings = []
        for (seg, zs), truth in zip(table.segs, truths):
            res = seg.result(lam=lam if name == "paser" else None, method=name)
            cm_total += np.bincount((truth.astype(np.int64) * 3 + res.labels).ravel(), minlength=9).reshape(3, 3)
            gflops += res.gflops_total
            secs += res.compute_seconds
            routings.append(res.routing)
        routing = np.concatenate(routings)
        iou = mean_iou(cm_total)
        row = {
            "mean_iou": iou,
            "iou_per_class": [None if np.isnan(v) else float(v) for v in iou_per_class(cm_total)],
            "gflops": gflops,
            "iou_per_gflop": iou / gflops if gflops else float("nan"),
            "seconds": secs,
            "fractions": (np.bincount(routing.ravel(), minlength=3) / routing.size).tolist(),
        }
        if check and name in check:
            ref = table.score(routing, check[name])
            assert abs(ref["mean_iou"] - iou) < 1e-9, (name, ref["mean_iou"], iou)
            assert abs(ref["gflops"] - gflops) < 1e-6 * max(1.0, gflops), (name, ref["gflops"], gflops)
            assert abs(ref["seconds"] - secs) < 1e-6 * max(1.0, secs), (name, ref["seconds"], secs)
            row["mean_cost"] = ref["mean_cost"]
        out[name] = row
    f2s = out.get("f2", {}).get("seconds")
    for row in out.values():
        row["seconds_ratio_f2"] = row["seconds"] / f2s if f2s else None
    return out


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.parts: dict[str, float] = {}

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.parts[name] = now - self.t0 - sum(self.parts.values())
        return self.parts[name]
