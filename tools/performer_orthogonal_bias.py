"""How far FAVOR+ attention is from softmax attention as the number of random features m
grows, with the projection's orthogonal blocks drawn two ways (numpy, float64):

- "qr": Q of numpy's QR of a Gaussian block, as Performer's reference implementations take it
  (`torch.qr` / `np.linalg.qr`, no correction of R's diagonal signs);
- "haar": the same with Q's columns multiplied by the signs of R's diagonal, which makes the
  block uniformly (Haar) distributed, as Gram-Schmidt of Gaussian vectors does (what
  roformer_wgpu::ops::attention::performer::draw_projection computes).

Rows are then scaled by the lengths of independent Gaussian vectors (scaling 0) in both.
Prints the mean relative L2 error of the attention output against exact softmax attention
(scale 1/sqrt(d)), over 5 draws, for queries and keys of two sizes.

Usage: python3 tools/performer_orthogonal_bias.py
"""
import numpy as np

T, D = 24, 16


def projection(rng, m, haar):
    rows = []
    while len(rows) < m:
        q, r = np.linalg.qr(rng.standard_normal((D, D)))
        if haar:
            q = q * np.sign(np.diag(r))
        rows.extend(q.T)
    w = np.array(rows[:m])
    return w * np.linalg.norm(rng.standard_normal((m, D)), axis=1)[:, None]


def features(x, w):
    xs = x * D**-0.25
    return np.exp(xs @ w.T - (xs**2).sum(-1, keepdims=True) / 2) / np.sqrt(len(w))


def main():
    rng = np.random.default_rng(1)
    print("scale  draw   " + "  ".join(f"m={m:<6}" for m in (16, 256, 4096, 65536)))
    for scale in (0.3, 0.45):
        for haar in (False, True):
            errors = []
            for m in (16, 256, 4096, 65536):
                e = []
                for _ in range(5):
                    q = rng.standard_normal((T, D)) * scale
                    k = rng.standard_normal((T, D)) * scale
                    v = rng.standard_normal((T, D))
                    s = q @ k.T / np.sqrt(D)
                    p = np.exp(s - s.max(1, keepdims=True))
                    exact = (p / p.sum(1, keepdims=True)) @ v
                    w = projection(rng, m, haar)
                    a = features(q, w) @ features(k, w).T
                    out = (a @ v) / a.sum(1, keepdims=True)
                    e.append(np.linalg.norm(out - exact) / np.linalg.norm(exact))
                errors.append(np.mean(e))
            name = "haar" if haar else "qr"
            print(f"{scale:<6} {name:<6} " + "  ".join(f"{x:<8.4f}" for x in errors))


if __name__ == "__main__":
    main()
