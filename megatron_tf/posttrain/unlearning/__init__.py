"""Unlearning baselines: RMU (docs/attacks.md)."""
