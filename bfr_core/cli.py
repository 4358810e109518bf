"""The ``bfr`` command: ``bfr degrade``, ``bfr convert``, ``bfr info``, ``bfr download``.

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
