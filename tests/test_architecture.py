"""The floors of docs/architecture.md, checked on the source: every import inside megatron_tf/ goes to its own
package or a lower floor; the model never imports the data layer (the forget mask lives in data and loss only);
above the trainer only the demo (which launches training) imports training/."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "megatron_tf")

# lowest first; a package may import packages of lower floors (docs/architecture.md)
FLOORS = [{"utils", "config"}, {"ops", "tokenizer"}, {"parallel", "data"}, {"model"}, {"checkpoint"}, {"training"},
          {"labeling"}, {"evaluation"}, {"posttrain"}, {"demo"}]
FLOOR = {pkg: i for i, floor in enumerate(FLOORS) for pkg in floor}
TRAINING_USERS_ABOVE = {"demo"}  # launches training (the tools outside megatron_tf/ may too)


def _imports():
    """(importing file, importing package, imported package) for every cross-package import in megatron_tf/."""
    out = []
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1] + ["__init__"]
            here = parts[:-1]  # the module's package
            src_pkg = parts[1] if len(parts) > 2 else None
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = here[:len(here) - (node.level - 1)]
                        mods = [".".join(base + ([node.module] if node.module else []))]
                    else:
                        mods = [node.module or ""]
                elif isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                else:
                    continue
                for m in mods:
                    p = m.split(".")
                    if p[0] == "megatron_tf" and len(p) > 1 and src_pkg and p[1] != src_pkg:
                        out.append((os.path.relpath(path, os.path.dirname(ROOT)), src_pkg, p[1]))
    return out


def test_every_package_is_on_a_floor():
    pkgs = {d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py"))}
    assert pkgs == set(FLOOR), f"packages not in docs/architecture.md's floors: {pkgs ^ set(FLOOR)}"


def test_nothing_imports_upward():
    found = _imports()
    assert len(found) > 50  # the walk sees the package's imports
    bad = [f"{f}: {a} (floor {FLOOR[a]}) imports {b} (floor {FLOOR[b]})" for f, a, b in found
           if FLOOR[b] >= FLOOR[a]]
    assert not bad, "\n".join(bad)


def test_model_never_imports_data_and_only_the_demo_imports_training_from_above():
    found = _imports()
    assert not [f for f, a, b in found if a == "model" and b == "data"]
    above = [f"{f}: {a} imports training" for f, a, b in found
             if b == "training" and FLOOR[a] > FLOOR["training"] and a not in TRAINING_USERS_ABOVE]
    assert not above, "\n".join(above)
