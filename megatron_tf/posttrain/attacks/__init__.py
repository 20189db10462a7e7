"""Adversarial finetuning attacks (full / LoRA), the tokens-to-baseline metric, sweeps and their plots
(docs/attacks.md)."""
