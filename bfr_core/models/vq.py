"""The VQGAN HQ dictionary PLTrans builds on (RestoreFormer's "HQ Dictionary" layout), for training stage 1.

Encoder: 3×3 conv, then one level per ``ch_mult`` entry (``num_res_blocks`` ResNet blocks, multi-head
self-attention after each block at the ``attn_resolutions``, a stride-2 conv between levels), a mid block
(ResNet – attention – ResNet), GroupNorm–swish–3×3 conv to ``z_channels``. With the defaults a 512² face
becomes 256 channels at 16×16. A 1×1 ``quant_conv`` maps into the codebook space, :class:`VectorQuantizer`
snaps each position to its nearest of ``n_embed`` entries (straight-through gradient), a 1×1
``post_quant_conv`` maps back and the decoder mirrors the encoder (``num_res_blocks + 1`` blocks per level,
nearest ×2 upsampling + 3×3 conv). GroupNorm(32, eps 1e-6) and swish throughout.

Parameter names follow RestoreFormer's ``VQVAEGAN`` (``encoder.down.4.attn.1.q.weight``,
``quantize.embedding.weight``...), so a RestoreFormer HQ dictionary can initialise ours after
:func:`convert_restoreformer_state_dict` drops the query-side norms its self-attention blocks carry unused.

The commitment loss puts β on the encoder term, as in the VQ-VAE paper (RestoreFormer/taming's default
puts β on the codebook term instead; see :meth:`VectorQuantizer.forward`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError

__all__ = [
    "VQGANConfig", "VQGAN", "VQOutput", "Encoder", "Decoder", "VectorQuantizer", "ResnetBlock", "SelfAttention",
    "backbone_fields", "config_from_state_dict", "convert_restoreformer_state_dict", "nearest_codes",
]


@dataclass
class VQGANConfig:
    """Sizes of the dictionary; the defaults are RestoreFormer's HQ dictionary (1024 × 256 codes at 16×16)."""

    resolution: int = 512
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)  # feature-map sizes (px) at ``resolution`` input
    z_channels: int = 256
    n_embed: int = 1024
    embed_dim: int = 256
    num_heads: int = 8  # RestoreFormer's ``head_size`` (it is the number of heads)
    norm_groups: int = 32
    beta: float = 0.25  # commitment weight

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if self.resolution % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(f"resolution {self.resolution} is not divisible by 2^{len(self.ch_mult) - 1}")

    @property
    def latent_size(self) -> int:
        """Side of the code grid (16 for the defaults)."""
        return self.resolution // 2 ** (len(self.ch_mult) - 1)


def normalize(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN–swish–3×3 conv, GN–swish–3×3 conv, plus the input (through a 1×1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int | None = None, groups: int = 32):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax(QKᵀ/√(C/heads))V over the positions of (B, C, H, W) maps; heads split C in order."""
    b, c, h, w = q.shape
    lk = k.shape[2] * k.shape[3]

    def split(t: torch.Tensor, length: int) -> torch.Tensor:
        return t.reshape(b, heads, c // heads, length).transpose(-1, -2)  # (B, heads, L, C/heads)

    out = F.scaled_dot_product_attention(split(q, h * w), split(k, lk), split(v, lk))
    return out.transpose(-1, -2).reshape(b, c, h, w)


class SelfAttention(nn.Module):
    """RestoreFormer's multi-head attention block used as self-attention: x + proj_out(MHA(GN(x)))."""

    def __init__(self, channels: int, heads: int = 8, groups: int = 32):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm1 = normalize(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        return x + self.proj_out(spatial_attention(self.q(h), self.k(h), self.v(h), self.heads))


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding one row/column at the bottom/right (RestoreFormer's asymmetric pad)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(channels: int, cfg: VQGANConfig) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, cfg.norm_groups)
    mid.attn_1 = SelfAttention(channels, cfg.num_heads, cfg.norm_groups)
    mid.block_2 = ResnetBlock(channels, channels, cfg.norm_groups)
    return mid


class Encoder(nn.Module):
    """Image (B, in_channels, R, R) → features (B, z_channels, R/2^(L-1), R/2^(L-1))."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        res, block_in = cfg.resolution, cfg.ch
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, cfg.ch * mult, cfg.norm_groups))
                block_in = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    stage.attn.append(SelfAttention(block_in, cfg.num_heads, cfg.norm_groups))
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                res //= 2
            self.down.append(stage)
        self.mid = _mid(block_in, cfg)
        self.norm_out = normalize(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Features (B, z_channels, r, r) → image (B, out_channels, r·2^(L-1), r·2^(L-1)), not clamped."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.latent_size
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, cfg)
        up: list[nn.Module] = []
        for level in reversed(range(len(cfg.ch_mult))):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, cfg.ch * cfg.ch_mult[level], cfg.norm_groups))
                block_in = cfg.ch * cfg.ch_mult[level]
                if res in cfg.attn_resolutions:
                    stage.attn.append(SelfAttention(block_in, cfg.num_heads, cfg.norm_groups))
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            up.insert(0, stage)  # index = level, as in the reference layout
        self.up = nn.ModuleList(up)
        self.norm_out = normalize(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor, d: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``d`` codebook rows nearest to each row of ``z`` (…, C), nearest first: (squared distances, indices).

    Computed in float32 whatever the input precision. Codes are ranked by ‖e‖² − 2 z·e, which differs from the
    squared distance by ‖z‖², a constant per row: leaving it out keeps close codes apart instead of losing their
    small differences against a large ‖z‖².
    """
    z32, e32 = z.float(), codebook.float()
    score = e32.pow(2).sum(-1) - 2 * z32 @ e32.t()
    values, indices = torch.topk(score, d, dim=-1, largest=False, sorted=True)
    return (values + z32.pow(2).sum(-1, keepdim=True)).clamp_min(0), indices


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation of (B, C, H, W) maps with a straight-through gradient."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (z_q with straight-through gradient, codebook loss, indices (B, H, W)).

        Loss = ‖sg[z] − e‖² + β‖z − sg[e]‖² (means over elements): the first term moves the codes, the second
        commits the encoder (VQ-VAE, van den Oord et al. 2017).
        """
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        _, idx = nearest_codes(flat, self.embedding.weight)
        idx = idx[:, 0]
        z_q = self.embedding(idx).reshape(b, h, w, c).permute(0, 3, 1, 2).to(z.dtype)
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        return z + (z_q - z).detach(), loss, idx.reshape(b, h, w)

    @torch.no_grad()
    def used_codes(self, z: torch.Tensor) -> torch.Tensor:
        """(n_embed,) bool: the codes that some vector of ``z`` (B, C, H, W) picks."""
        weight = self.embedding.weight
        hit = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
        hit[nearest_codes(z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]), weight)[1][:, 0]] = True
        return hit

    @torch.no_grad()
    def restart_unused(self, z: torch.Tensor, generator: torch.Generator, used: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Move every unused code onto a random vector of ``z`` (B, C, H, W); → their indices.

        A code that is nobody's nearest gets no gradient from the codebook loss and never comes back on its
        own; with the small uniform initialisation most codes start that way, and a dictionary trained on few
        faces ends up using a tenth of its codes. Restarting dead codes on encoder outputs (Jukebox, SoundStream)
        keeps them all in use. ``used``: the (n_embed,) mask of codes in use (default :meth:`used_codes` of
        ``z``; pass the union over processes' batches when training on several).
        """
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        weight = self.embedding.weight
        hit = self.used_codes(z) if used is None else used.to(weight.device)
        dead = (~hit).nonzero()[:, 0]
        if len(dead):
            n = flat.shape[0]
            pick = (torch.randperm(n, generator=generator, device=generator.device)[: len(dead)] if len(dead) <= n
                    else torch.randint(0, n, (len(dead),), generator=generator, device=generator.device))
            weight[dead] = flat[pick.to(flat.device)].to(weight.dtype)
        return dead

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (B, H, W) → the quantised map (B, embed_dim, H, W)."""
        return self.embedding(indices).permute(0, 3, 1, 2)


class VQOutput(NamedTuple):
    """A dictionary pass: reconstruction (B, 3, R, R), codebook + commitment loss, code indices (B, r, r)."""

    reconstruction: torch.Tensor
    codebook_loss: torch.Tensor
    indices: torch.Tensor


class VQGAN(nn.Module):
    """The HQ dictionary: encoder → quant_conv → quantize → post_quant_conv → decoder."""

    def __init__(self, config: VQGANConfig | None = None):
        super().__init__()
        self.config = cfg = config or VQGANConfig()
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.resolution, cfg.resolution):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"the dictionary takes (batch, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution}) "
                             f"images in [-1, 1]; got {shape}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image → (quantised map (B, embed_dim, r, r), codebook loss, indices)."""
        self.check_input(x)
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Quantised map → image (not clamped)."""
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, x: torch.Tensor) -> VQOutput:
        quant, loss, idx = self.encode(x)
        return VQOutput(self.decode(quant), loss, idx)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight, for the adaptive GAN weight of stage 1."""
        return self.decoder.conv_out.weight


_DOWN_BLOCK = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")
_DOWN_ATTN = re.compile(r"^encoder\.down\.(\d+)\.attn\.")


def backbone_fields(sd: Mapping[str, torch.Tensor], resolution: int | None = None) -> dict:
    """Encoder/decoder sizes read from ``encoder.*``/``decoder.*`` keys (shared with PLTrans' E and G).

    Attention sites are stored per level, so the input size is assumed to give a 16×16 feature grid unless
    ``resolution`` is passed; the number of heads cannot be read (8 assumed).
    """
    conv_in = sd["encoder.conv_in.weight"]
    ch = int(conv_in.shape[0])
    widths: dict[int, int] = {}
    blocks: dict[int, int] = {}
    for key, value in sd.items():
        m = _DOWN_BLOCK.match(key)
        if m:
            level, j = int(m.group(1)), int(m.group(2))
            blocks[level] = max(blocks.get(level, 0), j + 1)
            if j == 0:
                widths[level] = int(value.shape[0])
    levels = len(widths)
    attn_levels = sorted({int(m.group(1)) for k in sd if (m := _DOWN_ATTN.match(k))})
    res = resolution or 16 * 2 ** (levels - 1)
    return dict(
        resolution=res, in_channels=int(conv_in.shape[1]), out_channels=int(sd["decoder.conv_out.weight"].shape[0]),
        ch=ch, ch_mult=tuple(widths[i] // ch for i in range(levels)), num_res_blocks=blocks[0],
        attn_resolutions=tuple(res // 2**lv for lv in attn_levels),
        z_channels=int(sd["encoder.conv_out.weight"].shape[0]), norm_groups=_norm_groups(ch),
    )


def config_from_state_dict(sd: Mapping[str, torch.Tensor], resolution: int | None = None) -> VQGANConfig:
    """The configuration with the shapes in ``sd`` (see :func:`backbone_fields` for what cannot be read)."""
    try:
        codebook = sd["quantize.embedding.weight"]
        return VQGANConfig(**backbone_fields(sd, resolution), n_embed=int(codebook.shape[0]),
                           embed_dim=int(codebook.shape[1]))
    except (KeyError, ValueError) as e:
        raise WeightsError(f"not a VQGAN dictionary state dict ({e!r})") from None


def _norm_groups(ch: int) -> int:
    """32 groups (the released value) unless the base width is too small for them (tiny test models: 8)."""
    return 32 if ch % 32 == 0 else 8


_UNUSED_RESTOREFORMER = re.compile(r"(^|\.)(attn\.\d+|attn_1)\.norm2\.(weight|bias)$")


def convert_restoreformer_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A RestoreFormer ``VQVAEGAN`` state dict (prefix ``vqvae.`` removed) → ours.

    RestoreFormer's attention blocks all own a second GroupNorm for an optional query stream; in its
    dictionary it is never used, so those keys are dropped. Everything else keeps its name.
    """
    return {k: v for k, v in sd.items() if not _UNUSED_RESTOREFORMER.search(k)}
