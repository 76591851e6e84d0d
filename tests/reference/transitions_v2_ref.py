#!/usr/bin/python3
"""transitions_v2_ref.py - an independent implementation of the transition
detector "level-v2" as daemon/detect/transitions.h describes it (METHOD, steps 1
to 7, and CALIBRATION), in plain Python (numpy only draws the series), and
the golden cases it answers: tests/golden/transitions/cases_v2.json.

The null table is data, not method: it is read from
daemon/detect/transitions_null.inc, as the C detector compiles it in.

tests/test_transitions.c runs the C detector on the same series and wants
the same events: kind, start, peak and end steps exactly; magnitude,
score, p-value, noise and levels within 1e-9 relative; and the series'
first-candidate score and rho (tr_max_score) the same.

    /usr/bin/python3 tests/reference/transitions_v2_ref.py   # (make golden)
"""
import json
import math
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_POINTS = 20
P_MAX = 1e-3
P_MIN = 1e-16
MAX_SPIKES = 32
MAX_EVENTS = 64
DBL_MIN = sys.float_info.min


def median(xs):
    a = sorted(xs)
    n = len(a)
    k = n // 2
    if n % 2:
        return a[k]
    lo, hi = a[k - 1], a[k]
    return lo + (hi - lo) / 2


def mad_scale(xs):
    c = median(xs)
    return 1.4826 * median([abs(x - c) for x in xs]), c


def trimmed_scale(xs):
    c = median(xs)
    d = sorted(abs(x - c) for x in xs)
    keep = max(1, int(0.8 * len(xs) + 0.5))
    return 1.5128 * math.sqrt(sum(x * x for x in d[:keep]) / keep)


def med3(a, b, c):
    return sorted([a, b, c])[1]


# ---- the null table ----

def null_table():
    text = open(os.path.join(HERE, "..", "..", "daemon", "detect", "transitions_null.inc")).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    rows = [tuple(float(x) for x in m.groups())
            for m in re.finditer(r"\{\s*([-\d.eE+]+)\s*,\s*([-\d.eE+]+)\s*,\s*([-\d.eE+]+)\s*,\s*([-\d.eE+]+)\s*\}", text)]
    table = {}
    for n, rho, mu, beta in rows:
        table.setdefault(int(n), []).append((rho, mu, beta))
    return table


TABLE = null_table()


def at_rho(rows, rho):
    """linear in rho between the rows of one length, held beyond them"""
    if rho <= rows[0][0]:
        return rows[0][1], rows[0][2]
    for (r0, m0, b0), (r1, m1, b1) in zip(rows, rows[1:]):
        if r0 <= rho <= r1:
            if rho == r0:
                return m0, b0
            t = (rho - r0) / (r1 - r0)
            return m0 + t * (m1 - m0), b0 + t * (b1 - b0)
    return rows[-1][1], rows[-1][2]


def p_value(z, n, rho):
    lens = sorted(TABLE)
    below = [x for x in lens if x <= n]
    above = [x for x in lens if x > n]
    lo = below[-1] if below else lens[0]
    mu, beta = at_rho(TABLE[lo], rho)
    if above and lo < n:
        hi = above[0]
        mu1, beta1 = at_rho(TABLE[hi], rho)
        t = (math.log(n) - math.log(lo)) / (math.log(hi) - math.log(lo))
        mu, beta = mu + t * (mu1 - mu), beta + t * (beta1 - beta)
    p = -math.expm1(-math.exp(-(z - mu) / beta))
    return max(p, P_MIN)


# ---- the detector ----

class Detector:
    def __init__(self, steps, values):
        pts = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
        self.s = [p[0] for p in pts]
        self.v = [p[1] for p in pts]
        self.spikes = []
        self.ok = len(pts) >= MIN_POINTS
        if self.ok:
            self.prepare()

    # step 1 and 2
    def prepare(self):
        s, v = self.s, self.v
        n = len(v)
        slopes = [(v[i + 1] - v[i]) / (s[i + 1] - s[i]) for i in range(n - 1)]
        sc, mu = mad_scale(slopes)
        se = sc * 1.2533 / math.sqrt(n - 1)
        if not math.isfinite(mu) or not abs(mu) >= 3.0 * se:
            mu = 0.0
        u = [v[i] - mu * (s[i] - s[0]) for i in range(n)]
        m = [u[i] if i in (0, n - 1) else med3(u[i - 1], u[i], u[i + 1]) for i in range(n)]
        r = max(m) - min(m)
        f = self.floor(v)
        mask = [False] * n
        score = [0.0] * n
        noise = [0.0] * n
        masked = 0
        while 4 * masked < n:
            idx = [i for i in range(n) if not mask[i]]
            M = len(idx)
            g = 1.0 * mad_scale([u[idx[q + 1]] - u[idx[q]] for q in range(M - 1)])[0] / math.sqrt(2) if M > 4 else 0.0
            fl = max(g, f)
            best = None
            for j in range(1, M - 1):
                for k in (1, 2):
                    if j + k >= M:
                        continue
                    left = [u[idx[q]] for q in range(j - 1, max(-1, j - 3), -1)]
                    right = [u[idx[q]] for q in range(j + k, min(M, j + k + 2))]
                    base = median(left + right)
                    ex = [u[idx[q]] - base for q in range(j, j + k)]
                    if not (all(x > 0 for x in ex) or all(x < 0 for x in ex)):
                        continue
                    e = min(abs(x) for x in ex)
                    if not e > 0 or e < 0.02 * r:
                        continue
                    if abs(median(left) - median(right)) > 0.5 * e:
                        continue
                    ctx = [u[idx[q]] for q in range(max(0, j - 10), min(M, j + k + 10)) if q < j or q >= j + k]
                    if abs(median(ctx) - base) > 0.5 * e:
                        continue
                    d = [u[idx[q + 1]] - u[idx[q]] for q in range(max(0, j - 10), j - 1)]
                    d += [u[idx[q + 1]] - u[idx[q]] for q in range(j + k, min(M - 1, j + k - 1 + 10))]
                    ns = mad_scale(d)[0] / math.sqrt(2) if len(d) >= 4 else 0.0
                    ns = max(ns, fl)
                    sc_ = e / ns
                    if sc_ >= 5.0 and (best is None or sc_ > best[0]):
                        best = (sc_, ns, j, k)
            if best is None:
                break
            sc_, ns, j, k = best
            for q in range(j, j + k):
                mask[idx[q]] = True
                score[idx[q]] = sc_
                noise[idx[q]] = ns
                masked += 1
        i = 0
        while i < n:
            if not mask[i]:
                i += 1
                continue
            i1 = i
            while i1 + 1 < n and mask[i1 + 1]:
                i1 += 1
            top = max(range(i, i1 + 1), key=lambda q: (score[q], -q))
            if score[top] >= 7.0:
                nb = [v[q] for q in range(i - 1, -1, -1) if not mask[q]][:2]
                nb += [v[q] for q in range(i1 + 1, n) if not mask[q]][:2]
                base = median(nb)
                peak = i
                for q in range(i + 1, i1 + 1):
                    if abs(v[q] - base) > abs(v[peak] - base):
                        peak = q
                self.spikes.append({"kind": "spike", "start_step": s[i], "peak_step": s[peak], "end_step": s[i1],
                                    "magnitude": v[peak] - base, "score": score[top], "p_value": None,
                                    "noise": noise[top], "before": base, "after": v[peak]})
            i = i1 + 1
        keep = [i for i in range(n) if not mask[i]]
        self.s = [s[i] for i in keep]
        self.v = [v[i] for i in keep]
        self.u = [u[i] for i in keep]
        self.ok = len(keep) >= MIN_POINTS
        if self.ok:
            self.levels()

    @staticmethod
    def floor(v):
        q = [abs(b - a) for a, b in zip(v, v[1:]) if abs(b - a) > 0]
        pf = 1e-6 * max(abs(x) for x in v) + DBL_MIN
        if q and min(q) <= 0.1 * (max(v) - min(v)) and min(q) / 2 > pf:
            return min(q) / 2
        return pf

    # step 3
    def levels(self):
        u, n = self.u, len(self.u)
        self.n = n
        self.m = [u[i] if i in (0, n - 1) else med3(u[i - 1], u[i], u[i + 1]) for i in range(n)]
        self.L = [med3(u[i - 2], u[i - 1], u[i]) if i >= 2 else None for i in range(n)]
        self.R = [med3(u[i], u[i + 1], u[i + 2]) if i + 3 <= n else None for i in range(n)]
        self.wmax = max(1, (n - 5) // 4)
        self.f = self.floor(self.v)
        self.minchg = max(0.01 * (max(self.m) - min(self.m)), 1e-6 * max(abs(x) for x in self.v))
        self.cov = [False] * n
        self.A, self.B = 0.0, 0.0
        fit = self.model(None)
        if fit:
            self.A, self.B = fit

    def clean(self, p0, p1, X):
        if X is not None and p1 >= X[0] and p0 <= X[1]:
            return False
        return not any(self.cov[p0:p1 + 1])

    # step 4
    def model(self, X):
        u, n = self.u, self.n
        d = [u[i + 1] - u[i] for i in range(n - 1)]
        d1 = [d[i] for i in range(n - 1) if self.clean(i, i + 1, X)]
        d2 = [d[i + 1] - d[i] for i in range(n - 2) if self.clean(i, i + 2, X)]
        if len(d1) < 8 or len(d2) < 8:
            return None
        s1, s2 = trimmed_scale(d1), trimmed_scale(d2)
        a, b = s2 * s2 - 2 * s1 * s1, 3 * s1 * s1 - s2 * s2
        if a < 0:
            a, b = 0.0, s1 * s1
        elif b < 0:
            a, b = s1 * s1, 0.0
        return a, b

    def noise(self, X):
        n = self.n
        fit = self.model(X)
        A, B = fit if fit else (self.A, self.B)
        A = max(A, 2 * self.f * self.f)
        self.rho = B / (A + B) if A + B > 0 else 0.0
        fl = math.sqrt(2 * 0.4487) * self.f
        self.c, self.sc = {}, {}
        for w in range(1, n - 4):
            allw, cl = [], []
            if w <= self.wmax:
                for i in range(2, n - w - 2):
                    D = self.R[i + w] - self.L[i]
                    allw.append(D)
                    if self.clean(i - 2, i + w + 2, X):
                        cl.append(D)
            self.c[w] = median(allw) if allw else 0.0
            sc = mad_scale(cl)[0] if len(cl) >= 8 else 0.0
            sc = max(sc, math.sqrt(0.4487 * A + B * (w + 1.111)))
            self.sc[w] = max(sc, fl)

    def score(self, a, b):
        w = b - a
        D = self.R[b] - self.L[a]
        return min(abs(D - self.c[w]), abs(D)) / self.sc[w], self.sc[w]

    # step 7
    def positions(self, ma, mb, sgn):
        l0 = self.L[ma]
        span = self.R[mb] - l0
        if not sgn * span > 0:
            return None
        first, last = ma - 2, mb + 2
        prog = lambda i: (self.m[i] - l0) / span
        peak = next((i for i in range(first + 1, last + 1) if prog(i) >= 0.5), mb)
        start = next((i for i in range(peak - 1, first - 1, -1) if prog(i) <= 0.1), first)
        end = next((i for i in range(peak, last + 1) if prog(i) >= 0.9), last)
        v = self.v
        before, after = med3(v[ma - 2], v[ma - 1], v[ma]), med3(v[mb], v[mb + 1], v[mb + 2])
        return {"kind": "transition", "start_step": self.s[start], "peak_step": self.s[peak],
                "end_step": self.s[end], "magnitude": after - before, "before": before, "after": after}

    # step 6
    def record(self, ma, mb, sgn, zc, nc, depth, found):
        best = None
        if depth < 4:
            for k in range(ma + 1, mb - 2):
                lev = self.R[k]
                d1, d2 = sgn * (lev - self.L[ma]), sgn * (self.R[mb] - lev)
                if not (d1 > 0 and d2 > 0) or d1 < self.minchg or d2 < self.minchg:
                    continue
                if max(self.u[k:k + 3]) - min(self.u[k:k + 3]) > 0.34 * min(d1, d2):
                    continue
                z = min(self.score(ma, k)[0], self.score(k + 2, mb)[0])
                if p_value(z, self.n, self.rho) <= P_MAX and (best is None or z > best[0]):
                    best = (z, k)
        if best:
            k = best[1]
            z1, n1 = self.score(ma, k)
            z2, n2 = self.score(k + 2, mb)
            self.record(ma, k, sgn, z1, n1, depth + 1, found)
            self.record(k + 2, mb, sgn, z2, n2, depth + 1, found)
            return
        if sgn * (self.R[mb] - self.L[ma]) < self.minchg:
            return
        t = self.positions(ma, mb, sgn)
        if t is None:
            return
        z, ns = self.score(ma, mb)
        if zc > z:
            z, ns = zc, nc
        t.update(score=z, noise=ns, p_value=p_value(z, self.n, self.rho))
        found.append(t)

    # step 5
    def segment(self, p_max):
        n = self.n
        found, best = [], None
        stack = [(0, n - 1)]
        while stack:
            lo, hi = stack.pop()
            if hi - lo + 1 < 7:
                continue
            self.noise(None)
            bz, ba, bb = 0.0, -1, -1
            for a in range(lo + 2, hi - 2):
                for b in range(a + 1, min(a + self.wmax, hi - 2) + 1):
                    z = self.score(a, b)[0]
                    if z > bz:
                        bz, ba, bb = z, a, b
            if ba < 0:
                continue
            self.noise((ba - 2, bb + 2))
            z, ns = self.score(ba, bb)
            if best is None or z > best[0]:
                best = (z, self.rho)
            if not p_value(z, n, self.rho) <= p_max:
                continue
            w = bb - ba
            D = self.R[bb] - self.L[ba]
            sgn = 1.0 if (D - self.c[w] if abs(D - self.c[w]) < abs(D) else D) >= 0 else -1.0
            reach = w + 3
            alo, bhi = max(lo + 2, ba - reach), min(hi - 2, bb + reach)
            dmax, ma, mb = -math.inf, ba, bb
            for a in range(alo, ba + 1):
                for b in range(bb, bhi + 1):
                    d = sgn * (self.R[b] - self.L[a])
                    if d > dmax:
                        dmax, ma, mb = d, a, b
            ea, eb = ba, bb
            ed = sgn * (self.R[bb] - self.L[ba])
            for a in range(alo, ba + 1):
                for b in range(bb, bhi + 1):
                    d = sgn * (self.R[b] - self.L[a])
                    if d < 0.9 * dmax:
                        continue
                    if ed < 0.9 * dmax or b - a < eb - ea or (b - a == eb - ea and d > ed):
                        ea, eb, ed = a, b, d
            if dmax >= self.minchg:
                before = len(found)
                self.record(ma, mb, sgn, z, ns, 0, found)
                if len(found) > before:
                    for i in range(ma - 2, mb + 3):
                        self.cov[i] = True
                    ea, eb = ma, mb
            stack.append((lo, ea))
            stack.append((eb, hi))
        return found, best


def detect(steps, values):
    """(events ordered by peak step, first-candidate score, its rho)"""
    d = Detector(steps, values)
    if not d.ok:
        return d.spikes[:MAX_SPIKES], 0.0, 0.0
    found, _ = d.segment(P_MAX)
    first = Detector(steps, values)
    _, best = first.segment(0.0)
    z, rho = best if best else (0.0, 0.0)
    tr = sorted(found, key=lambda t: -t["score"])[:MAX_EVENTS]
    sp = sorted(d.spikes, key=lambda t: -t["score"])[:MAX_SPIKES][:MAX_EVENTS - len(tr)]
    ev = sorted(tr + sp, key=lambda t: (t["peak_step"], t["kind"] == "spike"))
    return ev, z, rho


# ---- the cases ----

def pythia():
    return [0] + [2 ** k for k in range(10)] + [1000 * k for k in range(1, 144)]


def toy(last, every):
    s, p = [0], 1
    while p < every:
        s.append(p)
        p *= 2
    return s + list(range(every, last + 1, every))


def sigmoid(steps, centre, width, height):
    k = width / (2 * math.log(9))
    return np.array([height / (1 + math.exp(-(x - centre) / k)) for x in steps])


def cases():
    rng = np.random.default_rng(20261206)
    out = []

    def add(name, steps, values):
        out.append((name, list(steps), [float(x) for x in values]))

    P, T6, T3, T1 = pythia(), toy(6000, 100), toy(3000, 100), toy(1000, 20)
    add("induction drop, pythia", P, 5.3 + sigmoid(P, 250, 100, -3.7) + 0.05 * rng.standard_normal(len(P)))
    add("induction drop, toy 1000/20", T1, 5.3 + sigmoid(T1, 250, 100, -3.7) + 0.05 * rng.standard_normal(len(T1)))
    add("grokking, toy 6000/100", T6, 0.02 + sigmoid(T6, 3000, 400, 0.96) + 0.02 * rng.standard_normal(len(T6)))
    add("grokking, toy 3000/100", T3, 0.40 + sigmoid(T3, 1000, 300, 0.58) + 0.01 * rng.standard_normal(len(T3)))
    spiky = 3.6 + sigmoid(T3, 900, 400, -3.5) + 0.02 * rng.standard_normal(len(T3))
    for st, h in ((500, 1.5), (1900, 1.2), (2900, 4.6)):
        spiky[T3.index(st)] += h
    spiky[T3.index(2300)] += 1.0
    spiky[T3.index(2400)] += 0.8
    add("grokking among loss spikes, toy 3000/100", T3, spiky)
    staged = 3.5 + sigmoid(T6, 2500, 100, -1.5) + sigmoid(T6, 3100, 100, -1.9) + 0.05 * rng.standard_normal(len(T6))
    add("two stages, toy 6000/100", T6, staged)
    staged3 = 3.5 + sigmoid(T6, 2500, 100, -1.5) + sigmoid(T6, 2900, 100, -1.9) + 0.05 * rng.standard_normal(len(T6))
    add("two stages a level of 3 apart, toy 6000/100", T6, staged3)
    add("two transitions, pythia", P,
        sigmoid(P, 20500, 2000, 0.4) + sigmoid(P, 90500, 3000, -0.8) + 0.02 * rng.standard_normal(len(P)))
    E = [10 * i for i in range(140)]
    stair = 0.01 * rng.standard_normal(140)
    for j, h in enumerate([1, 3, 2, 6, 5, 4]):
        stair += np.where(np.array(E) > 10 * (20 * j + 15) + 5, h, 0.0)
    add("staircase of six", E, stair)
    for sched_name, S in (("pythia", P), ("toy 3000/100", T3)):
        n = len(S)
        add("white noise, " + sched_name, S, 5 + rng.standard_normal(n))
        add("student-t 3, " + sched_name, S, 5 + rng.standard_t(3, n))
        add("slow drift, " + sched_name, S, 5 + np.cumsum(0.3 * rng.standard_normal(n)) + rng.standard_normal(n))
        add("random walk, " + sched_name, S, 5 + np.cumsum(rng.standard_normal(n)))
        spike = 5 + rng.standard_normal(n)
        spike[n // 3] += 30
        add("one spike, " + sched_name, S, spike)
        add("constant, " + sched_name, S, np.full(n, 1.5))
        add("quantised, " + sched_name, S, 5 + np.round(rng.standard_normal(n)))
    add("trend in steps, pythia", P, 5 + 3 * 154 * np.array(P) / 143001 + rng.standard_normal(len(P)))
    acc = np.minimum(1.0, np.round(883 * (0.38 + sigmoid(T3, 900, 300, 0.62) + 0.004 * rng.standard_normal(len(T3)))) / 883)
    acc[T3.index(1900)] = 0.64
    add("an accuracy of 883 examples with a dip, toy 3000/100", T3, acc)
    q = 5 + np.round(2 * rng.standard_normal(len(P))) + np.where(np.array(P) > 70500, 30, 0)
    add("quantised with a jump, pythia", P, q)
    t2 = 5 + rng.standard_t(2, len(P)) + sigmoid(P, 60500, 5000, 25)
    add("student-t 2 with a rise, pythia", P, t2)
    walk = 5 + np.cumsum(0.2 * rng.standard_normal(len(P))) + np.where(np.array(P) > 40500, -8, 0)
    add("random walk with a drop, pythia", P, walk)
    L = [2 ** k for k in range(24)]
    add("log-spaced only", L, 1 + sigmoid(L, 3000, 4000, 2) + 0.03 * rng.standard_normal(len(L)))
    nanv = 0.02 + sigmoid(T6, 3000, 400, 0.96) + 0.02 * rng.standard_normal(len(T6))
    nanv[30], nanv[31], nanv[5], nanv[-1] = math.nan, math.inf, -math.inf, math.nan
    add("grokking with NaN and Inf, toy 6000/100", T6, nanv)
    add("19 points with a jump", list(range(19)), [0.0] * 9 + [1.0] * 10)
    add("24 points with a jump", list(range(24)), np.array([0.0] * 12 + [1.0] * 12) + 0.01 * rng.standard_normal(24))
    big = 1e6 * (1 + sigmoid(P, 10500, 1000, 0.5) + 0.001 * rng.standard_normal(len(P)))
    add("large values, pythia", P, big)
    return out


def encode(x):
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def main():
    root = os.path.join(HERE, "..", "golden", "transitions")
    os.makedirs(root, exist_ok=True)
    doc = {"method": "level-v2", "p_max": P_MAX,
           "note": "written by tests/reference/transitions_v2_ref.py; steps exact, numbers within 1e-9 relative",
           "cases": []}
    for name, steps, values in cases():
        ev, z, rho = detect(steps, values)
        doc["cases"].append({"name": name, "steps": steps, "values": [encode(x) for x in values],
                             "max_score": z, "rho": rho, "events": ev})
        nt = sum(e["kind"] == "transition" for e in ev)
        print("%-52s %3d points: %d transition(s), %d spike(s), first score %.2f" % (
            name, len(steps), nt, len(ev) - nt, z))
    with open(os.path.join(root, "cases_v2.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
