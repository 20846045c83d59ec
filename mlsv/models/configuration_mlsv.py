"""``MLSVConfig``: the configuration of a multi-layer speaker-verification model (model_type ``mlsv``).

Part of the model code saved beside a model for ``trust_remote_code``: imports only transformers.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class MLSVConfig(PretrainedConfig):
    """Encoder (nested config) + layer aggregation + speaker backend, and what evaluation learnt.

    Args:
        encoder_config: the encoder's config as a dict (its ``model_type`` picks the family).
        encoder_name_or_path: where the encoder's weights came from (informational).
        layers: hidden-state indices to use (None: all L+1).
        aggregation: "lap", "superb" or "last".
        lap_heads, lap_channels, lap_dropout: LAP settings (docs/method.md#lap).
        backend: "astp", "xvector", "ecapa" or "mhfa".
        embedding_size: E.
        backend_dropout: ASTP frame dropout.
        ecapa_channels: 512 or 1024.
        mhfa_heads, mhfa_compression: MHFA settings (its key/value aggregators follow ``aggregation``).
        normalize_input: zero-mean unit-variance input per utterance (the feature extractor's do_normalize).
        sampling_rate: the encoder's input rate.
        training_mean: (E,) mean training embedding, subtracted before cosine scoring.
        calibration: QMF calibration parameters (a dict) when the model was calibrated.
        threshold: the decision threshold on the model's final score scale.
        evaluation: what the model's evaluation recorded (metrics, score statistics, the threshold's scale):
            the stored form of ``mlsv.scoring.record.EvaluationRecord``, which the Verifier's thresholds
            and the model card read; with ``threshold`` and ``calibration`` it is that record.
        cohort_size: rows of the AS-norm cohort (speaker means) stored in the weights (0: none).
        train_crop_seconds: the crop length of the training stage that made the model (None: not trained by
            mlsv): the context it saw, against which inputs much longer than it are out of its training.
        embedding_chunk_seconds: the embedding window ``mlsv evaluate`` chose on held-out trials (whole
            utterances against windows of the training crop length): 0 embeds whole utterances, > 0 cuts
            longer ones into overlapping windows of this length and averages them. The Verifier, ``mlsv embed``
            and ``mlsv evaluate`` use it unless told otherwise. None: none chosen (whole utterances).
    """

    model_type = "mlsv"

    def __init__(
        self,
        encoder_config: dict | None = None,
        encoder_name_or_path: str = "",
        layers: list[int] | None = None,
        aggregation: str = "lap",
        lap_heads: int = 16,
        lap_channels: int = 512,
        lap_dropout: float = 0.1,
        backend: str = "astp",
        embedding_size: int = 192,
        backend_dropout: float = 0.1,
        ecapa_channels: int = 512,
        mhfa_heads: int = 64,
        mhfa_compression: int = 128,
        normalize_input: bool = True,
        sampling_rate: int = 16000,
        training_mean: list[float] | None = None,
        calibration: dict | None = None,
        threshold: float | None = None,
        evaluation: dict | None = None,
        cohort_size: int = 0,
        train_crop_seconds: float | None = None,
        embedding_chunk_seconds: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hasattr(encoder_config, "to_dict"):
            encoder_config = encoder_config.to_dict()
        self.encoder_config = encoder_config or {}
        self.encoder_name_or_path = encoder_name_or_path
        self.layers = list(layers) if layers else None
        self.aggregation = aggregation
        self.lap_heads = lap_heads
        self.lap_channels = lap_channels
        self.lap_dropout = lap_dropout
        self.backend = backend
        self.embedding_size = embedding_size
        self.backend_dropout = backend_dropout
        self.ecapa_channels = ecapa_channels
        self.mhfa_heads = mhfa_heads
        self.mhfa_compression = mhfa_compression
        self.normalize_input = normalize_input
        self.sampling_rate = sampling_rate
        self.training_mean = training_mean
        self.calibration = calibration
        self.threshold = threshold
        self.train_crop_seconds = train_crop_seconds
        self.embedding_chunk_seconds = embedding_chunk_seconds
        self.evaluation = evaluation
        self.cohort_size = cohort_size

    def encoder_pretrained_config(self):
        """The nested encoder config as a transformers config object."""
        from transformers import CONFIG_MAPPING

        if not self.encoder_config:
            raise ValueError("no encoder_config (not a complete mlsv model config)")
        cfg = dict(self.encoder_config)
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise ValueError("encoder_config has no model_type (which encoder family: wavlm, hubert, ...)")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(
                f"encoder_config has an unknown model_type {model_type!r} (not one this transformers version knows)"
            )
        return CONFIG_MAPPING[model_type](**cfg)
