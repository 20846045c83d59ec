"""Checks the ``mlsv`` subcommands share: number ranges as argparse types, output paths, mean vectors.

Every command refuses the same out-of-range values with the option's name (argparse prints
``mlsv CMD: error: argument --batch-seconds: must be a positive number, got 0``), and checks its output
paths before any work, so that a directory given for a file (or a file for a folder) is one error line,
not a traceback after the work and a stray temporary file.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "add_asnorm_top_k_option",
    "add_cohort_option",
    "add_device_option",
    "add_window_options",
    "check_cohort_speakers",
    "check_window_options",
    "int_at_least",
    "load_mean",
    "non_negative_float",
    "non_negative_int",
    "output_file",
    "output_folder",
    "positive_float",
    "positive_int",
    "prior",
    "probability",
    "silence_progress",
]


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (seconds, tolerances, regularization)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number of at least 0 (0 usually meaning "off")."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def probability(text: str) -> float:
    """An argparse type: a probability strictly between 0 and 1 (a false-accept rate, a target prior)."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def prior(text: str) -> float:
    """An argparse type: a prior in [0, 1), where 0 means "unweighted"."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (0: unweighted), got {text}")
    return value


def _existing_ancestor_is_file(path: Path) -> Path | None:
    """The nearest existing folder above ``path`` when it is a file (so nothing can be written there)."""
    parent = next((p for p in path.parents if p.exists()), None)
    return parent if parent is not None and not parent.is_dir() else None


def output_file(path: str | os.PathLike | None, option: str = "--out") -> None:
    """Refuses (ValueError naming ``option``) a file output that is a directory or lies under a file."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file name")
    blocker = _existing_ancestor_is_file(path)
    if blocker is not None:
        raise ValueError(f"{option} {path}: {blocker} is a file, not a folder")


def output_folder(path: str | os.PathLike | None, option: str = "--out") -> None:
    """Refuses (ValueError naming ``option``) a folder output that is an existing file or lies under one."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; give a folder")
    blocker = _existing_ancestor_is_file(path)
    if blocker is not None:
        raise ValueError(f"{option} {path}: {blocker} is a file, not a folder")


def load_mean(path: str | os.PathLike, dim: int, against: str | os.PathLike):
    """The (dim,) float32 mean vector of a ``.npy`` file, checked before any scoring.

    Raises ValueError naming ``path``: not a numeric ``.npy`` array, ``dim`` values expected (the
    dimension of the embeddings in ``against``), or NaN / infinite values.
    """
    import numpy as np

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--mean {path} is a directory; give a .npy mean vector")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":
            raise ValueError("no .npy header; write it with numpy.save")
        mean = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"--mean {path}: no such file") from None
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a .npy mean vector ({e})") from None
    if (
        not isinstance(mean, np.ndarray)
        or not np.issubdtype(mean.dtype, np.number)
        or np.issubdtype(mean.dtype, np.complexfloating)
    ):
        raise ValueError(f"{path}: not a .npy mean vector (a real-valued array is expected)")
    mean = mean.astype(np.float32).reshape(-1)
    if mean.size != dim:
        raise ValueError(f"{path}: mean vector has {mean.size} dimensions, {against} has {dim}")
    if not np.isfinite(mean).all():
        raise ValueError(f"{path}: NaN or infinite values in the mean vector")
    return mean


def check_cohort_speakers(n_speakers: int, top_k: int, source: str | os.PathLike) -> None:
    """Refuses a calibration cohort too small for ``--asnorm-top-k``.

    Each calibration pair leaves its two speakers out of its AS-norm cohort, so the cohort needs
    ``top_k + 2`` speakers.
    """
    if n_speakers < top_k + 2:
        fix = (
            f"use --asnorm-top-k {n_speakers - 2} or less, or a larger cohort"
            if n_speakers >= 4
            else "use a cohort of at least 4 speakers"
        )
        raise ValueError(
            f"{source}: {n_speakers} cohort speakers are too few for --asnorm-top-k {top_k}: "
            f"calibration needs at least top-k + 2 = {top_k + 2} (each pair's two speakers are "
            f"left out of its cohort); {fix}"
        )


def add_window_options(parser: argparse.ArgumentParser, window_help: str) -> None:
    """``--window SECONDS`` and ``--hop SECONDS`` (sliding windows, ``Verifier.embed_windows``)."""
    parser.add_argument("--window", type=positive_float, default=None, metavar="SECONDS", help=window_help)
    parser.add_argument(
        "--hop",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="with --window: seconds between window starts (default: half a window)",
    )


def check_window_options(args: argparse.Namespace) -> None:
    """ValueError for a ``--hop`` without ``--window``."""
    if args.hop is not None and args.window is None:
        raise ValueError("--hop needs --window (the windows' length in seconds)")


# -- the options every command spells the same way -------------------------------------------------------


def add_device_option(parser: argparse.ArgumentParser, what: str = "torch device") -> None:
    """``--device``, default ``auto``: cuda when this torch sees a GPU, else cpu (``check_device``)."""
    parser.add_argument(
        "--device",
        default="auto",
        help=f"{what}: auto (cuda when present, else cpu), cpu, cuda, cuda:1, ... (default auto)",
    )


def add_asnorm_top_k_option(parser: argparse.ArgumentParser, default: str = "") -> None:
    """``--asnorm-top-k K``, one default everywhere: the calibration's in use (the model's evaluation's, or
    ``--calibration``'s), else 600 (``mlsv.scoring.backend.ASNORM_TOP_K``). Left None here: each command
    resolves it where it knows the calibration."""
    parser.add_argument(
        "--asnorm-top-k",
        type=int_at_least(2),
        default=None,
        metavar="K",
        help="AS-norm cohort size, at least 2 (default: "
        + (default or "the model's evaluation's, else its calibration's, else 600")
        + ")",
    )


def add_cohort_option(parser: argparse.ArgumentParser, use: str = "enables AS-norm") -> None:
    """``--cohort``: an embeddings table or a manifest, in every command (``mlsv.inference.cohorts``)."""
    parser.add_argument(
        "--cohort",
        default=None,
        metavar="COHORT",
        help=f"AS-norm cohort ({use}): an embeddings .npz with speakers (mlsv embed --manifest), or a "
        "manifest with a speaker on every row, embedded with the model",
    )


def silence_progress() -> None:
    """``--quiet``: no progress bars (ours, transformers' "Loading weights", the Hub's, datasets') and only
    transformers' errors; the results are still printed."""
    import logging

    os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it for every bar it makes
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    import transformers.utils.logging as transformers_logging
    from huggingface_hub.utils import disable_progress_bars

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    disable_progress_bars()
    logging.getLogger("mlsv").setLevel(logging.WARNING)
