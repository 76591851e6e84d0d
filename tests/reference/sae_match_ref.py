#!/usr/bin/python3
"""Independent numpy reference for the battery item `sae_match` (v1):
feature matching between two SAE dictionaries by the cosine similarity of
their decoder rows, mutual nearest neighbours at or above 0.7, split
children and deaths.

Method, deliberately unlike the C code (blocked float32 sgemm, running
column maxima): the whole similarity matrix in float64 at once,
np.argmax along each axis (first index on ties), set arithmetic for the
deaths.

The pair of dictionaries has planted structure: 14 of the 20 previous
features carried over as permuted noisy copies with other norms, one
previous feature split into two rotated children (cosine 0.9 and 0.76),
one copy rotated below the threshold (cosine 0.6: born, not a split
child), three new random features and an all-zero row (similar to
nothing).  The script checks that no similarity lies within 1e-3 of the
threshold and no argmax is within 1e-4 of a runner-up, so float32
rounding cannot change an index.

Writes tests/golden/sae_match/match.json.
Run from the repository root:  /usr/bin/python3 tests/reference/sae_match_ref.py
"""

import json
import os

import numpy as np

THRESHOLD = 0.7
D, M = 24, 20
OUT = os.path.join(os.path.dirname(__file__), "..", "golden", "sae_match", "match.json")


def unit(v):
    return v / np.linalg.norm(v)


def rotate(rng, p, c):
    """A unit vector at cosine c to the unit vector p."""
    q = rng.standard_normal(p.shape)
    q -= q.dot(p) * p
    return c * p + np.sqrt(1 - c * c) * unit(q)


def match(cur, prev):
    def norm_rows(a):
        n = np.linalg.norm(a, axis=1, keepdims=True)
        return np.divide(a, n, out=np.zeros_like(a), where=n > 0)

    S = norm_rows(cur) @ norm_rows(prev).T
    best_prev = S.argmax(axis=1)
    best_next = S.argmax(axis=0)
    sim = S[np.arange(len(cur)), best_prev]
    close = sim >= THRESHOLD
    mutual = best_next[best_prev] == np.arange(len(cur))
    matched = np.where(close & mutual, best_prev, -1)
    split = np.where(close & ~mutual, best_prev, -1)
    died = len(prev) - len(set(matched[matched >= 0].tolist()))
    # rounding guards: no index may hinge on a near-tie
    assert np.all(np.abs(sim - THRESHOLD) > 1e-3), "a similarity is too close to the threshold"
    for axis, mat in ((1, S), (0, S.T)):
        for row in mat:
            if np.all(row == 0):
                continue
            top = np.sort(row)[-2:]
            assert top[1] - top[0] > 1e-4, "near-tie in an argmax"
    return S, matched, best_prev, split, sim, died


def main():
    rng = np.random.default_rng(20241223)
    prev = np.array([unit(rng.standard_normal(D)) for _ in range(M)])
    prev *= rng.uniform(0.5, 2.0, (M, 1))
    rows = []
    for j in range(14):  # carried over, noisy
        rows.append(unit(prev[j]) + 0.03 * rng.standard_normal(D))
    p14 = unit(prev[14])
    rows.append(rotate(rng, p14, 0.9))   # split: continues 14
    rows.append(rotate(rng, p14, 0.76))  # split child of 14
    rows.append(rotate(rng, unit(prev[15]), 0.6))  # below the threshold: born
    for _ in range(3):
        rows.append(unit(rng.standard_normal(D)))
    rows.append(np.zeros(D))
    cur = np.array(rows) * np.concatenate([rng.uniform(0.5, 2.0, len(rows) - 1), [1.0]])[:, None]
    cur = cur[rng.permutation(len(cur))]
    prev32, cur32 = prev.astype(np.float32), cur.astype(np.float32)
    S, matched, best_prev, split, sim, died = match(cur32.astype(np.float64), prev32.astype(np.float64))
    f32 = lambda a: [[float(str(np.float32(x))) for x in r] for r in a]
    doc = {
        "threshold": THRESHOLD,
        "d_in": D,
        "prev": f32(prev32),
        "cur": f32(cur32),
        "matched_prev": matched.tolist(),
        "best_prev": best_prev.tolist(),
        "split_parent": split.tolist(),
        "match_similarity": [float(x) for x in sim],
        "features_matched": int((matched >= 0).sum()),
        "features_born": int((matched < 0).sum()),
        "features_died": int(died),
    }
    assert doc["features_matched"] == 15 and sum(s >= 0 for s in doc["split_parent"]) == 1
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote %s: %d current, %d previous features; matched %d, born %d, died %d, split children %d"
          % (OUT, len(cur), len(prev), doc["features_matched"], doc["features_born"],
             doc["features_died"], sum(s >= 0 for s in doc["split_parent"])))


if __name__ == "__main__":
    main()
