#!/usr/bin/python3
"""Independent float64 reference fits for the linear probes (probe_fit.c).

Writes tests/golden/probe/*.npy, which tests/test_probe_fit.c compares
against.  Run from the repository root:

    /usr/bin/python3 tests/reference/probe_ref.py        (or: make golden)

Needs numpy only.  The objectives are the ones probe_fit.h states, solved
here by a different method, in float64:

  standardise: mean and population std (ddof 0) of the train split; a
      constant column is only centred.
  softmax:  (1/n) sum_i -log softmax(W x_i + b)[y_i] + (lam/2)|W|_F^2, bias
      unpenalised, lam = 1e-3.  Solved by Newton's method with the full
      Hessian (sum_i (diag p - p p^T) kron [x,1][x,1]^T / n + lam on W),
      each step the minimum-norm solution (lstsq) because the Hessian is
      singular along "add c to every b_k"; starting from b = 0 that keeps
      sum_k b_k = 0, the centred bias the C code reports.  Stops when
      max |gradient| < 1e-12.
  ridge:    (1/n)|X w + b - y|^2 + lam |w|^2, lam = 1e-3, by
      numpy.linalg.solve on (X^T X + n lam I) w = X^T (y - mean y).
  shuffled baseline: the train labels permuted by the Fisher-Yates shuffle
      with splitmix64 (rng.h), reimplemented below, then the same fit.

Cases (float32 inputs written as they are used):
  softmax3  K=3, d=8, 300 train / 100 held-out rows; columns with different
            offsets and scales, labels drawn from a softmax of a planted W
            (not separable), one constant column.
  binary    K=2, d=6, 240 / 80 rows.
  ridge     d=10, 200 / 60 rows, y = X w + N(0, 0.5^2).
For each: <case>_Xtr, _ytr, _Xte, _yte (labels as float32), the reference
<case>_W (K,d) and _b (K) (ridge: _w (d) and _b (1)), and <case>_scores:
softmax/binary [held-out accuracy, majority accuracy, shuffled accuracy],
ridge [held-out R^2, shuffled R^2].  The shuffle seed is in SEEDS below and
in the C test.
"""

import os

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "golden", "probe")
LAM = 1e-3
MASK = 0xFFFFFFFFFFFFFFFF
SEEDS = {"softmax3": 11, "binary": 12, "ridge": 13}  # shuffle seeds


def splitmix_next(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def shuffle(y, seed):
    y = y.copy()
    s = seed
    for i in range(len(y) - 1, 0, -1):
        s, r = splitmix_next(s)
        j = ((r >> 32) * (i + 1)) >> 32
        y[i], y[j] = y[j], y[i]
    return y


def standardise(Xtr, Xte):
    Xtr = Xtr.astype(np.float64)
    Xte = Xte.astype(np.float64)
    mu = Xtr.mean(axis=0)
    sd = Xtr.std(axis=0)
    sd[sd == 0] = 1.0
    return (Xtr - mu) / sd, (Xte - mu) / sd


def softmax_fit(X, y, K):
    n, d = X.shape
    Xa = np.hstack([X, np.ones((n, 1))])
    Y = np.eye(K)[y]
    theta = np.zeros((K, d + 1))
    pen = np.ones((K, d + 1)) * LAM
    pen[:, d] = 0.0

    def objective(th):
        Z = Xa @ th.T
        Z = Z - Z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(Z).sum(axis=1))
        return (lse - (Z * Y).sum(axis=1)).mean() + 0.5 * LAM * (th[:, :d] ** 2).sum()

    for _ in range(100):
        Z = Xa @ theta.T
        Z -= Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        P /= P.sum(axis=1, keepdims=True)
        G = (P - Y).T @ Xa / n + pen * theta
        if np.abs(G).max() < 1e-12:
            break
        A = np.einsum("ik,kl->ikl", P, np.eye(K)) - np.einsum("ik,il->ikl", P, P)
        H = np.einsum("ikl,ia,ic->kalc", A, Xa, Xa) / n
        H = H.reshape(K * (d + 1), K * (d + 1)) + np.diag(pen.ravel())
        step = np.linalg.lstsq(H, -G.ravel(), rcond=None)[0].reshape(K, d + 1)
        f0, t = objective(theta), 1.0
        while objective(theta + t * step) > f0 + 1e-4 * t * (G * step).sum() and t > 1e-8:
            t *= 0.5
        theta = theta + t * step
    else:
        raise SystemExit("Newton did not converge")
    assert abs(theta[:, d].sum()) < 1e-9, theta[:, d].sum()
    return theta[:, :d], theta[:, d]


def predict(W, b, X):
    return np.argmax(X @ W.T + b, axis=1)


def classify_case(name, Xtr, ytr, Xte, yte, K):
    Str, Ste = standardise(Xtr, Xte)
    W, b = softmax_fit(Str, ytr, K)
    acc = (predict(W, b, Ste) == yte).mean()
    maj = np.bincount(ytr, minlength=K).argmax()
    majacc = (yte == maj).mean()
    Ws, bs = softmax_fit(Str, shuffle(ytr, SEEDS[name]), K)
    shacc = (predict(Ws, bs, Ste) == yte).mean()
    save(name, Xtr, ytr, Xte, yte)
    np.save(os.path.join(OUT, name + "_W.npy"), W.astype(np.float32))
    np.save(os.path.join(OUT, name + "_b.npy"), b.astype(np.float32))
    np.save(os.path.join(OUT, name + "_scores.npy"), np.array([acc, majacc, shacc], np.float32))
    print(f"{name}: acc {acc:.4f} majority {majacc:.4f} shuffled {shacc:.4f} max|W| {abs(W).max():.4f}")


def ridge_fit(X, y):
    n, d = X.shape
    ym = y.mean()
    w = np.linalg.solve(X.T @ X + n * LAM * np.eye(d), X.T @ (y - ym))
    return w, ym


def r2(pred, y):
    return 1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()


def save(name, Xtr, ytr, Xte, yte):
    for suffix, a in (("Xtr", Xtr), ("ytr", ytr), ("Xte", Xte), ("yte", yte)):
        np.save(os.path.join(OUT, f"{name}_{suffix}.npy"), np.ascontiguousarray(a, np.float32))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240611)

    # softmax, 3 classes
    n, m, d, K = 300, 100, 8, 3
    X = rng.normal(size=(n + m, d)) * rng.uniform(0.2, 5.0, size=d) + rng.uniform(-3, 3, size=d)
    X[:, 5] = 2.5  # a constant column
    X = X.astype(np.float32)
    Wt = rng.normal(size=(K, d)) * 0.8
    Wt[:, 5] = 0
    S, _ = standardise(X, X)
    logits = S @ Wt.T
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(K, p=p) for p in P])
    classify_case("softmax3", X[:n], y[:n], X[n:], y[n:], K)

    # binary
    n, m, d = 240, 80, 6
    X = (rng.normal(size=(n + m, d)) * 2.0 + 1.0).astype(np.float32)
    S, _ = standardise(X, X)
    p = 1 / (1 + np.exp(-(S @ np.array([1.5, -1.0, 0.5, 0.0, 0.0, 2.0]))))
    y = (rng.uniform(size=n + m) < p).astype(np.int64)
    classify_case("binary", X[:n], y[:n], X[n:], y[n:], 2)

    # ridge
    n, m, d = 200, 60, 10
    X = (rng.normal(size=(n + m, d)) * rng.uniform(0.5, 3.0, size=d)).astype(np.float32)
    wt = rng.normal(size=d)
    y = (X.astype(np.float64) @ wt + 4.0 + rng.normal(size=n + m) * 0.5).astype(np.float32)
    Str, Ste = standardise(X[:n], X[n:])
    w, b = ridge_fit(Str, y[:n].astype(np.float64))
    sc = r2(Ste @ w + b, y[n:].astype(np.float64))
    ws, bs = ridge_fit(Str, shuffle(y[:n].astype(np.float64), SEEDS["ridge"]))
    sh = r2(Ste @ ws + bs, y[n:].astype(np.float64))
    save("ridge", X[:n], y[:n], X[n:], y[n:])
    np.save(os.path.join(OUT, "ridge_w.npy"), w.astype(np.float32))
    np.save(os.path.join(OUT, "ridge_b.npy"), np.array([b], np.float32))
    np.save(os.path.join(OUT, "ridge_scores.npy"), np.array([sc, sh], np.float32))
    print(f"ridge: R2 {sc:.6f} shuffled {sh:.4f}")


if __name__ == "__main__":
    main()
