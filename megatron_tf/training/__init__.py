"""The parallel GPT trainer (docs/training.md): configs, optimizer, LR schedule, loss, 1F1B schedule, loop,
checkpoints, metrics, optional DeepSpeed ZeRO.

    from megatron_tf.training import pretrain, load_model_from_checkpoint
"""

from .api import LoadedModel, load_model_from_checkpoint, main, merged_state_dict, pretrain
from .arguments import Configs, build_parser, parse_args
from .loop import Trainer, TrainResult

__all__ = ["pretrain", "load_model_from_checkpoint", "LoadedModel", "merged_state_dict", "main", "Configs",
           "parse_args", "build_parser", "Trainer", "TrainResult"]
