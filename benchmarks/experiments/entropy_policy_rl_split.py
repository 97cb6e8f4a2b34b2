# Scratch analysis of the v2.4 entropy-policy experiment (see benchmarks/probe_results.md); kept in history only.
import torch, numpy as np
from napari_paser.train.rewards import RewardCache
import torch.nn.functional as F
caches = [RewardCache(f, c) for f, c in torch.load("/work/main/runs/paser-synth-v2.4/checkpoints/rewards-rl.pt", weights_only=True)]
print(len(caches), caches[0].features.shape, caches[0].conf.shape)
Hs, Gs, ids = [], [], []
for i, c in enumerate(caches):
    H = F.avg_pool2d(c.features[:, 3:4].float(), (14, 16)).flatten().double().numpy()
    g = c.dataset_gain().transpose(0, 1).reshape(2, -1).double().numpy()
    Hs.append(H); Gs.append(g); ids.append(np.full(H.size, i))
    r1 = np.corrcoef(H, g[0])[0, 1]; r2 = np.corrcoef(H, g[1])[0, 1]; r21 = np.corrcoef(H, g[1] - g[0])[0, 1]
    print(f"cache {i:2d} n {H.size} H {H.mean():.3f} g1 {g[0].mean():+.4f} g2 {g[1].mean():+.4f} r1 {r1:+.3f} r2 {r2:+.3f} r21 {r21:+.3f}")
H = np.concatenate(Hs); G = np.concatenate(Gs, 1); ids = np.concatenate(ids)
# within-volume slope (fixed effects)
Hc = H - np.array([Hs[i].mean() for i in ids]); Gc = G - np.stack([np.array([Gs[i][k].mean() for i in ids]) for k in range(2)])
for k in range(2):
    a = (Hc * Gc[k]).sum() / (Hc * Hc).sum()
    print("within slope", k, a, "pooled corr", np.corrcoef(H, G[k])[0, 1], "within corr", np.corrcoef(Hc, Gc[k])[0, 1])
a21 = (Hc * (Gc[1] - Gc[0])).sum() / (Hc * Hc).sum(); print("within slope f2-f1", a21)
print("per 16-slice block")
c = caches[0]
H = F.avg_pool2d(c.features[:, 3:4].float(), (14, 16)).reshape(640, 16).double().numpy()
g = c.dataset_gain().double().numpy().reshape(640, 2, 16)
rs = []
for b in range(40):
    h = H[b*16:(b+1)*16].ravel(); gg = g[b*16:(b+1)*16]
    r1 = np.corrcoef(h, gg[:, 0].ravel())[0, 1]; r2 = np.corrcoef(h, gg[:, 1].ravel())[0, 1]
    rs.append((r1, r2, h.mean(), gg[:, 0].mean(), gg[:, 1].mean()))
rs = np.array(rs)
np.set_printoptions(precision=3, suppress=True, linewidth=200)
print(rs)
blk = np.repeat(np.arange(40), 16 * 16)
Hf = H.ravel(); G1 = g[:, 0].ravel(); G2 = g[:, 1].ravel()
mH = np.array([Hf[blk == b].mean() for b in range(40)])[blk]
for name, Gk in (("g1", G1), ("g2", G2), ("g2-g1", G2 - G1)):
    mG = np.array([Gk[blk == b].mean() for b in range(40)])[blk]
    a = ((Hf - mH) * (Gk - mG)).sum() / ((Hf - mH) ** 2).sum()
    print(name, "within-block slope %.4f within corr %.3f" % (a, np.corrcoef(Hf - mH, Gk - mG)[0, 1]))
