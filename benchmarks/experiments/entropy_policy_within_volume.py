# Scratch analysis of the v2.4 entropy-policy experiment (see benchmarks/probe_results.md); kept in history only.
import sys, pickle, torch, numpy as np
import torch.nn.functional as F
sys.path.insert(0, "/work/main/benchmarks")
from common import PatchTable
from napari_paser.engine.routing import route
from napari_paser.train.rewards import RewardCache
c = [RewardCache(f, cc) for f, cc in torch.load("/work/main/runs/paser-synth-v2.4/checkpoints/rewards-rl.pt", weights_only=True)][0]
H = F.avg_pool2d(c.features[:, 3:4].float(), (14, 16)).reshape(640, 16).double().numpy()
S = c.features[:, 3].float().mean((1, 2)).double().numpy()  # slice-mean entropy
G = c.dataset_gain().double().numpy().reshape(640, 2, 16)
blk = np.repeat(np.arange(40), 16)
Hb = np.array([H[blk == b].mean() for b in range(40)])[blk][:, None]
fits = {}
# V1: within-volume slope, global intercept at the mean H
for k in range(2):
    Gk = G[:, k]; Gb = np.array([Gk[blk == b].mean() for b in range(40)])[blk][:, None]
    a = ((H - Hb) * (Gk - Gb)).sum() / ((H - Hb) ** 2).sum()
    fits.setdefault("V1", []).append((a, 0.0, Gk.mean() - a * H.mean()))
# V2: g = a (H - S) + c S + b, least squares
for k in range(2):
    X = np.stack([(H - S[:, None]).ravel(), np.repeat(S, 16), np.ones(H.size)], 1)
    sol = np.linalg.lstsq(X, G[:, k].ravel(), rcond=None)[0]
    fits.setdefault("V2", []).append(tuple(sol))
print(fits)
T = pickle.load(open("/tmp/exp/tables.pkl", "rb"))
for name, d in T.items():
    tab = PatchTable(conf=d["conf"], ent=d["ent"], cost=d["cost"], costs=d["costs"], seconds=d["seconds"])
    f2 = tab.score(tab.constant(2), "f2")
    He = d["ent"][:, 0]; Se = He.mean((1, 2))[:, None, None]  # slice mean (patch grid exact)
    print(name)
    for v in ("V1", "V2"):
        if v == "V1":
            g = np.stack([a * He + b for a, _, b in fits[v]], 1)
        else:
            g = np.stack([a * (He - Se) + cc * Se + b for a, cc, b in fits[v]], 1)
        row = []
        for lam in (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.12, 0.16):
            s = tab.score(route(g, lam, d["costs"]), "paser")
            row.append(f"{lam}:{s['mean_iou']/f2['mean_iou']:.4f}/{s['gflops']/f2['gflops']:.3f}/{s['seconds_ratio_f2']:.3f}/{s['fractions'][0]:.2f}")
        print(" ", v, " ".join(row))
