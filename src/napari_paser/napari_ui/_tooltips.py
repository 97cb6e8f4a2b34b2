"""Every tooltip and user-facing help string of the dock widget, in one place.

Keeping the wording here (as micro-sam does) makes it consistent and easy to review.
"""

from __future__ import annotations

TOOLTIPS: dict[str, str] = {
    "image": (
        "Grey-level micro-CT image to segment: a single 2-D slice or a (plane, row, column) "
        "stack. RGB and 4-D layers are not supported."
    ),
    "bundle": (
        "Model bundle (f0, f1, f2 and the routing policy). Bundled models are listed first; "
        "choose 'Load bundle folder…' to use a folder holding manifest.json and weights.safetensors."
    ),
    "load_bundle": "Pick a bundle folder (manifest.json + weights.safetensors) from disk.",
    "mc_passes": (
        "Monte-Carlo dropout passes of the tiny model f0. More passes give a smoother "
        "uncertainty estimate and cost more time. 0 uses the bundle's default: its number of "
        "passes, or for bundles from v2.27 on their limit in closed form (as smooth as many "
        "passes, for the time of about one)."
    ),
    "mode": (
        "How the cost/accuracy trade-off is set: λ (cost weight; 0 = always the best model, "
        "1 = always the cheapest) or TVD (a target share of patches sent to the larger models)."
    ),
    "lam": (
        "Cost weight λ of the router. Higher λ routes more patches to cheaper models. It starts at "
        "the bundle's recommended λ. The slider is logarithmic (each step changes λ by 2.3 %, from "
        "0.0001 to 1; far left is 0); type an exact λ in the box. Moving it re-routes from the "
        "cache: the visible slice updates at once, the rest follows."
    ),
    "tvd": (
        "Target total-variation distance between the routing and 'f0 everywhere' — roughly the "
        "share of patches sent to f1/f2. λ is solved for it over the analysed slices."
    ),
    "run": "Segment the image (or its region) in the background, slice by slice (visible slice first).",
    "roi": (
        "Segment only this box of the image, e.g. inside a circular field of view: planes, rows, "
        "columns as Python ranges (':,150:-150,150:-150'; rows and columns for a 2-D image). "
        "Empty: the whole image. The results are placed over the box."
    ),
    "roi_from_shapes": (
        "Fill the region with the rows and columns that the shapes of a Shapes layer cover "
        "(the selected one, else the top one), over every plane: draw a rectangle first."
    ),
    "cancel": "Stop after the slice being processed; finished slices stay, the rest stay empty.",
    "device": "Where the networks run: CUDA if a GPU is available, else the CPU.",
    "check_f2": (
        "Without a ground truth, see what the λ shown costs in quality: the slice on screen is "
        "segmented with every patch on f2 (the costliest routing) and compared with the slice as "
        "routed. The share of pixels alike and the mean IoU show under Statistics, and the pixels that "
        "differ in a 'differs from f2' layer, until λ moves; "
        "the f2 patches stay cached, so checking again after moving λ is quick."
    ),
    "bf16": (
        "Run f1 and f2 in bf16 (f0's analysis stays fp32): on a GPU or a CPU with AVX-512 BF16 or AMX, "
        "f2 ran 3.41-3.62x and PaSeR 1.51-1.69x faster on the benchmark's test sets, at the same mean IoU "
        "(within 0.0002); 0.08-0.15 % of pixels, near-ties, get another label. Refused where bf16 "
        "would be emulated (slower than fp32)."
    ),
    "blend": (
        "Blend neighbouring patches across their borders with what f1 and f2 predict in the 8 pixels "
        "of context they read around each patch: the patch grid no longer shows as seams in the labels, "
        "no network runs more, and pixels further than 8 pixels from a border keep their labels, as do borders "
        "between patches kept on f0. On the "
        "benchmark's two test sets the seams went away and PaSeR's mean IoU rose by 0.0003 and 0.0005. It keeps "
        "about 10 more bytes a pixel in memory while the run is open. On by default; a bundle whose f1 and f2 "
        "read no context has nothing to blend, and the box is greyed out."
    ),
    "ground_truth": (
        "Optional ground-truth Labels layer (0 pore, 1 carbon-binder, 2 nickel) to report mean IoU "
        "and IoU per GFLOP, compared a slice at a time as the slices are segmented."
    ),
    "export": (
        "Write the phase volume (uint8 TIFF, or OME-Zarr for a name ending in .zarr, with voxel size and "
        "provenance), a JSON report of the run and, optionally, one binary mask per phase, a slab of "
        "planes at a time in the background "
        "(Cancel stops it and leaves no file). Existing files are never replaced silently."
    ),
    "export_masks": "Also write one binary uint8 mask (0/255) per phase next to the phase volume.",
    "stats": (
        "Patches per model, compute in GFLOPs (and as a share of running f2 everywhere), phase volume "
        "fractions of the stack and per slice, and IoU when a ground truth is chosen."
    ),
    "status": "What the plugin is doing now.",
    "store": (
        "Where stacks too big for memory are segmented to: a Zarr store (phases, entropy, routing) "
        "in a new folder under this one, which the result layers read lazily. Default: the system's "
        "temporary folder. The store stays on disk after the session."
    ),
}
"""Tooltip text per control key."""

LOAD_BUNDLE_ITEM = "Load bundle folder…"
"""Entry of the bundle picker that opens a folder dialog."""

NO_GROUND_TRUTH = "(none)"
"""Entry of the ground-truth picker meaning no comparison."""
