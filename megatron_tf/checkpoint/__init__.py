"""Checkpoints: the floor between the trainer and everything that uses a trained model (docs/architecture.md).

    format.py     the on-disk layout: per-rank safetensors shards + JSON, atomic save, verified reads
    states.py     RNG and optimizer states as tensors + JSON
    integrity.py  checksums.json: every file's XXH3-64, verified on load and by tools/verify.py
    load.py       read_run (a checkpoint's config.json + state.json), load_model (the whole model in one process)
    derived.py    a modified whole model saved as a checkpoint derived from another (RMU, attacks, refusal)

The trainer (training/) saves and resumes through format.py and states.py; nothing above it imports training/.
"""

from .derived import LoadedCheckpoint, load_checkpoint
from .derived import save_checkpoint as save_derived_checkpoint
from .format import FORMAT, LATEST, resolve_checkpoint_dir
from .integrity import CheckpointCorrupt, CheckpointError
from .load import LoadedModel, Run, load_model, merged_state_dict, read_run

__all__ = ["FORMAT", "LATEST", "CheckpointError", "CheckpointCorrupt", "resolve_checkpoint_dir", "Run", "read_run",
           "LoadedModel", "load_model", "merged_state_dict", "LoadedCheckpoint", "load_checkpoint",
           "save_derived_checkpoint"]
