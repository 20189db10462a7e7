"""megatron_tf: Megatron-style GPT pretraining that shapes capabilities by token-level data filtering.

Data flows one way: text -> tokens (tokenizer/, data/indexed_dataset) -> labels (labeling/, classifier/) -> scores
beside the tokens (data/sidecar) -> filtered samples (data/gpt_dataset, data/filters) -> model (model/, parallel/,
training/) -> evaluation (evaluation/).
"""

__version__ = "0.1.0"
