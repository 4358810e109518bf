"""VSPBFR restoration of aligned face crops: style encode → code diffuse → StyleGAN2 feature bank → SMART restore.

Faces are (B, 3, 512, 512) in [-1, 1], already aligned (FFHQ crop). Each stage is a method, so that ComfyUI can
run one node per stage and pass the intermediate results (W+ codes (B, 18, 512), the feature bank) along;
:meth:`VSPBFRPipeline.__call__` chains them over batch chunks.

Randomness: the diffuser's start, the random styles (with their mixing) and the noise injections of the bank
and of the restorer each come from their own stream of the seed (:func:`bfr_core.seeding.make_generator`), and
within a stream from a generator per face (face i of a call uses stream ``"<name>/<i>"``). So a face's result
depends only on the seed and its position in the batch, not on the chunk size, and the stages of the four-node
graph give the same result as the one-call pipeline with the same seeds. The models themselves always receive
explicit noise from here.

Precision: ``dtype`` other than float32 runs the encoder, the bank and the restorer under ``torch.autocast``
(convolutions and matmuls in bf16/fp16; normalisations and the demodulation sums stay float32); the small code
diffuser always runs in float32. Codes and images come back as float32; the feature bank stays in the compute
precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..device import resolve_device, resolve_dtype
from ..errors import InputError
from ..models.code_diffuser import CodeDiffuser
from ..models.e4e import Encoder4Editing
from ..models.smart import RestorationNet
from ..models.stylegan2 import Generator
from ..progress import Progress
from ..sampling.wplus import WPlusSchedule, sample_eps, sample_x0, vspbfr_schedule
from ..seeding import make_generator
from .base import autocast, check_faces

__all__ = ["VSPBFRPipeline", "VSPBFRResult", "FeatureBank", "STREAMS"]

#: Names of the random streams drawn from one seed.
STREAMS = ("diffuser", "styles", "bank-noise", "restorer-noise")

_SAMPLERS = {"x0": sample_x0, "eps": sample_eps}


@dataclass
class FeatureBank:
    """StyleGAN2 taps at 4, 8, …, 512 px (entry k at 4·2^k px) and, if asked, the inverted image (B, 3, 512, 512)."""

    features: list[torch.Tensor]
    preview: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.features[0].shape[0]

    def select(self, index: slice) -> "FeatureBank":
        """The bank of a slice of the batch."""
        return FeatureBank([f[index] for f in self.features], None if self.preview is None else self.preview[index])


@dataclass
class VSPBFRResult:
    """Restored faces (B, 3, 512, 512) in [-1, 1] (not clamped), the diffused codes, and the preview if asked."""

    restored: torch.Tensor
    codes: torch.Tensor
    preview: torch.Tensor | None = None


def _face_generators(seed: int, stream: str, start: int, n: int, device: torch.device) -> list[torch.Generator]:
    return [make_generator(seed, device, stream=f"{stream}/{start + i}") for i in range(n)]


def _stack_draws(gens: Sequence[torch.Generator], shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """One standard-normal draw of ``shape`` per generator, stacked on a new batch axis (float32)."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=g.device) for g in gens]).to(device)


class VSPBFRPipeline:
    """The four VSPBFR networks on one device, with the released inference procedure.

    ``style_encoder`` (e4e), ``decoder`` (the e4e checkpoint's StyleGAN2-1024), ``code_diffuser`` and ``restorer``
    are built and loaded by the caller (the weights loader). ``sampler`` is ``"x0"`` (released: deterministic
    posterior-mean steps) or ``"eps"`` (the paper's stochastic ε variant, for diffusers trained that way).
    """

    name = "vspbfr"

    def __init__(self, style_encoder: Encoder4Editing, decoder: Generator, code_diffuser: CodeDiffuser,
                 restorer: RestorationNet, *, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = "auto", schedule: WPlusSchedule | None = None,
                 sampler: str = "x0"):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if sampler not in _SAMPLERS:
            raise InputError(f"unknown code-diffuser sampler {sampler!r}; choose 'x0' (released) or 'eps' (paper)")
        self.sampler = sampler
        self.style_encoder = style_encoder.to(self.device).eval()
        self.decoder = decoder.to(self.device).eval()
        self.code_diffuser = code_diffuser.to(self.device).eval()
        self.restorer = restorer.to(self.device).eval()
        self.schedule = schedule or vspbfr_schedule(code_diffuser.config.timesteps)
        self.size = restorer.config.size
        if decoder.size < self.size or decoder.n_latent < restorer.n_latent:
            raise InputError(f"the StyleGAN2 decoder ({decoder.size} px) must be at least as large as the restorer "
                             f"({self.size} px)")
        if style_encoder.config.n_styles != decoder.n_latent:
            raise InputError(f"the style encoder gives {style_encoder.config.n_styles} W+ rows but the decoder reads "
                             f"{decoder.n_latent}; they must come from the same e4e checkpoint")

    # -- helpers -------------------------------------------------------------------------------------------------

    @property
    def steps_per_chunk(self) -> int:
        """Progress steps of one chunk in :meth:`__call__`: encode, each diffusion step, bank, restore."""
        return 3 + self.schedule.num_timesteps

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def _check_faces(self, faces: torch.Tensor) -> torch.Tensor:
        return check_faces(faces, self.size, "VSPBFR", self.device)

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        want = (self.decoder.n_latent, self.decoder.style_dim)
        if not isinstance(codes, torch.Tensor) or codes.ndim != 3 or tuple(codes.shape[1:]) != want:
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise InputError(f"style codes must be (batch, {want[0]}, {want[1]}) W+ codes from the VSPBFR style "
                             f"encoder; got {shape}")
        return codes.to(self.device, torch.float32)

    # -- stages --------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, faces: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """Stage 1: degraded faces → W+ codes (B, 18, 512), float32."""
        faces = self._check_faces(faces)
        with self._autocast():
            codes = self.style_encoder(faces)
        if progress is not None:
            progress.step()
        return codes.float()

    @torch.no_grad()
    def diffuse(self, codes: torch.Tensor, seed: int = 0, *, start: torch.Tensor | None = None,
                first_index: int = 0, progress: Progress | None = None) -> torch.Tensor:
        """Stage 2: denoise the codes with the code diffuser (4 steps) → (B, 18, 512), float32.

        ``start`` overrides w_T (default: N(0, I) from the ``diffuser`` stream, one generator per face;
        ``first_index`` is the batch position of the first face, for chunked calls). With the ``eps`` sampler the
        step noise comes from the same generators, after the start.
        """
        codes = self._check_codes(codes)
        gens = _face_generators(seed, "diffuser", first_index, codes.shape[0], self.device)
        if start is None:
            start = _stack_draws(gens, codes.shape[1:], self.device)
        elif start.shape != codes.shape:
            raise InputError(f"the diffuser start must have the codes' shape {tuple(codes.shape)}, "
                             f"got {tuple(start.shape)}")
        kwargs = {}
        if self.sampler == "eps":
            kwargs["step_noise"] = lambda like: _stack_draws(gens, like.shape[1:], self.device).to(like.dtype)
        # Always float32: the diffuser is small (10 M parameters on 18 tokens) and its codes steer everything after.
        out = _SAMPLERS[self.sampler](self.code_diffuser, codes, self.schedule,
                                      start=start.to(self.device, torch.float32), progress=progress, **kwargs)
        return out.float()

    @torch.no_grad()
    def feature_bank(self, codes: torch.Tensor, seed: int = 0, *, preview: bool = False,
                     noise: Sequence[torch.Tensor] | None = None, first_index: int = 0,
                     progress: Progress | None = None) -> FeatureBank:
        """Stage 3: the StyleGAN2 taps the restorer uses (4 … 512 px), and the inverted image if ``preview``.

        Without the preview the generator stops after the first conv at 512 px; with it, the 1024 px image is
        average-pooled to 512 (as released). ``noise`` overrides the per-layer noise (rosinality's layer order;
        default: the ``bank-noise`` stream, one generator per face).
        """
        codes = self._check_codes(codes)
        if noise is None:
            gens = _face_generators(seed, "bank-noise", first_index, codes.shape[0], self.device)
            per_face = [self.decoder.make_noise(1, g, max_resolution=self.size, return_image=preview,
                                                device=self.device) for g in gens]
            noise = [torch.cat(maps) for maps in zip(*per_face)]
        with self._autocast():
            feats, image = self.decoder(codes, noise=noise, max_resolution=self.size, return_image=preview)
        feats = feats[: self.restorer.config.log_size - 1]
        if image is not None:
            image = F.adaptive_avg_pool2d(image.float(), self.size)
        if progress is not None:
            progress.step(preview=image)
        return FeatureBank(feats, image)

    @torch.no_grad()
    def restore(self, faces: torch.Tensor, codes: torch.Tensor, bank: FeatureBank | Sequence[torch.Tensor],
                seed: int = 0, *, mixing_prob: float = 0.5, styles: torch.Tensor | None = None,
                noise: dict[str, torch.Tensor] | None = None, first_index: int = 0,
                progress: Progress | None = None) -> torch.Tensor:
        """Stage 4: the SMART restorer → (B, 3, 512, 512) in [-1, 1] (not clamped), float32.

        Random styles (z, mixing with probability ``mixing_prob``) come from the ``styles`` stream and the noise
        injections from ``restorer-noise``, one generator per face, unless ``styles`` (B, 16, 512) or ``noise``
        (by module path, see :meth:`RestorationNet.noise_layers`) are given.
        """
        faces = self._check_faces(faces)
        codes = self._check_codes(codes)
        feats = bank.features if isinstance(bank, FeatureBank) else list(bank)
        b = faces.shape[0]
        if codes.shape[0] != b or any(f.shape[0] != b for f in feats):
            raise InputError(f"faces ({b}), codes ({codes.shape[0]}) and the feature bank ({feats[0].shape[0]}) "
                             "must have the same batch size")
        rn = self.restorer
        if styles is None:
            gens = _face_generators(seed, "styles", first_index, b, self.device)
            draws = [rn.sample_mixing(1, g, mixing_prob, device=self.device) for g in gens]
            z1, z2, idx = (torch.cat(t) for t in zip(*draws))
            styles = rn.styles_from_z(z1, z2, idx)
        if noise is None:
            gens = _face_generators(seed, "restorer-noise", first_index, b, self.device)
            per_face = [rn.make_noise(1, g, device=self.device) for g in gens]
            noise = {name: torch.cat([d[name] for d in per_face]) for name in per_face[0]}
        with self._autocast():
            out = rn(faces, [f.to(self.device) for f in feats], codes, styles.to(self.device), noise=noise)
        if progress is not None:
            progress.step(preview=out)
        return out.float()

    # -- everything ----------------------------------------------------------------------------------------------

    def __call__(self, faces: torch.Tensor, seed: int = 0, *, preview: bool = False, batch_size: int | None = None,
                 mixing_prob: float = 0.5, on_progress: Callable | None = None,
                 check_cancel: Callable[[], None] | None = None) -> VSPBFRResult:
        """Restore aligned faces (B, 3, 512, 512) in [-1, 1], ``batch_size`` faces at a time (default: all)."""
        faces = self._check_faces(faces)
        n = faces.shape[0]
        if n == 0:
            return VSPBFRResult(faces.clone(), faces.new_zeros(0, self.decoder.n_latent, self.decoder.style_dim),
                                faces.clone() if preview else None)
        chunk = max(1, int(batch_size or n))
        progress = Progress(self.steps_per_chunk * -(-n // chunk), on_progress, check_cancel)
        restored, codes_out, previews = [], [], []
        for lo, hi in _chunks(n, chunk):
            x = faces[lo:hi]
            codes = self.encode(x, progress)
            codes = self.diffuse(codes, seed, first_index=lo, progress=progress)
            bank = self.feature_bank(codes, seed, preview=preview, first_index=lo, progress=progress)
            restored.append(self.restore(x, codes, bank, seed, mixing_prob=mixing_prob, first_index=lo,
                                         progress=progress))
            codes_out.append(codes)
            if preview:
                previews.append(bank.preview)
            del bank
        return VSPBFRResult(torch.cat(restored), torch.cat(codes_out), torch.cat(previews) if preview else None)


    def restore_faces(self, faces: torch.Tensor, seed: int = 0, *, batch_size: int | None = None,
                      on_progress: Callable | None = None, check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
        """The :class:`~bfr_core.pipelines.base.FaceRestorer` interface: restored crops only."""
        return self(faces, seed, batch_size=batch_size, on_progress=on_progress, check_cancel=check_cancel).restored

    def modules(self) -> list[torch.nn.Module]:
        return [self.style_encoder, self.code_diffuser, self.decoder, self.restorer]


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)
