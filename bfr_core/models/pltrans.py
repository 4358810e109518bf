"""PLTrans (Xie et al., CVPR 2024): prior-based latent transformations for blind face restoration.

No code or weights were released; this is our reconstruction. Every choice the paper leaves open is argued
in ``pltrans_design.md`` next to this file. Shapes below are for the default (full-size) configuration.

* **E** (:class:`~bfr_core.models.vq.Encoder`, the HQ dictionary's encoder): degraded face x (B, 3, 512, 512)
  → preliminary features q (B, 256, 16, 16).
* **Latent regulariser R** (:class:`LatentRegularizer`): E_Q maps q to a KL-regularised latent u (μ, log σ²)
  (B, 16, 16, 16); the LQ latent is perturbed to step n, denoised by a small ε-predicting UNet from n down to
  s, with the low-frequency DWT band of the equally-noised LQ latent injected after every step (Eq. 1), then
  û₀ is read off in one jump; D_Q maps û₀ back to the degradation-unaware query q̂ (B, 256, 16, 16).
* **Prior key/value P** (:class:`PriorKeyValue`): z = self-attention(conv(q)); the d = 8 nearest entries of
  the frozen HQ codebook V (1024 × 256) at each position, nearest first (Eq. 5); z̃ = Σ_l r_l e⁽ˡ⁾ with a
  learnable r (Eq. 6); {k, v} = Φ(z̃, z) + z̃ with Φ a light transformer in which z̃ attends to z (Eq. 7).
* **Cross-attention** (:class:`CrossAttentionBlock`, Eq. 8–9): Ẑ = Conv(softmax(QKᵀ/√N)V) + k with Q from q̂
  and K, V from k = v, repeated ``cross_blocks`` times (each block's Ẑ is the next block's k = v).
* **G**: ``post_quant_conv`` + the dictionary's decoder, Ẑ → restored face (B, 3, 512, 512), not clamped.

Ablation switches (paper Table 1): ``use_dictionary=False`` (w/o V: z̃ = z), ``use_diffusion=False`` (w/o DIFF:
q̂ = q, no regulariser), ``use_prior_transformer=False`` (w/o LT: k = v = z̃), ``use_dwt=False`` (w/o DWT: no
low-frequency injection). Every random draw comes from the caller's ``torch.Generator`` (one, or one per sample).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import pywt
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError
from ..progress import Progress
from ..sampling.schedule import DiffusionSchedule, linear_betas
from .adm_unet import ADMUNet, ADMUNetConfig
from .adm_unet import config_from_state_dict as unet_config_from_state_dict
from .vq import (VQGAN, Decoder, Encoder, ResnetBlock, SelfAttention, VQGANConfig, backbone_fields, nearest_codes,
                 normalize, spatial_attention)

__all__ = [
    "PLTransConfig", "PLTrans", "LatentRegularizer", "PriorKeyValue", "PriorOutput", "CrossAttentionBlock",
    "WaveletTransform2d", "config_from_state_dict", "draw_noise", "posterior_coefficients",
    "DEFAULT_N", "DEFAULT_S", "DEFAULT_STEPS",
]

#: Inference defaults (training-step units of the T = 1000 schedule; see the design note).
DEFAULT_N, DEFAULT_S, DEFAULT_STEPS = 200, 20, 10

Generators = torch.Generator | Sequence[torch.Generator]


@dataclass
class PLTransConfig:
    """Sizes and switches; the defaults build the full-size model."""

    # E and G: RestoreFormer's dictionary encoder/decoder
    resolution: int = 512
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    num_heads: int = 8
    norm_groups: int = 32
    # the dictionary V and the prior key/value module P
    n_embed: int = 1024
    embed_dim: int = 256
    top_d: int = 8
    prior_heads: int = 8
    lt_blocks: int = 1  # blocks of the lightweight transformer Φ
    lt_mlp_ratio: int = 4
    # cross-attention (Eq. 8–9)
    cross_blocks: int = 4
    cross_heads: int = 8
    # the latent regulariser R = {E_Q, D_Q, ε_θ}
    latent_channels: int = 16
    mapper_channels: int = 256
    unet_channels: int = 64
    unet_channel_mult: tuple[int, ...] = (1, 2, 4)
    unet_res_blocks: int = 2
    unet_attn_resolutions: tuple[int, ...] = (8, 4)  # latent-map sizes
    unet_head_channels: int = 64
    timesteps: int = 1000
    beta_start: float = 1e-4  # linear β range of a 1000-step schedule (rescaled by 1000 / T for other T)
    beta_end: float = 0.02
    dwt_wavelet: str = "haar"
    dwt_levels: int = 2
    # ablations (paper Table 1)
    use_dictionary: bool = True
    use_diffusion: bool = True
    use_prior_transformer: bool = True
    use_dwt: bool = True

    def __post_init__(self) -> None:
        for name in ("ch_mult", "attn_resolutions", "unet_channel_mult", "unet_attn_resolutions"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        self.vq_config()  # validates the backbone sizes
        if self.use_dictionary and not 1 <= self.top_d <= self.n_embed:
            raise ValueError(f"top_d must be between 1 and n_embed ({self.n_embed}), got {self.top_d}")
        if self.use_diffusion and self.use_dwt and self.latent_size % 2**self.dwt_levels:
            raise ValueError(f"a {self.dwt_levels}-level DWT needs a latent side divisible by {2**self.dwt_levels}, "
                             f"got {self.latent_size}")

    @property
    def latent_size(self) -> int:
        """Side of q, z and u (16 for the defaults)."""
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

    def vq_config(self) -> VQGANConfig:
        """The dictionary configuration whose encoder, codebook and decoder this model shares."""
        return VQGANConfig(resolution=self.resolution, in_channels=self.in_channels, out_channels=self.out_channels,
                           ch=self.ch, ch_mult=self.ch_mult, num_res_blocks=self.num_res_blocks,
                           attn_resolutions=self.attn_resolutions, z_channels=self.z_channels, n_embed=self.n_embed,
                           embed_dim=self.embed_dim, num_heads=self.num_heads, norm_groups=self.norm_groups)

    def unet_config(self) -> ADMUNetConfig:
        """The latent ε-predictor: an ADM UNet on (latent_channels, latent_size, latent_size) maps."""
        n = len(self.unet_channel_mult)
        return ADMUNetConfig(image_size=self.latent_size, in_channels=self.latent_channels,
                             model_channels=self.unet_channels, out_channels=self.latent_channels,
                             num_res_blocks=(self.unet_res_blocks,) * n, attention_resolutions=self.unet_attn_resolutions,
                             channel_mult=self.unet_channel_mult, num_head_channels=self.unet_head_channels,
                             use_scale_shift_norm=True, norm_groups=self.norm_groups)


def draw_noise(generator: Generators, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Standard-normal float32 noise of ``shape`` (batch first) from one generator or one generator per sample.

    With a sequence, sample i's noise comes from generator i only, so a face's result does not depend on the
    faces batched with it.
    """
    if isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)
    if len(generator) != shape[0]:
        raise InputError(f"{len(generator)} generators were given for a batch of {shape[0]}; pass one per sample")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in generator]).to(device)


# -- wavelets --------------------------------------------------------------------------------------------------


class WaveletTransform2d:
    """J-level 2-D DWT and inverse with periodic extension, as strided (transposed) convolutions.

    Matches ``pywt.wavedec2``/``waverec2`` with ``mode="periodization"``: each level halves H and W exactly
    and reconstruction is perfect. PyWavelets supplies the filters; the transform itself runs batched in
    torch so it stays on the GPU inside the sampling loop (PyWavelets works on NumPy arrays on the CPU).
    Bands per level are ordered as PyWavelets' (cH, cV, cD): detail along H, detail along W, both.
    The filters are kept in float64 on the host and cast once per device and dtype (no float64 on the device).
    """

    def __init__(self, wavelet: str = "haar", levels: int = 1):
        try:
            w = pywt.Wavelet(wavelet)
        except ValueError:
            raise InputError(f"unknown wavelet {wavelet!r}; use a discrete PyWavelets name such as 'haar', 'db2' or "
                             "'sym4' (pywt.wavelist(kind='discrete'))") from None
        dec_lo, dec_hi, rec_lo, rec_hi = (torch.tensor(f, dtype=torch.float64, device="cpu") for f in w.filter_bank)
        if len(dec_lo) % 2:
            raise InputError(f"wavelet {wavelet!r} has odd-length filters, which periodization does not support")
        if levels < 1:
            raise InputError(f"the DWT needs at least one level, got {levels}")
        self.wavelet, self.levels, self.filter_length = wavelet, levels, len(dec_lo)

        def bank(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:  # rows index H, columns W
            return torch.stack([torch.outer(a, b) for a, b in ((lo, lo), (hi, lo), (lo, hi), (hi, hi))])[:, None]

        # conv2d correlates, so analysis uses the flipped decomposition filters; synthesis (a transposed conv)
        # uses the reconstruction filters as they are.
        self._banks = {"analysis": bank(dec_lo.flip(0), dec_hi.flip(0)), "synthesis": bank(rec_lo, rec_hi)}
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def _bank(self, which: str, like: torch.Tensor) -> torch.Tensor:
        key = (which, like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self._banks[which].to(like.dtype).to(like.device)
        return self._cache[key]

    def _wrap_index(self, n: int, device: torch.device) -> torch.Tensor:
        # Periodic extension so that a stride-2 correlation gives c[k] = Σ_j f[j] x[(2k + F/2 − j) mod n].
        f = self.filter_length
        return (torch.arange(n + f - 2, device=device) - f // 2 + 1) % n

    def _fold(self, y: torch.Tensor, n: int, dim: int) -> torch.Tensor:
        # Inverse of the periodic extension: add position p of the long axis into (p − F/2 + 1) mod n.
        f = self.filter_length
        length, offset = n + f - 2, (1 - f // 2) % n
        reps = -(-(offset + length) // n)
        pad = [0, 0] * (y.ndim - 1 - dim) + [offset, reps * n - offset - length]
        y = F.pad(y, pad)
        return y.unflatten(dim, (reps, n)).sum(dim)

    def dwt(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, H, W) → (low band (B, C, H/2^J, W/2^J), [high bands (B, C, 3, h, w), finest level first])."""
        b, c = x.shape[:2]
        low, highs = x, []
        for _ in range(self.levels):
            h, w = low.shape[-2:]
            if h % 2 or w % 2:
                raise InputError(f"a {self.levels}-level DWT needs sides divisible by {2**self.levels}, "
                                 f"got {tuple(x.shape[-2:])}")
            ext = low.reshape(b * c, 1, h, w)
            ext = ext.index_select(2, self._wrap_index(h, x.device)).index_select(3, self._wrap_index(w, x.device))
            bands = F.conv2d(ext, self._bank("analysis", x), stride=2).reshape(b, c, 4, h // 2, w // 2)
            low = bands[:, :, 0]
            highs.append(bands[:, :, 1:])
        return low, highs

    def idwt(self, low: torch.Tensor, highs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`dwt`."""
        b, c = low.shape[:2]
        for high in reversed(highs):
            h, w = low.shape[-2:]
            bands = torch.cat([low[:, :, None], high], dim=2).reshape(b * c, 4, h, w)
            y = F.conv_transpose2d(bands, self._bank("synthesis", low), stride=2)
            low = self._fold(self._fold(y, 2 * h, 2), 2 * w, 3).reshape(b, c, 2 * h, 2 * w)
        return low

    def inject(self, sample: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Eq. 1: φ'(φ_lf(reference), φ_hf(sample)), the reference's low band under the sample's high bands."""
        return self.idwt(self.dwt(reference)[0], self.dwt(sample)[1])


def posterior_coefficients(alpha_bar_t: float, alpha_bar_next: float) -> tuple[float, float, float]:
    """q(u_t' | u_t, u_0) = N(c₀ u_0 + c_t u_t, σ²) between levels t > t' (DDPM posterior with β' = 1 − ᾱ_t/ᾱ_t').

    Returns (c₀, c_t, σ); for consecutive levels these are DDPM's posterior mean coefficients and variance.
    """
    beta = 1.0 - alpha_bar_t / alpha_bar_next
    coef0 = math.sqrt(alpha_bar_next) * beta / (1.0 - alpha_bar_t)
    coef_t = math.sqrt(1.0 - beta) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar_t)
    return coef0, coef_t, math.sqrt(beta * (1.0 - alpha_bar_next) / (1.0 - alpha_bar_t))


# -- the latent regulariser ---------------------------------------------------------------------------------------


class LatentMapper(nn.Module):
    """3×3 conv → ResNet block → GN–swish → 3×3 conv at constant resolution (E_Q and D_Q)."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.block = ResnetBlock(hidden, hidden, groups)
        self.norm_out = normalize(hidden, groups)
        self.conv_out = nn.Conv2d(hidden, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.block(self.conv_in(x)))))


class LatentRegularizer(nn.Module):
    """E_Q, D_Q, the ε-UNet and the regularisation chain of Sec. 3.2.

    Noise levels are counted in forward steps: level 0 is the clean latent, level t ∈ 1…T has
    ᾱ_t = Π_{m ≤ t}(1 − β_m) and is what the UNet sees as timestep t − 1 (the schedule's index). The UNet works
    on ``latent_scale`` · u, a buffer set from HQ latents before diffusion training (:meth:`calibrate_scale`)
    so that its data has unit variance whatever the KL weight left.
    """

    def __init__(self, cfg: PLTransConfig):
        super().__init__()
        self.timesteps = cfg.timesteps
        self.to_latent = LatentMapper(cfg.z_channels, cfg.mapper_channels, 2 * cfg.latent_channels, cfg.norm_groups)
        self.from_latent = LatentMapper(cfg.latent_channels, cfg.mapper_channels, cfg.z_channels, cfg.norm_groups)
        self.unet = ADMUNet(cfg.unet_config())
        self.register_buffer("latent_scale", torch.ones(()))
        self.dwt = WaveletTransform2d(cfg.dwt_wavelet, cfg.dwt_levels) if cfg.use_dwt else None
        with torch.device("cpu"):  # host-side table, also when the model is built on the meta device
            schedule = DiffusionSchedule(linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end),
                                         torch.arange(cfg.timesteps), cfg.timesteps)
            # ᾱ by level (index 0 = clean), float64, for the chain's scalar coefficients
            self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod])
        self._alpha_bar_dev: dict[torch.device, torch.Tensor] = {}

    # -- E_Q / D_Q ---------------------------------------------------------------------------------------------

    def moments(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E_Q: features q → (μ, log σ²) of u, each (B, latent_channels, r, r); log σ² clamped to [−30, 20]."""
        mean, logvar = self.to_latent(q).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def sample_latent(mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """u = μ + σ ε (reparameterised, so gradients reach E_Q)."""
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """D_Q: latent u (unscaled) → features (B, z_channels, r, r)."""
        return self.from_latent(u)

    @torch.no_grad()
    def calibrate_scale(self, latents: torch.Tensor) -> float:
        """Set ``latent_scale`` to 1 / std of ``latents`` (HQ latents u; LDM's rule) and return it."""
        scale = 1.0 / latents.float().std().clamp_min(1e-8)
        self.latent_scale.fill_(scale)
        return float(scale)

    # -- diffusion ---------------------------------------------------------------------------------------------

    def alpha_bar_at(self, level: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
        """ᾱ at ``level`` (an int, or a (B,) tensor → (B, 1, 1, 1) on ``like``'s device)."""
        if isinstance(level, int):
            return float(self.alpha_bar[level])
        dev = like.device
        if dev not in self._alpha_bar_dev:
            self._alpha_bar_dev[dev] = self.alpha_bar.to(dev, torch.float32)
        return self._alpha_bar_dev[dev][level].reshape(-1, *([1] * (like.ndim - 1)))

    def perturb(self, u0: torch.Tensor, level: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """q(u_t | u_0): √ᾱ_t u_0 + √(1 − ᾱ_t) ε."""
        ab = self.alpha_bar_at(level, u0)
        if isinstance(ab, float):
            return math.sqrt(ab) * u0 + math.sqrt(1.0 - ab) * noise
        return ab.sqrt() * u0 + (1.0 - ab).sqrt() * noise

    def predict_eps(self, u_t: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
        """ε_θ(u_t, t) at level ``level`` ≥ 1 (an int for the whole batch, or a (B,) tensor)."""
        t = torch.as_tensor(level, device=u_t.device).expand(u_t.shape[0]) - 1
        return self.unet(u_t, t).to(u_t.dtype)

    def levels(self, n: int, s: int, steps: int | None = None) -> list[int]:
        """The levels visited: n, then ``steps`` (default n − s) evenly spaced reverse steps down to s, then 0.

        The final move (s → 0) is the jump û₀ = (u_s − √(1 − ᾱ_s) ε_θ(u_s, s)) / √ᾱ_s; with s = 0 the last reverse
        step lands on level 0 and is that same formula.
        """
        try:
            n, s = operator.index(n), operator.index(s)
            k = n - s if steps is None else operator.index(steps)
        except TypeError:
            raise InputError(f"n, s and steps must be integers, got n={n!r}, s={s!r}, steps={steps!r}") from None
        if not 0 <= s < n <= self.timesteps:
            raise InputError(f"need steps 0 ≤ s < n ≤ {self.timesteps} (T); got n={n}, s={s}")
        if not 1 <= k <= n - s:
            raise InputError(f"steps must be between 1 and n − s = {n - s}, got {steps!r}")
        out = [s + ((n - s) * (k - i) * 2 + k) // (2 * k) for i in range(k + 1)]
        return out + [0] if s > 0 else out

    def num_evaluations(self, n: int, s: int, steps: int | None = None) -> int:
        """UNet evaluations (= progress steps) of :meth:`regularize`."""
        return len(self.levels(n, s, steps)) - 1

    def regularize(self, q: torch.Tensor, n: int, s: int, steps: int | None, generator: Generators,
                   progress: Progress | None = None) -> torch.Tensor:
        """q → q̂: perturb μ(q) to level n, reverse to s with the DWT injection, jump to û₀, decode with D_Q.

        Each reverse step t → t' is an ancestral step of the posterior q(u_t' | u_t, û₀(u_t)); after it (for
        t' > 0) the low band of the LQ latent, freshly noised to t', replaces the sample's (Eq. 1). Noise is drawn
        in this order: the start, then per step the posterior noise and (with the DWT) the injection noise.
        """
        levels = self.levels(n, s, steps)
        mean, _ = self.moments(q)
        u_lq = mean.float() * self.latent_scale.float()
        u = self.perturb(u_lq, levels[0], draw_noise(generator, u_lq.shape, u_lq.device))
        for t, t_next in zip(levels[:-1], levels[1:]):
            a_t, a_next = float(self.alpha_bar[t]), float(self.alpha_bar[t_next])
            eps = self.predict_eps(u, t).float()
            u0 = (u - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
            if t_next == 0:
                u = u0
            else:
                coef0, coef_t, std = posterior_coefficients(a_t, a_next)
                u = coef0 * u0 + coef_t * u + std * draw_noise(generator, u.shape, u.device)
                if self.dwt is not None:
                    ref = self.perturb(u_lq, t_next, draw_noise(generator, u.shape, u.device))
                    u = self.dwt.inject(u, ref)
            if progress is not None:
                progress.step()
        return self.decode((u / self.latent_scale.float()).to(q.dtype))


# -- the prior key/value module ----------------------------------------------------------------------------------


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) → (B, HW, C)


def _map(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(like.shape[0], -1, *like.shape[2:])


class PriorTransformerBlock(nn.Module):
    """One pre-norm block of Φ: the prior stream attends to the degraded features, then an MLP.

    Its residual stream starts at z̃, so the block's output is z̃ + Φ(z̃, z) (Eq. 7). The attention output and the
    MLP's last layer start at zero, so that an untrained Φ passes z̃ through.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{dim} channels do not split into {heads} heads")
        self.heads = heads
        self.norm_prior = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
        for layer in (self.proj, self.mlp[2]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x`` prior tokens (B, L, C), ``context`` degraded tokens (B, L', C)."""
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)

        ctx = self.norm_context(context)
        q, k, v = self.to_q(self.norm_prior(x)), self.to_k(ctx), self.to_v(ctx)
        a = F.scaled_dot_product_attention(split(q), split(k), split(v))
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm_mlp(x))


class PriorOutput(NamedTuple):
    """P's results: k = v (B, embed_dim, r, r), z, and the retrieved code indices (B, r, r, d), nearest first."""

    key_value: torch.Tensor
    z: torch.Tensor
    indices: torch.Tensor | None


class PriorKeyValue(nn.Module):
    """z = SelfAttention(conv₁ₓ₁(q)); top-d retrieval from V; z̃ = Σ r_l e⁽ˡ⁾; k = v = z̃ + Φ(z̃, z).

    V is a frozen buffer (copied from the stage-1 dictionary), r starts at (1, 0, …, 0) so that an untrained
    module begins as plain nearest-code quantisation, and the self-attention's output projection starts at zero.
    """

    def __init__(self, cfg: PLTransConfig):
        super().__init__()
        self.conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.attn = SelfAttention(cfg.embed_dim, cfg.prior_heads, cfg.norm_groups)
        nn.init.zeros_(self.attn.proj_out.weight)
        nn.init.zeros_(self.attn.proj_out.bias)
        self.top_d = cfg.top_d
        if cfg.use_dictionary:
            self.register_buffer("codebook", torch.empty(cfg.n_embed, cfg.embed_dim))
            nn.init.uniform_(self.codebook, -1.0 / cfg.n_embed, 1.0 / cfg.n_embed)
            self.r = nn.Parameter(F.one_hot(torch.tensor(0), cfg.top_d).float())
        else:
            self.codebook = None
        self.phi = nn.ModuleList(PriorTransformerBlock(cfg.embed_dim, cfg.prior_heads, cfg.lt_mlp_ratio)
                                 for _ in range(cfg.lt_blocks if cfg.use_prior_transformer else 0))

    def retrieve(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 5: (squared distances, indices), each (B, r, r, d), of the d nearest codes per position.

        Not differentiable (a selection), so it runs on the detached z; gradients reach z through Φ instead.
        """
        return nearest_codes(z.detach().permute(0, 2, 3, 1), self.codebook, self.top_d)

    def features(self, q: torch.Tensor) -> torch.Tensor:
        """z = SelfAttention(conv(q)): the features that retrieval (Eq. 5) and Φ's context use."""
        return self.attn(self.conv(q))

    def forward(self, q: torch.Tensor) -> PriorOutput:
        z = self.features(q)
        indices = None
        if self.codebook is None:
            z_tilde = z
        else:
            _, indices = self.retrieve(z)
            codes = self.codebook[indices]  # (B, r, r, d, C), nearest first
            z_tilde = torch.einsum("bhwdc,d->bchw", codes, self.r.float()).to(z.dtype)  # Eq. 6
        kv = z_tilde
        if len(self.phi):
            x, ctx = _tokens(z_tilde), _tokens(z)
            for block in self.phi:
                x = block(x, ctx)
            kv = _map(x, z_tilde)
        return PriorOutput(kv, z, indices)


class CrossAttentionBlock(nn.Module):
    """Eq. 8–9: Ẑ = proj_out(MHA(Q = W_Q GN(q̂), K = W_K GN(k), V = W_V GN(v))) + k, with k = v.

    GroupNorm before the projections and several heads follow RestoreFormer's MHCA (``heads=1`` gives the
    paper's single-head form with √N scaling). ``proj_out`` (the paper's Conv) starts at zero.
    """

    def __init__(self, query_channels: int, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm_query = normalize(query_channels, groups)
        self.norm_kv = normalize(channels, groups)
        self.q = nn.Conv2d(query_channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        h = self.norm_kv(kv)
        return kv + self.proj_out(spatial_attention(self.q(self.norm_query(query)), self.k(h), self.v(h), self.heads))


# -- the whole model ----------------------------------------------------------------------------------------------


class PLTrans(nn.Module):
    """Degraded face (B, 3, R, R) in [-1, 1] → restored face (B, 3, R, R), not clamped (R = 512 by default)."""

    def __init__(self, config: PLTransConfig | None = None):
        super().__init__()
        self.config = cfg = config or PLTransConfig()
        vq = cfg.vq_config()
        self.encoder = Encoder(vq)
        self.regularizer = LatentRegularizer(cfg) if cfg.use_diffusion else None
        self.prior = PriorKeyValue(cfg)
        self.fuse = nn.ModuleList(CrossAttentionBlock(cfg.z_channels, cfg.embed_dim, cfg.cross_heads, cfg.norm_groups)
                                  for _ in range(cfg.cross_blocks))
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(vq)

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.resolution, cfg.resolution):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"PLTrans restores aligned faces (batch, {cfg.in_channels}, {cfg.resolution}, "
                             f"{cfg.resolution}) in [-1, 1]; got {shape}. Align and resize the crops first.")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """E: image → preliminary features q (B, z_channels, r, r)."""
        self.check_input(x)
        return self.encoder(x)

    def query(self, q: torch.Tensor, n: int = DEFAULT_N, s: int = DEFAULT_S, steps: int | None = DEFAULT_STEPS,
              generator: Generators | None = None, progress: Progress | None = None) -> torch.Tensor:
        """q̂: the regularised query (q itself without the diffusion module)."""
        if self.regularizer is None:
            return q
        if generator is None:
            raise InputError("the latent regulariser draws noise: pass a torch.Generator (bfr_core.seeding.make_generator)")
        return self.regularizer.regularize(q, n, s, steps, generator, progress)

    def key_value(self, q: torch.Tensor) -> PriorOutput:
        """P: q → k = v and the retrieval."""
        return self.prior(q)

    def transform(self, query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """The cross-attention blocks: (q̂, k = v) → Ẑ."""
        for block in self.fuse:
            kv = block(query, kv)
        return kv

    def decode(self, z_hat: torch.Tensor) -> torch.Tensor:
        """G: Ẑ → image."""
        return self.decoder(self.post_quant_conv(z_hat))

    def forward(self, x: torch.Tensor, n: int = DEFAULT_N, s: int = DEFAULT_S, steps: int | None = DEFAULT_STEPS,
                generator: Generators | None = None, progress: Progress | None = None) -> torch.Tensor:
        q = self.encode(x)
        q_hat = self.query(q, n, s, steps, generator, progress)
        return self.decode(self.transform(q_hat, self.key_value(q).key_value))

    @torch.no_grad()
    def load_dictionary(self, vq: VQGAN) -> None:
        """Initialise E, P's conv, V and G from a trained stage-1 dictionary of the same sizes."""
        if vq.config != self.config.vq_config():
            raise InputError(f"the dictionary's configuration {vq.config} does not match this model's "
                             f"{self.config.vq_config()}")
        self.encoder.load_state_dict(vq.encoder.state_dict())
        self.prior.conv.load_state_dict(vq.quant_conv.state_dict())
        if self.prior.codebook is not None:
            self.prior.codebook.copy_(vq.quantize.embedding.weight)
        self.post_quant_conv.load_state_dict(vq.post_quant_conv.state_dict())
        self.decoder.load_state_dict(vq.decoder.state_dict())


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def config_from_state_dict(sd: Mapping[str, torch.Tensor], resolution: int | None = None) -> PLTransConfig:
    """The configuration with the shapes in ``sd``.

    Not readable from weights (defaults assumed unless the file stores its config): head counts, T and β, the
    wavelet and its levels, ``use_dwt``, and the input size (a 16×16 feature grid is assumed).
    """
    try:
        fields = backbone_fields(sd, resolution)
        embed_dim = int(sd["prior.conv.weight"].shape[0])
        fields.update(embed_dim=embed_dim, cross_blocks=_count(sd, r"^fuse\.(\d+)\."))
        if "prior.codebook" in sd:
            fields.update(n_embed=int(sd["prior.codebook"].shape[0]), top_d=int(sd["prior.r"].shape[0]))
        else:
            fields.update(use_dictionary=False)
        lt_blocks = _count(sd, r"^prior\.phi\.(\d+)\.")
        if lt_blocks:
            fields.update(lt_blocks=lt_blocks, lt_mlp_ratio=int(sd["prior.phi.0.mlp.0.weight"].shape[0]) // embed_dim)
        else:
            fields.update(use_prior_transformer=False)
        if "regularizer.latent_scale" in sd:
            latent_size = fields["resolution"] // 2 ** (len(fields["ch_mult"]) - 1)
            unet = unet_config_from_state_dict({k[len("regularizer.unet."):]: v for k, v in sd.items()
                                                if k.startswith("regularizer.unet.")}, image_size=latent_size)
            fields.update(
                latent_channels=int(sd["regularizer.from_latent.conv_in.weight"].shape[1]),
                mapper_channels=int(sd["regularizer.to_latent.conv_in.weight"].shape[0]),
                unet_channels=unet.model_channels, unet_channel_mult=unet.channel_mult,
                unet_res_blocks=unet.num_res_blocks[0], unet_attn_resolutions=unet.attention_resolutions,
            )
        else:
            fields.update(use_diffusion=False)
        return PLTransConfig(**fields)
    except (KeyError, ValueError, IndexError) as e:
        raise WeightsError(f"not a PLTrans state dict ({e!r})") from None
