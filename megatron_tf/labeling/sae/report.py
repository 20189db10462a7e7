"""Reports a person can read: the chosen latents with their top-activating contexts, and labeled documents.

- `latent_report_html` / `latent_report_markdown`: one section per latent (id, description, score, frequencies,
  threshold) with its top-activating token contexts from the sample; in the HTML the context tokens are shaded by
  that latent's activation and the top token is outlined.
- `dataset_summary` + `labeled_documents_html`: per annotated dataset (one per source corpus), the fraction of tokens
  and documents labeled forget, and sample documents with the forget spans highlighted. Works for any labeler's
  sidecars (blocklist, classifier, SAE).
"""

from __future__ import annotations

import html
import os

import numpy as np

from ..blocklist import mark_spans
from ..token_text import TokenBytes
from .transfer import document_text

_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:auto} .ctx{font-family:monospace;white-space:pre-wrap;"
        "border-bottom:1px solid #ddd;padding:4px 0} mark{background:#ffb3b3} .top{outline:2px solid #c00} "
        "table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}")


def _page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _context_window(offsets: np.ndarray, pos: int, radius: int) -> tuple[int, int]:
    return max(0, pos - radius), min(offsets.shape[0], pos + radius + 1)


def context_html(text: str, offsets: np.ndarray, acts: np.ndarray | None, pos: int, radius: int = 12) -> str:
    """Reference tokens pos-radius..pos+radius of a document; token background alpha = act / max act of the window."""
    a, b = _context_window(offsets, pos, radius)
    vmax = float(acts[a:b].max()) if acts is not None and b > a else 0.0
    parts = []
    for t in range(a, b):
        s, e = int(offsets[t, 0]), int(offsets[t, 1])
        if t + 1 < b:  # include the text between this token and the next one (spaces a tokenizer left out)
            e = max(e, int(offsets[t + 1, 0]))
        piece = html.escape(text[s:e]).replace("\n", "\u23ce")
        v = float(acts[t]) if acts is not None else 0.0
        style = f" style='background:rgba(255,80,0,{min(1.0, v / vmax):.2f})'" if vmax > 0 and v > 0 else ""
        cls = " class='top'" if t == pos else ""
        parts.append(f"<span{cls}{style} title='{v:.3g}'>{piece}</span>")
    return "".join(parts)


def latent_report_html(ll, stats, texts: list[str], offsets: list[np.ndarray], context_acts: dict,
                       title: str = "Domain latents") -> str:
    """`context_acts[(latent, doc)]` = that latent's activations on the document's reference tokens (optional)."""
    body = [f"<p>{len(ll.latents)} latents. Thresholds: {html.escape(str(ll.header.get('threshold_rule', '')))}</p>"]
    for x in ll.latents:
        e = x.extra
        stats_line = ", ".join(f"{k} {e[k]:.4g}" for k in ("auroc", "freq_domain", "freq_other", "ratio", "mean", "std")
                               if isinstance(e.get(k), (int, float)))
        body.append(f"<h2>latent {x.id}</h2><p>{html.escape(x.description)}<br>threshold "
                    f"{x.threshold if x.threshold is None else f'{x.threshold:.4g}'}, score "
                    f"{x.score if x.score is None else f'{x.score:.4g}'}; {html.escape(stats_line)}</p>")
        occ = stats.top_occurrences(x.id) if stats is not None else []
        if not occ:
            body.append("<p>(never active in the sample)</p>")
        for v, d, p in occ:
            acts = context_acts.get((x.id, d))
            body.append(f"<div class='ctx'>[{v:.3g}] doc {d}: {context_html(texts[d], offsets[d], acts, p)}</div>")
    return _page(title, body)


def latent_report_markdown(ll, stats, texts: list[str], offsets: list[np.ndarray], radius: int = 60) -> str:
    lines = ["# Domain latents", "", "| id | score | threshold | description |", "|---:|---:|---:|---|"]
    for x in ll.latents:
        sc = "" if x.score is None else f"{x.score:.3f}"
        th = "" if x.threshold is None else f"{x.threshold:.4g}"
        lines.append(f"| {x.id} | {sc} | {th} | {x.description.replace('|', '/')} |")
    for x in ll.latents:
        lines += ["", f"## latent {x.id}", "", x.description, ""]
        for v, d, p in (stats.top_occurrences(x.id) if stats is not None else []):
            s, e = int(offsets[d][p, 0]), int(offsets[d][p, 1])
            t = texts[d]

            def clean(u: str) -> str:
                return u.replace("\n", " ").replace("`", "'")

            lines.append(f"- [{v:.3g}] `{clean(t[max(0, s - radius):s])}[[{clean(t[s:e])}]]{clean(t[e:e + radius])}`")
    return "\n".join(lines) + "\n"


# ---- labeled datasets ----------------------------------------------------------------------------------------
def forget_char_mask(text_c2b: np.ndarray | None, n_chars: int, token_offsets: np.ndarray,
                     flags: np.ndarray) -> np.ndarray:
    """bool per character of the document text: the character's bytes overlap a forget token's bytes."""
    char_offs = np.arange(n_chars + 1, dtype=np.int64) if text_c2b is None else text_c2b
    f = np.asarray(flags, dtype=bool)
    return mark_spans(char_offs, token_offsets[:-1][f], token_offsets[1:][f])


def highlight_html(text: str, mask: np.ndarray) -> str:
    out, n = [], len(text)
    if n == 0:
        return ""
    change = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = np.r_[0, change, n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        seg = html.escape(text[a:b])
        out.append(f"<mark>{seg}</mark>" if mask[a] else seg)
    return "".join(out)


def dataset_summary(prefix: str, name: str = "forget", threshold: float = 0.5) -> dict:
    """Fraction of tokens with score >= threshold, of documents with any, and the mean per-document fraction."""
    from ...data.indexed_dataset import IndexedDataset
    from ...data.sidecar import KIND_TOKEN_SCORES, TokenScores, quantize_threshold, sidecar_path

    ds = IndexedDataset(prefix)
    ts = TokenScores(sidecar_path(prefix, KIND_TOKEN_SCORES, name), ds)
    flags = np.asarray(ts.q) >= quantize_threshold(threshold)
    offs = ds.document_token_offsets()
    lens = np.diff(offs)
    nonempty = lens > 0
    per_doc = np.zeros(lens.size)
    if nonempty.any():
        per_doc[nonempty] = np.add.reduceat(flags.astype(np.int64), offs[:-1][nonempty]) / lens[nonempty]
    return {"prefix": prefix, "name": os.path.basename(prefix), "num_tokens": int(ds.num_tokens),
            "num_documents": int(ds.num_documents), "token_fraction": float(flags.mean()) if flags.size else 0.0,
            "doc_fraction_any": float((per_doc > 0).mean()) if per_doc.size else 0.0,
            "doc_fraction_mean": float(per_doc.mean()) if per_doc.size else 0.0, "threshold": threshold,
            "labeler": ts.metadata.get("labeler")}


def labeled_documents_html(prefix: str, tokenizer, name: str = "forget", threshold: float = 0.5, max_docs: int = 5,
                           max_chars: int = 3000, seed: int = 0) -> list[str]:
    """HTML fragments: up to max_docs documents of the dataset (random, fixed seed) with forget spans marked."""
    from ...data.indexed_dataset import IndexedDataset
    from ...data.sidecar import KIND_TOKEN_SCORES, TokenScores, quantize_threshold, sidecar_path

    ds = IndexedDataset(prefix)
    ts = TokenScores(sidecar_path(prefix, KIND_TOKEN_SCORES, name), ds)
    tb = TokenBytes.from_tokenizer(tokenizer)
    offs = ds.document_token_offsets()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(ds.num_documents, size=min(max_docs, ds.num_documents), replace=False))
    qt = quantize_threshold(threshold)
    out = []
    for d in pick:
        a, b = int(offs[d]), int(offs[d + 1])
        data, toffs = tb.decode(np.asarray(ds.tokens(a, b)))
        text, c2b = document_text(data)
        mask = forget_char_mask(c2b, len(text), toffs, np.asarray(ts.q[a:b]) >= qt)
        frac = float((np.asarray(ts.q[a:b]) >= qt).mean()) if b > a else 0.0
        cut = "" if len(text) <= max_chars else f" (first {max_chars} of {len(text)} characters)"
        out.append(f"<h3>{html.escape(os.path.basename(prefix))} document {d}: {frac:.1%} of tokens forget{cut}</h3>"
                   f"<div class='ctx'>{highlight_html(text[:max_chars], mask[:max_chars])}</div>")
    return out


def summary_html(summaries: list[dict], fragments: list[str], title: str = "Token labels") -> str:
    rows = ["<table><tr><th>dataset</th><th>tokens</th><th>documents</th><th>tokens forget</th>"
            "<th>docs with any</th><th>mean doc fraction</th></tr>"]
    for s in summaries:
        rows.append(f"<tr><td>{html.escape(s['name'])}</td><td>{s['num_tokens']:,}</td><td>{s['num_documents']:,}</td>"
                    f"<td>{s['token_fraction']:.2%}</td><td>{s['doc_fraction_any']:.2%}</td>"
                    f"<td>{s['doc_fraction_mean']:.2%}</td></tr>")
    rows.append("</table>")
    return _page(title, rows + fragments)
