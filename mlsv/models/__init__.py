"""The model library: frontends, layer aggregation, speaker backends, margin head and ``MLSVModel``.

Importing it registers ``MLSVConfig``/``MLSVModel`` with ``AutoConfig``, ``AutoModel`` and
``AutoModelForAudioXVector``, and the ``speaker-verification`` pipeline with transformers.
"""

from transformers import AutoConfig, AutoModel, AutoModelForAudioXVector

from .aggregation import AGGREGATIONS, LastLayer, LayerAttentivePooling, SuperbAggregation, build_aggregation
from .backends import ASTP, BACKENDS, MHFA, EcapaTdnn, XVector, build_backend
from .configuration_mlsv import MLSVConfig
from .frontend import FAMILIES, TINY_ENCODERS, Frontend, build_encoder, encoder_config_from_name
from .head import SubCenterAAMSoftmax
from .modeling_mlsv import MLSVModel, MLSVOutput
from .pipeline_mlsv import SpeakerVerificationPipeline  # registers the "speaker-verification" pipeline

AutoConfig.register("mlsv", MLSVConfig, exist_ok=True)
AutoModel.register(MLSVConfig, MLSVModel, exist_ok=True)
AutoModelForAudioXVector.register(MLSVConfig, MLSVModel, exist_ok=True)
# saved folders carry the code: AutoModel.from_pretrained(folder, trust_remote_code=True) without mlsv
MLSVConfig.register_for_auto_class()
MLSVModel.register_for_auto_class("AutoModel")

__all__ = [
    "AGGREGATIONS",
    "ASTP",
    "BACKENDS",
    "FAMILIES",
    "MHFA",
    "TINY_ENCODERS",
    "EcapaTdnn",
    "Frontend",
    "LastLayer",
    "LayerAttentivePooling",
    "MLSVConfig",
    "MLSVModel",
    "MLSVOutput",
    "SpeakerVerificationPipeline",
    "SubCenterAAMSoftmax",
    "SuperbAggregation",
    "XVector",
    "build_aggregation",
    "build_backend",
    "build_encoder",
    "encoder_config_from_name",
]
