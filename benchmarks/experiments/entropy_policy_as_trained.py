# Scratch analysis of the v2.4 entropy-policy experiment (see benchmarks/probe_results.md); kept in history only.
import sys, pickle
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np
from common import PatchTable
from napari_paser.engine.routing import route
T = pickle.load(open("/tmp/exp/tables.pkl", "rb"))
A = np.array([0.0277, -0.0344]); B = np.array([0.0266, 0.0491])
for name, d in T.items():
    tab = PatchTable(conf=d["conf"], ent=d["ent"], cost=d["cost"], costs=d["costs"], seconds=d["seconds"])
    f2 = tab.score(tab.constant(2), "f2"); f1 = tab.score(tab.constant(1), "f1")
    H = d["ent"][:, 0]
    g = np.stack([A[k] * H + B[k] for k in range(2)], 1)
    print(name, "f1 %.4f f2 %.4f" % (f1["mean_iou"], f2["mean_iou"]))
    for lam in (0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.06, 0.1):
        s = tab.score(route(g, lam, d["costs"]), "paser")
        print(f"  λ {lam}: {s['mean_iou']:.4f} ({s['mean_iou']/f2['mean_iou']:.4f}x) gfl {s['gflops']/f2['gflops']:.3f} sec {s['seconds_ratio_f2']:.3f} {np.round(s['fractions'],3)}")
