"""Tiny random-weight checkpoints for the example workflows, saved as files a loader node can pick.

``write_all(folder)`` writes them and returns the substitutions that point a workflow's official
weight choices (``"<id> (auto-download)"``) at the tiny files, for the CI run and the real-ComfyUI run.
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


def write_all(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    subs: dict[str, str] = {}
    subs.update(write_vspbfr(folder))
    subs.update(write_pltrans(folder))
    subs.update(write_faces(folder))
    return subs


def substitute(prompt: dict, subs: dict[str, str]) -> dict:
    """Replace widget values (strings) in an API prompt."""
    for node in prompt.values():
        for k, v in node["inputs"].items():
            if isinstance(v, str) and v in subs:
                node["inputs"][k] = subs[v]
    return prompt


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(write_all(Path(sys.argv[1]))))
