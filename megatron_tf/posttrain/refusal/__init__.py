"""Refusal training: chat format, set builder, SFT, refusal / false-refusal rates (docs/attacks.md)."""
