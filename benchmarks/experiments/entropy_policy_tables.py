# Scratch analysis of the v2.4 entropy-policy experiment (see benchmarks/probe_results.md); kept in history only.
import sys, time, pickle
sys.path.insert(0, "/work/main/benchmarks")
import numpy as np, torch
torch.set_num_threads(2)
from common import build_table, make_volumes, oracle_gains, oracle_front
from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.routing import route
from napari_paser.engine.registry import resolve_bundle
b = load_bundle(resolve_bundle("paser-synth-v2.2"))
sets = {"dev_in": ((8001, 8002, 8003, 8004), "v1"), "test_in": ((9001, 9002, 9003, 9004), "v1"), "dev_oof": ((9201, 9202, 9203, 9204), "oof")}
out = {}
for name, (seeds, dist) in sets.items():
    t = time.time()
    tab = build_table(make_volumes(seeds, 8, distribution=dist), b)
    g = oracle_gains(tab) * tab.patches
    pol = np.concatenate([np.stack([seg.gains(z) for z in zs]) for seg, zs in tab.segs])
    # store what we need without segmenters
    routes = {lam: tab.paser(lam) for lam in np.round(np.arange(0, 0.2001, 0.0025), 4)}
    out[name] = dict(conf=tab.conf, ent=tab.ent, seconds=tab.seconds, gains=g, pol=pol, routes=routes, cost=tab.cost, costs=tab.costs)
    print(name, time.time() - t, flush=True)
pickle.dump(out, open("/tmp/exp/tables.pkl", "wb"))
