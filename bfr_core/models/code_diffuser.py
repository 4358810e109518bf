"""VSPBFR's code diffuser: a stack of TACC blocks that denoises W+ codes conditioned on the degraded face's codes.

Input: the current sample w_t (B, 18, 512), the condition c = the style encoder's codes of the degraded face
(B, 18, 512) and the step t. The step enters as one extra channel t/T on every condition token, so every
projection of the condition is 513 → 512. The released network predicts the clean codes w_0 directly (the
sampler in :mod:`bfr_core.sampling.wplus` treats the output as x0 or, for the paper's variant, as ε).

TACC block (names as in the official state dict, ``att_mapper.{i}.*``):

* the sample is PixelNorm-ed over the **token** axis (dim 1), as released;
* token attention: A = softmax_rows(K Qᵀ / √18) with K = x W_K, Q = c W_Q (18 × 18); H_p = A V, V = x W_V;
* channel attention (``attention_layer``; the official class is called ``spatial_attention``):
  A_c = softmax over dim 1 of (K'ᵀ Q' / √512) with Q' = x W'_Q, K' = c W'_K (512 × 512); H_c = LN(V' A_c);
* H = LN(H_p + H_c) (LayerNorms without affine parameters), γ = σ(MLP_γ(c)), β = φ(MLP_β(c)) with
  MLP = Linear → LayerNorm → φ → Linear and φ the √2-scaled leaky ReLU; output H ⊙ (1 + γ) + β (no residual).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError
from .stylegan2 import PixelNorm, ScaledLeakyReLU

__all__ = ["CodeDiffuserConfig", "CodeDiffuser", "TACCBlock", "config_from_state_dict"]


@dataclass
class CodeDiffuserConfig:
    """Sizes of the diffuser; the defaults build the released model (10,510,336 parameters)."""

    latent_dim: int = 512
    n_blocks: int = 4
    n_tokens: int = 18  # W+ rows; the token attention is scaled by √n_tokens
    timesteps: int = 4  # T: the step channel is t / T


class ChannelAttention(nn.Module):
    """512 × 512 attention across latent channels, softmax over the input-channel axis, then LayerNorm."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.q_matrix = nn.Linear(latent_dim, latent_dim, bias=False)
        self.k_matrix = nn.Linear(latent_dim + 1, latent_dim, bias=False)
        self.v_matrix = nn.Linear(latent_dim, latent_dim, bias=False)
        self.dk = latent_dim

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        q = self.q_matrix(x)
        k = self.k_matrix(cond).transpose(1, 2)
        v = self.v_matrix(x)
        attention = F.softmax(torch.matmul(k, q) / math.sqrt(self.dk), dim=1)
        out = torch.matmul(v, attention)
        return F.layer_norm(out, out.shape[-1:])


def _mlp(latent_dim: int, out_act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(latent_dim + 1, latent_dim), nn.LayerNorm(latent_dim), ScaledLeakyReLU(0.2),
                         nn.Linear(latent_dim, latent_dim), out_act)


class TACCBlock(nn.Module):
    """Time-aware conditional cross-attention block (see the module docstring)."""

    def __init__(self, latent_dim: int = 512, n_tokens: int = 18):
        super().__init__()
        self.pixelnorm = PixelNorm()
        self.q_matrix = nn.Linear(latent_dim + 1, latent_dim, bias=False)
        self.k_matrix = nn.Linear(latent_dim, latent_dim, bias=False)
        self.v_matrix = nn.Linear(latent_dim, latent_dim, bias=False)
        self.gamma_ = _mlp(latent_dim, nn.Sigmoid())
        self.beta_ = _mlp(latent_dim, ScaledLeakyReLU(0.2))
        self.attention_layer = ChannelAttention(latent_dim)
        self.dk = n_tokens

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, D) sample, ``cond`` (B, N, D + 1) condition codes with the t/T channel appended."""
        x = self.pixelnorm(x)
        k = self.k_matrix(x)
        v = self.v_matrix(x)
        q = self.q_matrix(cond).transpose(1, 2)
        score = F.softmax(torch.matmul(k, q) / math.sqrt(self.dk), dim=-1)
        h = torch.matmul(score, v) + self.attention_layer(x, cond)
        h = F.layer_norm(h, h.shape[-1:])
        return h * (1.0 + self.gamma_(cond)) + self.beta_(cond)


class CodeDiffuser(nn.Module):
    """f(w_t, c, t): four chained TACC blocks (``att_mapper``), the released x0-predicting denoiser."""

    def __init__(self, config: CodeDiffuserConfig | None = None):
        super().__init__()
        self.config = cfg = config or CodeDiffuserConfig()
        self.att_mapper = nn.ModuleList(TACCBlock(cfg.latent_dim, cfg.n_tokens) for _ in range(cfg.n_blocks))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``x`` and ``cond`` (B, N, latent_dim); ``t`` the integer step(s) in [0, T), scalar or (B,)."""
        if x.ndim != 3 or x.shape != cond.shape or x.shape[-1] != self.config.latent_dim:
            raise InputError(f"the code diffuser takes a sample and a condition of the same shape (batch, rows, "
                             f"{self.config.latent_dim}); got {tuple(x.shape)} and {tuple(cond.shape)}")
        b, n, _ = cond.shape
        t = torch.as_tensor(t, device=cond.device).float().reshape(-1, 1, 1) / self.config.timesteps
        cond = torch.cat([cond, t.expand(b, n, 1).to(cond.dtype)], dim=-1)
        for block in self.att_mapper:
            x = block(x, cond)
        return x


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> CodeDiffuserConfig:
    """The configuration with exactly the shapes in ``sd`` (token count and T cannot be read: 18 and 4)."""
    try:
        latent_dim = sd["att_mapper.0.k_matrix.weight"].shape[0]
        n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("att_mapper."))
    except (KeyError, ValueError) as e:
        raise WeightsError(f"not a VSPBFR code diffuser state dict ({e!r})") from None
    return CodeDiffuserConfig(latent_dim=latent_dim, n_blocks=n_blocks)
