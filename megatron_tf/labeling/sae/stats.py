"""Per-latent activation statistics over a sample of documents (BOS excluded: the pipeline never yields it).

For each group of documents (e.g. "domain", "other"), over every latent (reduced per batch in float32 on the SAE's
device, accumulated across batches in float64):

    n_tokens, sum, sum of squares, n_active (activation > 0), max

plus, per document, the mean activation of every latent (for document-level AUROC), and per latent the top-N
(activation, document, token) occurrences (for the report). Pooled mean/std over all groups give the thresholds
mean + k std (population std, sqrt(E[a^2] - E[a]^2) in float64, clipped at 0).

Saved as a .npz (allow_pickle=False) with the documents' texts kept separately by the caller.
"""

from __future__ import annotations

import numpy as np
import torch

from ...utils.io import atomic_write


class LatentStats:
    def __init__(self, d_sae: int, groups: list[str], top_n: int = 8):
        self.d_sae, self.groups, self.top_n = int(d_sae), list(groups), int(top_n)
        g = len(groups)
        self.n_tokens = np.zeros(g, dtype=np.int64)
        self.sum = np.zeros((g, d_sae), dtype=np.float64)
        self.sumsq = np.zeros((g, d_sae), dtype=np.float64)
        self.n_active = np.zeros((g, d_sae), dtype=np.int64)
        self.max = np.zeros((g, d_sae), dtype=np.float64)
        self.doc_group: list[int] = []
        self.doc_means: list[np.ndarray] = []  # float32 [d_sae] per document
        self.top_val = torch.full((self.top_n, d_sae), -float("inf"), dtype=torch.float32)
        self.top_doc = torch.zeros((self.top_n, d_sae), dtype=torch.int64)
        self.top_pos = torch.zeros((self.top_n, d_sae), dtype=torch.int64)

    def scan(self, pipeline, group: int, docs, doc_offset: int) -> None:
        """Run `pipeline` over `docs` (TokenizedDoc list; global indices doc_offset, doc_offset + 1, ...) and
        accumulate them into `group`. Per-batch reductions run on the SAE's device in float32 (a batch is a few
        thousand rows); only [d_sae] vectors move to the CPU, where they are accumulated in float64."""
        sums = np.zeros((len(docs), self.d_sae), dtype=np.float64)
        for rb in pipeline.iter_rows(docs):
            a = rb.acts.detach().float()
            n = a.shape[0]
            if n == 0:
                continue
            self.n_tokens[group] += n
            self.sum[group] += a.sum(0).double().cpu().numpy()
            self.sumsq[group] += (a * a).sum(0).double().cpu().numpy()
            self.n_active[group] += (a > 0).sum(0).cpu().numpy()
            self.max[group] = np.maximum(self.max[group], a.max(0).values.double().cpu().numpy())
            doc = torch.as_tensor(rb.doc, device=a.device)
            first = int(rb.doc[0])
            part = torch.zeros((int(rb.doc[-1]) - first + 1, self.d_sae), dtype=torch.float32, device=a.device)
            part.index_add_(0, doc - first, a)
            sums[first : int(rb.doc[-1]) + 1] += part.double().cpu().numpy()
            v, i = torch.topk(a, min(self.top_n, n), dim=0)
            allv = torch.cat([self.top_val, v.cpu()])
            alld = torch.cat([self.top_doc, torch.as_tensor(rb.doc)[i.cpu()] + doc_offset])
            allp = torch.cat([self.top_pos, torch.as_tensor(rb.pos)[i.cpu()]])
            tv, ti = torch.topk(allv, self.top_n, dim=0)
            self.top_val, self.top_doc, self.top_pos = tv, alld.gather(0, ti), allp.gather(0, ti)
        lens = np.maximum(np.asarray([d.ids.size for d in docs], dtype=np.float64), 1.0)
        self.doc_means.extend(list((sums / lens[:, None]).astype(np.float32)))
        self.doc_group.extend([group] * len(docs))

    # ---- derived ---------------------------------------------------------------------------------------------
    def mean_std(self, groups: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        sel = list(range(len(self.groups))) if groups is None else groups
        n = int(self.n_tokens[sel].sum())
        if n == 0:
            raise ValueError("no tokens in the reference sample (empty documents?)")
        mean = self.sum[sel].sum(0) / n
        var = np.maximum(self.sumsq[sel].sum(0) / n - mean * mean, 0.0)
        return mean, np.sqrt(var), n

    def frequency(self, group: int) -> np.ndarray:
        return self.n_active[group] / max(int(self.n_tokens[group]), 1)

    def doc_mean_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.doc_means:
            return np.zeros((0, self.d_sae), np.float32), np.zeros(0, np.int64)
        return np.stack(self.doc_means), np.asarray(self.doc_group, dtype=np.int64)

    def top_occurrences(self, latent: int) -> list[tuple[float, int, int]]:
        out = []
        for r in range(self.top_n):
            v = float(self.top_val[r, latent])
            if v > 0:
                out.append((v, int(self.top_doc[r, latent]), int(self.top_pos[r, latent])))
        return out

    def save(self, path: str) -> None:
        dm, dg = self.doc_mean_matrix()
        with atomic_write(path) as f:
            np.savez(f, groups=np.asarray(self.groups), n_tokens=self.n_tokens, sum=self.sum, sumsq=self.sumsq,
                     n_active=self.n_active, max=self.max, doc_means=dm, doc_group=dg,
                     top_val=self.top_val.numpy(), top_doc=self.top_doc.numpy(), top_pos=self.top_pos.numpy())

    @classmethod
    def load(cls, path: str) -> LatentStats:
        with np.load(path, allow_pickle=False) as z:
            groups = [str(g) for g in z["groups"]]
            st = cls(z["sum"].shape[1], groups, z["top_val"].shape[0])
            st.n_tokens, st.sum, st.sumsq = z["n_tokens"], z["sum"], z["sumsq"]
            st.n_active, st.max = z["n_active"], z["max"]
            st.doc_means, st.doc_group = list(z["doc_means"]), [int(x) for x in z["doc_group"]]
            st.top_val = torch.from_numpy(z["top_val"])
            st.top_doc = torch.from_numpy(z["top_doc"])
            st.top_pos = torch.from_numpy(z["top_pos"])
        return st
