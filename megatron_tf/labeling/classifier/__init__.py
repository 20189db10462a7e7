"""biLM token classifier (docs/classifier.md): a forward and a reversed GPT trained with the project's trainer
(`--reverse-documents`), a class-balanced probe on their hidden states, one artifact directory, and a labeler for
corpus-scale annotation (`tools/annotate.py --labeler classifier --classifier DIR`).

    windows.py    overlapping windows: every token scored once, with left context
    features.py   hidden states of both LMs via forward hooks, re-aligned to document order
    probe.py      logistic regression / MLP head, class-balanced
    metrics.py    AUROC, F1-optimal P/R/F1 (balanced and natural base rate), calibration, PR curves
    artifact.py   save/load the classifier (safetensors + JSON)
    labeler.py    ClassifierLabeler (TokenLabeler) for the annotation runner
    cost.py       annotation FLOPs vs pretraining FLOPs
    corpus.py     labeled documents from sidecars, class-balanced token sampling
    train.py      tools/train_classifier.py;  evaluate.py  tools/eval_classifier.py
(the CPU demo run: megatron_tf/demo/classifier_run.py)
"""
