"""mlsv: multi-layer speaker verification on pre-trained speech encoders."""

from pathlib import Path

__version__ = "0.1.0"


def shipped_path(name: str) -> Path:
    """A file or folder that ships with mlsv: ``configs/...`` (the recipes and stage configs) or
    ``metrics/mlsv_verification`` (the ``evaluate`` metric module).

    An installed wheel holds them inside the package (``mlsv/configs``, ``mlsv/metrics``); a source
    checkout (and an editable install of it) has them beside the package, in the repository. FileNotFoundError
    names both places when neither has ``name``.
    """
    here = Path(__file__).resolve().parent
    candidates = (here / name, here.parent / name)
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(f"{name} is not shipped with this mlsv (looked in {candidates[0]} and {candidates[1]})")


def __getattr__(name: str):
    """``mlsv.Verifier`` (and the other public names of :mod:`mlsv.api`), imported when first asked for."""
    if name in ("Verifier", "load_model", "EvaluationRecord"):
        from mlsv import api

        return getattr(api, name)
    raise AttributeError(f"module 'mlsv' has no attribute {name!r}")
