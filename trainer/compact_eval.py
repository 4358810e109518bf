"""Quality and speed of a compact restorer on faces it never saw: ``python -m trainer.compact_eval``.

Quality: the fixed :data:`HELD_OUT` faces (kept out of training by the ``face_folder_held_out`` dataset type)
are resized to the model's crop size (512² for the built-in model), degraded with the GFPGAN preset at ×4 and at
×8 (every other parameter drawn from the preset's ranges, face i at scale s with seed ``100·s + i``, so every run
sees the same inputs), restored, and compared with the originals: PSNR (Y channel, BasicSR convention) and LPIPS
v0.1 (AlexNet, or VGG with ``--lpips-net vgg``), for the degraded inputs and for the restored faces. Speed: the median wall-clock and process CPU
time of one face of that size on ``--threads`` CPU threads (after a warm-up), the measure behind the "2 s per face
on 2 cores" budget.

    python -m trainer.compact_eval --weights runs/compact/export/model.safetensors --json metrics.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python trainer/compact_eval.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

log = logging.getLogger(__name__)

#: Faces of ``../shared/data/hq`` never used for training (2 FFHQ, 4 CelebA-HQ).
HELD_OUT = ("00008.png", "00009.png", "celebahq_113393.jpg", "celebahq_135626.jpg", "celebahq_140613.jpg",
            "celebahq_195650.jpg")
SCALES = (4, 8)
SIZE = 512


def held_out_faces(root: str | os.PathLike, names: tuple[str, ...] = HELD_OUT, size: int = SIZE) -> torch.Tensor:
    """The held-out faces under ``root`` as (N, 3, size, size) in [0, 1] (missing ones are an error)."""
    from bfr_core.errors import InputError

    from .data import list_faces, load_face

    found = {p.name: p for p, _ in list_faces(root)}
    missing = [n for n in names if n not in found]
    if missing:
        raise InputError(f"held-out faces missing under {root}: {', '.join(missing)}")
    return torch.stack([load_face(found[n], size) for n in names])


def degraded_inputs(hq: torch.Tensor, scale: int) -> torch.Tensor:
    """GFPGAN-preset degradations at a fixed ×scale; face i uses seed 100·scale + i."""
    from bfr_core.degrade import degrade

    seeds = [100 * scale + i for i in range(hq.shape[0])]
    return degrade(hq, "gfpgan", seeds, scale=float(scale))[0]


def evaluate(restorer, hq: torch.Tensor, scales: tuple[int, ...] = SCALES, lpips=None,
             batch_size: int = 2) -> dict[str, dict[str, float]]:
    """Mean PSNR/LPIPS of degraded inputs and restored faces per scale: ``{"x4": {"psnr_degraded": ...}}``.

    ``restorer``: any :class:`~bfr_core.pipelines.base.FaceRestorer`; ``lpips``: an LPIPSMetric or None (PSNR only).
    """
    from bfr_core.metrics import psnr

    out: dict[str, dict[str, float]] = {}
    for s in scales:
        lq = degraded_inputs(hq, s)
        restored = (restorer.restore_faces(lq * 2 - 1, batch_size=batch_size).cpu() + 1) / 2
        row = {"psnr_degraded": float(psnr(lq, hq).mean()), "psnr_restored": float(psnr(restored, hq).mean())}
        if lpips is not None:
            row["lpips_degraded"] = float(lpips(lq, hq).mean())
            row["lpips_restored"] = float(lpips(restored, hq).mean())
        out[f"x{s}"] = row
    return out


def cpu_time(restorer, threads: int = 2, repeats: int = 5, size: int = SIZE) -> dict[str, float]:
    """Median seconds per ``size``² face on the CPU with ``threads`` threads: wall clock and process CPU time."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        restorer.restore_faces(x)  # warm-up
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            restorer.restore_faces(x)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    finally:
        torch.set_num_threads(saved)
    return {"size": size, "threads": threads, "wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
            "load_average_1min": os.getloadavg()[0]}


def report(results: dict[str, Any]) -> str:
    """A markdown table of :func:`evaluate`'s results (plus the timing if present)."""
    net = results.get("lpips_net") or "alex"
    lines = [f"| degradation | PSNR degraded | PSNR restored | LPIPS-{net} degraded | LPIPS-{net} restored |",
             "|---|---|---|---|---|"]
    for key, row in results.get("quality", {}).items():
        lp = (f"{row['lpips_degraded']:.4f} | {row['lpips_restored']:.4f}" if "lpips_restored" in row else "– | –")
        lines.append(f"| GFPGAN {key} | {row['psnr_degraded']:.2f} dB | {row['psnr_restored']:.2f} dB | {lp} |")
    t = results.get("cpu_time")
    if t:
        lines += ["", f"CPU time per {t['size']}² face, {t['threads']} threads: {t['wall_s']:.2f} s wall, {t['cpu_s']:.2f} s process CPU "
                      f"(1-min load average {t['load_average_1min']:.1f})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.compact_eval", description=__doc__.split("\n")[0])
    p.add_argument("--weights", help="a compact_restorer .safetensors (default: the built-in model)")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "hq"),
                   help="folder holding the held-out faces (default: ../shared/data/hq)")
    p.add_argument("--device", default="cpu", help="where to restore for the quality numbers (cpu, cuda)")
    p.add_argument("--lpips", default="auto", help="auto (LPIPS when installed), off, or an lpips_NET.safetensors")
    p.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"),
                   help="LPIPS backbone (the shipped model trained with LPIPS-alex; vgg is an independent check)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the timing (0: skip the timing)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from bfr_core.errors import BFRError
    from bfr_core.metrics import LPIPSMetric
    from bfr_core.pipelines.compact import load_compact

    try:
        pipe = load_compact(args.weights, device=args.device, dtype="fp32")
        hq = held_out_faces(args.data, size=pipe.size)  # the pipeline takes faces at the size it was trained for
        lpips = None
        if args.lpips != "off":
            try:
                lpips = LPIPSMetric.load(args.lpips_net, device=args.device, weights=None if args.lpips == "auto" else args.lpips)
            except BFRError as e:
                if args.lpips != "auto":
                    raise
                log.warning("LPIPS skipped: %s", e)
        results: dict[str, Any] = {"weights": str(args.weights or "built-in"), "faces": list(HELD_OUT),
                                   "lpips_net": args.lpips_net if lpips is not None else None,
                                   "quality": evaluate(pipe, hq, lpips=lpips)}
        if args.threads:
            results["cpu_time"] = cpu_time(load_compact(args.weights, device="cpu", dtype="fp32"), args.threads, size=pipe.size)
    except BFRError as e:
        log.error("%s", e)
        return 2
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
