"""The parallel GPT trainer (docs/training.md): configs, optimizer, LR schedule, loss, 1F1B schedule, loop,
resume checks, metrics, optional DeepSpeed ZeRO. The checkpoint files are megatron_tf/checkpoint/.

    from megatron_tf.training import pretrain
"""

from .api import load_model_from_checkpoint, main, pretrain
from .arguments import Configs, build_parser, parse_args
from .loop import Trainer, TrainResult

__all__ = ["pretrain", "load_model_from_checkpoint", "main", "Configs",
           "parse_args", "build_parser", "Trainer", "TrainResult"]
