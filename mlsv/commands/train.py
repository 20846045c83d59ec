"""``mlsv train`` (and ``python train.py``): train and evaluate mlsv models.

    mlsv train                           # the default run: synthetic corpus, 3 stages, evaluation, report
    mlsv train --quick                   # the same, shrunk to about 20 seconds on 2 CPU cores
                                         # (used by the tests)
    torchrun --standalone --nproc_per_node 2 train.py --quick   # two processes (GPUs, or CPUs with gloo)
    accelerate launch train.py --config configs/voxceleb2_wavlm_large.yaml      # a recipe
    accelerate launch train.py --config configs/voxceleb/stage1_frozen.yaml --output-dir runs/x --set optim.lr=5e-4

A config with ``steps:`` is a recipe (prepare, stages, evaluation, report, run in order); any other
config is one training stage. Rerunning the same command resumes where it stopped and skips what is done.
Relative paths in a stage config and in --set values (manifests, trials, stage.init_from) start from
the stage config file's folder, not the working directory: give absolute paths on the command line.
The default recipe and the shipped configs are the package's (``mlsv.shipped_path("configs")``): the
repository's ``configs/`` in a source checkout, ``mlsv/configs`` in an installed wheel.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mlsv import shipped_path
from mlsv.extras import MissingExtra, require_extra

DEFAULT_RECIPE = shipped_path("configs/default.yaml")


def register(subparsers) -> None:
    """``mlsv train ARGS``: the arguments go to :func:`main` as they are (its own parser, its own --help)."""
    p = subparsers.add_parser(
        "train", help="train and evaluate (the default recipe, a recipe or a stage config)", add_help=False
    )
    p.set_defaults(func=lambda argv: main(argv, prog="mlsv train"), forward_arguments=True)


def parse_args(argv=None, prog: str = "train.py") -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.partition("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=str(DEFAULT_RECIPE), help="a recipe or a stage config (YAML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (YAML syntax); repeatable; in a recipe, applies to every stage",
    )
    p.add_argument("--output-dir", default=None, help="where the run goes (default: the recipe's output_dir)")
    p.add_argument("--quick", action="store_true", help="shrink the recipe (its quick settings) for a smoke test")
    p.add_argument("--steps", nargs="+", default=None, help="run only these recipe steps")
    return p.parse_args(argv)


def main(argv=None, prog: str = "train.py") -> int:
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        require_extra("train", "training")
        from mlsv.config import ConfigError, load_config
        from mlsv.launch import set_up_processes
        from mlsv.recipe import is_recipe, load_recipe, run_recipe
    except MissingExtra as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2

    try:
        set_up_processes()  # first: under torchrun on CPUs, each process must know the others
        if is_recipe(args.config):
            recipe = load_recipe(args.config, output_dir=args.output_dir, quick=args.quick, overrides=args.overrides)
            report = run_recipe(recipe, only=args.steps)
            if report.get("table"):
                print(report["table"])
                print(f"\nresults: {report['results']}\nreport:  {report['report']}\nmodel:   {report['model']}")
        else:
            from mlsv.train.loop import run_stage

            cfg = load_config(args.config, args.overrides)
            out = Path(args.output_dir or f"runs/{Path(args.config).stem}")
            run_stage(cfg, out, config_dir=Path(args.config).resolve().parent)
            print(f"model: {out / 'model'}")
    except (ConfigError, OSError, KeyError, ValueError) as e:  # bad input: named, no traceback
        print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
        return 2
    return 0


def error_message(e: BaseException) -> str:
    """The message of an expected error: a KeyError's text (its str() is the quoted repr). Errors raised in
    loader workers arrive with their own message (``TrainLoader`` and ``EvalLoader`` unwrap them)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
