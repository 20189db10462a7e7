"""Post-training wing: what is done to a trained model after pretraining, on whole models (TP = 1) loaded through
megatron_tf.checkpoint (docs/attacks.md).

    attacks/      adversarial finetuning (full / LoRA), the tokens-to-baseline robustness metric, sweeps, plots
    unlearning/   RMU (representation misdirection) and its job: evaluate, unlearn, evaluate, save
    refusal/      chat format, refusal set builder, refusal SFT and refusal / false-refusal rates
    data.py       the token data of all three: documents, packed windows, padded rows, batches
    common.py     what else they share: device, LM loss and training step, AdamW, model lists, CSV text

Derived models are saved back as trainer checkpoints (megatron_tf.checkpoint.derived). This wing may import
evaluation/ and everything below it; nothing below it imports it (tools/ and demo/ sit above).
"""
