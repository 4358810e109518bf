"""Tiny random-weight checkpoints for the example workflows, saved as files a loader node can pick.

``write_all(folder)`` writes them and returns the substitutions that point a workflow's official
weight choices (``"<id> (auto-download)"``) at the tiny files, for the CI run and the real-ComfyUI run.
A key ``"node:<class_type>.<input>"`` instead sets that widget of every such node (e.g. a few sampler steps
instead of the workflow's realistic 100); see :func:`tests.workflow_tools.substitute`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bfr_core.weights import save_checkpoint

#: The real YuNet face detector (405 kB, MIT) in ../shared/data, beside the repository (never copied into it).
DETECTOR_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "weights" / "yunet_final.pth"


def write_vspbfr(folder: Path) -> dict[str, str]:
    from tests.vspbfr_tiny import build

    enc, dec = build("e4e"), build("stylegan2", seed=1)
    style = {**{f"encoder.{k}": v for k, v in enc.state_dict().items()}, **{f"decoder.{k}": v for k, v in dec.state_dict().items()}}
    save_checkpoint(style, folder / "tiny_vspbfr_style_encoder.safetensors", {"note": "random weights for tests"})
    save_checkpoint(build("code_diffuser", seed=2).state_dict(), folder / "tiny_vspbfr_code_diffuser.safetensors")
    save_checkpoint({f"g_ema.{k}": v for k, v in build("restorer", seed=3).state_dict().items()},
                    folder / "tiny_vspbfr_restorer.safetensors")
    return {
        "vspbfr-style-encoder (auto-download)": "tiny_vspbfr_style_encoder.safetensors",
        "vspbfr-code-diffuser (auto-download)": "tiny_vspbfr_code_diffuser.safetensors",
        "vspbfr-restoration-net (auto-download)": "tiny_vspbfr_restorer.safetensors",
    }


def write_pltrans(folder: Path) -> dict[str, str]:
    import torch

    from bfr_core.models.pltrans import PLTrans
    from bfr_core.weights import save_model
    from tests.pltrans_tiny import tiny_pltrans

    torch.manual_seed(0)
    save_model(PLTrans(tiny_pltrans()), folder / "tiny_pltrans.safetensors", "pltrans", {"note": "random weights for tests"})
    return {"pltrans.safetensors": "tiny_pltrans.safetensors"}


#: Sampler steps of the PGDiff workflows in tests (the files keep realistic defaults).
PGDIFF_TEST_STEPS = 4


def pgdiff_models() -> dict:
    """Tiny PGDiff networks with deterministic random weights: a 32 px face DDPM, the RRDB restorer, ArcFace,
    a narrow VGG16 (torchvision's layer layout) and VSPBFR's discriminator at 32 px."""
    from torch import nn

    from bfr_core.models.adm_unet import ADMUNet, ADMUNetConfig
    from bfr_core.models.arcface import IResNet, IResNetConfig
    from bfr_core.models.rrdb_restorer import RRDBRestorer, RRDBRestorerConfig
    from tests.vspbfr_tiny import build, random_state_dict

    def randomized(model: nn.Module, seed: int) -> nn.Module:
        model.load_state_dict(random_state_dict(model, seed), strict=True)
        return model.eval()

    vgg, width, c_in = [], {64: 4, 128: 8, 256: 8, 512: 8}, 3
    for c in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        vgg += [nn.MaxPool2d(2, 2)] if c == "M" else [nn.Conv2d(c_in, width[c], 3, padding=1), nn.ReLU()]
        c_in = c_in if c == "M" else width[c]
    unet = ADMUNetConfig(image_size=32, model_channels=16, channel_mult=(1, 2), num_res_blocks=(1, 1),
                         attention_resolutions=(16,), num_head_channels=16, norm_groups=8)
    return {
        "ddpm": randomized(ADMUNet(unet), 1),
        "restorer": randomized(RRDBRestorer(RRDBRestorerConfig(mid_channels=8, num_blocks=1, growth_channels=4)), 2),
        "arcface": randomized(IResNet(IResNetConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), num_features=64)), 3),
        "vgg": randomized(nn.Sequential(*vgg), 4),
        "discriminator": build("discriminator", seed=5),
    }


def write_pgdiff(folder: Path) -> dict[str, str | int]:
    from bfr_core.weights import save_model

    m = pgdiff_models()
    note = {"note": "random weights for tests"}
    save_model(m["ddpm"], folder / "tiny_pgdiff_ddpm.safetensors", "adm_unet", note)  # keeps image_size=32
    save_model(m["restorer"], folder / "tiny_pgdiff_restorer.safetensors", "pgdiff_rrdb_restorer", note)
    save_model(m["arcface"], folder / "tiny_arcface.safetensors", "arcface_iresnet", note)
    save_checkpoint({f"features.{k}": v for k, v in m["vgg"].state_dict().items()}, folder / "tiny_vgg16.safetensors", note)
    save_checkpoint({f"d.{k}": v for k, v in m["discriminator"].state_dict().items()},
                    folder / "tiny_vspbfr_discriminator.safetensors", note)
    return {
        "difface-ddpm-ffhq512 (auto-download)": "tiny_pgdiff_ddpm.safetensors",
        "pgdiff-restorer-rrdb (auto-download)": "tiny_pgdiff_restorer.safetensors",
        "arcface-ms1mv3-r50 (auto-download)": "tiny_arcface.safetensors",
        "vgg16-397923af.pth": "tiny_vgg16.safetensors",
        "node:BFRPGDiffGuidanceGAN.discriminator": "tiny_vspbfr_discriminator.safetensors",
        "node:BFRPartialGuidanceSampler.steps": PGDIFF_TEST_STEPS,
        "node:BFRPGDiffFaceRestorer.steps": PGDIFF_TEST_STEPS,
    }


def tiny_compact(seed: int = 0, size: int = 32):
    """A compact restorer with a few hundred parameters and random weights (every block active)."""
    import torch

    from bfr_core.models.compact import CompactRestorer, CompactRestorerConfig

    torch.manual_seed(seed)
    model = CompactRestorer(CompactRestorerConfig(size=size, unshuffle=2, width=4, enc_blocks=(1,), middle_blocks=1,
                                                  dec_blocks=(1,), tail_channels=2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.1)
    return model.eval()


def write_compact(folder: Path) -> dict[str, str]:
    """A tiny compact restorer, chosen instead of the built-in one when the package does not ship it yet."""
    from bfr_core.pipelines.compact import BUILTIN_WEIGHTS
    from bfr_core.weights import save_model

    save_model(tiny_compact(), folder / "tiny_compact.safetensors", "compact_restorer", {"note": "random weights for tests"})
    return {} if BUILTIN_WEIGHTS.is_file() else {"built-in (ships with the pack)": "tiny_compact.safetensors"}


def detector_available() -> bool:
    return DETECTOR_FILE.is_file()


def write_faces(folder: Path) -> dict[str, str]:
    """The real YuNet detector, when ../shared/data has it: CI cannot download detectors, and random detector
    weights find no faces. Its registry id finds it in any model folder, so the workflows' RetinaFace
    ResNet-50 choice (which needs a download and facexlib) is pointed at it."""
    if not detector_available():
        return {}
    shutil.copy2(DETECTOR_FILE, folder / DETECTOR_FILE.name)
    return {"retinaface-resnet50 (auto-download)": "yunet (auto-download)"}


def write_all(folder: Path) -> dict[str, str | int]:
    folder.mkdir(parents=True, exist_ok=True)
    subs: dict[str, str | int] = {}
    subs.update(write_vspbfr(folder))
    subs.update(write_pltrans(folder))
    subs.update(write_pgdiff(folder))
    subs.update(write_compact(folder))
    subs.update(write_faces(folder))
    return subs


def substitute(prompt: dict, subs: dict) -> dict:
    """Replace widget values in an API prompt (see the module docstring)."""
    from tests.workflow_tools import substitute as apply

    return apply(prompt, subs)


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(write_all(Path(sys.argv[1]))))
