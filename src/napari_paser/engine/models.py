"""The networks of PaSeR: bilinear UNets (f0, f1, f2) and the patch-routing policy.

Readable on purpose (nanoGPT style): one config dataclass per network, plain modules,
and an explicit split of the UNet into a deterministic encoder and a decoder that holds
the Monte-Carlo dropout layers, so the uncertainty step can run the encoder once and
only the decoder once per MC pass.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from typing import Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "UNetConfig",
    "UNet",
    "Refiner",
    "PolicyConfig",
    "PolicyNet",
    "mc_dropout",
    "dropout_keep_mask",
    "count_parameters",
    "with_planes",
    "centre_planes",
    "strided_weight",
    "class_softmax",
    "class_argmax",
    "class_sum",
    "is_channels_last",
    "set_memory_format_",
]


# --------------------------------------------------------------------------- UNet


@dataclass
class UNetConfig:
    """Shape of a bilinear UNet.

    Attributes
    ----------
    in_channels : int
        Image channels (1 for tomography).
    num_classes : int
        Output classes (pore, carbon-binder, nickel).
    base_width : int
        Channels of the first level; level ``i`` has ``base_width * 2**i``.
    depth : int
        Number of 2x down-samplings. Inputs must be divisible by ``2**depth``.
    dropout : float
        Probability of the Monte-Carlo dropout placed before every decoder block below
        the finest one. 0 disables it (f1, f2).
    stem : int
        Space-to-depth factor of the input: ``stem x stem`` pixel blocks become channels
        (``PixelUnshuffle``) and the head predicts ``stem**2`` sub-pixel logits per
        position (``PixelShuffle``). On a CPU, full-resolution layers with few channels
        are memory-bound; folding the pixels into channels makes the same FLOPs run
        several times faster while every input pixel is still seen.
    mc_scope : str
        Where the Monte-Carlo dropout sits. ``decoder``: before every decoder block but
        the finest, so each MC pass reruns the decoder. ``head``: only before the 1x1
        head, so the whole UNet runs once and each pass costs a 1x1 convolution (what
        makes f0's analysis cheap in seconds, not only in FLOPs).
    mc_estimate : str
        How the MC-dropout mean is computed (``mc_scope="head"`` only). ``sampled``: the
        mean of ``passes`` passes, each with its own dropout masks. ``moments``: in
        closed form, the limit of infinitely many passes (:meth:`UNet.mc_head_moments`),
        at the cost of about one pass and without the sampling error of a few passes.
    halo : int
        Context pixels on each side of the input that the output leaves out: a patch
        model gets its patch plus ``halo`` pixels of the slice around it, so patches
        are predicted as in a whole-slice pass and seams do not show.
    planes : int
        Planes of the stack the network reads (odd): the slice and ``planes // 2`` on
        each side, as input channels. A reconstruction's noise is independent from
        plane to plane while the microstructure is not, so the neighbours tell a grain
        from noise. At the stack's first and last planes the edge plane repeats.
    refine_width : int
        Width of a :class:`Refiner` on the prediction (0: none). f0's prediction is its
        MC-dropout mean refined once per slice: at a quarter of the resolution (stem 4)
        f0 places phase boundaries coarsely, and in family nearly all that f1 gains over
        it is boundary placement (``benchmarks/probe_patch_texture.py``).
    refine_stem : int
        Space-to-depth factor of the refiner (1: full resolution, 2: half).
    refine_planes : int
        Planes the refiner reads (odd, at most ``planes``): the slice and
        ``refine_planes // 2`` on each side of it, the centre planes of f0's input.
    """

    in_channels: int = 1
    num_classes: int = 3
    base_width: int = 16
    depth: int = 4
    dropout: float = 0.0
    stem: int = 1
    halo: int = 0
    mc_scope: str = "decoder"
    mc_estimate: str = "sampled"
    planes: int = 1
    refine_width: int = 0
    refine_stem: int = 1
    refine_planes: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def input_channels(self) -> int:
        """Channels of the input tensor: image channels times planes."""
        return self.in_channels * self.planes


def strided_weight(weight: torch.Tensor, stem: int) -> torch.Tensor:
    """A convolution's weight on a space-to-depth grid as one on the pixels.

    A ``k x k`` convolution after ``PixelUnshuffle(stem)`` is the ``(k * stem) x (k * stem)``
    convolution of the pixels with stride ``stem`` (and ``stem`` times the padding) whose
    weight this returns: the same sums without copying the input into blocks first.

    Parameters
    ----------
    weight : Tensor (out, channels * stem², k, k)
        Weight on the unshuffled grid (channel ``(c, i, j)`` is pixel offset ``(i, j)``
        inside a block), in the module's memory layout.
    stem : int

    Returns
    -------
    Tensor (out, channels, k * stem, k * stem), in the same layout.
    """
    out_ch, inputs, kh, kw = weight.shape
    c = inputs // (stem * stem)
    strided = weight.reshape(out_ch, c, stem, stem, kh, kw).permute(0, 1, 4, 2, 5, 3).reshape(out_ch, c, kh * stem, kw * stem)
    if weight.is_contiguous(memory_format=torch.channels_last):  # keep the module's layout
        strided = strided.contiguous(memory_format=torch.channels_last)
    return strided


class DoubleConv(nn.Sequential):
    """(3x3 conv, batch norm, ReLU) twice.

    In eval mode each batch norm is an affine map per channel, folded into the weights
    and bias of the convolution before it: the same output without a pass over the
    activations (timing the networks alone on 32 patches, 9 % of f1's seconds and 4 % of
    f2's on a CPU).
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        mid = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, first_weight: torch.Tensor | None = None, stride: int = 1,
                padding: int | None = None) -> torch.Tensor:
        """``first_weight`` (with ``stride`` and ``padding``) stands in for the first
        convolution's weight: the strided form of a space-to-depth stem (:meth:`UNet._stem_in`)."""
        x = self._conv_norm_relu(x, cast(nn.Conv2d, self[0]), cast(nn.BatchNorm2d, self[1]), first_weight, stride, padding)
        return self._conv_norm_relu(x, cast(nn.Conv2d, self[3]), cast(nn.BatchNorm2d, self[4]))

    def _conv_norm_relu(self, x: torch.Tensor, conv: nn.Conv2d, norm: nn.BatchNorm2d, weight: torch.Tensor | None = None,
                        stride: int = 1, padding: int | None = None) -> torch.Tensor:
        weight = conv.weight if weight is None else weight
        pad = cast(tuple[int, int], conv.padding) if padding is None else padding  # the constructor's: numbers
        if self.training:
            return F.relu_(norm(F.conv2d(x, weight, conv.bias, stride=stride, padding=pad)))
        mean, var = cast(torch.Tensor, norm.running_mean), cast(torch.Tensor, norm.running_var)  # tracked: never None
        scale = norm.weight * torch.rsqrt(var + norm.eps)
        bias = norm.bias - mean * scale
        return F.relu_(F.conv2d(x, weight * scale.view(-1, 1, 1, 1), bias, stride=stride, padding=pad))


class Refiner(nn.Module):
    """A correction of a prediction's log-probabilities read from them and the slice.

    Two 3x3 convolutions and a 1x1 one on the slice (and, with ``planes`` > 1, the
    planes around it) and the log-probabilities; with
    ``stem`` 2 they run at half resolution on 2x2 pixel blocks folded into channels and
    predict the correction of each block's 4 pixels (as a space-to-depth UNet stem does).
    The last layer starts at zero, so an untrained refiner returns its input. Tiny and
    run once per slice, it places the boundaries of f0's quarter-resolution prediction
    at the pixel (``benchmarks/probe_f0_refiner.py``).
    """

    def __init__(self, width: int, stem: int = 1, num_classes: int = 3, planes: int = 1):
        super().__init__()
        if width < 1 or stem < 1 or planes < 1 or planes % 2 == 0:
            raise ValueError(f"refiner width and stem must be positive and its planes odd, got {width}, {stem} and {planes}")
        self.stem = int(stem)
        self.planes = int(planes)
        inputs = (self.planes + num_classes) * self.stem**2
        self.body = nn.Sequential(
            nn.Conv2d(inputs, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes * self.stem**2, 1),
        )
        last = cast(nn.Conv2d, self.body[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(cast(torch.Tensor, last.bias))

    def forward(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """Refined logits (N, classes, rows, columns) from the slice and its neighbours
        (N, planes, rows, columns) and probabilities (N, classes, rows, columns); rows and
        columns divisible by the stem."""
        logp = prob.clamp_min(1e-4).log()
        x = torch.cat([image.to(logp.dtype), logp], dim=1)
        if self.stem == 1:
            return logp + self.body(x)
        first, rest = cast(nn.Conv2d, self.body[0]), self.body[1:]
        # PixelUnshuffle then the first convolution, as one strided convolution on the
        # pixels: on a CPU the copy into blocks took half as long as the convolution.
        h = F.conv2d(x, strided_weight(first.weight, self.stem), first.bias, stride=self.stem, padding=self.stem * cast(int, first.padding[0]))
        return logp + F.pixel_shuffle(rest(h), self.stem)


class UNet(nn.Module):
    """Bilinear UNet (up-sampling by interpolation, channels halved on the way up).

    ``forward(x) == decode(encode(x))``; only ``decode`` contains dropout, so for
    MC dropout the features of ``encode`` can be shared by all passes.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        w, d = config.base_width, config.depth
        if d < 1:
            raise ValueError("UNet depth must be at least 1")
        widths = [w * 2**i for i in range(d + 1)]
        # The deepest level has the width of the one above it (bilinear UNet), so
        # the concatenation on the way up is symmetric.
        widths[-1] = widths[-2]
        s = int(config.stem)
        if s < 1:
            raise ValueError("UNet stem must be at least 1")
        if config.planes < 1 or config.planes % 2 == 0:
            raise ValueError(f"UNet planes must be odd and positive, got {config.planes}")
        if config.mc_estimate not in ("sampled", "moments"):
            raise ValueError(f"unknown mc_estimate {config.mc_estimate!r}; choose 'sampled' or 'moments'")
        if config.mc_estimate == "moments" and config.mc_scope != "head":
            raise ValueError("the MC mean has a closed form only for dropout before the linear head (mc_scope='head')")
        if config.refine_width > 0 and config.refine_planes > config.planes:
            raise ValueError(f"the refiner reads planes of the network's input: {config.refine_planes} of {config.planes} is too many")
        self.unshuffle = nn.PixelUnshuffle(s) if s > 1 else nn.Identity()
        self.shuffle = nn.PixelShuffle(s) if s > 1 else nn.Identity()
        self.inc = DoubleConv(config.input_channels * s * s, widths[0])
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(d))
        self.ups = nn.ModuleList()
        for i in reversed(range(d)):
            skip = widths[i]
            below = self._up_in_channels(widths, i)
            out = widths[i] // 2 if i > 0 else widths[0]
            self.ups.append(DoubleConv(skip + below, out, mid_channels=(skip + below) // 2))
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(widths[0], config.num_classes * s * s, 1)
        self.refiner = (
            Refiner(config.refine_width, config.refine_stem, config.num_classes, config.refine_planes) if config.refine_width > 0 else None
        )

    @staticmethod
    def _up_in_channels(widths: Sequence[int], level: int) -> int:
        """Channels that arrive from below at decoder ``level``."""
        depth = len(widths) - 1
        if level == depth - 1:
            return widths[depth]
        return widths[level + 1] // 2

    def _stem_in(self, x: torch.Tensor) -> torch.Tensor:
        """``inc`` on the space-to-depth input, ``inc(unshuffle(x))``.

        With ``stem > 1`` and several input planes the first 3x3 convolution runs as one
        convolution on the pixels (kernel ``3 * stem``, stride ``stem``): the same sums
        as PixelUnshuffle followed by the 3x3 convolution, without copying the input
        into blocks first. For f0 (5 planes, stem 4) that copy took as long as the
        convolution itself.
        """
        s = int(self.config.stem)
        if s == 1 or x.shape[1] == 1:
            # One input channel: its layout is ambiguous, the strided convolution would
            # return the plain layout to channels-last layers, and unshuffling is cheap.
            return self.inc(self.unshuffle(x))
        first = cast(nn.Conv2d, self.inc[0])
        return self.inc(x, first_weight=strided_weight(first.weight, s), stride=s, padding=s * cast(int, first.padding[0]))

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self._stem_in(x)]
        for down in self.downs:
            feats.append(down(F.max_pool2d(feats[-1], 2)))
        return feats

    def _up(self, feats: Sequence[torch.Tensor], dropout: bool) -> torch.Tensor:
        x = feats[-1]
        finest = len(self.ups) - 1
        for level, (up, skip) in enumerate(zip(self.ups, reversed(feats[:-1]))):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([skip, x], dim=1)
            x = up(self.drop(x) if dropout and level != finest else x)
        return x

    def unfold(self, t: torch.Tensor) -> torch.Tensor:
        """Output grid to pixels: pixel-shuffle ``t`` (N, K·stem², rows/stem, columns/stem)
        to (N, K, rows, columns) and crop the ``halo`` border."""
        t = self.shuffle(t)
        h = self.config.halo
        return t[..., h:-h, h:-h] if h > 0 else t

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Deterministic part: the features of every level, finest first.

        With ``mc_scope="head"`` the whole UNet is deterministic and this returns one
        tensor: the finest decoder features (at ``1/stem`` resolution). Rows and
        columns must be divisible by ``stem``.
        """
        feats = self._levels(x)
        if self.config.mc_scope == "head":
            return [self._up(feats, dropout=False)]
        return feats

    def decode(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decoder with dropout before every block but the finest; returns logits.

        Logits are at full input resolution, without the ``halo`` border.

        No dropout at full resolution: on a CPU, drawing full-resolution masks for every
        MC pass costs more than the convolutions they perturb, and the noise injected at
        the coarser levels still reaches every output pixel.
        """
        return self.unfold(self.decode_folded(feats))

    def decode_folded(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """:meth:`decode` before :meth:`unfold`: logits (N, classes·stem², rows/stem, columns/stem)."""
        if self.config.mc_scope == "head":
            return self.head(self.drop(feats[-1]))
        return self.head(self._up(feats, dropout=True))

    def mc_head_logits(self, features: torch.Tensor, passes: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits of ``passes`` MC-dropout passes of the 1x1 head (``mc_scope="head"``).

        Parameters
        ----------
        features : Tensor (N, C, rows / stem, columns / stem)
            The finest features, as :meth:`encode` returns them.
        passes : int
        generator : torch.Generator, optional
            Source of the masks (seed it for reproducible passes); the global RNG if None.

        Returns
        -------
        Tensor (passes * N, classes * stem², rows / stem, columns / stem), pass-major.

        Each pass keeps a feature with probability ``1 - dropout`` (the masks of
        :func:`dropout_keep_mask`) and scales it by ``1 / (1 - dropout)``, as
        ``nn.Dropout`` does in training. The scale is folded into the head's weights and
        everything runs in the plain memory layout, where these elementwise steps are
        fastest on a CPU.
        """
        p = float(self.config.dropout)
        f = features.contiguous()
        if p <= 0:
            return self.head(f).repeat(passes, 1, 1, 1)
        n, c, h, w = f.shape
        keep = dropout_keep_mask((passes, n, c, h, w), p, generator, f.device)
        dropped = (f * keep).view(passes * n, c, h * w)
        # The 1x1 head as one batched matrix product: plain layout whatever the module's
        # memory format (a channels-last convolution here would cost a copy per pass).
        weight = self.head.weight.reshape(-1, c) * (1.0 / (1.0 - p))
        logits = torch.baddbmm(cast(torch.Tensor, self.head.bias).view(1, -1, 1), weight.expand(passes * n, -1, -1), dropped)
        return logits.view(passes * n, -1, h, w)

    def mc_head_moments(self, features: torch.Tensor) -> torch.Tensor:
        """The MC-dropout mean of the head's softmax in closed form (``mc_scope="head"``).

        Parameters
        ----------
        features : Tensor (N, C, rows / stem, columns / stem)
            The finest features, as :meth:`encode` returns them.

        Returns
        -------
        Tensor (N, classes, stem², rows / stem, columns / stem)
            Probabilities on the folded output grid, what :meth:`mc_head_logits`' passes
            average to as their number grows.

        Each logit is a sum over the features, each kept with probability ``1 - p`` and
        scaled by ``1 / (1 - p)``: its mean is the head without dropout, and the
        difference of two classes' logits has variance ``p / (1 - p) * sum_i (w_ai -
        w_bi)² f_i²``. The mean softmax then follows the probit approximation of the
        logistic function, pair by pair (Daunizeau 2017, "Semi-analytical approximations
        to statistical moments of sigmoid and softmax mappings"):
        ``E[p_a] ≈ 1 / (1 + sum_b exp(-(m_a - m_b) / sqrt(1 + π v_ab / 8)))``, renormalised.
        Against 200 sampled passes its probabilities are nearer than those of 20 passes,
        and four times nearer than those of 5 (``benchmarks/probe_mc_moments.py``).
        """
        if self.config.mc_scope != "head":
            raise ValueError("the MC mean has a closed form only for dropout before the linear head (mc_scope='head')")
        p = float(self.config.dropout)
        n, c, h, w = features.shape
        k = self.config.num_classes
        x = features.contiguous().view(n, c, h * w)
        weight = self.head.weight.reshape(k, -1, c)  # class, sub-pixel, feature
        bias = cast(torch.Tensor, self.head.bias).reshape(k, -1)
        first, second = zip(*[(a, b) for a in range(k) for b in range(a + 1, k)]) if k > 1 else ((), ())
        denominators = torch.ones(n, k, weight.shape[1], h * w, dtype=x.dtype, device=x.device)
        if first:
            # Every pair's gap in logits at once, shrunk by its noise: E[sigmoid] ≈ sigmoid(m / sqrt(1 + πv/8)).
            gap_weight = (weight[list(first)] - weight[list(second)]).reshape(-1, c)
            gap = torch.matmul(gap_weight, x).add_((bias[list(first)] - bias[list(second)]).reshape(-1, 1))
            if p > 0:
                variance = torch.matmul(gap_weight.square() * (p / (1.0 - p)), x.square())
                gap.mul_(variance.mul_(math.pi / 8).add_(1.0).rsqrt_())
            odds = torch.exp(gap.neg_()).view(n, len(first), -1, h * w)  # of a against b, for each pair (a, b)
            for i, (a, b) in enumerate(zip(first, second)):
                denominators[:, a] += odds[:, i]
                denominators[:, b] += odds[:, i].reciprocal()
        prob = denominators.reciprocal_()  # E[p_a] ≈ 1 / (1 + the sum of a's odds against the others)
        prob /= prob.sum(1, keepdim=True)  # the pairwise approximations need not add up to 1
        return prob.view(n, k, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def window_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the whole input window, ``halo`` border included: ``forward(x)`` is
        its centre. What the network says about the halo lets neighbouring patches be
        blended across their borders (``PaserSegmenter(blend_borders=True)``)."""
        return self.shuffle(self.decode_folded(self.encode(x)))

    def refine(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """The prediction's probabilities: ``prob`` (N, classes, rows, columns), e.g. the
        MC-dropout mean, corrected by the :class:`Refiner` from ``image``, f0's input
        (N, planes, rows, columns; the refiner reads its centre ``refine_planes``);
        ``prob`` itself without a refiner."""
        if self.refiner is None:
            return prob
        return class_softmax(self.refiner(centre_planes(image, self.refiner.planes), prob), channels_last=is_channels_last(prob))


def dropout_keep_mask(shape: Sequence[int], p: float, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean dropout mask of ``shape``: True (keep) with probability ``1 - p``.

    Each element compares 16 random bits with ``round(p * 65536)``, so the drop rate is
    ``p`` to within 1e-5. One 64-bit draw gives four elements: on a CPU this is about
    four times faster than ``torch.rand(shape) >= p``, and drawing the masks was the
    largest part of f0's MC passes.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout rate must be in [0, 1], got {p}")
    level = round(p * 65536)
    if level >= 65536:  # drop everything; the threshold would not fit the 16 bits
        return torch.zeros(tuple(shape), dtype=torch.bool, device=device)
    numel = math.prod(int(size) for size in shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((numel + 3) // 4,), dtype=torch.int64, generator=generator, device=device)
    bits = words.view(torch.int16)[:numel].view(*shape)  # uniform over [-32768, 32767]
    return bits >= level - 32768


class mc_dropout:
    """Context manager: dropout layers sample masks while batch norm stays in eval mode.

    Calling ``model.train()`` for MC dropout would be wrong: batch norm would then use
    (and update) batch statistics.

    Examples
    --------
    >>> model.eval()
    >>> with mc_dropout(model):
    ...     logits = model(x)  # a stochastic pass
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._saved: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        for m in self.model.modules():
            if isinstance(m, nn.Dropout):
                self._saved.append((m, m.training))
                m.train()
        return self.model

    def __exit__(self, *exc) -> None:
        for m, mode in self._saved:
            m.train(mode)
        self._saved.clear()


# --------------------------------------------------------------------------- policy


@dataclass
class PolicyConfig:
    """Shape of the patch-routing policy.

    ``features="v1"``: the policy sees f0's mean softmax (3 channels), its MC-dropout
    entropy and the normalised image, pooled by ``pool`` for cheapness. ``"v2"`` adds
    the local standard deviation of the image and f0's own finest features (free: f0
    computed them), already pooled by :func:`..uncertainty.policy_features`;
    ``f0_features=False`` leaves f0's features out (6 input channels: a policy fitted on
    a few volumes memorises them through those 16 maps). ``blocks``
    residual blocks run on the pooled map; ``grid_context`` adds a 3x3 convolution over
    the patch grid, so a patch's decision sees its neighbours. It predicts for every patch
    the IoU gain of f1 and f2 over f0. Routing logits for a cost weight ``lam`` are
    ``temperature * ((1 - lam) * gain - lam * cost)``, so one network serves every
    λ and the chosen model's cost can only fall as λ rises. ``linear_skip`` adds a
    linear model of the patch-mean inputs to the predicted gains.

    ``head="dense"`` replaces the network over the patch grid by a small convolutional
    network that predicts the gain of every cell of the pooled grid (``pool`` x ``pool``
    pixels) from the first ``dense_inputs`` input channels (4: f0's mean softmax and
    entropy; 6 adds the image's local mean and spread); a patch's gain is the mean of
    its cells' gains. It is fitted on per-cell gains (:mod:`napari_paser.train.dense_policy`):
    a 56x64-pixel patch gives it 224 targets instead of one, so it learns from a few
    dozen volumes what a patch-level network memorises. ``width`` and ``dense_layers``
    size it.

    ``mc_spread`` adds one input after the image's spread (``features="v2"``): how much
    f0's MC passes disagree, the variance of each class's probability over the passes
    summed over the classes (:func:`..uncertainty.mc_predict`). ``image_residual`` adds
    one more after it: how far the image departs from what f0's labels predict, where f0
    is unsure (:func:`..uncertainty.image_residual`). The dense network does not read it
    (it comes after its ``dense_inputs``); a calibrated prior adds to every patch's gains
    the patch's excess over the training volumes' mean (``PolicyNet.residual_weight``).

    ``refiner_kl`` (an f0 with a refiner) adds one input right after the image's spread,
    before the MC spread: how far f0's refiner moved its prediction, the KL divergence of
    the refined probabilities from the MC mean (:func:`..uncertainty.refiner_correction`).
    Where the refiner moves f0 most, f1 and f2 still gain most over the refined f0
    (``benchmarks/probe_results.md``); a ``dense_inputs`` of 7 lets the dense network read it.

    ``slice_level`` (with ``refiner_kl``) replaces the level of a slice's gains, their
    mean over its patches, by a line in the slice's mean refiner KL
    (``PolicyNet.level_weight`` and ``level_offset``, fitted by
    :func:`napari_paser.train.dense_policy.fit_slice_level`); the network then only ranks
    the patches within the slice. A network fitted on volumes of many scanners learns
    their levels, which do not carry over between scans of one scanner
    (``benchmarks/probe_results.md``). With ``slice_level_quantile`` q the line is in
    that quantile of the KL over the slice's cells instead of its mean: how far the
    refiner moves the boundaries it moves, whatever share of the slice they are.
    """

    in_channels: int = 5
    width: int = 16
    num_models: int = 3
    pool: int = 4
    patch_size: tuple[int, int] = (56, 64)
    features: str = "v1"
    blocks: int = 1
    grid_context: bool = False
    linear_skip: bool = False
    f0_features: bool = True
    head: str = "patch"
    dense_inputs: int = 4
    dense_layers: int = 3
    mc_spread: bool = False
    image_residual: bool = False
    refiner_kl: bool = False
    slice_level: bool = False
    slice_level_quantile: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @property
    def residual_channel(self) -> int:
        """Index of the image residual among the ``v2`` inputs (after the image's spread
        and, if read, the refiner's KL and the MC spread)."""
        return 6 + int(self.refiner_kl) + int(self.mc_spread)

    @property
    def kl_channel(self) -> int:
        """Index of the refiner's KL among the ``v2`` inputs (right after the image's spread)."""
        if not self.refiner_kl:
            raise ValueError("this policy does not read the refiner's KL")
        return 6


def check_level_quantile(quantile: float | None) -> None:
    """Refuse a quantile of a slice's KL (``PolicyConfig.slice_level_quantile``) outside (0, 1)."""
    if quantile is not None and not 0.0 < quantile < 1.0:
        raise ValueError(f"the quantile of the slice's KL must be between 0 and 1, not {quantile}")


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(x + self.bn2(self.conv2(y)), inplace=True)


class PolicyNet(nn.Module):
    """Tiny fully convolutional ResNet over the patch grid (any slice size).

    ``gains(features)`` -> (B, num_models - 1, GY, GX): predicted IoU gain over f0 of
    each bigger model, for every patch. ``logits(gains, lam, costs)`` turns them into
    routing logits over {f0, f1, f2}.
    """

    # Buffers that only some configs register (image_residual, slice_level).
    residual_weight: torch.Tensor
    residual_offset: torch.Tensor
    level_weight: torch.Tensor
    level_offset: torch.Tensor

    def __init__(self, config: PolicyConfig):
        super().__init__()
        if config.head not in ("patch", "dense"):
            raise ValueError(f"unknown policy head {config.head!r}; choose 'patch' or 'dense'")
        self.config = config
        if config.head == "dense":
            self.dense = self._dense_network(config)
        else:
            self._patch_network(config)
        self.skip = self._linear_skip(config)
        if config.refiner_kl and config.features != "v2":
            raise ValueError("the refiner's KL is an input of a 'v2' policy")
        if config.image_residual:
            if config.head != "dense" or config.features != "v2" or config.dense_inputs > config.residual_channel:
                raise ValueError("the image residual is a prior of a dense 'v2' policy whose network reads the inputs before it")
            # gains of f1 and f2 += residual_weight * max(the patch's image residual - residual_offset, 0):
            # zero until calibrate_residual_prior sets them (train.dense_policy).
            self.register_buffer("residual_weight", torch.zeros(config.num_models - 1))
            self.register_buffer("residual_offset", torch.zeros(()))
        if config.slice_level:
            self._add_slice_level()
        # Sharpness of the routing distribution, learned by REINFORCE.
        self.log_temperature = nn.Parameter(torch.tensor(2.0))

    def _add_slice_level(self) -> None:
        if self.config.features != "v2" or not self.config.refiner_kl:
            raise ValueError("a slice's level is read from the refiner's KL: a 'v2' policy with refiner_kl")
        # Each slice's gains (per model) are level_weight * its KL (mean or quantile: slice_kl) + level_offset on
        # average: zero until set_slice_level_ sets them.
        self.register_buffer("level_weight", torch.zeros(self.config.num_models - 1))
        self.register_buffer("level_offset", torch.zeros(self.config.num_models - 1))

    @torch.no_grad()
    def set_slice_level_(self, weight: torch.Tensor, offset: torch.Tensor, quantile: float | None = None) -> None:
        """From now on, give each slice's gains of model k the level (mean over the
        slice's patches) ``weight[k] * the slice's KL + offset[k]``, whatever level the
        network predicts (see :class:`PolicyConfig` ``slice_level``). The slice's KL is
        the mean over its cells, or their ``quantile`` (``slice_level_quantile``)."""
        check_level_quantile(quantile)
        if not self.config.slice_level:
            self.config = replace(self.config, slice_level=True)
            self._add_slice_level()
        self.config = replace(self.config, slice_level_quantile=quantile)
        self.level_weight.copy_(torch.as_tensor(weight))
        self.level_offset.copy_(torch.as_tensor(offset))

    def clear_slice_level_(self) -> None:
        """Let the network set each slice's level again (undo :meth:`set_slice_level_`)."""
        if self.config.slice_level:
            self.config = replace(self.config, slice_level=False, slice_level_quantile=None)
            del self.level_weight, self.level_offset

    def slice_kl(self, features: torch.Tensor, quantile: float | None = None) -> torch.Tensor:
        """Each slice's refiner KL (B,) that a slice level is read from: the mean over the
        slice's cells, or their ``quantile`` (default: the config's ``slice_level_quantile``)."""
        kl = self._grid_inputs(features)[:, self.config.kl_channel].flatten(1)
        q = self.config.slice_level_quantile if quantile is None else quantile
        return kl.mean(1) if q is None else torch.quantile(kl.float(), q, dim=1).to(kl.dtype)

    def predicted_level(self, features: torch.Tensor) -> torch.Tensor:
        """The level (B, num_models - 1) a ``slice_level`` policy gives each slice's gains."""
        kl = self.slice_kl(features).unsqueeze(1)
        return self.level_weight * kl + self.level_offset

    def _patch_network(self, config: PolicyConfig) -> None:
        w = config.width
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        )
        # One block keeps v1's parameter names (bundles saved before ``blocks`` existed).
        self.block = BasicBlock(w) if config.blocks == 1 else nn.Sequential(*(BasicBlock(w) for _ in range(config.blocks)))
        # Mean and max over the patch: the max catches a small hard region.
        self.head = nn.Sequential(
            nn.Conv2d(2 * w, w, 3 if config.grid_context else 1, padding=1 if config.grid_context else 0),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, config.num_models - 1, 1),
        )

    @staticmethod
    def _linear_skip(config: PolicyConfig) -> nn.Sequential | None:
        # A linear model of the patch-mean inputs (f0's entropy and probabilities among
        # them) added to the network's output: the policy starts from what entropy alone
        # predicts and the network learns the rest.
        # Batch norm puts the inputs on one scale (in eval mode it is a fixed affine map).
        if not config.linear_skip:
            return None
        return nn.Sequential(nn.BatchNorm2d(config.in_channels), nn.Conv2d(config.in_channels, config.num_models - 1, 1))

    @staticmethod
    def _dense_network(config: PolicyConfig) -> nn.Sequential:
        # Batch norm first: the inputs' fixed standardisation (set when fitted).
        c, w = config.dense_inputs, config.width
        layers: list[nn.Module] = [nn.BatchNorm2d(c)]
        for i in range(config.dense_layers):
            layers += [nn.Conv2d(c if i == 0 else w, w, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(w, config.num_models - 1, 1))
        return nn.Sequential(*layers)

    @property
    def output_layer(self) -> nn.Conv2d:
        """The last convolution of the network path (zeroed to leave the linear skip alone)."""
        return cast(nn.Conv2d, self.dense[-1] if self.config.head == "dense" else self.head[-1])

    def _gain_layers(self) -> list[nn.Conv2d]:
        """The linear layers that write the gains: the network's last convolution, then
        the linear skip's where there is one (it adds to the network's output)."""
        layers = [self.output_layer]
        if self.skip is not None:
            layers.append(cast(nn.Conv2d, self.skip[-1]))
        return layers

    def _grid_inputs(self, features: torch.Tensor) -> torch.Tensor:
        # v2 features arrive pooled already (see policy_features).
        return features if self.config.features == "v2" else F.avg_pool2d(features, self.config.pool)

    def patch_cells(self) -> tuple[int, int]:
        """Cells of the pooled grid per patch (rows, columns): the pooling from cells to patches."""
        ph, pw = self.config.patch_size
        return ph // self.config.pool, pw // self.config.pool

    def patch_means(self, features: torch.Tensor) -> torch.Tensor:
        """Mean of every input channel over each patch, (B, C, GY, GX): what the linear
        skip reads."""
        return F.avg_pool2d(self._grid_inputs(features), self.patch_cells())

    @torch.no_grad()
    def rescale_gains_(self, scale: torch.Tensor, mean: torch.Tensor) -> None:
        """Make :meth:`gains` return ``scale * gains + mean`` (per model) from now on.

        A policy is fitted on standardised gains (order one, where Adam's step size
        suits); the layers that write the gains (the network's last convolution and the
        linear skip) are linear, so the standardisation folds into their weights exactly.
        """
        for i, layer in enumerate(self._gain_layers()):
            weight, bias = layer.weight, cast(torch.Tensor, layer.bias)  # every one has a bias
            weight.mul_(scale.view(-1, 1, 1, 1).to(weight))
            bias.mul_(scale.to(bias))
            if i == 0:
                bias.add_(mean.to(bias))
        if self.config.slice_level:  # the level is the slice's mean gain: it scales and shifts alike
            self.level_weight.mul_(scale.to(self.level_weight))
            self.level_offset.mul_(scale.to(self.level_offset)).add_(mean.to(self.level_offset))

    @torch.no_grad()
    def tie_last_gains_(self, slope: float, intercept: float) -> None:
        """Make the last model's gains ``slope * (the first's) + intercept`` from now on.

        For a policy that cannot tell where the largest model beats the medium one: its
        gains then rank the patches as the medium model's do, and only their level and
        spread (what routing weighs against λ) stay the largest model's. Every layer that
        writes the gains is linear in its inputs, so the tie folds into their weights.
        """
        if self.config.num_models < 3:
            raise ValueError("tying needs two models after f0")
        for i, layer in enumerate(self._gain_layers()):
            weight, bias = layer.weight, cast(torch.Tensor, layer.bias)  # every one has a bias
            weight[-1] = slope * weight[0]
            bias[-1] = slope * bias[0] + (intercept if i == 0 else 0.0)
        if self.config.image_residual:
            self.residual_weight[-1] = slope * self.residual_weight[0]
        if self.config.slice_level:
            self.level_weight[-1] = slope * self.level_weight[0]
            self.level_offset[-1] = slope * self.level_offset[0] + intercept

    def cell_gains(self, features: torch.Tensor) -> torch.Tensor:
        """Dense head: the predicted gain (B, num_models - 1, rows / pool, columns / pool)
        of every cell of the pooled grid by the network (an image-residual prior acts on
        whole patches, in :meth:`gains`)."""
        if self.config.head != "dense":
            raise ValueError("only a dense policy predicts the gains of cells")
        return self._dense_cells(self._grid_inputs(features))

    def _dense_cells(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.dense(inputs[:, : self.config.dense_inputs])

    def gains(self, features: torch.Tensor) -> torch.Tensor:
        inputs = self._grid_inputs(features)
        k = self.patch_cells()
        if self.config.head == "dense":
            gains = F.avg_pool2d(self._dense_cells(inputs), k)
        else:
            x = self.block(self.stem(inputs))
            pooled = torch.cat([F.avg_pool2d(x, k), F.max_pool2d(x, k)], dim=1)
            gains = self.head(pooled)
        if self.skip is not None:
            gains = gains + self.skip(F.avg_pool2d(inputs, k))
        if self.config.image_residual:  # a whole patch's excess: a cell's alone is noisy
            c = self.config.residual_channel
            excess = (F.avg_pool2d(inputs[:, c : c + 1], k) - self.residual_offset).clamp_min(0)
            gains = gains + self.residual_weight.view(1, -1, 1, 1) * excess
        if self.config.slice_level:  # the network ranks within the slice; the KL sets the slice's level
            gains = gains - gains.mean((-2, -1), keepdim=True) + self.predicted_level(features)[..., None, None]
        return gains

    def logits(self, gains: torch.Tensor, lam: float | torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
        """Routing logits (B, num_models, GY, GX) for cost weight(s) ``lam``.

        Parameters
        ----------
        gains : Tensor
            Output of :meth:`gains`.
        lam : float or Tensor of shape (B,)
            Cost weight in [0, 1].
        costs : Tensor of shape (num_models,)
            C(f) per model, C(f0) = 0.
        """
        lam_t = torch.as_tensor(lam, dtype=gains.dtype, device=gains.device).reshape(-1, 1, 1, 1)
        zero = torch.zeros_like(gains[:, :1])
        utility = torch.cat([zero, gains], dim=1)
        value = (1 - lam_t) * utility - lam_t * costs.to(gains).reshape(1, -1, 1, 1)
        return self.log_temperature.exp() * value

    def forward(self, features: torch.Tensor, lam: float | torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
        return self.logits(self.gains(features), lam, costs)


@torch.no_grad()
def with_planes(model: UNet, planes: int) -> UNet:
    """A copy of ``model`` that reads ``planes`` neighbouring planes instead of its own.

    The first convolution is widened: every plane gets the weights of the centre plane
    divided by the number of planes, so the new network starts as the old one applied
    to the planes' mean (a mildly z-smoothed slice) and learns from there what each
    neighbour adds. Measured on out-of-family scans, this start learns from 4 labelled
    slices what zero-initialised neighbours do not (benchmarks/probe_results.md).
    """
    if model.config.planes == planes:
        return copy.deepcopy(model)
    if model.config.planes != 1:
        raise ValueError(f"only a one-plane network can be widened, this one reads {model.config.planes}")
    new = UNet(UNetConfig(**{**model.config.to_dict(), "planes": int(planes)}))
    state = model.state_dict()
    key = "inc.0.weight"
    w = state[key]  # (out, in_channels * stem², 3, 3); PixelUnshuffle keeps planes outermost
    state[key] = w.repeat(1, planes, 1, 1) / planes
    new.load_state_dict(state)
    return new.train(model.training)


def class_softmax(logits: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """Softmax over the classes (axis 1) of ``logits`` (N, classes, rows, columns).

    ``torch.softmax`` returns the plain layout whatever its input's; with
    ``channels_last`` the probabilities are stored channels-last, to meet other
    channels-last tensors elementwise (f0's refined prediction and its MC mean). Take
    their labels with :func:`class_argmax`, fast in either layout.
    """
    prob = torch.softmax(logits, dim=1)
    return prob.contiguous(memory_format=torch.channels_last) if channels_last else prob


def class_argmax(prob: torch.Tensor) -> torch.Tensor:
    """Labels (N, rows, columns) uint8: the argmax over the classes (axis 1) of ``prob``.

    ``torch.argmax``'s result, the first class on a tie, by comparing the class planes
    in turn. On a CPU this is faster in either layout: for a 224 x 256 slice of three
    classes, 0.57 ms against ``argmax``'s 1.03 ms channels-last and 7.2 ms plain (one
    thread, Intel Xeon). Inputs are finite.
    """
    planes = prob.unbind(1)
    if len(planes) == 1:
        return torch.zeros(planes[0].shape, dtype=torch.uint8, device=prob.device)
    higher = planes[1] > planes[0]
    labels, best = higher.to(torch.uint8), planes[0]
    for k in range(2, len(planes)):
        best = torch.where(higher, planes[k - 1], best)  # the highest plane so far, the first on a tie
        higher = planes[k] > best
        labels = torch.where(higher, k, labels)
    return labels


def class_sum(t: torch.Tensor) -> torch.Tensor:
    """``t.sum(1, keepdim=True)`` over the classes by adding the class planes in order:
    0.07 ms against 0.30 ms for a channels-last 224 x 256 slice of three classes (one
    thread, Intel Xeon), and for up to three classes (the phases) the same sums to the
    bit."""
    planes = t.unbind(1)
    total = planes[0]
    for plane in planes[1:]:
        total = total + plane
    return total.unsqueeze(1)


def is_channels_last(t: torch.Tensor) -> bool:
    """True if ``t`` (N, C, rows, columns) is stored channels-last and not also plainly."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def set_memory_format_(module: nn.Module, memory_format: torch.memory_format) -> None:
    """Store ``module``'s 4-D weights in ``memory_format`` (``Module.to(memory_format=...)``,
    which works at run time but which torch's type stubs do not declare)."""
    module.to(memory_format=memory_format)  # type: ignore[call-overload]


def centre_planes(x: torch.Tensor, planes: int) -> torch.Tensor:
    """The ``planes`` centre planes of a stack of planes ``x`` (N, P, rows, columns).

    Training samples carry as many planes as the bundle's widest reader; each network
    takes the ones it reads (P and ``planes`` odd, the slice itself in the middle).
    """
    have = x.shape[1]
    if planes > have or (have - planes) % 2:
        raise ValueError(f"cannot take {planes} centre planes of {have}")
    first = (have - planes) // 2
    return x if planes == have else x[:, first : first + planes]


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
