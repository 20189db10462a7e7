"""Adversarial finetuning attacks (full / LoRA), the tokens-to-baseline metric, sweeps, and checkpoint / token-set
helpers shared with RMU and refusal training (docs/attacks.md)."""
