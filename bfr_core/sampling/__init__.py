"""Diffusion schedules, the iDDPM denoiser wrapper and sampler functions (DDPM, DDIM)."""

from .denoiser import IDDPMDenoiser, Prediction
from .samplers import GuidanceHook, ddim_step, ddpm_step, sample_ddim, sample_ddpm
from .schedule import DiffusionSchedule, linear_betas, q_posterior, q_sample, respace, space_timesteps

__all__ = [
    "DiffusionSchedule", "linear_betas", "space_timesteps", "respace", "q_sample", "q_posterior",
    "IDDPMDenoiser", "Prediction", "GuidanceHook", "ddpm_step", "ddim_step", "sample_ddpm", "sample_ddim",
]
