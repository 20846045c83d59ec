"""A Hugging Face Space that serves a published model's demo page (``mlsv push --space``): ``app.py``,
``requirements.txt`` and the Space's ``README.md``.

The Space runs the same code as ``mlsv demo`` (:func:`mlsv.inference.demo.launch_demo`) on the model
repository it names. It installs mlsv with pip from ``requirements.txt``, pinned by default to the mlsv version
that publishes it: the model repository's remote code loads the weights, but the demo also needs mlsv's
``Verifier`` (scales, cohort, calibration, thresholds) and the layer-attention plot, and the pinned release is
the one whose code wrote the model's config. A caller with an unreleased mlsv gives another requirement line
(``requirement=``, e.g. ``mlsv[demo] @ git+https://...``, or a wheel added to the Space).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

__all__ = ["build_space_folder", "publish_space", "space_requirement", "upload_space"]

#: The Gradio version a Space is declared for when Gradio is not installed here (``sdk_version``).
GRADIO_VERSION = "6.31.0"
SPACE_FILES = ("README.md", "app.py", "requirements.txt")


def space_requirement() -> str:
    """The requirements line that installs this mlsv (its installed version) with its demo extra."""
    return f"mlsv[demo]=={metadata.version('mlsv')}"


def _gradio_version() -> str:
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        return GRADIO_VERSION


def _app(repo_id: str) -> str:
    return f'''"""The demo page of the mlsv speaker-verification model {repo_id}: `mlsv demo --model {repo_id}`.

MLSV_MODEL names another model repository (or a folder) to serve; a private one needs an HF_TOKEN secret.
"""

import os

from mlsv.inference.demo import launch_demo

launch_demo(os.environ.get("MLSV_MODEL", "{repo_id}"), host="0.0.0.0", port=int(os.environ.get("PORT", "7860")))
'''


def _readme(repo_id: str, title: str, license: str | None) -> str:
    lines = [
        "---",
        f"title: {title}",
        "emoji: 🎙️",
        "colorFrom: indigo",
        "colorTo: gray",
        "sdk: gradio",
        f"sdk_version: {_gradio_version()}",
        "app_file: app.py",
        "pinned: false",
        "models:",
        f"  - {repo_id}",
        *([f"license: {license}"] if license else []),
        "---",
        "",
        f"# {title}",
        "",
        f"Speaker verification with [{repo_id}](https://huggingface.co/{repo_id}), an "
        "[mlsv](https://pypi.org/project/mlsv/) model: upload or record two recordings and the page gives "
        "the score, the model's threshold and decision, and each recording's layer attention (LAP).",
        "",
        f'The same page runs locally with `pip install "mlsv[demo]"` and `mlsv demo --model {repo_id}`.',
        "",
    ]
    return "\n".join(lines)


def build_space_folder(
    repo_id: str,
    out: str | os.PathLike,
    *,
    title: str | None = None,
    license: str | None = None,
    requirement: str | None = None,
) -> Path:
    """Writes the Space for the model repository ``repo_id`` into ``out`` (new, empty, or an earlier Space
    folder, which is replaced) and returns it."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out} is a file; give a folder for the Space")
        others = sorted(p.name for p in out.iterdir() if p.name not in SPACE_FILES)
        if others:
            raise ValueError(
                f"{out} holds files a Space folder does not ({', '.join(others[:5])}); give a new or empty folder"
            )
    name = title or f"{repo_id.split('/')[-1]} speaker verification"
    out.mkdir(parents=True, exist_ok=True)
    (out / "app.py").write_text(_app(repo_id), encoding="utf-8")
    (out / "requirements.txt").write_text((requirement or space_requirement()) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(repo_id, name, license), encoding="utf-8")
    return out


def upload_space(folder: str | os.PathLike, space_id: str, *, private: bool = False) -> str:
    """Creates the Gradio Space ``space_id`` if needed and uploads ``folder`` as one commit; the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=os.fspath(folder),
            repo_id=space_id,
            repo_type="space",
            commit_message="mlsv demo page",
        )
    except Exception as e:  # network, login or permission: one line
        raise ConnectionError(
            f"could not upload the Space {space_id!r} ({type(e).__name__}: {e}); check the network and your "
            "login (hf auth login or HF_TOKEN), or build it first with --dry-run"
        ) from e
    return str(getattr(info, "commit_url", info))


def publish_space(args: argparse.Namespace) -> str:
    """``push_to_hub.py --space [SPACE_ID]``: the Space of ``args.repo_id`` (named SPACE_ID, default the model's
    name), written beside the dry run's folder (``OUT-space``) or uploaded. Returns the line to print."""
    space_id = args.repo_id if args.space is True else _check_space_id(args.space)
    if args.dry_run:
        out = build_space_folder(args.repo_id, f"{os.fspath(args.dry_run).rstrip('/')}-space", license=args.license)
        return f"dry run: built the Space {space_id} in {out} ({', '.join(SPACE_FILES)}); nothing uploaded"
    with tempfile.TemporaryDirectory(prefix="mlsv-space-") as tmp:
        folder = build_space_folder(args.repo_id, Path(tmp) / "space", license=args.license)
        url = upload_space(folder, space_id, private=args.private)
        shutil.rmtree(folder, ignore_errors=True)
    return f"uploaded the demo Space to https://huggingface.co/spaces/{space_id} ({url})"


def _check_space_id(space_id: str) -> str:
    """``space_id`` when it is ``NAMESPACE/NAME`` by huggingface_hub's rules; else ValueError naming ``--space``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if space_id.count("/") != 1 or not all(space_id.split("/")):
        raise ValueError(f"--space {space_id!r}: give the Space as NAMESPACE/NAME, e.g. me/mlsv-demo")
    try:
        validate_repo_id(space_id)
    except HFValidationError as e:
        raise ValueError(f"--space {space_id!r} is not a valid Space name: {e}") from None
    return space_id
