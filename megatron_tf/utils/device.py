"""The one place "auto" becomes a device: CUDA when torch sees a GPU, else CPU.

    resolve_device("auto")  -> "cuda" on a GPU machine, "cpu" otherwise; any other name is returned unchanged.
"""

from __future__ import annotations


def resolve_device(name: str) -> str:
    """`name` ("auto", "cpu", "cuda", "cuda:1", ...) as a concrete device string; "auto" picks CUDA when available."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
