"""Independent references for the TSKD terms, written one sample at a time from docs/method.md.

Deliberately naive (Python loops over samples, pairs and identities, torch scalars so autograd
works): they share no code with ``tskd.losses``, so a test comparing the two checks the formula
rather than the implementation against itself.
"""

from __future__ import annotations

import torch


def si(logits, labels, weights):
    """L_SI = (1/3n) sum over all samples of w * CE."""
    terms = []
    for row, y, w in zip(logits, labels, weights):
        log_z = torch.logsumexp(row, 0)
        terms.append(w * (log_z - row[int(y)]))
    return sum(terms) / len(terms)


def triplet(f, labels, margin):
    """Batch-hard triplet, plain Euclidean distance, over the whole batch."""
    n, total = len(labels), []
    for a in range(n):
        d = [torch.sqrt(((f[a] - f[j]) ** 2).sum().clamp(min=1e-12)) for j in range(n)]
        pos = [d[j] for j in range(n) if j != a and labels[j] == labels[a]]
        neg = [d[j] for j in range(n) if labels[j] != labels[a]]
        if pos and neg:
            total.append(torch.relu(max(pos) - min(neg) + margin))
    return sum(total) / len(total)


def mmd2(x, y, offdiag=True):
    """Biased multi-kernel MMD^2, bandwidth b * 2^(q-2), q = 0..4, b detached."""
    z = list(x) + list(y)
    m, n = len(z), len(x)
    d2 = [[((zi - zj) ** 2).sum() for zj in z] for zi in z]
    total = sum(d2[i][j].detach() for i in range(m) for j in range(m) if i != j)
    b = total / (m * m - m if offdiag else m * m)
    k = [[sum(torch.exp(-d2[i][j] / (b * 2.0 ** (q - 2))) for q in range(5)) for j in range(m)]
         for i in range(m)]

    def block(rows, cols):
        return sum(k[i][j] for i in rows for j in cols) / (len(rows) * len(cols))

    xs, ys = range(n), range(n, m)
    return block(xs, xs) + block(ys, ys) - 2 * block(xs, ys)


def md(f_vis1, f_vis2, f_ir, labels, form="code", offdiag=True):
    """L_MD / md_w, identity by identity, with explicit stop-gradients on the targets."""
    per_id = []
    for c in labels.unique():
        v1, v2, r = f_vis1[labels == c], f_vis2[labels == c], f_ir[labels == c]
        d = [mmd2(v1, r.detach(), offdiag), mmd2(v2, r.detach(), offdiag),
             mmd2(r, v1.detach(), offdiag), mmd2(r, v2.detach(), offdiag)]
        per_id.append(sum(d) if form == "code" else 0.25 * sum(d))
    return sum(per_id) / len(per_id)


def sm(f, y, w, prototypes, valid, metric="l1", form="code"):
    """L_SM / sm_w for an aligned batch: f (3n, C) = [view1; view2; ir], y (n,), w (3n,).

    ``prototypes`` (ids, 3, C) and ``valid`` (ids, 3); samples without a prototype add 0.
    """
    n = len(y)

    def d(i, slot):
        c = int(y[i])
        if not valid[c, slot]:
            return None
        diff = f[slot * n + i] - prototypes[c, slot]
        return diff.abs().mean() if metric == "l1" else (diff**2).sum()

    if form == "code":
        total = 0.0
        for i in range(n):
            t = [d(i, s) for s in range(3)]
            wi = [w[s * n + i] for s in range(3)]
            vis = sum(wi[s] * t[s] for s in (0, 1) if t[s] is not None)
            ir = wi[2] * t[2] if t[2] is not None else 0.0
            total = total + 0.5 * vis + ir
        return total / n
    terms = [w[s * n + i] * d(i, s) for s in range(3) for i in range(n) if d(i, s) is not None]
    return sum(terms) / len(terms) if terms else 0.0


def prototypes(batches, num_ids, dim, norm="count"):
    """O^s[c] from (f (3n, C), y (n,), w (3n,)) batches: sum w f / count (or / sum w).

    Returns (prototypes (ids, 3, C) float64, seen (ids, 3) bool).
    """
    wsum = [[[0.0] * dim for _ in range(3)] for _ in range(num_ids)]
    wtot = [[0.0] * 3 for _ in range(num_ids)]
    count = [[0] * 3 for _ in range(num_ids)]
    for f, y, w in batches:
        n = len(y)
        for s in range(3):
            for i in range(n):
                c, row, wi = int(y[i]), f[s * n + i], float(w[s * n + i])
                for k in range(dim):
                    wsum[c][s][k] += wi * float(row[k])
                wtot[c][s] += wi
                count[c][s] += 1
    out = torch.zeros(num_ids, 3, dim, dtype=torch.float64)
    seen = torch.zeros(num_ids, 3, dtype=torch.bool)
    for c in range(num_ids):
        for s in range(3):
            denom = count[c][s] if norm == "count" else wtot[c][s]
            if denom > 0:
                seen[c, s] = True
                out[c, s] = torch.tensor([v / denom for v in wsum[c][s]], dtype=torch.float64)
    return out, seen
