"""Model types the trainer can build by name, their export architecture, and the gradient-checkpointing hook.

A :class:`ModelType` names the ``bfr_core.models`` class, its config dataclass (whose fields are the
keys allowed beside ``type:`` in a config) and the architecture name under which
:func:`bfr_core.weights.save_model` exports it, so the exported file loads through the same
``load_model`` path as the official checkpoints.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ConfigError, ModelSpec
from .registry import MODELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelType:
    """A buildable model: ``cls(config)`` from ``bfr_core.models``, exported as ``architecture``."""

    module: str
    cls_name: str
    config_name: str
    architecture: str

    @property
    def cls(self) -> type[nn.Module]:
        return getattr(importlib.import_module(self.module), self.cls_name)

    @property
    def config(self) -> type:
        return getattr(importlib.import_module(self.module), self.config_name)


def _register(name: str, module: str, cls_name: str, config_name: str, architecture: str) -> None:
    MODELS.register(name, ModelType(f"bfr_core.models.{module}", cls_name, config_name, architecture))


# The architecture names are those of bfr_core.weights' registry (KnownCheckpoint.architectures).
_register("rrdb_restorer", "rrdb_restorer", "RRDBRestorer", "RRDBRestorerConfig", "pgdiff_rrdb_restorer")
_register("adm_unet", "adm_unet", "ADMUNet", "ADMUNetConfig", "adm_unet")
_register("arcface_iresnet", "arcface", "IResNet", "IResNetConfig", "arcface_iresnet")
_register("stylegan2_generator", "stylegan2", "Generator", "GeneratorConfig", "stylegan2_generator")
_register("vspbfr_e4e_encoder", "e4e", "Encoder4Editing", "E4EConfig", "vspbfr_e4e_encoder")
_register("vspbfr_code_diffuser", "code_diffuser", "CodeDiffuser", "CodeDiffuserConfig", "vspbfr_code_diffuser")
_register("vspbfr_restoration_net", "smart", "RestorationNet", "RestorationNetConfig", "vspbfr_restoration_net")
_register("vspbfr_discriminator", "vspbfr_discriminator", "Discriminator", "DiscriminatorConfig", "vspbfr_discriminator")
_register("e4e_latent_discriminator", "latent_discriminator", "LatentCodesDiscriminator", "LatentDiscriminatorConfig",
          "e4e_latent_discriminator")
_register("vqgan_dictionary", "vq", "VQGAN", "VQGANConfig", "vqgan_dictionary")
_register("patch_discriminator", "discriminators", "PatchDiscriminator", "PatchDiscriminatorConfig",
          "patch_discriminator")
_register("compact_restorer", "compact", "CompactRestorer", "CompactRestorerConfig", "compact_restorer")


def build_model(spec: ModelSpec, name: str) -> nn.Module:
    """Build one model slot from its spec; ``init`` weights are loaded strictly through bfr_core.weights."""
    entry: ModelType = MODELS.get(spec.type)
    model = entry.cls(spec.config)
    if spec.init:
        from bfr_core.weights import load_model
        from bfr_core.weights.architectures import load_state_dict_checked

        loaded = load_model(spec.init, entry.architecture, cache=False, allow_download=True)
        load_state_dict_checked(model, loaded.model.state_dict(), strict=spec.init_strict,
                                what=f"models.{name}.init ({spec.init})")
        log.info("models.%s: weights from %s (%s)", name, loaded.path.name, loaded.licence_notice)
    if spec.frozen:
        model.eval().requires_grad_(False)
    return model


def architecture_of(spec: ModelSpec) -> str:
    return MODELS.get(spec.type).architecture


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute the model's repeated blocks in the backward pass instead of storing their activations.

    The blocks are those the model lists in ``_repeated_blocks`` (class names; the same list regional
    compilation uses). Returns how many blocks were wrapped; 0 raises, since the setting would do nothing.
    """
    names = tuple(getattr(model, "_repeated_blocks", ()))
    count = 0
    for module in model.modules():
        if type(module).__name__ in names and not getattr(module, "_bfr_checkpointed", False):
            module.forward = functools.partial(_checkpointed, module.forward)  # type: ignore[method-assign]
            module._bfr_checkpointed = True
            count += 1
    if count == 0:
        raise ConfigError(
            f"gradient_checkpointing: {type(model).__name__} declares no _repeated_blocks to checkpoint; "
            "turn the setting off for this model."
        )
    return count


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
