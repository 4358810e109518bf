"""Train one stage: ``accelerate launch trainer/train.py --config trainer/configs/<stage>.yaml [key=value ...]``.

Also runs as ``python trainer/train.py ...`` on one device. Overrides use dotted keys
(``optim.lr=2e-4 data.root=/data/ffhq batch_size=8``). A run resumes from the latest state in its
``output_dir`` by default; SIGTERM/SIGINT save a state and stop (exit status 128 + signal number).
``--export_only`` exports (and with ``--push_to_hub REPO`` publishes) the latest state without training.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python trainer/train.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bfr_core.errors import BFRError  # noqa: E402

from trainer.config import load_config  # noqa: E402

log = logging.getLogger("trainer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trainer/train.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a YAML config, e.g. trainer/configs/pgdiff_restorer.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value settings applied over the config file")
    p.add_argument("--push_to_hub", metavar="REPO", help="publish the exported weights to this Hub model repo")
    p.add_argument("--export_only", action="store_true", help="export the latest saved state without training")
    p.add_argument("--validate_only", action="store_true",
                   help="print the validation metrics of the latest saved state (with this config's degradation, "
                        "e.g. data.degradation_options.scale=4) without training or exporting")
    p.add_argument("--print_config", action="store_true", help="print the validated config and exit")
    p.add_argument("--list", action="store_true", help="list the registered stages, models, losses and degradations")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if not args.config and not args.list:
        p.error("--config is required (or --list)")
    return args


def list_registries() -> str:
    from trainer.registry import DEGRADATIONS, LOSSES, MODELS, STAGES

    lines = []
    for title, reg in (("stages", STAGES), ("models", MODELS), ("losses", LOSSES), ("degradations", DEGRADATIONS)):
        lines.append(f"{title}: {', '.join(reg.names())}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print(list_registries())
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            from trainer.config import dump

            print(dump(cfg), end="")
            return 0
        from trainer.loop import export_only, train, validate_only

        if args.validate_only:
            result = validate_only(cfg)
            print(json.dumps({"step": result.step, **result.metrics}))
            return 0
        result = export_only(cfg, push_to_hub=args.push_to_hub) if args.export_only else train(cfg, push_to_hub=args.push_to_hub)
    except BFRError as e:
        log.error("%s", e)
        return 2
    if result.stopped_by:
        log.warning("stopped by %s at step %d; the state is saved, run the same command to continue",
                    result.stopped_by, result.step)
        return 128 + int(getattr(signal, result.stopped_by, signal.SIGTERM))
    log.info("done at step %d; weights in %s%s", result.step, result.export_dir,
             f"; published: {result.hub_commit}" if result.hub_commit else "")
    return 0


def cli(argv: list[str] | None = None) -> None:
    """``main`` as a process entry point: exits with its status."""
    sys.exit(main(argv))


if __name__ == "__main__":
    cli()
