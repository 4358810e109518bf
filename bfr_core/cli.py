"""The ``bfr`` command: ``bfr restore``, ``bfr degrade``, ``bfr convert``, ``bfr info``, ``bfr download``, ``bfr eval``, ``bfr bench``.

Each subcommand is a small function; heavy imports happen inside it, so ``bfr --help`` is instant.
Errors we raise on purpose (BFRError) are printed as one clear message with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import BFRError

log = logging.getLogger("bfr")

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str):
    def wrap(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn
    return wrap


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


# --------------------------------------------------------------------------------------- commands

@command("convert")
def cmd_convert(args: argparse.Namespace) -> int:
    from .weights import convert_to_safetensors

    dst = convert_to_safetensors(args.src, args.dst, overwrite=args.overwrite)
    print(dst)
    return 0


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from .weights import KNOWN, inspect_checkpoint

    if args.list or not args.checkpoint:
        for entry in KNOWN.values():
            src = entry.sources[0].describe()
            print(f"{entry.id:28s} {entry.filename:34s} {', '.join(entry.architectures)}\n{'':28s} {entry.licence}\n{'':28s} {src}")
        return 0
    info = inspect_checkpoint(args.checkpoint, allow_download=args.download)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"file:          {info['path']} ({info['size_bytes'] / 1e6:.1f} MB, {info['tensors']} tensors, {'/'.join(info['dtypes'])})")
    print(f"registry id:   {info['registry_id'] or '-'}")
    print(f"licence:       {info['licence']}")
    if not info["architectures"]:
        print("architecture:  none recognised")
    for a in info["architectures"]:
        where = f" under '{a['prefix']}'" if a["prefix"] else ""
        print(f"architecture:  {a['architecture']}{where}: {a['parameters'] / 1e6:.2f} M parameters")
    return 0


@command("download")
def cmd_download(args: argparse.Namespace) -> int:
    from .weights import download

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=args.id)
        bar.update(done - bar.n)

    path = download(args.id, dest_dir=args.dest, progress=None if args.quiet else progress)
    if bar is not None:
        bar.close()
    print(path)
    return 0


@command("degrade")
def cmd_degrade(args: argparse.Namespace) -> int:
    import torch

    from .degrade import degrade, get_preset, parse_overrides
    from .device import resolve_device
    from .imageio import list_images, load_image, save_image

    if args.describe:
        print(get_preset(args.preset).describe())
        return 0
    if not args.inputs or not args.output:
        raise BFRError("give input images or folders and -o OUTPUT (or --describe to list a preset's parameters)")
    files = list_images(args.inputs)
    if not files:
        raise BFRError("no images found in the inputs")
    out_dir = Path(args.output)
    device = resolve_device(args.device)
    overrides = parse_overrides(";".join(args.set or ()))
    records = []
    with _progress_bar(len(files), "degrade") as bar:
        for i, (path, rel) in enumerate(files):
            target = out_dir / rel.with_suffix(".png")
            if target.exists() and not args.overwrite:
                log.info("skip %s (exists)", target)
                bar.update(1)
                continue
            image = load_image(path)
            x = image.permute(0, 3, 1, 2).to(device)
            if args.size:
                x = torch.nn.functional.interpolate(x, size=(args.size, args.size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            y, params = degrade(x, preset=args.preset, seed=args.seed + i, **overrides)
            save_image(y.permute(0, 2, 3, 1), target, overwrite=args.overwrite)
            records.append({"file": str(rel), "seed": args.seed + i, **params.as_records()[0]})
            bar.update(1)
    if records:
        with (out_dir / "degradations.jsonl").open("a") as f:
            f.writelines(json.dumps(r, default=str) + "\n" for r in records)
    print(f"{len(records)} images written to {out_dir}")
    return 0


@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import run_cli

    print(run_cli(args, _progress_bar), end="")
    return 0


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_cli

    print(run_cli(args), end="")
    return 0


class _TqdmReporter:
    """``bfr restore`` progress: one bar over the files, one over the current file's steps (faces or frames)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.files = self.inner = None
        self.inner_key: tuple[str, int] | None = None  # (what, total) of the inner bar

    def chosen(self, method: str, reason: str) -> None:
        print(f"bfr restore: method {method}: {reason}", file=sys.stderr)

    def start(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.files = tqdm(total=total, desc="restore", unit="file", dynamic_ncols=True, disable=not self.enabled)

    def steps(self, done: int, total: int, what: str) -> None:
        from tqdm.auto import tqdm

        if self.inner is None or self.inner_key != (what, total):
            if self.inner is not None:
                self.inner.close()
            self.inner = tqdm(total=total, desc=what, leave=False, dynamic_ncols=True, disable=not self.enabled)
            self.inner_key = (what, total)
        self.inner.update(done - self.inner.n)

    def item_done(self, item, status: str) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = self.inner_key = None
        self.files.set_postfix_str(f"{item.source.name}: {status}", refresh=False)
        self.files.update(1)

    def close(self) -> None:
        if self.files is not None:
            self.files.close()


@command("restore")
def cmd_restore(args: argparse.Namespace) -> int:
    import os

    from .restore import RestoreOptions, run

    options = RestoreOptions(
        method=args.method, model=args.model, aligned=args.aligned, fidelity=args.fidelity, visibility=args.visibility,
        seed=args.seed, device=args.device, precision=args.precision, batch_size=args.batch_size, detector=args.detector,
        detector_size=args.detector_size, min_face=args.min_face, max_faces=args.max_faces, upscale=args.upscale,
        color_match=args.color_match, video_chunk=args.video_chunk, overwrite=args.overwrite,
        download=not args.no_download, ext=args.ext,
    )
    main_process = int(os.environ.get("RANK", "0")) == 0
    summary = run(args.inputs, args.output, options, _TqdmReporter(enabled=main_process and not args.quiet))
    if main_process:
        parts = [f"{len(summary.restored)} restored ({summary.faces} faces)"]
        if summary.skipped:
            parts.append(f"{len(summary.skipped)} skipped (output exists; --overwrite redoes them)")
        if summary.without_faces:
            parts.append(f"{len(summary.without_faces)} without faces (written unchanged)")
        if summary.failed:
            parts.append(f"{len(summary.failed)} failed")
        print(f"{', '.join(parts)} -> {args.output}")
        for name, err in summary.failed:
            print(f"failed: {name}: {err}", file=sys.stderr)
    return 1 if summary.failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bfr", description="Blind face restoration: VSPBFR, PGDiff, PLTrans.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert an official .pt/.pth checkpoint to safetensors (safely)")
    c.add_argument("src")
    c.add_argument("dst", nargs="?", default=None, help="output file (default: beside the source)")
    c.add_argument("--overwrite", action="store_true")

    c = sub.add_parser("info", help="what a checkpoint is: architecture, size, licence; --list shows known checkpoints")
    c.add_argument("checkpoint", nargs="?", help="a file, a registry id, or hf://owner/repo/file")
    c.add_argument("--list", action="store_true")
    c.add_argument("--json", action="store_true")
    c.add_argument("--download", action="store_true", help="download a registry checkpoint if it is not present")

    c = sub.add_parser("download", help="download a known checkpoint into the cache (or --dest)")
    c.add_argument("id")
    c.add_argument("--dest", default=None)
    c.add_argument("-q", "--quiet", action="store_true")

    c = sub.add_parser("degrade", help="synthesise low-quality faces with the papers' degradation models")
    c.add_argument("inputs", nargs="*", help="image files or folders (recursive)")
    c.add_argument("-o", "--output")
    c.add_argument("--describe", action="store_true", help="list the preset's parameters and ranges, then exit")
    c.add_argument("--preset", default="gfpgan", choices=("gfpgan", "gpen", "realesrgan"))
    c.add_argument("--seed", type=int, default=0, help="image i uses seed+i")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix or re-range a parameter, e.g. --set scale=8 --set jpeg_quality=60:80 (see --describe)")
    c.add_argument("--size", type=int, default=0, help="resize inputs to SIZE×SIZE first (e.g. 512)")
    c.add_argument("--device", default="cpu")
    c.add_argument("--overwrite", action="store_true")

    c = sub.add_parser("eval", help="score restored faces against ground truth (or alone): per-image CSV + summary",
                       description="Full-reference metrics (PSNR, SSIM, LPIPS, IDS, FID) compare each restored image with "
                                   "the ground-truth image of the same relative path and name; without --gt only "
                                   "no-reference metrics run (NIQE; FID with --fid-reference). Writes per_image.csv, "
                                   "summary.json and summary.md. With --degrade, the ground-truth folder is first degraded "
                                   "with a fixed seed, so anyone can rebuild the same inputs. Example: "
                                   "bfr eval restored/ --gt gt/ --metrics psnr,ssim,lpips,niqe")
    c.add_argument("restored", nargs="?", help="folder of restored images (searched recursively)")
    c.add_argument("--gt", help="ground-truth folder; images pair by relative path and name (suffix ignored)")
    c.add_argument("-o", "--output", help="report folder (default: RESTORED_eval beside the restored folder)")
    c.add_argument("--metrics", action="append", metavar="A,B", help="metrics to compute (default: psnr,ssim,lpips,niqe with --gt, niqe without; see --list-metrics)")
    c.add_argument("--list-metrics", action="store_true", help="list the metrics (kind, direction, what measures them) and exit")
    c.add_argument("--name", help="label of the summary row (default: the restored folder's name)")
    c.add_argument("--crop-border", type=int, default=0, help="pixels left out at each border by PSNR/SSIM (default 0)")
    c.add_argument("--batch-size", type=int, default=8, help="images measured at once (default 8)")
    c.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu, cuda, cuda:1 ...")
    c.add_argument("--fid-reference", metavar="NPZ", help="FID statistics (.npz, FeatureStats.save) to compare with instead of the ground-truth images")
    c.add_argument("--skip-unpaired", action="store_true", help="score only images present on both sides")
    c.add_argument("--degrade", metavar="PRESET", choices=("gfpgan", "gpen", "realesrgan"), help="first degrade --gt into --degrade-output (then score those inputs unless RESTORED is given)")
    c.add_argument("--degrade-output", help="folder for the degraded images (reused when made with the same settings)")
    c.add_argument("--seed", type=int, default=0, help="degradation seed: image i uses seed+i")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix or re-range a degradation parameter (see bfr degrade --describe)")
    c.add_argument("--degrade-device", default="cpu", help="device for the degradation noise (cpu: same images on every machine)")
    c.add_argument("--overwrite", action="store_true", help="replace existing degraded images")

    c = sub.add_parser("bench", help="time the pipelines (eager and compiled) with a correctness check; JSON + Markdown",
                       description="Times VSPBFR, PLTrans, PGDiff (1000/100/25 steps) on 512 px faces with random full-size "
                                   "weights, and the faces path on a 1080p frame: warm-up, median and p90, peak GPU "
                                   "memory; every fast path (bf16, compiled, channels-last) is first checked against the "
                                   "fp32 eager reference (worst-face PSNR >= 40 dB) and its speed withheld if it fails. "
                                   "Writes bench.json and bench.md (the README's table). A CPU run takes minutes; PGDiff "
                                   "step counts that do not fit --max-case-s are extrapolated from the measured step time.")
    c.add_argument("--pipelines", default="vspbfr,pltrans,pgdiff,faces", help="comma list of vspbfr, pltrans, pgdiff, faces (the faces path: detect, crop, paste on a 1080p frame)")
    c.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu, cuda, cuda:1 ...")
    c.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="fast-path precision (auto: bf16 on CUDA, fp32 on CPU)")
    c.add_argument("--batch", default=None, help="comma list of batch sizes (default: 1,16 on a GPU, 1 on the CPU)")
    c.add_argument("--pgdiff-steps", default="1000,100,25", help="PGDiff step counts (default 1000,100,25)")
    c.add_argument("--compile", action="store_true", help="also time torch.compile'd pipelines (regional: repeated blocks; minutes to compile on a CPU)")
    c.add_argument("--channels-last", action="store_true", help="also time with channels-last weights")
    c.add_argument("--tiny", action="store_true", help="tiny random models (CI smoke test; the numbers mean nothing)")
    c.add_argument("--warmup", type=int, default=None, help="warm-up runs (default: 10 GPU, 1 CPU)")
    c.add_argument("--repeats", type=int, default=None, help="timed runs (default: 50 GPU, 5 CPU), fewer when --max-case-s is reached")
    c.add_argument("--max-case-s", type=float, default=None, help="time cap per measurement, at least 3 runs (default: 20 GPU, 120 CPU); PGDiff step counts beyond it are extrapolated from the step time")
    c.add_argument("--budget-s", type=float, default=None, help="stop starting new measurements after this many seconds (results so far are kept)")
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads during the run (default: as set, usually one per core)")
    c.add_argument("-o", "--output", default="bench_results", help="folder for bench.json and bench.md (default: bench_results)")

    c = sub.add_parser("restore", help="restore the faces in photos, folders (recursive) and videos",
                       description="Detect, restore and paste back every face (--aligned: inputs are aligned face crops). "
                                   "Existing outputs are skipped, so an interrupted run continues where it stopped. "
                                   "Several GPUs: accelerate launch --multi_gpu --num_processes N -m bfr_core.cli restore ... "
                                   "(or torchrun --nproc_per_node N -m bfr_core.cli restore ...; add --device cpu on the CPU).")
    c.add_argument("inputs", nargs="+", help="image or video files, or folders (searched recursively)")
    c.add_argument("-o", "--output", required=True, help="output folder (inputs' relative paths are kept)")
    c.add_argument("--method", default="auto", choices=("auto", "vspbfr", "pgdiff", "pltrans", "compact"),
                   help="auto: the best method whose weights are present or downloadable (the built-in compact model offline)")
    c.add_argument("--model", help="weights file for pltrans or compact (default: the built-in compact model)")
    c.add_argument("--aligned", action="store_true", help="inputs are aligned face crops: no detection, no paste-back")
    c.add_argument("--fidelity", type=float, help="0..1, higher stays closer to the input (PGDiff guidance, PLTrans n)")
    c.add_argument("--visibility", type=float, default=1.0, help="blend of the restored faces over the originals (0..1)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu, cuda, cuda:1 ...")
    c.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    c.add_argument("--batch-size", type=int, default=4, help="faces restored at once")
    c.add_argument("--detector", help="face detector weights: a file or a registry id (yunet, retinaface-resnet50, ...)")
    c.add_argument("--detector-size", type=int, default=640, help="longest side the detector sees (0: full size)")
    c.add_argument("--min-face", type=float, default=0.0, help="ignore faces smaller than this many pixels")
    c.add_argument("--max-faces", type=int, default=0, help="restore at most this many faces per image or frame (largest first)")
    c.add_argument("--upscale", type=float, default=1.0, help="output size factor for whole photos and videos")
    c.add_argument("--color-match", default="none", choices=("none", "mean", "mean_std"))
    c.add_argument("--video-chunk", type=int, default=16, help="video frames processed together")
    c.add_argument("--ext", help="output image format, e.g. png (default: the input's)")
    c.add_argument("--no-download", action="store_true", help="use only weights already present")
    c.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except BFRError as e:
        print(f"bfr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bfr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
