"""The trainer's command line: one parser generated from every config dataclass (megatron_tf/config/cli.py).

    cfgs = parse_args(["--num-layers", "2", "--hidden-size", "64", ...])   # -> Configs
    cfgs.model, cfgs.training, cfgs.optimizer, ...

Each config owns its flags (Megatron-LM's names): ModelConfig (model/config.py), ParallelConfig (parallel/groups.py),
GPTDatasetConfig and FilterConfig (data/config.py), CrossEntropyConfig (parallel/cross_entropy.py), TokenizerConfig
(tokenizer/config.py) and the trainer's TrainingConfig (training/config.py), LRScheduleConfig, OptimizerConfig,
CheckpointConfig (resume.py), LoggingConfig, EvalConfig (validation.py), DeepSpeedConfig. `--seq-length` and `--seed`
(TrainingConfig) are copied into the data config and default the model's max_position_embeddings.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig
from megatron_tf.model.config import ModelConfig
from megatron_tf.parallel.cross_entropy import CrossEntropyConfig
from megatron_tf.parallel.groups import ParallelConfig
from megatron_tf.tokenizer.config import TokenizerConfig

from .config import TrainingConfig
from .deepspeed_engine import DeepSpeedConfig
from .lr_schedule import LRScheduleConfig
from .metrics import LoggingConfig
from .optimizer import OptimizerConfig
from .resume import CheckpointConfig, current_sections
from .validation import EvalConfig

# attribute name in Configs -> (class, argparse group title)
CONFIG_CLASSES = {
    "model": (ModelConfig, "model"),
    "parallel": (ParallelConfig, "parallelism"),
    "training": (TrainingConfig, "training"),
    "tokenizer": (TokenizerConfig, "tokenizer"),
    "data": (GPTDatasetConfig, "data"),
    "filter": (FilterConfig, "token filter"),
    "cross_entropy": (CrossEntropyConfig, "loss"),
    "lr": (LRScheduleConfig, "learning rate"),
    "optimizer": (OptimizerConfig, "optimizer"),
    "checkpoint": (CheckpointConfig, "checkpointing"),
    "logging": (LoggingConfig, "logging"),
    "eval": (EvalConfig, "validation"),
    "deepspeed": (DeepSpeedConfig, "deepspeed"),
}


@dataclass
class Configs:
    """Every config of a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(train_iters=1))
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: GPTDatasetConfig = field(default_factory=GPTDatasetConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    cross_entropy: CrossEntropyConfig = field(default_factory=CrossEntropyConfig)
    lr: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def __post_init__(self):
        # the trainer owns --seq-length and --seed (Megatron shares them between model, data and optimizer)
        self.data = dataclasses.replace(self.data, seq_length=self.training.seq_length, seed=self.training.seed)

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in CONFIG_CLASSES}

    @classmethod
    def from_dict(cls, d: dict) -> Configs:
        """From to_dict() or a checkpoint's saved configs (older checkpoints' section names accepted)."""
        d = current_sections(d)
        kw = {}
        for name, (klass, _) in CONFIG_CLASSES.items():
            if name in d:
                names = {f.name for f in dataclasses.fields(klass)}
                kw[name] = klass(**{k: v for k, v in d[name].items() if k in names})
        return cls(**kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Megatron-style GPT pretraining with token-level data filtering",
                                allow_abbrev=False)
    for klass, title in CONFIG_CLASSES.values():
        add_dataclass_args(p, klass, title)
    return p


def parse_args(argv: list[str] | None = None) -> Configs:
    ns = build_parser().parse_args(argv)
    return Configs(**{name: dataclass_from_args(klass, ns) for name, (klass, _) in CONFIG_CLASSES.items()})
