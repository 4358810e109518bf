"""Tiny random-weight checkpoints for the example workflows, saved as files a loader node can pick.

``write_all(folder)`` writes them and returns the substitutions that point a workflow's official
weight choices (``"<id> (auto-download)"``) at the tiny files, for the CI run and the real-ComfyUI run.
"""

from __future__ import annotations

from pathlib import Path

from bfr_core.weights import save_checkpoint


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


def write_all(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    subs: dict[str, str] = {}
    subs.update(write_vspbfr(folder))
    subs.update(write_pltrans(folder))
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
