"""Build the train / valid / test GPT datasets from the configs (Megatron's BlendedMegatronDatasetBuilder rules).

    datasets = build_gpt_datasets(data_cfg, filter_cfg, tokenizer, sizes=[train, valid, test],
                                  global_batch_size=gbs)
    train, valid, test = datasets.train, datasets.valid, datasets.test   # None where a split is empty
    datasets.stats["train"]  # filtered fractions per split

Sources: `--data-path` (one prefix or a weighted blend) split by `--split` into contiguous document ranges:
proportions normalised, cumulative bookends [a, b) per split, documents [round(a * N), round(b * N)) of each prefix
(N = sequences in the prefix; a split with proportion 0 is None). Or `--train/valid/test-data-path`, each its own
prefix or blend used whole. `sizes[i]` is the number of samples the trainer will draw from split i (None: one
epoch); see `train_valid_test_num_samples` for Megatron's formula.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..tokenizer.tokenizer import Tokenizer, check_reserved_ids
from ..utils.io import read_json
from ..utils.logging import get_logger
from .blending import BlendedDataset, component_sizes, filtered_weights, normalize, parse_blend
from .config import FilterConfig, GPTDatasetConfig
from .filters import (
    FilterFractionError,
    ForgetFlags,
    SampleFilter,
    document_scores,
    open_forget_flags,
    pick_document_threshold,
    pick_token_threshold,
    score_histogram,
    sequence_values,
)
from .gpt_dataset import GPTDataset, StepSwitchDataset
from .indexed_dataset import IndexedDataset, check_token_ids

log = get_logger(__name__)
SPLITS = ("train", "valid", "test")


class DatasetMetaError(ValueError):
    pass


def meta_path(prefix: str) -> str:
    return prefix + ".meta.json"


_warned_no_meta: set[str] = set()


def check_dataset_meta(prefix: str, tokenizer: Tokenizer, fingerprint: str | None = None) -> dict | None:
    """Check P.meta.json (written by preprocessing) against the tokenizer; warn once when it is absent. A meta.json
    whose dataset.fingerprint is not this dataset's is stale: ignored with a warning (as annotation does)."""
    path = meta_path(prefix)
    if not os.path.isfile(path):
        if prefix not in _warned_no_meta:
            _warned_no_meta.add(prefix)
            warnings.warn(f"{path} not found (dataset made by Megatron?): cannot check that it was tokenized with "
                          f"{tokenizer.type_name} (fingerprint {tokenizer.fingerprint[:16]}...)", stacklevel=2)
        return None
    meta = read_json(path, DatasetMetaError)
    stated = (meta.get("dataset") or {}).get("fingerprint")
    if fingerprint is not None and stated is not None and stated != fingerprint:
        warnings.warn(f"{path} describes dataset {stated[:16]}..., not {prefix} ({fingerprint[:16]}...): ignored",
                      stacklevel=2)
        return None
    tok = meta.get("tokenizer", {})
    if "fingerprint" in tok and tok["fingerprint"] != tokenizer.fingerprint:
        raise DatasetMetaError(f"{path}: dataset was tokenized with another tokenizer: expected fingerprint "
                               f"{tokenizer.fingerprint} ({tokenizer.path or tokenizer.type_name}), found "
                               f"{tok['fingerprint']} ({tok.get('path', tok.get('type', '?'))})")
    if "vocab_size" in tok and int(tok["vocab_size"]) != tokenizer.vocab_size:
        raise DatasetMetaError(f"{path}: vocabulary size mismatch: expected {tokenizer.vocab_size} (tokenizer), "
                               f"found {tok['vocab_size']}")
    if "max_token_id" in meta and int(meta["max_token_id"]) >= tokenizer.vocab_size:
        raise DatasetMetaError(f"{path}: max token id {meta['max_token_id']} is outside the vocabulary "
                               f"[0, {tokenizer.vocab_size})")
    return meta


@dataclass
class DataSource:
    """One opened dataset prefix: tokens, fingerprint, forget flags, per-sequence document scores."""

    prefix: str
    indexed: IndexedDataset
    fingerprint: str
    flags: ForgetFlags | None
    sequence_scores: np.ndarray | None = None


class AllDocumentsFiltered(ValueError):
    """The document filter dropped every document of a dataset (`stats`: its per-prefix stats)."""

    def __init__(self, message: str, stats: dict):
        super().__init__(message)
        self.stats = stats


def open_source(prefix: str, tokenizer: Tokenizer, fcfg: FilterConfig, cache_dir: str | None) -> DataSource:
    indexed = IndexedDataset(prefix)
    fp = indexed.fingerprint()
    meta = check_dataset_meta(prefix, tokenizer, fp)
    if meta is None or meta.get("max_token_id") is None:  # no usable P.meta.json: scan .bin once (cached)
        check_token_ids(indexed, tokenizer.vocab_size, tokenizer.path or tokenizer.type_name,
                        default_cache_dir(prefix, cache_dir), fp)
    flags = open_forget_flags(indexed, fp, fcfg.forget_sidecar_name, fcfg.forget_threshold,
                              required=fcfg.token_filter in ("mask", "remove"))
    seq_scores = None
    if fcfg.token_filter == "document":
        per_doc = document_scores(indexed, fp, fcfg.forget_sidecar_name, fcfg.document_score_column,
                                  default_cache_dir(prefix, cache_dir))
        seq_scores = sequence_values(indexed, per_doc)
    return DataSource(prefix, indexed, fp, flags, seq_scores)


def default_cache_dir(prefix: str, cache_dir: str | None) -> str | None:
    if cache_dir:
        return cache_dir
    d = os.path.join(os.path.dirname(os.path.abspath(prefix)), "cache", "megatron_tf_indices")
    parent = os.path.dirname(os.path.abspath(prefix))
    return d if os.access(parent, os.W_OK) else None


def split_matrix(split: str) -> list[tuple[float, float] | None]:
    """'969,30,1' -> [(0, .969), (.969, .999), (.999, 1.0)]; a zero proportion -> None (megatron-core rules)."""
    import re

    vec = [float(x) for x in re.findall(r"[.0-9]+", split)]
    if len(vec) > 3 or not vec or any(v < 0 for v in vec) or sum(vec) <= 0:
        raise ValueError(f"--split must be up to 3 non-negative proportions with a positive sum, got {split!r}")
    vec = normalize_vector(vec + [0.0] * (3 - len(vec)))
    out, acc = [], 0.0
    for v in vec:
        out.append(None if v == 0.0 else (acc, acc + v))
        acc += v
    return out


def normalize_vector(v: list[float]) -> list[float]:
    a = np.asarray(v, dtype=np.float64)
    return (a / a.sum()).tolist()


def split_range(bookends: tuple[float, float], num_sequences: int) -> tuple[int, int]:
    return int(round(bookends[0] * float(num_sequences))), int(round(bookends[1] * float(num_sequences)))


def train_valid_test_num_samples(train_iters: int, global_batch_size: int, eval_interval: int,
                                 eval_iters: int) -> list[int]:
    """Megatron-LM's request: [train_iters * gbs, (train_iters // eval_interval + 1) * eval_iters * gbs,
    eval_iters * gbs]."""
    return [train_iters * global_batch_size, (train_iters // eval_interval + 1) * eval_iters * global_batch_size,
            eval_iters * global_batch_size]


@dataclass
class GPTDatasets:
    train: object | None
    valid: object | None
    test: object | None
    stats: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.train, self.valid, self.test))


class _Builder:
    def __init__(self, cfg: GPTDatasetConfig, fcfg: FilterConfig, tokenizer: Tokenizer,
                 global_batch_size: int | None):
        check_reserved_ids(tokenizer.eod, tokenizer.hidden, tokenizer.pad, tokenizer.vocab_size,
                           tokenizer.path or tokenizer.type_name)
        self.cfg, self.fcfg, self.tok = cfg, fcfg, tokenizer
        self.sources: dict[str, DataSource] = {}
        start_sample = 0
        if fcfg.filter_start_step > 0:
            if not global_batch_size:
                raise ValueError("--filter-start-step needs the global batch size (pass global_batch_size)")
            start_sample = fcfg.filter_start_step * global_batch_size
        self.start_sample = start_sample
        common = dict(hidden_id=tokenizer.hidden, eod_id=tokenizer.eod, pad_id=tokenizer.pad,
                      eod_mask_loss=cfg.eod_mask_loss, reset_position_ids=cfg.reset_position_ids)
        mode = fcfg.token_filter if fcfg.token_filter != "document" else "none"
        self.train_filter = SampleFilter(mode, start_sample=start_sample if mode != "none" else 0,
                                         label_noise=fcfg.label_noise, seed=cfg.seed, **common)
        self.eval_filter = SampleFilter(mode, **common)
        self.none_filter = SampleFilter("none", **common)
        self.stats: dict = {}
        self._documents: dict = {}
        self.requested = fcfg  # the flags as given; self.fcfg gets the thresholds resolve_filter() picks

    def source(self, prefix: str) -> DataSource:
        if prefix not in self.sources:
            self.sources[prefix] = open_source(prefix, self.tok, self.fcfg, self.cfg.data_cache_path)
        return self.sources[prefix]

    def documents(self, src: DataSource, bookends, drop: bool) -> tuple[np.ndarray, dict]:
        """(kept sequence ids, stats) of a split of a source, cached (the forget-token count reads the split)."""
        key = (src.prefix, tuple(bookends), drop)
        if key not in self._documents:
            self._documents[key] = self._documents_uncached(src, bookends, drop)
        docs, st = self._documents[key]
        return docs, dict(st)

    def _documents_uncached(self, src: DataSource, bookends, drop: bool) -> tuple[np.ndarray, dict]:
        n = len(src.indexed)
        beg, end = split_range(bookends, n)
        docs = np.arange(beg, end, dtype=np.int32)
        offs = src.indexed.token_offsets
        tokens = int(offs[end] - offs[beg])
        st = {"prefix": src.prefix, "documents": int(end - beg), "tokens": tokens}
        if src.flags is not None:
            forget = src.flags.count(int(offs[beg]), int(offs[end]))
            st["forget_tokens"] = forget
            st["forget_token_fraction"] = forget / max(tokens, 1)
        if src.sequence_scores is not None and drop:
            keep = src.sequence_scores[beg:end] < self.fcfg.document_threshold
            lengths = np.asarray(src.indexed.sequence_lengths[beg:end], dtype=np.int64)
            st["documents_filtered"] = int((~keep).sum())
            st["tokens_filtered"] = int(lengths[~keep].sum())
            docs = docs[keep]
        elif self.fcfg.token_filter in ("mask", "remove"):
            st["documents_filtered"] = 0
            st["tokens_filtered"] = st.get("forget_tokens", 0)
        else:
            st["documents_filtered"] = st["tokens_filtered"] = 0
        # tokens the samples are built from (mask/remove keep every token in the stream: only the loss skips some)
        st["tokens_kept"] = tokens - (st["tokens_filtered"] if src.sequence_scores is not None and drop else 0)
        return docs, st

    # ---- thresholds picked for a filtered fraction ---------------------------------------------------------------
    def train_parts(self) -> list[tuple[str, tuple[float, float]]]:
        """(prefix, bookends) of every component of the train split."""
        cfg = self.cfg
        if cfg.data_path:
            bookends = split_matrix(cfg.split)[0]
            prefixes = parse_blend(cfg.data_path)[0] if bookends is not None else []
        else:
            blend = parse_blend(cfg.train_data_path)
            prefixes, bookends = (blend[0] if blend else []), (0.0, 1.0)
        return [(p, bookends) for p in dict.fromkeys(prefixes)]

    def resolve_filter(self) -> None:
        """Resolve --document-filter-fraction / --token-filter-fraction into a threshold over the train split (all
        its prefixes pooled, each counted once), log it, and record it in self.stats["filter"]."""
        if "filter" in self.stats:
            return
        f = self.requested
        fraction = f.document_filter_fraction if f.document_filter_fraction is not None else f.token_filter_fraction
        rec = {"token_filter": f.token_filter, "forget_sidecar_name": f.forget_sidecar_name,
               "forget_threshold": f.forget_threshold, "document_threshold": f.document_threshold,
               "document_score_column": f.document_score_column if f.token_filter == "document" else None,
               "document_filter_fraction": f.document_filter_fraction,
               "token_filter_fraction": f.token_filter_fraction}
        self.stats["filter"] = rec
        if fraction is None:
            return
        parts = self.train_parts()
        flag = "--document-filter-fraction" if f.document_filter_fraction is not None else "--token-filter-fraction"
        if not parts:
            raise FilterFractionError(f"{flag} {fraction} needs a train split (--split gives it no documents)")
        if f.document_filter_fraction is not None:
            scores, lengths = [], []
            for prefix, bookends in parts:
                src = self.source(prefix)
                beg, end = split_range(bookends, len(src.indexed))
                scores.append(src.sequence_scores[beg:end])
                lengths.append(np.asarray(src.indexed.sequence_lengths[beg:end], dtype=np.int64))
            t, achieved = pick_document_threshold(np.concatenate(scores), np.concatenate(lengths), fraction, flag)
            self.fcfg = dataclasses.replace(f, document_threshold=t, document_filter_fraction=None)
            rec.update(document_threshold=t, threshold_picked_by=flag)
            what = f"document threshold {t:.6g} ({f.document_score_column}) drops"
        else:
            t, achieved, what = self._pick_forget_threshold(parts, fraction, flag)
            self.fcfg = dataclasses.replace(f, forget_threshold=t, token_filter_fraction=None)
            rec.update(forget_threshold=t, threshold_picked_by=flag)
        rec["achieved_fraction"] = achieved
        log.info("%s %g: %s %.4f of the train split's tokens (%d prefixes pooled)", flag, fraction, what, achieved,
                 len(parts))

    def _pick_forget_threshold(self, parts, fraction: float, flag: str) -> tuple[float, float, str]:
        """--token-filter-fraction: from the token scores' histogram, or the single share a bit mask allows."""
        from .filters import FRACTION_TOLERANCE
        from .sidecar import KIND_TOKEN_SCORES, TokenScores, sidecar_path

        hist, mask_counts = np.zeros(256, dtype=np.int64), [0, 0]
        for prefix, bookends in parts:
            indexed = IndexedDataset(prefix)
            fp = indexed.fingerprint()
            beg, end = split_range(bookends, len(indexed))
            a, b = int(indexed.token_offsets[beg]), int(indexed.token_offsets[end])
            path = sidecar_path(prefix, KIND_TOKEN_SCORES, self.fcfg.forget_sidecar_name)
            if os.path.isfile(path):
                hist += score_histogram(TokenScores(path, indexed, fp).q, a, b)
                continue
            flags = open_forget_flags(indexed, fp, self.fcfg.forget_sidecar_name, None, required=True)
            if hist.any() or len(parts) > 1:
                raise FilterFractionError(f"{flag} {fraction}: {prefix} has only the bit mask {flags.path} (no token "
                                          f"scores {path}); every prefix needs token scores to pick a threshold")
            mask_counts = [flags.count(a, b), b - a]
            achieved = mask_counts[0] / max(mask_counts[1], 1)
            if abs(achieved - fraction) > FRACTION_TOLERANCE:
                raise FilterFractionError(
                    f"{flag} {fraction}: {prefix} has only the bit mask {flags.path} (threshold {flags.threshold}), "
                    f"which flags {achieved:.4f} of the train split's tokens, not within {FRACTION_TOLERANCE}; "
                    f"annotate token scores ({path}) to pick a threshold")
            return flags.threshold, achieved, f"bit mask {flags.path} (threshold {flags.threshold}) flags"
        t, achieved = pick_token_threshold(hist, fraction, flag)
        distinct = int(np.count_nonzero(hist))
        return t, achieved, (f"forget threshold {t:.6g} (q >= {round(t * 255)}; scores take {distinct} distinct "
                             f"values) flags")

    def gpt(self, prefix: str, bookends, num_samples: int | None, split: str, drop: bool = True,
            sample_filter=None) -> tuple[GPTDataset, dict]:
        src = self.source(prefix)
        docs, st = self.documents(src, bookends, drop)
        if len(docs) == 0 and st["documents_filtered"] > 0:
            raise AllDocumentsFiltered(
                f"{prefix}: --token-filter document with --document-threshold {self.fcfg.document_threshold} "
                f"({self.fcfg.document_score_column}) drops all {st['documents']} documents of the {split} split",
                st)
        if sample_filter is None:
            sample_filter = self.train_filter if split == "train" else self.eval_filter
        ds = GPTDataset(src, docs, num_samples, self.cfg.seq_length, self.cfg.seed, sample_filter,
                        default_cache_dir(prefix, self.cfg.data_cache_path), split,
                        reverse_documents=self.cfg.reverse_documents, eod_id=self.tok.eod)
        return ds, st

    def split_dataset(self, prefixes: list[str], weights: list[float] | None, bookends: list, i: int,
                      size: int | None, drop: bool = True, sample_filter=None):
        """The top-level dataset of split i (single GPTDataset or a blend), and its per-prefix stats."""
        split = SPLITS[i]
        if len(prefixes) == 1 and weights is None:
            ds, st = self.gpt(prefixes[0], bookends[i], size, split, drop, sample_filter)
            return ds, [st]
        dropped: list[dict] = []
        if drop and self.fcfg.token_filter == "document":  # only the document filter can empty a component
            prefixes, weights, dropped = self.drop_empty_components(prefixes, weights, bookends[i], split)
        if not prefixes:
            raise ValueError(f"--token-filter document with --document-threshold {self.fcfg.document_threshold} "
                             f"drops every document of every dataset of the {split} split")
        if weights is not None and drop and self.fcfg.token_filter == "document":
            sts = [self.documents(self.source(p), bookends[i], True)[1] for p in prefixes]
            given = normalize(weights)
            weights = filtered_weights(weights, [st["tokens"] for st in sts], [st["tokens_kept"] for st in sts])
            log.info("%s blend weights after the document filter (w x tokens kept / tokens, renormalised): %s -> %s",
                     split, [round(x, 4) for x in given], [round(x, 4) for x in weights])
        if weights is not None:
            weights = normalize(weights)
            if size is None:
                raise ValueError(f"a weighted blend needs a sample count for the {split} split")
            requests = component_sizes(weights, size, self.cfg.mid_level_dataset_surplus)
            parts = [self.gpt(p, bookends[i], r, split, drop, sample_filter) for p, r in zip(prefixes, requests)]
            blend_size = sum(component_sizes(weights, size))
        else:
            parts = [self.gpt(p, bookends[i], None, split, drop, sample_filter) for p in prefixes]
            blend_size = size
        cache = self.cfg.data_cache_path or default_cache_dir(prefixes[0], None)
        return BlendedDataset([d for d, _ in parts], weights, blend_size, cache), [s for _, s in parts] + dropped

    def drop_empty_components(self, prefixes: list[str], weights: list[float] | None, bookends, split: str
                              ) -> tuple[list[str], list[float] | None, list[dict]]:
        """Blend components whose every document the document filter drops leave the blend, with a warning (the
        remaining weights are renormalised); their stats are kept so the summary counts what was filtered."""
        keep_p, keep_w, dropped = [], [], []
        for k, p in enumerate(prefixes):
            docs, st = self.documents(self.source(p), bookends, True)
            if len(docs) == 0 and st["documents_filtered"] > 0:
                log.warning("%s: --token-filter document (--document-threshold %s on %s) drops all %d documents of "
                            "the %s split; the blend goes on without it%s", p, self.fcfg.document_threshold,
                            self.fcfg.document_score_column, st["documents"], split,
                            f" (its weight {weights[k]:g} is spread over the others)" if weights else "")
                dropped.append(st)
                continue
            keep_p.append(p)
            if weights is not None:
                keep_w.append(weights[k])
        return keep_p, (keep_w if weights is not None else None), dropped

    def build(self, sizes: list[int | None]) -> GPTDatasets:
        cfg = self.cfg
        self.resolve_filter()
        out: list = [None, None, None]
        if cfg.data_path:
            prefixes, weights = parse_blend(cfg.data_path)
            bookends = split_matrix(cfg.split)
            plan = [(prefixes, weights, bookends, i) for i in range(3) if bookends[i] is not None]
        else:
            plan = []
            for i, items in enumerate((cfg.train_data_path, cfg.valid_data_path, cfg.test_data_path)):
                blend = parse_blend(items)
                if blend is not None:
                    spoof = [None, None, None]
                    spoof[i] = (0.0, 1.0)
                    plan.append((blend[0], blend[1], spoof, i))
            if not plan:
                raise ValueError("no data: give --data-path or --train-data-path/--valid-data-path/--test-data-path")
        for prefixes, weights, bookends, i in plan:
            size = sizes[i] if i < len(sizes) else None
            if size == 0:
                continue
            ds, st = self.split_dataset(prefixes, weights, bookends, i, size)
            if i == 0 and self.fcfg.token_filter == "document" and self.start_sample > 0:
                before, _ = self.split_dataset(prefixes, weights, bookends, i, size, drop=False,
                                               sample_filter=self.none_filter)
                ds = StepSwitchDataset(before, ds, self.start_sample)
            out[i] = ds
            self.stats[SPLITS[i]] = s = summarize_stats(st)
            s["components"] = component_table(ds, prefixes, weights, st, size, cfg.seq_length)
            if weights is not None:  # share of the (unfiltered) blend's stream that the filter removes or masks
                s["tokens_filtered_fraction_weighted"] = weighted_filtered_fraction(prefixes, weights, st)
            log.info("%s: %d samples; --token-filter %s%s filters %.4f of %d tokens and %.4f of %d documents%s",
                     SPLITS[i], len(ds), self.fcfg.token_filter, self._threshold_text(),
                     s["tokens_filtered_fraction"], s["tokens"], s["documents_filtered_fraction"], s["documents"],
                     f"; forget tokens {s['forget_token_fraction']:.4f}" if "forget_token_fraction" in s else "")
            log.info("%s components:\n%s", SPLITS[i], format_components(s["components"]))
        # the forget thresholds the flags were read at (a bit mask's own when no --forget-threshold was given)
        self.stats["filter"]["forget_thresholds_used"] = sorted(
            {src.flags.threshold for src in self.sources.values() if src.flags is not None})
        return GPTDatasets(out[0], out[1], out[2], self.stats)

    def _threshold_text(self) -> str:
        f = self.fcfg
        if f.token_filter == "document":
            return f" (document threshold {f.document_threshold:.6g} on {f.document_score_column})"
        if f.token_filter in ("mask", "remove") and f.forget_threshold is not None:
            return f" (forget threshold {f.forget_threshold:.6g})"
        return ""


def _samples_per_component(ds, n: int, size: int | None) -> list[int]:
    """Samples a split of `size` draws (None: the whole dataset) takes from each of its n components."""
    if isinstance(ds, StepSwitchDataset):
        ds = ds.after
    total = len(ds) if size is None else min(size, len(ds))
    if isinstance(ds, BlendedDataset):
        return np.bincount(np.asarray(ds.dataset_index[:total]), minlength=n).tolist()
    return [total]


def component_table(ds, prefixes: list[str], weights: list[float] | None, per_prefix: list[dict],
                    size: int | None, seq_length: int) -> list[dict]:
    """Per component of a split, in --data-path order: prefix, weight (the share the blend draws with, after any
    document filter), weight_given (the normalised --data-path weight, None for an unweighted blend), samples (drawn
    by the split's `size` samples), tokens_total / tokens_kept (the split's tokens before / after the document
    filter), epochs = samples x seq_length / tokens_kept (times the kept tokens are drawn)."""
    by_prefix = {st["prefix"]: st for st in per_prefix}
    inner = ds.after if isinstance(ds, StepSwitchDataset) else ds
    if isinstance(inner, BlendedDataset):
        built = [d.source.prefix for d in inner.datasets]
        used = np.asarray(inner.weights, dtype=np.float64) / float(np.sum(inner.weights))
    else:
        built, used = [prefixes[0]], np.ones(1)
    counts = _samples_per_component(ds, len(built), size)
    given = normalize(weights) if weights is not None else [None] * len(prefixes)
    rows, j = [], 0
    for p, wg in zip(prefixes, given):  # components emptied by the document filter are not in `built`
        st = by_prefix[p]
        here = j < len(built) and built[j] == p
        n, w = (int(counts[j]), float(used[j])) if here else (0, 0.0)
        j += here
        rows.append({"prefix": p, "weight": w, "weight_given": wg, "samples": n, "tokens_total": int(st["tokens"]),
                     "tokens_kept": int(st["tokens_kept"]),
                     "epochs": n * seq_length / st["tokens_kept"] if st["tokens_kept"] else 0.0})
    return rows


def weighted_filtered_fraction(prefixes: list[str], weights: list[float], per_prefix: list[dict]) -> float:
    """sum_i w_i x tokens_filtered_i / tokens_i over the normalised --data-path weights: the share of the unfiltered
    blend's token stream that the filter removes (document) or masks (mask/remove)."""
    by_prefix = {st["prefix"]: st for st in per_prefix}
    return float(sum(w * by_prefix[p]["tokens_filtered"] / max(by_prefix[p]["tokens"], 1)
                     for p, w in zip(prefixes, normalize(weights))))


def format_components(rows: list[dict]) -> str:
    head = f"  {'weight_given':>12s} {'weight':>8s} {'samples':>9s} {'tokens_total':>13s} {'tokens_kept':>12s} " \
           f"{'epochs':>9s}  prefix"
    lines = [head]
    for r in rows:
        wg = "-" if r["weight_given"] is None else f"{r['weight_given']:.4f}"
        lines.append(f"  {wg:>12s} {r['weight']:8.4f} {r['samples']:9d} {r['tokens_total']:13d} "
                     f"{r['tokens_kept']:12d} {r['epochs']:9.4f}  {r['prefix']}")
    return "\n".join(lines)


def summarize_stats(per_prefix: list[dict]) -> dict:
    tokens = sum(s["tokens"] for s in per_prefix)
    docs = sum(s["documents"] for s in per_prefix)
    out = {"tokens": tokens, "documents": docs,
           "tokens_filtered": sum(s["tokens_filtered"] for s in per_prefix),
           "documents_filtered": sum(s["documents_filtered"] for s in per_prefix), "per_prefix": per_prefix}
    out["tokens_filtered_fraction"] = out["tokens_filtered"] / max(tokens, 1)
    out["documents_filtered_fraction"] = out["documents_filtered"] / max(docs, 1)
    if all("forget_tokens" in s for s in per_prefix):
        out["forget_tokens"] = sum(s["forget_tokens"] for s in per_prefix)
        out["forget_token_fraction"] = out["forget_tokens"] / max(tokens, 1)
    return out


def build_gpt_datasets(cfg: GPTDatasetConfig, fcfg: FilterConfig, tokenizer: Tokenizer,
                       sizes: list[int | None], global_batch_size: int | None = None,
                       rank: int = 0, barrier=None) -> GPTDatasets:
    """Build the three splits. With several ranks pass `rank` and a `barrier` callable (e.g.
    `lambda: torch.distributed.barrier(group)`): rank 0 builds and caches the indices first, the others then load
    them (the cache writes are atomic either way)."""
    if barrier is not None and rank != 0:
        barrier()
    out = _Builder(cfg, fcfg, tokenizer, global_batch_size).build(sizes)
    if barrier is not None and rank == 0:
        barrier()
    return out
