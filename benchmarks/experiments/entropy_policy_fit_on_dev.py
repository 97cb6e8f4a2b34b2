# Scratch analysis of the v2.4 entropy-policy experiment (see benchmarks/probe_results.md); kept in history only.
import sys, pickle
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np
from common import PatchTable, oracle_front, pareto
from napari_paser.engine.routing import route
T = pickle.load(open("/tmp/exp/tables.pkl", "rb"))
def table(d): return PatchTable(conf=d["conf"], ent=d["ent"], cost=d["cost"], costs=d["costs"], seconds=d["seconds"])
def corr(a, b): return np.corrcoef(a.ravel(), b.ravel())[0, 1]
dev = T["dev_in"]
H = dev["ent"][:, 0]
# fit g_k = a H + b on dev_in (least squares)
coef = []
for k in range(2):
    A = np.stack([H.ravel(), np.ones(H.size)], 1)
    c, *_ = np.linalg.lstsq(A, dev["gains"][:, k].ravel(), rcond=None)
    coef.append(c)
print("coef", coef)
LAMS = np.round(np.arange(0, 0.3, 0.0025), 4)
for name in ("dev_in", "test_in", "dev_oof"):
    d = T[name]; tab = table(d)
    f2 = tab.score(tab.constant(2), "f2"); f1 = tab.score(tab.constant(1), "f1")
    print(f"\n== {name}: f1 {f1['mean_iou']:.4f} ({f1['gflops']/f2['gflops']:.3f}, {f1['seconds_ratio_f2']:.3f}s) f2 {f2['mean_iou']:.4f}; target {0.99*f2['mean_iou']:.4f}")
    He = d["ent"][:, 0]
    lin = np.stack([coef[k][0] * He + coef[k][1] for k in range(2)], 1)
    print(" corr f1/f2: policy %.3f/%.3f entropy %.3f/%.3f" % (corr(d["pol"][:, 0], d["gains"][:, 0]), corr(d["pol"][:, 1], d["gains"][:, 1]), corr(He, d["gains"][:, 0]), corr(He, d["gains"][:, 1])))
    for label, gains in (("policy", d["pol"]), ("entropy-linear", lin)):
        pts = []
        for lam in LAMS:
            r = route(gains, lam, d["costs"])
            s = tab.score(r, "paser"); s["lam"] = lam; s["gr"] = s["gflops"] / f2["gflops"]
            pts.append(s)
        for bud in (0.12, 0.15, 0.2, 0.25):
            ok = [p for p in pts if p["gr"] <= bud]
            best = max(ok, key=lambda p: p["mean_iou"]) if ok else None
            if best:
                print(f"  {label:15s} budget {bud}: IoU {best['mean_iou']:.4f} ({best['mean_iou']/f2['mean_iou']:.4f}x) λ {best['lam']} gfl {best['gr']:.3f} sec {best['seconds_ratio_f2']:.3f} frac {np.round(best['fractions'],3)}")
    of = oracle_front(tab)
    for bud in (0.12, 0.15, 0.2, 0.25):
        ok = [p for p in of if p["gflops"] / f2["gflops"] <= bud]
        best = max(ok, key=lambda p: p["mean_iou"])
        print(f"  oracle          budget {bud}: IoU {best['mean_iou']:.4f} sec {best['seconds_ratio_f2']:.3f}")
