"""Training-compute conventions of the scaling report (`tools/scaling_report.py --compute`).

All use C = 6 N D FLOPs (Kaplan et al. 2020, arXiv:2001.08361, section 2.1: about 2 N per token forward and 4 N
backward; attention and embedding lookups neglected). They differ in N and D:

    paper    C = 6 * N * (20 * N) = 120 N^2   N = total parameters, D = 20 N: the compute-optimal token budget
             (Hoffmann et al. 2022), the same C for every arm of a size. The convention of the paper's analysis code
             (arXiv 2601.21571, scaling.py). The default.
    seen     C = 6 * N * D_seen               N = total parameters, D = tokens seen (every input token costs a
             forward and a backward pass, masked or not): the compute each run actually spent.
    learned  C = 6 * N * D_learned            N = total parameters, D = tokens learned (unmasked targets).
    kaplan   C = 6 * N_ne * D_seen            N_ne = non-embedding parameters (all but the input embedding and the
             output layer), D = tokens seen: the report's default before issue 13, kept to compare with old reports.

Training FLOPs printed per run (`train_flops`) always use the `seen` convention (6 * total N * tokens seen), or the
eval JSON's `run.train_flops` when the evaluation recorded it.
A run may give its compute directly (manifest field `compute`); it is then used under every convention.
"""

from __future__ import annotations

CONVENTIONS: dict[str, dict[str, str]] = {
    "paper": {"formula": "C = 6 * N * (20 * N)", "N": "total parameters (padded vocabulary included)",
              "D": "20 N tokens (compute-optimal budget; the same C for every arm of a size)",
              "source": "the paper's analysis code (arXiv 2601.21571, scaling.py)"},
    "seen": {"formula": "C = 6 * N * D_seen", "N": "total parameters (padded vocabulary included)",
             "D": "tokens seen (all input tokens trained on, masked or not)",
             "source": "Kaplan et al. 2020 C = 6ND with the compute each run spent"},
    "learned": {"formula": "C = 6 * N * D_learned", "N": "total parameters (padded vocabulary included)",
                "D": "tokens learned (unmasked target tokens)",
                "source": "Kaplan et al. 2020 C = 6ND counting only learned tokens"},
    "kaplan": {"formula": "C = 6 * N_non_embedding * D_seen",
               "N": "non-embedding parameters (all but the input embedding and the output layer)",
               "D": "tokens seen (all input tokens trained on)",
               "source": "Kaplan et al. 2020 (arXiv:2001.08361); this report's default before issue 13"},
}
TRAIN_FLOPS_CONVENTION = "6 * N_total * tokens_seen (C = 6ND, Kaplan et al. 2020)"


def convention(name: str) -> dict[str, str]:
    """The convention's description as stored in the report JSON (`compute_convention`)."""
    if name not in CONVENTIONS:
        raise ValueError(f"--compute: unknown convention {name!r}; expected one of {sorted(CONVENTIONS)}")
    return {"name": name, **CONVENTIONS[name]}


def label(name: str) -> str:
    """A short label for tables and plot axes: 'paper: C = 6 * N * (20 * N), N total'."""
    c = CONVENTIONS[name]
    return f"{name}: {c['formula']}" + (", N total" if "total" in c["N"] else ", N non-embedding")


def compute_of(name: str, *, n_total: float | None, n_non_embedding: float | None, tokens_seen: float | None,
               tokens_learned: float | None, where: str = "run") -> float:
    """C in FLOPs under convention `name`; a clear error naming the missing field."""
    conv = convention(name)["name"]
    need = {"paper": ("n_params", n_total), "seen": ("n_params", n_total), "learned": ("n_params", n_total),
            "kaplan": ("n_params_non_embedding", n_non_embedding)}[conv]
    if need[1] is None:
        raise ValueError(f"{where}: --compute {conv} needs {need[0]}; add it to the manifest entry or evaluate with "
                         "a model config")
    n = float(need[1])
    if conv == "paper":
        return 6.0 * n * (20.0 * n)
    tokens = tokens_learned if conv == "learned" else tokens_seen
    if tokens is None:
        key = "tokens_learned" if conv == "learned" else "tokens_seen"
        raise ValueError(f"{where}: --compute {conv} needs {key}; add it to the manifest entry or pass "
                         f"--{key.replace('_', '-')} to tools/evaluate.py")
    return 6.0 * n * float(tokens)
