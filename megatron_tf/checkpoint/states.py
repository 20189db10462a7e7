"""RNG and optimizer states as checkpoint files: torch tensors (safetensors) plus JSON, nothing pickled.

    tensors, meta = rng_state(model_rng)              # torch CPU/CUDA + model-parallel RNG; numpy and python as JSON
    tensors, meta = optimizer_state(opt, names)       # "<param name>/<state key>" tensors, param groups in meta
"""

from __future__ import annotations

import random

import numpy as np
import torch

from .integrity import CheckpointError


def rng_state(model_rng=None) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    if model_rng is not None:
        for k, v in model_rng.states().items():
            tensors[f"model_parallel_rng/{k}"] = v
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global generator's state)
    version, internal, gauss = random.getstate()
    meta = {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict, model_rng=None) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    if model_rng is not None:
        prefix = "model_parallel_rng/"
        model_rng.set_states({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------------------------------
# torch optimizer state <-> (tensors by parameter name, JSON)
# ------------------------------------------------------------------------------------------------------------------
def optimizer_state(optimizer, names: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    order = [i for g in sd["param_groups"] for i in g["params"]]
    if len(order) != len(names):
        raise AssertionError(f"optimizer has {len(order)} parameters, {len(names)} names")
    tensors, scalars = {}, {}
    for idx, name in zip(order, names):
        for k, v in sd["state"].get(idx, {}).items():
            if torch.is_tensor(v):
                tensors[f"{name}/{k}"] = v
            else:
                scalars[f"{name}/{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
              for g in sd["param_groups"]]
    return tensors, {"names": names, "param_groups": groups, "scalars": scalars}


def load_optimizer_state(optimizer, names: list[str], tensors: dict[str, torch.Tensor], meta: dict,
                         where: str) -> None:
    if meta["names"] != names:
        missing = sorted(set(names) - set(meta["names"]))
        extra = sorted(set(meta["names"]) - set(names))
        raise CheckpointError(f"{where}: optimizer parameters differ from the model's (missing {missing[:4]}, "
                              f"unexpected {extra[:4]}, or another order)")
    current = optimizer.state_dict()
    order = [i for g in current["param_groups"] for i in g["params"]]
    by_name: dict[str, dict] = {}
    for k, v in [*tensors.items(), *meta["scalars"].items()]:
        name, key = k.rsplit("/", 1)
        by_name.setdefault(name, {})[key] = v
    if meta.get("deepspeed_step") is not None:  # saved by a DeepSpeed run: one step count for all parameters
        for entry in by_name.values():
            entry.setdefault("step", torch.tensor(float(meta["deepspeed_step"]), dtype=torch.float32))
    state = {idx: by_name[name] for idx, name in zip(order, names) if name in by_name}
    groups = []
    for saved, cur in zip(meta["param_groups"], current["param_groups"]):
        g = dict(saved)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        g["params"] = cur["params"]
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
