"""GPT model: config, tensor-parallel pipeline stages, FLOP count, Hugging Face export (docs/model.md)."""

from .config import ModelConfig
from .flops import model_flops_per_token, num_parameters
from .gpt import GPTModel, allreduce_embedding_grads, build_gpt_stage, stage_layer_range

__all__ = ["ModelConfig", "GPTModel", "build_gpt_stage", "stage_layer_range", "allreduce_embedding_grads",
           "model_flops_per_token", "num_parameters"]
