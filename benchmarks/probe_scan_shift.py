"""Can a scan tell, without labels, whether f0's refiner was trained on its kind? (issue 11)

A refiner trained on in-family volumes lifts f0 a lot in family and little out of family,
where its analysis seconds are not paid back. A bundle could apply it only to scans that
look like its training volumes, if some label-free statistic of a scan said so. For every
scan this probe computes, with the refined bundle given (8 slices, f0's MC analysis as the
engine seeds it):

- **f0's entropy**: the mean of f0's MC-mean entropy over the scan's pixels;
- **refiner KL**: the mean KL(refined ‖ f0's MC mean) per pixel;
- **refiner relabels**: the share of pixels whose label the refiner changes;

and, from the normalised image alone, what the scanner leaves in it:

- **noise**: the noise's standard deviation on each slice, by Immerkær's estimator (the
  mean absolute response of a 3 × 3 mask that cancels smooth structure; the wavelet
  estimator of ``skimage.restoration.estimate_sigma`` needs PyWavelets, not installed);
- **plane correlation**: the correlation of each slice with the next plane (the noise is
  independent from plane to plane, the microstructure is not);
- **sharpness**: the mean squared difference of neighbouring pixels over the image's
  variance (blur lowers it);
- **spread**: the standard deviation of the normalised intensities.

The range of each statistic comes from in-family data alone: the smallest and largest
values over the refiner's own training volumes (their first 8 slices). A scan outside
it is called shifted. The probe prints, per set of fresh scans, how many each statistic
calls shifted, and how many any of the image statistics does (a rule fixed before
looking at out-of-family scans): a useful switch calls none of the in-family scans and
most of the out-of-family ones.

    python benchmarks/probe_scan_shift.py runs/paser-synth-v2.16-refined5p --sets v1:8661-8700 oof:9461-9500 --workers 2 --threads 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import convolve

from napari_paser.engine.bundle import load_bundle
from napari_paser.engine.registry import resolve_bundle
from napari_paser.engine.uncertainty import refiner_correction
from probe_f0_refiner import TRAIN, cached_volumes, f0_outputs
from probe_testset_draws import _parse_set, _volume

STATISTICS = ("f0's entropy", "refiner KL", "refiner relabels", "noise", "plane correlation", "sharpness", "spread")
IMAGE_STATISTICS = STATISTICS[3:]


NOISE_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def noise_sigma(image: np.ndarray) -> float:
    """Immerkær's (1996) estimate of the standard deviation of white noise in ``image``."""
    response = convolve(image.astype(np.float64), NOISE_MASK)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


def image_statistics(planes: np.ndarray) -> list[float]:
    """Noise, plane correlation, sharpness and spread of one scan's normalised planes
    (Z, P, rows, columns; the slice is the centre plane)."""
    c = planes.shape[1] // 2
    slices = planes[:, c]
    noise = np.mean([noise_sigma(s) for s in slices])
    corr = np.mean([np.corrcoef(p[c].ravel(), p[c + 1].ravel())[0, 1] for p in planes]) if planes.shape[1] > 1 else np.nan
    diff = np.mean([(np.diff(s, axis=0) ** 2).mean() + (np.diff(s, axis=1) ** 2).mean() for s in slices]) / 2
    return [float(noise), float(corr), float(diff / slices.var()), float(slices.std())]


@torch.inference_mode()
def scan_statistics(bundle, volumes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(scans, 7): the label-free statistics of :data:`STATISTICS` per scan."""
    if bundle.f0.refiner is None:
        raise SystemExit(f"{bundle.name}'s f0 has no refiner")
    rows = []
    for x, prob, y in f0_outputs(bundle, volumes):
        h, w = y.shape[-2:]
        p = prob[..., :h, :w].clamp_min(1e-6)
        refined = bundle.f0.refine(x, prob)[..., :h, :w]
        entropy = -(p * p.log()).sum(1)
        kl = refiner_correction(prob[..., :h, :w], refined)
        relabels = (refined.argmax(1) != p.argmax(1)).float()
        image = image_statistics(x[..., :h, :w].float().numpy())
        rows.append([float(entropy.mean()), float(kl.mean()), float(relabels.mean()), *image])
    return np.asarray(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="a bundle whose f0 has a refiner")
    p.add_argument("--sets", nargs="+", required=True, help="fresh scans as generator:first-last seeds, e.g. oof:9461-9500")
    p.add_argument("--train", nargs="+", default=TRAIN + ["v2:7701-7716", "v1:7855-7862"],
                   help="the refiner's training volumes (generator:first-last, 16 slices each): they set the thresholds")
    p.add_argument("--cache", type=Path, default=Path("runs/probe_f0_refiner"))
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle)).eval()
    t0 = time.perf_counter()
    train = [(image[: args.slices], labels[: args.slices]) for image, labels in cached_volumes(args.cache, args.train, args.workers)]
    reference = scan_statistics(bundle, train)
    low, high = reference.min(0), reference.max(0)
    print(f"{bundle.name}: ranges from {len(train)} training volumes ({time.perf_counter() - t0:.0f} s): "
          + ", ".join(f"{name} {lo:.4f}-{hi:.4f} (median {m:.4f})" for name, lo, hi, m in zip(STATISTICS, low, high, np.median(reference, 0))),
          flush=True)
    print("| scans | " + " | ".join(f"{name}: median; called shifted" for name in STATISTICS) + " | any image statistic |")
    print("|---|" + "---|" * (len(STATISTICS) + 1))
    for text in args.sets:
        dist, seeds = _parse_set(text)
        t0 = time.perf_counter()
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            volumes = list(pool.map(_volume, [(s, args.slices, dist) for s in seeds]))
        stats = scan_statistics(bundle, volumes)
        # One-sided for the networks' statistics (a shifted scan makes them less sure),
        # two-sided for the image's (a scanner may be noisier or cleaner than the training's).
        outside = stats > high
        image = slice(len(STATISTICS) - len(IMAGE_STATISTICS), None)
        outside[:, image] |= stats[:, image] < low[image]
        cells = [f"{m:.4f}; {s:.0%}" for m, s in zip(np.median(stats, 0), outside.mean(0))]
        print(f"| {text} ({len(volumes)}, {time.perf_counter() - t0:.0f} s) | " + " | ".join(cells)
              + f" | {outside[:, image].any(1).mean():.0%} |", flush=True)


if __name__ == "__main__":
    main()
