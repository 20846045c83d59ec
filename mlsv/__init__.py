"""mlsv: multi-layer speaker verification on pre-trained speech encoders."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``mlsv.Verifier`` (and the other public names of :mod:`mlsv.api`), imported when first asked for."""
    if name in ("Verifier", "load_model", "EvaluationRecord"):
        from mlsv import api

        return getattr(api, name)
    raise AttributeError(f"module 'mlsv' has no attribute {name!r}")
