"""Synthetic degradations: the training pipelines of the three papers, batched, seeded, on any device.

Presets (``PRESETS``; every sampled parameter can be fixed or re-ranged by name, see :func:`degrade`):

* ``gfpgan`` — the first-order model of GFPGAN / RestoreFormer that VSPBFR trains with:
  y = resize_back( JPEG_q( (x ⊛ k) ↓_r + n_σ ) ), kernel 39 or 41 taps, isotropic or anisotropic Gaussian
  (σ ∈ [0.1, 10], rotation ∈ [−π, π]), r ∈ U[0.8, 8] bilinear, σ_noise ∈ U[0, 20]/255, q ∈ U[60, 100].
  VSPBFR's restoration-stage extras are off by default: ``haze`` (blend with white after the blur, α ∈
  [0.75, 0.95]; VSPBFR uses p = 0.008) and ``gray`` (grayscale LQ, VSPBFR p = 0.008, GT converted too).
* ``gpen`` — PLTrans Eq. 13 ("following GPEN"): isotropic Gaussian blur ρ ∈ {0, 0.1, …, 5}, r ∈ U[0.8, 32],
  σ_noise ∈ U[0, 10]/255, q ∈ U[50, 100], resized back.
* ``realesrgan`` — Real-ESRGAN's second-order model (PGDiff's restorer), with its published default ranges
  (``train_realesrgan_x4plus``): two rounds of blur (Gaussian, generalised Gaussian, plateau, sinc) →
  random up/down/keep resize (area, bilinear or bicubic) → Gaussian or Poisson noise (colour or gray) → JPEG,
  then the final resize to H/scale (scale 4) with a sinc filter and JPEG in random order, and a bilinear resize
  back. Choices Real-ESRGAN makes once per batch (resize direction and mode, noise model, final order) are made
  per image here, and JPEG is Pillow's (or kornia's) instead of Real-ESRGAN's own DiffJPEG.

Conventions:

* Input (B, 3, H, W) float with values in ``value_range`` ((0, 1) by default; pass (-1, 1) for model tensors).
  The output has the input's shape, dtype, device and range. Any size works (511×333, 8×8). Blur σ and kernel
  sizes are in pixels of the input and the papers used 512² faces, so smaller inputs are degraded harder.
* Image i of a batch uses seed ``seed + i`` (or ``seeds[i]``): its parameters and its noise depend only on that
  seed, the preset and the overrides, so a batch equals per-image runs, and fixing one parameter does not change
  the draws of the others. Parameters are drawn on the CPU in float64 (the same on every device); noise is drawn
  on the tensor's device (CPU and CUDA noise differ).
* Images of one batch may have different intermediate sizes. They are kept top-left in a shared canvas, and every
  operation (per-sample resampling matrices, per-sample border padding, the JPEG crop) reads only each image's
  valid region. The only per-image Python loops are the noise draws (one generator per image, see above) and the
  Pillow JPEG round trip.
* ``jpeg="pillow"`` (default) is a real libjpeg round trip through Pillow, integer quality, 4:2:0; the result is
  quantised to 8 bits like a saved image. ``jpeg="kornia"`` uses kornia's differentiable JPEG and skips the
  8-bit rounding, so gradients reach the input (Poisson noise is treated as a constant residual).
  ``jpeg="none"`` skips JPEG (the sampled qualities are still reported).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union

import numpy as np
import torch

from .errors import InputError
from .seeding import make_generator

__all__ = [
    "KERNEL_KINDS",
    "RESIZE_MODES",
    "PRESETS",
    "Preset",
    "Param",
    "DegradeParams",
    "TrainingDegradation",
    "degrade",
    "sample_params",
    "blur_kernels",
    "resize",
    "jpeg_pillow",
    "parse_overrides",
    "get_preset",
    "training_degradation",
]

KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso", "sinc")
RESIZE_MODES = ("area", "bilinear", "bicubic")
JpegBackend = Literal["pillow", "kornia", "none"]
_ISO_KINDS = (0, 2, 4)


# ------------------------------------------------------------------------------------------- samplers
# Every sampler turns exactly one U[0, 1) draw per image into a value, so overriding a parameter never shifts
# the random numbers the other parameters see.


@dataclass(frozen=True)
class Uniform:
    """U[low, high]; ``integer`` keeps the integer part (JPEG quality, as the papers' ``int(quality)``)."""

    low: float
    high: float
    integer: bool = False

    def draw(self, u: torch.Tensor, drawn: Mapping[str, torch.Tensor]) -> torch.Tensor:
        v = self.low + u * (self.high - self.low)
        return v.floor().clamp(max=math.floor(self.high)) if self.integer else v

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.low:g}"
        return f"U[{self.low:g}, {self.high:g}]" + (" (int)" if self.integer else "")


@dataclass(frozen=True)
class SplitUniform:
    """Half the draws in U[low, mid], half in U[mid, high] (Real-ESRGAN's kernel shape β)."""

    low: float
    mid: float
    high: float

    def draw(self, u: torch.Tensor, drawn: Mapping[str, torch.Tensor]) -> torch.Tensor:
        lower = self.low + 2 * u * (self.mid - self.low)
        upper = self.mid + (2 * u - 1) * (self.high - self.mid)
        return torch.where(u < 0.5, lower, upper)

    def __str__(self) -> str:
        return f"½ U[{self.low:g}, {self.mid:g}] + ½ U[{self.mid:g}, {self.high:g}]"


@dataclass(frozen=True)
class Grid:
    """Uniform over low, low + step, …, high (PLTrans' blur ρ ∈ {0, 0.1, …, 5})."""

    low: float
    high: float
    step: float

    def draw(self, u: torch.Tensor, drawn: Mapping[str, torch.Tensor]) -> torch.Tensor:
        n = round((self.high - self.low) / self.step) + 1
        return self.low + (u * n).floor().clamp(max=n - 1) * self.step

    def __str__(self) -> str:
        return f"{{{self.low:g}, {self.low + self.step:g}, …, {self.high:g}}}"


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (numbers; label indices for named choices) with ``probs`` (uniform when None)."""

    values: tuple[float, ...]
    probs: tuple[float, ...] | None = None

    def draw(self, u: torch.Tensor, drawn: Mapping[str, torch.Tensor]) -> torch.Tensor:
        p = torch.tensor(self.probs or [1.0] * len(self.values), dtype=torch.float64)
        edges = (p.cumsum(0) / p.sum())[:-1]
        return torch.tensor(self.values, dtype=torch.float64)[torch.bucketize(u, edges, right=True)]

    def __str__(self) -> str:
        vals = ", ".join(f"{v:g}" for v in self.values)
        return f"{{{vals}}}" + (f" p={list(self.probs)}" if self.probs else "")


@dataclass(frozen=True)
class Bernoulli:
    """1 with probability ``p``, else 0."""

    p: float

    def draw(self, u: torch.Tensor, drawn: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return (u < self.p).double()

    def __str__(self) -> str:
        return f"p={self.p:g}"


@dataclass(frozen=True)
class ScaleByDirection:
    """Real-ESRGAN's resize factor: U[up] or U[down] by the earlier up/down/keep draw ``direction``; keep = 1."""

    direction: str
    up: tuple[float, float]
    down: tuple[float, float]

    def draw(self, u: torch.Tensor, drawn: Mapping[str, torch.Tensor]) -> torch.Tensor:
        d = drawn[self.direction]
        lo = torch.where(d == 0, self.up[0], torch.where(d == 1, self.down[0], 1.0))
        hi = torch.where(d == 0, self.up[1], torch.where(d == 1, self.down[1], 1.0))
        return lo + u * (hi - lo)

    def __str__(self) -> str:
        return f"up U{list(self.up)}, down U{list(self.down)}, keep 1 (by {self.direction})"


@dataclass(frozen=True)
class SincCutoff:
    """Real-ESRGAN's sinc cutoff ω_c: U[π/3, π] for kernels under 13 taps (``size``), else U[π/5, π]."""

    size: str

    def draw(self, u: torch.Tensor, drawn: Mapping[str, torch.Tensor]) -> torch.Tensor:
        lo = torch.where(drawn[self.size] < 13, math.pi / 3, math.pi / 5)
        return lo + u * (math.pi - lo)

    def __str__(self) -> str:
        return f"U[π/3, π] if {self.size} < 13 else U[π/5, π]"


Sampler = Union[Uniform, SplitUniform, Grid, Choice, Bernoulli, ScaleByDirection, SincCutoff]


# ------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Param:
    """One sampled quantity of a preset: its default distribution, meaning and allowed override values."""

    name: str
    sampler: Sampler
    doc: str
    labels: tuple[str, ...] | None = None  # named choices: values are indices into labels
    domain: tuple[float, float] = (-math.inf, math.inf)
    odd: bool = False  # kernel sizes

    @property
    def kind(self) -> str:
        if self.labels:
            return "label"
        if isinstance(self.sampler, Bernoulli):
            return "flag"
        if isinstance(self.sampler, Choice):
            return "int" if all(float(v).is_integer() for v in self.sampler.values) else "choice"
        return "int" if getattr(self.sampler, "integer", False) else "float"

    def describe(self) -> str:
        if self.labels and isinstance(self.sampler, Choice):
            names = [self.labels[int(v)] for v in self.sampler.values]
            probs = f" p={list(self.sampler.probs)}" if self.sampler.probs else ""
            dist = "{" + ", ".join(names) + "}" + probs
        else:
            dist = str(self.sampler)
        return f"{self.name}: {dist} — {self.doc}"

    def resolve(self, value: Any) -> Sampler:
        """The sampler for an override: a fixed value, a (low, high) range, a list of choices or a probability."""
        if isinstance(value, str) and not self.labels:
            value = _parse_value(value)
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        if isinstance(value, np.generic):
            value = value.item()
        kind = self.kind
        hint = f"(parameter {self.name}: {self.describe()})"
        if kind == "label":
            names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
            if not names or any(n not in self.labels for n in names):
                raise InputError(f"{self.name}={value!r} is not one of {', '.join(self.labels)} (or a list of them).")
            return Choice(tuple(float(self.labels.index(n)) for n in names))
        if kind == "flag":
            if isinstance(value, bool):
                return Bernoulli(float(value))
            p = _number(value, self.name)
            if not 0.0 <= p <= 1.0:
                raise InputError(f"{self.name}={value!r}: give true/false or a probability in [0, 1] {hint}.")
            return Bernoulli(p)
        if isinstance(value, (list, tuple)):
            nums = [_number(v, self.name) for v in value]
            for v in nums:
                self._check(v, hint)
            if kind in ("int", "choice") and isinstance(self.sampler, Choice):
                return Choice(tuple(nums))
            if len(nums) != 2 or nums[0] > nums[1]:
                raise InputError(f"{self.name}={value!r}: a range is [low, high] with low ≤ high {hint}.")
            return Uniform(nums[0], nums[1], integer=kind == "int")
        v = _number(value, self.name)
        self._check(v, hint)
        if isinstance(self.sampler, Choice):
            return Choice((v,))
        return Uniform(v, v, integer=kind == "int")

    def _check(self, v: float, hint: str) -> None:
        lo, hi = self.domain
        if not (lo <= v <= hi):
            raise InputError(f"{self.name}={v:g} is outside [{lo:g}, {hi:g}] {hint}.")
        if self.odd and (not float(v).is_integer() or int(v) % 2 == 0):
            raise InputError(f"{self.name}={v:g}: kernel sizes must be odd integers (e.g. 21, 41) {hint}.")


@dataclass(frozen=True)
class Preset:
    """A degradation pipeline: its parameters (in draw order) and the function that applies them."""

    name: str
    doc: str
    params: tuple[Param, ...]
    run: Callable[[_Canvas, dict[str, torch.Tensor], _Context], _Canvas]

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise InputError(f"preset {self.name!r} has no parameter {name!r}; its parameters are: {', '.join(self.names)}.")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def samplers(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Sampler]:
        """Default samplers with ``overrides`` applied (validated)."""
        out = {p.name: p.sampler for p in self.params}
        for name, value in (overrides or {}).items():
            out[name] = self.param(name).resolve(value)
        return out

    def describe(self) -> str:
        return f"{self.name}: {self.doc}\n" + "\n".join("  " + p.describe() for p in self.params)


def _kernel_params(sfx: str, sizes: tuple[int, ...], probs: tuple[float, ...], labels: tuple[str, ...],
                   sigma: tuple[float, float], beta: bool) -> list[Param]:
    """The blur-kernel parameters of one blur round (``sfx`` tells the rounds apart)."""
    out = [
        Param(f"kernel_size{sfx}", Choice(tuple(float(s) for s in sizes)), "kernel size in taps (odd)",
              domain=(1, 201), odd=True),
        Param(f"kernel{sfx}", Choice(tuple(float(i) for i in range(len(labels))), probs), "kernel type", labels=labels),
        Param(f"sigma_x{sfx}", Uniform(*sigma), "Gaussian σ along the kernel's first axis, pixels", domain=(0, 100)),
        Param(f"sigma_y{sfx}", Uniform(*sigma), "σ along the second axis (isotropic kernels: = sigma_x)", domain=(0, 100)),
        Param(f"theta{sfx}", Uniform(-math.pi, math.pi),
              "rotation of the first axis, radians, from +x (right) toward +y (down) (isotropic: 0)"),
    ]
    if beta:
        out += [
            Param(f"beta_g{sfx}", SplitUniform(0.5, 1.0, 4.0), "shape β of generalised Gaussian kernels", domain=(0.05, 20)),
            Param(f"beta_p{sfx}", SplitUniform(1.0, 1.0, 2.0), "shape β of plateau kernels", domain=(0.05, 20)),
            Param(f"omega_c{sfx}", SincCutoff(f"kernel_size{sfx}"), "cutoff of sinc kernels, radians/pixel",
                  domain=(1e-3, math.pi)),
        ]
    return out


def _realesrgan_round(sfx: str, sigma: tuple[float, float], resize_probs: tuple[float, float, float],
                      up: tuple[float, float], down: tuple[float, float], noise: tuple[float, float],
                      poisson: tuple[float, float]) -> list[Param]:
    kinds = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # Real-ESRGAN's kernel_prob, after sinc_prob = 0.1
    return [
        *_kernel_params(sfx, tuple(range(7, 22, 2)), tuple(0.9 * p for p in kinds) + (0.1,), KERNEL_KINDS, sigma, True),
        Param(f"resize{sfx}", Choice((0.0, 1.0, 2.0), resize_probs), "resize direction", labels=("up", "down", "keep")),
        Param(f"resize_scale{sfx}", ScaleByDirection(f"resize{sfx}", up, down), "resize factor", domain=(1e-3, 16)),
        Param(f"resize_mode{sfx}", Choice((0.0, 1.0, 2.0)), "resize interpolation", labels=RESIZE_MODES),
        Param(f"noise_type{sfx}", Choice((0.0, 1.0), (0.5, 0.5)), "noise model", labels=("gaussian", "poisson")),
        Param(f"noise{sfx}", Uniform(*noise), "Gaussian noise σ on the 0–255 scale", domain=(0, 255)),
        Param(f"poisson_scale{sfx}", Uniform(*poisson), "Poisson noise scale", domain=(0, 100)),
        Param(f"gray_noise{sfx}", Bernoulli(0.4), "the same noise on all channels"),
        Param(f"jpeg_quality{sfx}", Uniform(30, 95, integer=True), "JPEG quality", domain=(1, 100)),
    ]


def _run_gfpgan(c: _Canvas, p: dict[str, torch.Tensor], ctx: _Context) -> _Canvas:
    c = _blur(c, _kernels_of(p, "", ("iso", "aniso")))
    a = _col(p["haze_alpha"], c)
    c = c.where(p["haze"], c.x * a + (1 - a))
    c = _resize(c, _divide(ctx.height, p["scale"]), _divide(ctx.width, p["scale"]), "bilinear")
    c = _gaussian_noise(c, p["noise"], None, ctx, "noise1")
    c = _jpeg(c, p["jpeg_quality"], None, ctx)
    c = _resize(c, [ctx.height] * c.batch, [ctx.width] * c.batch, "bilinear")
    return c.where(p["gray"], _to_gray(c.x))


def _run_gpen(c: _Canvas, p: dict[str, torch.Tensor], ctx: _Context) -> _Canvas:
    b = c.batch
    zeros = torch.zeros(b, dtype=torch.float64)
    c = _blur(c, _build_kernels(zeros.long(), p["kernel_size"].long(), p["sigma"], p["sigma"], zeros, zeros + 1, zeros))
    c = _resize(c, _divide(ctx.height, p["scale"]), _divide(ctx.width, p["scale"]), "bilinear")
    c = _gaussian_noise(c, p["noise"], None, ctx, "noise1")
    c = _jpeg(c, p["jpeg_quality"], None, ctx)
    return _resize(c, [ctx.height] * b, [ctx.width] * b, "bilinear")


def _run_realesrgan(c: _Canvas, p: dict[str, torch.Tensor], ctx: _Context) -> _Canvas:
    b, h, w = c.batch, ctx.height, ctx.width
    # round 1: blur, resize relative to the current size, noise, JPEG
    c = _blur(c, _kernels_of(p, "", KERNEL_KINDS))
    c = _resize(c, _times(h, p["resize_scale"]), _times(w, p["resize_scale"]), _labels(p["resize_mode"], RESIZE_MODES))
    c = _realesrgan_noise(c, p, "", ctx, "noise1")
    c = _jpeg(c, p["jpeg_quality"], None, ctx)
    # round 2: blur (p = 0.8), resize relative to the target LQ size, noise
    c = _blur(c, _kernels_of(p, "2", KERNEL_KINDS), active=p["blur2"])
    lq_h, lq_w = _divide(h, p["scale"]), _divide(w, p["scale"])
    s2 = p["resize_scale2"].tolist()
    c = _resize(c, [max(1, int(a * s)) for a, s in zip(lq_h, s2)], [max(1, int(a * s)) for a, s in zip(lq_w, s2)],
                _labels(p["resize_mode2"], RESIZE_MODES))
    c = _realesrgan_noise(c, p, "2", ctx, "noise2")
    # final: [resize to H/scale + sinc] and JPEG, in random order per image
    jpeg_first = p["final_order"] == 1
    c = _jpeg(c, p["jpeg_quality2"], jpeg_first, ctx)
    c = _resize(c, lq_h, lq_w, _labels(p["final_resize_mode"], RESIZE_MODES))
    zeros = torch.zeros(b, dtype=torch.float64)
    sinc = _build_kernels(torch.full((b,), 6), p["final_kernel_size"].long(), zeros + 1, zeros + 1, zeros, zeros + 1,
                          p["final_omega_c"])
    c = _blur(c, sinc, active=p["final_sinc"])
    c = _jpeg(c, p["jpeg_quality2"], ~jpeg_first, ctx)
    if ctx.quantize:  # the LQ image as Real-ESRGAN stores it, before the resize back to the input size
        c = _Canvas(_quantize(c.x), c.h, c.w)
    return _resize(c, [h] * b, [w] * b, "bilinear")


PRESETS: dict[str, Preset] = {
    "gfpgan": Preset(
        "gfpgan",
        "GFPGAN / RestoreFormer first-order model used by VSPBFR: "
        "blur → (haze) → ↓r bilinear → Gaussian noise → JPEG → ↑ back → (gray)",
        (
            *_kernel_params("", (39, 41), (0.5, 0.5), ("iso", "aniso"), (0.1, 10.0), False),
            Param("haze", Bernoulli(0.0), "blend with white after the blur (VSPBFR restoration stage: 0.008)"),
            Param("haze_alpha", Uniform(0.75, 0.95), "image weight in the haze blend", domain=(0, 1)),
            Param("scale", Uniform(0.8, 8.0), "downsampling factor r (the LQ is H/r × W/r before resizing back)",
                  domain=(0.05, 4096)),
            Param("noise", Uniform(0.0, 20.0), "Gaussian noise σ on the 0–255 scale", domain=(0, 255)),
            Param("jpeg_quality", Uniform(60, 100, integer=True), "JPEG quality", domain=(1, 100)),
            Param("gray", Bernoulli(0.0), "grayscale LQ (VSPBFR restoration stage: 0.008; convert the GT too)"),
        ),
        _run_gfpgan,
    ),
    "gpen": Preset(
        "gpen",
        "PLTrans Eq. 13 (following GPEN): isotropic Gaussian blur ρ → ↓b bilinear → Gaussian noise → JPEG → ↑ back",
        (
            Param("kernel_size", Choice((31.0,)), "blur kernel size in taps (odd; 31 covers ±3σ at ρ = 5)",
                  domain=(1, 201), odd=True),
            Param("sigma", Grid(0.0, 5.0, 0.1), "Gaussian blur σ (ρ), pixels; 0 = no blur", domain=(0, 100)),
            Param("scale", Uniform(0.8, 32.0), "downsampling factor b", domain=(0.05, 4096)),
            Param("noise", Uniform(0.0, 10.0), "Gaussian noise σ on the 0–255 scale", domain=(0, 255)),
            Param("jpeg_quality", Uniform(50, 100, integer=True), "JPEG quality", domain=(1, 100)),
        ),
        _run_gpen,
    ),
    "realesrgan": Preset(
        "realesrgan",
        "Real-ESRGAN second-order model (PGDiff's restorer), default x4plus ranges, resized back to the input size",
        (
            *_realesrgan_round("", (0.2, 3.0), (0.2, 0.7, 0.1), (1.0, 1.5), (0.15, 1.0), (1.0, 30.0), (0.05, 3.0)),
            Param("blur2", Bernoulli(0.8), "apply the second blur"),
            *_realesrgan_round("2", (0.2, 1.5), (0.3, 0.4, 0.3), (1.0, 1.2), (0.3, 1.0), (1.0, 25.0), (0.05, 2.5)),
            Param("final_order", Choice((0.0, 1.0), (0.5, 0.5)), "final steps' order",
                  labels=("resize_first", "jpeg_first")),
            Param("final_resize_mode", Choice((0.0, 1.0, 2.0)), "final resize interpolation", labels=RESIZE_MODES),
            Param("final_sinc", Bernoulli(0.8), "apply the final sinc filter"),
            Param("final_kernel_size", Choice(tuple(float(s) for s in range(7, 22, 2))), "final sinc size (odd)",
                  domain=(1, 201), odd=True),
            Param("final_omega_c", Uniform(math.pi / 3, math.pi), "final sinc cutoff, radians/pixel", domain=(1e-3, math.pi)),
            Param("scale", Uniform(4.0, 4.0), "overall downsampling factor (LQ size H/scale)", domain=(0.05, 4096)),
        ),
        _run_realesrgan,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``gfpgan``, ``gpen``, ``realesrgan``)."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown degradation preset {name!r}; choose one of {', '.join(PRESETS)}.") from None


# ------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class DegradeParams:
    """The parameters each image was degraded with: ``values[name]`` is a (B,) float64 CPU tensor.

    Named choices hold indices into the parameter's labels and flags hold 0/1; :meth:`as_records` turns them
    into strings and booleans. Parameters of steps an image skipped (e.g. ``sigma_y`` of an isotropic kernel,
    which is set to ``sigma_x``) hold the value that was in effect.
    """

    preset: str
    seeds: tuple[int, ...]
    values: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.seeds)

    def as_records(self) -> list[dict[str, Any]]:
        """One dict per image: ``{"preset", "seed", name: value, ...}`` with plain Python values."""
        spec = get_preset(self.preset)
        cols = {p.name: (p, self.values[p.name].tolist()) for p in spec.params}
        rows = []
        for i, seed in enumerate(self.seeds):
            row: dict[str, Any] = {"preset": self.preset, "seed": seed}
            for name, (p, vals) in cols.items():
                v = vals[i]
                kind = p.kind
                row[name] = (p.labels[int(v)] if kind == "label" else bool(v) if kind == "flag"
                             else int(v) if kind == "int" else round(v, 6))
            rows.append(row)
        return rows

    def summary(self, index: int = 0) -> str:
        """A one-line description of image ``index``'s degradation."""
        row = self.as_records()[index]
        return " ".join(f"{k}={v}" for k, v in row.items())


def _image_seeds(seed: int | Sequence[int], batch: int) -> list[int]:
    if isinstance(seed, torch.Tensor):
        seed = seed.tolist()
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed) + i for i in range(batch)]
    if isinstance(seed, Sequence) and all(isinstance(s, (int, np.integer)) for s in seed):
        if len(seed) != batch:
            raise InputError(f"got {len(seed)} seeds for a batch of {batch}; "
                             "give one seed (image i uses seed + i) or one per image.")
        return [int(s) for s in seed]
    raise InputError(f"seed must be an integer or a list of integers (one per image), got {seed!r}.")


def sample_params(preset: str, seed: int | Sequence[int] = 0, batch: int | None = None, **overrides: Any) -> DegradeParams:
    """Draw the parameters of ``batch`` images (image i from seed + i, or from ``seed[i]``).

    ``overrides`` fix or re-range parameters by name; see :func:`degrade`.
    """
    spec = get_preset(preset)
    if batch is None:
        batch = 1 if isinstance(seed, (int, np.integer)) else len(seed)
    seeds = _image_seeds(seed, batch)
    samplers = spec.samplers(overrides)
    # One CPU generator per image keeps each image's parameters independent of the batch it is in.
    u = torch.stack([torch.rand(len(spec.params), generator=make_generator(s, "cpu", "degrade.params"), dtype=torch.float64)
                     for s in seeds]) if seeds else torch.zeros(0, len(spec.params), dtype=torch.float64)
    drawn: dict[str, torch.Tensor] = {}
    for j, p in enumerate(spec.params):
        drawn[p.name] = samplers[p.name].draw(u[:, j].contiguous(), drawn).to(torch.float64)
    for sfx in ("", "2"):  # isotropic kernels: σ_y = σ_x, no rotation (what is reported is what is applied)
        if f"kernel{sfx}" in drawn:
            labels = spec.param(f"kernel{sfx}").labels
            iso = torch.tensor([KERNEL_KINDS.index(labels[int(k)]) in _ISO_KINDS for k in drawn[f"kernel{sfx}"].tolist()],
                               dtype=torch.bool)
            drawn[f"sigma_y{sfx}"] = torch.where(iso, drawn[f"sigma_x{sfx}"], drawn[f"sigma_y{sfx}"])
            drawn[f"theta{sfx}"] = torch.where(iso, 0.0, drawn[f"theta{sfx}"])
    return DegradeParams(spec.name, tuple(seeds), drawn)


# ------------------------------------------------------------------------------------------- kernels


def blur_kernels(kind: str | Sequence[str], size: int | Sequence[int] = 21, sigma_x: float | Sequence[float] = 1.0,
                 sigma_y: float | Sequence[float] | None = None, theta: float | Sequence[float] = 0.0,
                 beta: float | Sequence[float] = 1.0, omega_c: float | Sequence[float] = math.pi / 2) -> torch.Tensor:
    """Blur kernels (B, K, K) float64 on the CPU, one per entry, zero-padded to the largest size K, each summing to 1.

    ``kind`` is one of :data:`KERNEL_KINDS`; scalars broadcast over the entries. Coordinates: x runs along the width
    (columns), y down the height (rows); ``sigma_x`` lies along the direction rotated by ``theta`` radians from +x
    toward +y. ``beta`` shapes generalised-Gaussian (exp(−½Q^β)) and plateau (1/(1+Q^β)) kernels; ``omega_c`` is
    the sinc cutoff in radians per pixel.
    """
    kinds = [kind] if isinstance(kind, str) else list(kind)
    bad = [k for k in kinds if k not in KERNEL_KINDS]
    if bad:
        raise InputError(f"unknown kernel kind(s) {bad}; choose from {', '.join(KERNEL_KINDS)}.")
    n = len(kinds)

    def vec(v: Any) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=torch.float64).flatten()
        return t.expand(n).clone() if t.numel() == 1 else t

    sizes = vec(size)
    if ((sizes % 2) != 1).any() or (sizes < 1).any():
        raise InputError(f"kernel sizes must be odd positive integers, got {sizes.tolist()}.")
    sx = vec(sigma_x)
    return _build_kernels(torch.tensor([KERNEL_KINDS.index(k) for k in kinds]), sizes.long(), sx,
                          sx if sigma_y is None else vec(sigma_y), vec(theta), vec(beta), vec(omega_c))


def _build_kernels(kind: torch.Tensor, size: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, theta: torch.Tensor,
                   beta: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """Kernels from per-image parameter vectors (indices into KERNEL_KINDS), float64 CPU.

    Hand-written: kornia's Gaussian kernels are axis-aligned; the rotated anisotropic, generalised-Gaussian,
    plateau and sinc families of GFPGAN / Real-ESRGAN are not in kornia.
    """
    big = int(size.max()) // 2
    r = torch.arange(-big, big + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    iso = torch.isin(kind, torch.tensor(_ISO_KINDS))[:, None, None]
    sx = sx.clamp(min=1e-3)[:, None, None]
    sy = torch.where(iso, sx, sy.clamp(min=1e-3)[:, None, None])
    th = torch.where(iso, 0.0, theta[:, None, None])
    c, s = th.cos(), th.sin()
    # Q = v^T Σ^-1 v with Σ = R diag(σx², σy²) R^T: project onto the rotated axes.
    q = (c * xx + s * yy) ** 2 / sx**2 + (-s * xx + c * yy) ** 2 / sy**2
    qb = q ** beta[:, None, None]
    rad = (xx**2 + yy**2).sqrt()
    w = omega[:, None, None]
    safe = torch.where(rad == 0, 1.0, rad)
    sinc = torch.where(rad == 0, w**2 / (4 * math.pi), w * torch.special.bessel_j1(w * safe) / (2 * math.pi * safe))
    family = kind[:, None, None]
    k = torch.where(family <= 1, (-0.5 * q).exp(),
                    torch.where(family <= 3, (-0.5 * qb).exp(), torch.where(family <= 5, 1 / (qb + 1), sinc)))
    half = (size // 2)[:, None, None]
    k = k * ((xx.abs() <= half) & (yy.abs() <= half))
    return k / k.sum((1, 2), keepdim=True)


def _kernels_of(p: dict[str, torch.Tensor], sfx: str, labels: tuple[str, ...]) -> torch.Tensor:
    kind = torch.tensor([KERNEL_KINDS.index(labels[int(i)]) for i in p[f"kernel{sfx}"].tolist()], dtype=torch.long)
    generalized = (kind == 2) | (kind == 3)
    beta = torch.where(generalized, p[f"beta_g{sfx}"], p[f"beta_p{sfx}"]) if f"beta_g{sfx}" in p else torch.ones(len(kind))
    omega = p.get(f"omega_c{sfx}", torch.full((len(kind),), math.pi / 2))
    return _build_kernels(kind, p[f"kernel_size{sfx}"].long(), p[f"sigma_x{sfx}"], p[f"sigma_y{sfx}"],
                          p[f"theta{sfx}"], beta.double(), omega)


# ------------------------------------------------------------------------------------------- canvas ops


@dataclass(frozen=True)
class _Canvas:
    """A batch whose image i occupies x[i, :, :h[i], :w[i]] (float32); the rest is scratch."""

    x: torch.Tensor
    h: list[int]
    w: list[int]

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def full(self) -> bool:
        return set(self.h) == {self.x.shape[2]} and set(self.w) == {self.x.shape[3]}

    def where(self, flag: torch.Tensor, other: torch.Tensor) -> _Canvas:
        """Images whose 0/1 ``flag`` is set take ``other``."""
        if not flag.any():
            return self
        return _Canvas(torch.where(_col(flag, self).bool(), other, self.x), self.h, self.w)

    def valid(self) -> torch.Tensor:
        """(B, 1, Hc, Wc) bool mask of each image's region."""
        dev = self.x.device
        rows = torch.arange(self.x.shape[2], device=dev)[None, :] < torch.tensor(self.h, device=dev)[:, None]
        cols = torch.arange(self.x.shape[3], device=dev)[None, :] < torch.tensor(self.w, device=dev)[:, None]
        return (rows[:, :, None] & cols[:, None, :])[:, None]


@dataclass(frozen=True)
class _Context:
    seeds: list[int]
    height: int
    width: int
    jpeg: str
    quantize: bool


def _col(v: torch.Tensor, c: _Canvas) -> torch.Tensor:
    """A (B,) CPU parameter as a (B, 1, 1, 1) float32 tensor on the canvas' device."""
    return v.to(device=c.x.device, dtype=torch.float32).view(-1, 1, 1, 1)


def _divide(n: int, scale: torch.Tensor) -> list[int]:
    """floor(n / scale), at least 1 (the papers' ``int(w // scale)``)."""
    return [max(1, int(n // s)) for s in scale.tolist()]


def _times(n: int, scale: torch.Tensor) -> list[int]:
    """floor(n · scale), at least 1 (``F.interpolate(scale_factor=...)``'s output size)."""
    return [max(1, int(n * s)) for s in scale.tolist()]


def _labels(v: torch.Tensor, labels: tuple[str, ...]) -> list[str]:
    return [labels[int(i)] for i in v.tolist()]


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255) / 255


def _to_gray(x: torch.Tensor) -> torch.Tensor:
    from kornia.color import rgb_to_grayscale

    return rgb_to_grayscale(x).expand_as(x)


def _fold(j: torch.Tensor, n: torch.Tensor, mode: str) -> torch.Tensor:
    """Source index of position ``j`` in a line of ``n`` pixels: reflect-101 (OpenCV's default border) or replicate."""
    if mode == "replicate":
        return torch.minimum(j.clamp(min=0), n - 1)
    period = (2 * (n - 1)).clamp(min=1)
    m = j.remainder(period)
    return torch.where(m < n, m, period - m)


def _pad(c: _Canvas, pad: int, mode: str) -> torch.Tensor:
    """Pad every image by ``pad`` at its own borders (its size, not the canvas'): (B, C, Hc + 2p, Wc + 2p).

    Hand-written gather: F.pad / kornia pad the whole canvas, and torch's reflect needs pad < size.
    """
    b, ch, hc, wc = c.x.shape
    dev = c.x.device
    rows = _fold(torch.arange(-pad, hc + pad, device=dev)[None], torch.tensor(c.h, device=dev)[:, None], mode)
    cols = _fold(torch.arange(-pad, wc + pad, device=dev)[None], torch.tensor(c.w, device=dev)[:, None], mode)
    index = (rows[:, :, None] * wc + cols[:, None, :]).flatten(1)
    out = c.x.flatten(2).gather(2, index[:, None].expand(b, ch, -1))
    return out.view(b, ch, hc + 2 * pad, wc + 2 * pad)


def _blur(c: _Canvas, kernels: torch.Tensor, active: torch.Tensor | None = None) -> _Canvas:
    """Correlate each image with its kernel (reflect-101 borders, like cv2.filter2D); inactive images are kept."""
    from kornia.filters import filter2d

    if active is not None:
        if not active.any():
            return c
        delta = torch.zeros_like(kernels)
        delta[:, kernels.shape[1] // 2, kernels.shape[2] // 2] = 1
        kernels = torch.where(active.bool()[:, None, None], kernels, delta)
    k = kernels.to(device=c.x.device, dtype=c.x.dtype)
    pad = k.shape[-1] // 2
    if c.full and min(c.x.shape[2:]) > pad:
        return _Canvas(filter2d(c.x, k, border_type="reflect"), c.h, c.w)
    return _Canvas(filter2d(_pad(c, pad, "reflect"), k, padding="valid"), c.h, c.w)


def _cubic_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """PyTorch's bicubic taps (Keys, A = −0.75) for offsets −1, 0, 1, 2 at fraction ``t``."""
    a = -0.75

    def near(x: torch.Tensor) -> torch.Tensor:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: torch.Tensor) -> torch.Tensor:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _resample_matrix(n_in: list[int], n_out: list[int], modes: list[str], in_len: int, out_len: int,
                     device: torch.device) -> torch.Tensor:
    """(B, out_len, in_len) matrices that resize each image's line of n_in pixels to n_out pixels.

    Same weights as F.interpolate(size=..., align_corners=False, antialias=False) — area, bilinear (which equals
    cv2.INTER_LINEAR) and bicubic — but per image, so one batched matmul resizes images to different sizes.
    Hand-written because kornia's and torch's resizes take one output size per batch; no antialiasing, as in
    the papers' pipelines (the aliasing is part of the degradation).
    """
    f32 = torch.float32
    ni = torch.tensor(n_in, device=device)[:, None]
    no = torch.tensor(n_out, device=device)[:, None]
    last = ni - 1
    o = torch.arange(out_len, device=device)[None]
    x = (o.to(f32) + 0.5) * (ni.to(f32) / no.to(f32)) - 0.5
    out = torch.zeros(len(n_in), out_len, in_len, device=device, dtype=f32)
    for mode in sorted(set(modes)):
        w = torch.zeros_like(out)
        if mode == "area":  # adaptive average pooling windows
            start = (o * ni) // no
            end = ((o + 1) * ni + no - 1) // no
            j = torch.arange(in_len, device=device)[None, None]
            w = ((j >= start[..., None]) & (j < end[..., None])).to(f32) / (end - start).clamp(min=1)[..., None].to(f32)
        elif mode == "bilinear":
            xl = x.clamp(min=0)
            i0 = torch.minimum(xl.floor().long(), last)
            lam = xl - i0.to(f32)
            w.scatter_add_(2, i0[..., None], (1 - lam)[..., None])
            w.scatter_add_(2, torch.minimum(i0 + 1, last)[..., None], lam[..., None])
        elif mode == "bicubic":
            i0 = x.floor()
            for off, wt in zip(range(-1, 3), _cubic_weights(x - i0)):
                idx = torch.minimum((i0.long() + off).clamp(min=0), last)
                w.scatter_add_(2, idx[..., None], wt[..., None])
        else:
            raise InputError(f"unknown resize mode {mode!r}; choose from {', '.join(RESIZE_MODES)}.")
        sel = torch.tensor([m == mode for m in modes], device=device)[:, None, None]
        out = torch.where(sel, w, out)
    return out * (o < no)[..., None]


def _resize(c: _Canvas, h: list[int], w: list[int], mode: str | list[str]) -> _Canvas:
    modes = [mode] * c.batch if isinstance(mode, str) else mode
    dev = c.x.device
    mh = _resample_matrix(c.h, h, modes, c.x.shape[2], max(h), dev)
    mw = _resample_matrix(c.w, w, modes, c.x.shape[3], max(w), dev)
    return _Canvas(mh[:, None] @ c.x @ mw[:, None].transpose(-1, -2), list(h), list(w))


def resize(x: torch.Tensor, size: tuple[int, int] | Sequence[tuple[int, int]],
           mode: str | Sequence[str] = "bilinear") -> list[torch.Tensor]:
    """Resize each image of (B, C, H, W) to its own (h, w) with ``mode`` (area, bilinear = cv2.INTER_LINEAR, bicubic).

    Returns a list of (C, h_i, w_i) tensors: the degradations' per-image resampler, for callers and tests.
    """
    b = x.shape[0]
    sizes = [tuple(size)] * b if isinstance(size[0], int) else [tuple(s) for s in size]
    c = _resize(_Canvas(x.float(), [x.shape[2]] * b, [x.shape[3]] * b), [s[0] for s in sizes], [s[1] for s in sizes],
                [mode] * b if isinstance(mode, str) else list(mode))
    return [c.x[i, :, : s[0], : s[1]].to(x.dtype) for i, s in enumerate(sizes)]


# ------------------------------------------------------------------------------------------- noise


def _draw(c: _Canvas, ctx: _Context, stream: str, images: list[int],
          fn: Callable[[int, torch.Generator], torch.Tensor]) -> torch.Tensor:
    """Per-image draws into a zero canvas; image i's draw comes from its own generator (seed i, ``stream``)."""
    out = torch.zeros_like(c.x)
    for i in images:
        out[i, :, : c.h[i], : c.w[i]] = fn(i, make_generator(ctx.seeds[i], c.x.device, f"degrade.{stream}"))
    return out


def _gaussian_noise(c: _Canvas, sigma: torch.Tensor, gray: torch.Tensor | None, ctx: _Context, stream: str,
                    apply: torch.Tensor | None = None) -> _Canvas:
    """x + N(0, σ/255) per image (one noise plane for all channels where ``gray``), clamped to [0, 1]."""
    use = (sigma > 0) if apply is None else (sigma > 0) & apply.bool()
    images = [i for i, u in enumerate(use.tolist()) if u]
    if not images:
        return c
    g = [False] * c.batch if gray is None else gray.bool().tolist()
    dev = c.x.device
    noise = _draw(c, ctx, stream, images,
                  lambda i, gen: torch.randn((1 if g[i] else 3, c.h[i], c.w[i]), generator=gen, device=dev))
    return _Canvas((c.x + noise * _col(sigma / 255, c)).clamp(0, 1), c.h, c.w)


def _levels(q: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Real-ESRGAN's Poisson resolution: 2^ceil(log2(number of distinct 8-bit values)) per image, (B, 1, 1, 1)."""
    idx = (q * 255).round().long().clamp(0, 255).flatten(1)
    hist = torch.zeros(q.shape[0], 256, device=q.device).scatter_add_(1, idx, valid.expand_as(q).flatten(1).float())
    n = (hist > 0).sum(1).clamp(min=1).float()
    return (2 ** n.log2().ceil()).view(-1, 1, 1, 1)


def _poisson_noise(c: _Canvas, scale: torch.Tensor, gray: torch.Tensor, apply: torch.Tensor, ctx: _Context,
                   stream: str) -> _Canvas:
    """Real-ESRGAN's Poisson noise on the 8-bit image (or its luma where ``gray``), times ``scale``, clamped."""
    images = [i for i, u in enumerate(((scale > 0) & apply.bool()).tolist()) if u]
    if not images:
        return c
    x = c.x.detach().clamp(0, 1)  # the sampled residual is a constant: gradients pass through the identity
    valid = c.valid()
    g = gray.bool().tolist()
    color = _quantize(x)
    luma = _quantize(_to_gray(x)[:, :1])
    vc, vg = _levels(color, valid), _levels(luma, valid)

    def draw(i: int, gen: torch.Generator) -> torch.Tensor:
        img, vals = (luma[i], vg[i]) if g[i] else (color[i], vc[i])
        img = img[:, : c.h[i], : c.w[i]]
        return torch.poisson(img * vals, generator=gen) / vals - img

    noise = _draw(c, ctx, stream, images, draw)
    return _Canvas((c.x + noise * _col(scale, c)).clamp(0, 1), c.h, c.w)


def _realesrgan_noise(c: _Canvas, p: dict[str, torch.Tensor], sfx: str, ctx: _Context, stream: str) -> _Canvas:
    poisson = p[f"noise_type{sfx}"] == 1
    c = _gaussian_noise(c, p[f"noise{sfx}"], p[f"gray_noise{sfx}"], ctx, stream, apply=~poisson)
    return _poisson_noise(c, p[f"poisson_scale{sfx}"], p[f"gray_noise{sfx}"], poisson, ctx, stream)


# ------------------------------------------------------------------------------------------- JPEG


def jpeg_pillow(x: torch.Tensor, quality: int | Sequence[int]) -> torch.Tensor:
    """A real JPEG round trip through Pillow (libjpeg, 4:2:0): (B, 3, H, W) in [0, 1] → 8-bit values in [0, 1]."""
    from PIL import Image

    b = x.shape[0]
    qs = [int(quality)] * b if isinstance(quality, (int, float)) else [int(q) for q in quality]
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(arr)
    for i in range(b):
        buf = io.BytesIO()
        Image.fromarray(arr[i]).save(buf, format="JPEG", quality=qs[i])
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255


def _jpeg(c: _Canvas, quality: torch.Tensor, apply: torch.Tensor | None, ctx: _Context) -> _Canvas:
    use = torch.ones(c.batch, dtype=torch.bool) if apply is None else apply.bool()
    if ctx.jpeg == "none" or not use.any():
        return c
    if ctx.jpeg == "kornia":
        from kornia.enhance import jpeg_codec_differentiable

        # Fill around each image by edge replication, as libjpeg pads partial blocks, then code the whole canvas.
        x = c.x if c.full else _pad(c, 0, "replicate")
        y = jpeg_codec_differentiable(x.clamp(0, 1), quality.to(device=x.device, dtype=x.dtype))
        return _Canvas(torch.where(use.to(x.device)[:, None, None, None], y, c.x), c.h, c.w)
    x = c.x.clone()
    for i in [i for i, u in enumerate(use.tolist()) if u]:  # Pillow codes one image at a time
        x[i, :, : c.h[i], : c.w[i]] = jpeg_pillow(c.x[i: i + 1, :, : c.h[i], : c.w[i]], int(quality[i]))[0]
    return _Canvas(x, c.h, c.w)


# ------------------------------------------------------------------------------------------- entry points


def _check_input(x: Any, value_range: tuple[float, float]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"degrade expects a torch tensor (B, 3, H, W), got {type(x).__name__}.")
    if x.dim() != 4 or x.shape[1] != 3:
        hint = ""
        if x.dim() == 4 and x.shape[-1] in (1, 2, 3, 4):
            hint = " A ComfyUI IMAGE (B, H, W, C) needs bfr_core.images.split_alpha and .permute(0, 3, 1, 2) first."
        elif x.dim() == 3:
            hint = " Add a batch dimension: x[None]."
        elif x.dim() == 4 and x.shape[1] in (1, 2, 4):
            hint = " Grayscale or alpha images: expand to RGB first (bfr_core.images.split_alpha does)."
        raise InputError(f"degrade expects (B, 3, H, W) RGB, got shape {tuple(x.shape)}.{hint}")
    if not x.is_floating_point():
        raise InputError(f"degrade expects a float tensor with values in {value_range}, got {x.dtype}; "
                         "divide uint8 images by 255.")
    if 0 in x.shape:
        raise InputError(f"degrade got an empty tensor of shape {tuple(x.shape)}.")
    lo, hi = value_range
    if not hi > lo:
        raise InputError(f"value_range must be (low, high) with low < high, got {value_range}.")
    mn, mx = (float(v) for v in torch.aminmax(x.detach()))
    if not math.isfinite(mn + mx):
        raise InputError("the image contains NaN or infinite values; check the node or model that produced it.")
    slack = 0.05 * (hi - lo)
    if mn < lo - slack or mx > hi + slack:
        raise InputError(
            f"image values span [{mn:.3g}, {mx:.3g}] but value_range is {value_range}: pass value_range=(-1, 1) for model "
            "tensors, or scale 0–255 images to [0, 1].")
    return ((x.float() - lo) / (hi - lo)).clamp(0, 1)


def degrade(x: torch.Tensor, preset: str = "gfpgan", seed: int | Sequence[int] = 0, *, jpeg: JpegBackend = "pillow",
            value_range: tuple[float, float] = (0.0, 1.0), quantize: bool | None = None,
            params: DegradeParams | None = None, **overrides: Any) -> tuple[torch.Tensor, DegradeParams]:
    """Degrade a batch (B, 3, H, W) with a paper's training pipeline; returns (degraded batch, parameters).

    ``seed``: image i uses ``seed + i``, or ``seed[i]`` for a list. ``overrides`` fix or re-range any parameter of
    the preset by name (see ``PRESETS[preset].describe()``): a number fixes it (``scale=16`` for a ×16 test set),
    ``[low, high]`` samples U[low, high], a label or a list of labels picks among named choices
    (``kernel="aniso"``, ``resize_mode=["bilinear", "bicubic"]``), a list picks among kernel sizes, and flags take
    true/false or a probability (``gray=0.008``). ``params`` reuses parameters from :func:`sample_params`.
    ``quantize`` rounds the output to 8 bits (default: on, except for the differentiable ``jpeg="kornia"``).
    """
    if jpeg not in ("pillow", "kornia", "none"):
        raise InputError(f"jpeg must be 'pillow', 'kornia' or 'none', got {jpeg!r}.")
    x01 = _check_input(x, value_range)
    b, _, h, w = x.shape
    if params is None:
        params = sample_params(preset, _image_seeds(seed, b), b, **overrides)
    elif overrides or params.preset != preset or len(params) != b:
        raise InputError("pass either params (for the same preset and batch size) or overrides, not both.")
    ctx = _Context(list(params.seeds), h, w, jpeg, jpeg != "kornia" if quantize is None else bool(quantize))
    out = get_preset(preset).run(_Canvas(x01, [h] * b, [w] * b), params.values, ctx).x.clamp(0, 1)
    if ctx.quantize:
        out = _quantize(out)
    lo, hi = value_range
    return (out * (hi - lo) + lo).to(x.dtype), params


@dataclass(frozen=True)
class TrainingDegradation:
    """``fn(hq, generator) -> lq`` for the trainer: per-image seeds drawn from ``generator``; picklable for workers."""

    preset: str
    jpeg: JpegBackend = "pillow"
    overrides: tuple[tuple[str, Any], ...] = ()

    def __call__(self, hq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seeds = torch.randint(0, 2**62, (hq.shape[0],), generator=generator, device=generator.device).tolist()
        return degrade(hq, self.preset, seeds, jpeg=self.jpeg, **dict(self.overrides))[0]


def training_degradation(preset: str, jpeg: JpegBackend = "pillow", **overrides: Any) -> TrainingDegradation:
    """A validated :class:`TrainingDegradation` (bad preset names or overrides fail here, not in a worker)."""
    get_preset(preset).samplers(overrides)
    if jpeg not in ("pillow", "kornia", "none"):
        raise InputError(f"jpeg must be 'pillow', 'kornia' or 'none', got {jpeg!r}.")
    return TrainingDegradation(preset, jpeg, tuple(overrides.items()))


def _number(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
        raise InputError(f"{name}={v!r}: expected a number.")
    if not math.isfinite(float(v)):
        raise InputError(f"{name}={v!r}: expected a finite number.")
    return float(v)


def _parse_value(text: str) -> Any:
    """One override value: JSON (``16``, ``[60, 80]``, ``"iso"``), ``a:b`` ranges, ``a|b`` choices, true/false, words."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False

    def scalar(t: str) -> Any:
        try:
            return float(t)
        except ValueError:
            return t.strip()

    if "|" in text:
        return [scalar(t) for t in text.split("|")]
    if ":" in text:
        return [scalar(t) for t in text.split(":", 1)]
    return scalar(text)


def parse_overrides(text: str) -> dict[str, Any]:
    """Overrides from text, e.g. ``"scale=16, noise=0:10, kernel=iso|aniso, gray=true"`` (commas, semicolons or lines).

    Values may also be JSON (``jpeg_quality=[60, 80]``); commas inside brackets are kept.
    """
    out: dict[str, Any] = {}
    for item in re.split(r"[;\n]|,(?![^\[]*\])", text or ""):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"override {item!r} is not name=value (e.g. scale=16, noise=0:10, kernel=iso).")
        out[name.strip()] = _parse_value(value)
    return out
