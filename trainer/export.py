"""Exported weights: safetensors with the architecture and config the loaders read, a model card, the
training config and the validation metrics; optionally published to the Hugging Face Hub.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bfr_core.errors import BFRError

from .checkpoint import usual_mode
from .config import TrainConfig, dump

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export_model(model: nn.Module, architecture: str, out_dir: Path, *, cfg: TrainConfig, stage, step: int,
                 metrics: dict[str, float], data_info: dict[str, Any], losses: list[str],
                 bundle: dict[str, tuple[nn.Module, str]] | None = None) -> Path:
    """Write ``model.safetensors`` (+ ``config.json``, ``README.md``, ``training_config.yaml``,
    ``metrics.json``) to ``out_dir``; returns the weights file.

    The weights go through :func:`bfr_core.weights.save_model`, so ``load_model(path)`` rebuilds the
    model from the stored architecture and config without guessing. ``bundle`` (slot → (model,
    architecture)) adds the stage's ``export_with`` models: then every model is stored under its slot name
    as key prefix, with all configs in the metadata (``load_model(path, architecture)`` picks one).
    """
    from bfr_core.weights import save_model
    from bfr_core.weights.architectures import config_to_dict

    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = _DTYPES[cfg.export.dtype]
    exported = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()
    name = cfg.export.name or stage.name
    meta = {
        "name": name,
        "stage": stage.name,
        "steps": step,
        "licence": cfg.export.licence,
        "data_licence": cfg.data.licence,
        "metrics": metrics,
        "trainer": "ComfyUI-BFR trainer",
    }
    if bundle:
        weights = _save_bundle({stage.export: (exported, architecture), **bundle}, out_dir / WEIGHTS_FILE,
                               architecture, meta, dtype)
    else:
        weights = save_model(exported, out_dir / WEIGHTS_FILE, architecture, meta)
    usual_mode(weights)
    n_params = sum(p.numel() for p in exported.parameters())
    config = {"architecture": architecture, "config": config_to_dict(exported.config), "dtype": cfg.export.dtype,
              "parameters": n_params, "weights": WEIGHTS_FILE}
    if bundle:
        config["key_prefix"] = f"{stage.export}."
        config["bundled"] = {slot: {"architecture": arch, "config": config_to_dict(m.config), "key_prefix": f"{slot}."}
                             for slot, (m, arch) in bundle.items()}
    _write(out_dir / "config.json", json.dumps(config, indent=2, default=list) + "\n")
    _write(out_dir / "metrics.json", json.dumps({"step": step, **metrics}, indent=2) + "\n")
    _write(out_dir / "training_config.yaml", dump(cfg))
    _write(out_dir / "README.md", model_card(cfg, stage, architecture, exported, n_params, step, metrics, data_info, losses,
                                             {slot: arch for slot, (_, arch) in (bundle or {}).items()}))
    log.info("exported %s (%s, %d parameters, step %d) to %s", name, architecture, n_params, step, out_dir)
    return weights


def _save_bundle(models: dict[str, tuple[nn.Module, str]], path: Path, architecture: str, meta: dict[str, Any],
                 dtype: torch.dtype) -> Path:
    """Several models in one safetensors file, each under ``<slot>.``; ``bfr_configs`` holds every config."""
    from bfr_core.weights.architectures import config_to_dict
    from bfr_core.weights.files import save_checkpoint

    tensors, configs = {}, {}
    for slot, (module, arch) in models.items():
        tensors.update({f"{slot}.{k}": v.to(dtype) if v.is_floating_point() else v
                        for k, v in module.state_dict().items()})
        configs[arch] = config_to_dict(module.config)
    full = dict(meta, bfr_arch=architecture, bfr_config=configs[architecture], bfr_configs=configs)
    return save_checkpoint(tensors, path, full)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def model_card(cfg: TrainConfig, stage, architecture: str, model: nn.Module, n_params: int, step: int,
               metrics: dict[str, float], data_info: dict[str, Any], losses: list[str],
               bundled: dict[str, str] | None = None) -> str:
    """A Hugging Face model card: what was trained, on what, how long, how well, under which terms.

    ``bundled``: slot → architecture of the frozen models stored beside the trained one.
    """
    from .config import to_dict

    name = cfg.export.name or stage.name
    cls = f"{type(model).__module__}.{type(model).__name__}"
    model_cfg = ", ".join(f"{k}={v}" for k, v in to_dict(model.config).items())
    global_batch = cfg.batch_size * cfg.grad_accum * int(data_info.get("processes", 1))
    pick = f", \"{architecture}\"" if bundled else ""
    lines = [
        "---",
        f"license: {cfg.export.licence}",
        "library_name: bfr-suite",
        "pipeline_tag: image-to-image",
        "tags: [face-restoration, blind-face-restoration, comfyui, " + stage.name + "]",
        "---",
        "",
        f"# {name}",
        "",
        f"{stage.description} Trained with the ComfyUI-BFR trainer (stage `{stage.name}`).",
        "",
        "## Model",
        "",
        f"- architecture: `{architecture}` (`{cls}`), {n_params:,} parameters, weights `{WEIGHTS_FILE}` ({cfg.export.dtype})",
        f"- config: {model_cfg}",
        f"- load: `from bfr_core.weights import load_model; model = load_model(\"model.safetensors\"{pick}).model`",
        *(["- also in the file (frozen, as trained with): "
           + ", ".join(f"`{slot}.*` = `{arch}`" for slot, arch in bundled.items())
           + f"; the trained model is `{stage.export}.*`"] if bundled else []),
        "",
        "## Training",
        "",
        f"- steps: {step} of {cfg.max_steps}; global batch {global_batch} "
        f"({cfg.batch_size} per process × {cfg.grad_accum} accumulation × {data_info.get('processes', 1)} processes)",
        f"- optimiser: {cfg.optim.type}, lr {cfg.optim.lr:g}, betas {tuple(cfg.optim.betas)}, schedule {cfg.optim.schedule}"
        + (f", gradient clipping {cfg.optim.grad_clip:g}" if cfg.optim.grad_clip else ""),
        "- EMA: " + (f"decay {cfg.ema.decay:g} (exported weights are the EMA)" if cfg.ema.enabled else "off"),
        f"- losses: {', '.join(losses) if losses else 'the stage objective'}",
        f"- precision: {data_info.get('mixed_precision', cfg.mixed_precision)}; seed {cfg.seed}",
        "",
        "## Data",
        "",
        f"- {data_info.get('train_images', '?')} training and {data_info.get('val_images', '?')} validation faces "
        f"from `{Path(cfg.data.root).name}`, {cfg.data.size}×{cfg.data.size}"
        + (f": {cfg.data.description}" if cfg.data.description else ""),
        f"- degradation: `{cfg.data.degradation}`" + (f" {cfg.data.degradation_options}" if cfg.data.degradation_options else ""),
        f"- data licence: {cfg.data.licence}",
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        lines += ["Validation on the held-out faces with the exported weights:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("No validation metrics were computed (no held-out images).")
    lines += ["", "## Licence", "", f"`{cfg.export.licence}`. {cfg.export.licence_note}".rstrip()]
    if stage.licence_hint:
        lines += ["", stage.licence_hint]
    if any("RANDOM INIT" in s for s in losses):
        lines += ["", "**Warning:** a loss network had random weights (test configuration); these weights are not for use."]
    return "\n".join(lines) + "\n"


def push_to_hub(folder: Path, repo_id: str, *, private: bool = True, message: str = "Upload trained weights") -> str:
    """Create (or reuse) the model repo and upload the export folder; returns the commit URL.

    Uses ``huggingface_hub`` with its usual login (``hf auth login`` or ``HF_TOKEN``) and ``HF_ENDPOINT``.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message, repo_type="model")
    except Exception as e:  # network, auth and Hub errors all end the same way for the user
        raise BFRError(
            f"could not publish {folder} to the Hub repo {repo_id}: {type(e).__name__}: {e}. "
            "Log in with `hf auth login` (or set HF_TOKEN) with write access, then run the export again "
            "(`python trainer/train.py --config ... --export_only --push_to_hub REPO`)."
        ) from e
    log.info("published %s to %s", folder, info.commit_url)
    return str(info.commit_url)
