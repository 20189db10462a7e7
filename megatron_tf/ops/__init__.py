"""Python fronts of the optional CUDA extension (megatron_tf._C) with exact PyTorch fallbacks."""
