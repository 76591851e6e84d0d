#!/usr/bin/python3
"""transitions_ref.py - an independent implementation of the transition
detector "ramp-v1" as daemon/detect/transitions.h describes it, in plain Python
(numpy only draws the series), and the golden cases it answers:
tests/golden/transitions/cases.json.

tests/test_transitions.c runs the C detector on the same series and wants
the same transitions: start, peak and end steps exactly, magnitude, score
and the series' highest score (tr_max_score) within 1e-9 relative.

    /usr/bin/python3 tests/reference/transitions_ref.py   # (make golden)
"""
import json
import math
import os
import sys

import numpy as np

HALF = 5                 # points in a level
MIN_POINTS = 20
THRESHOLD = 14.0
VARIO_KMAX, VARIO_DIV = 8, 8
MED_VAR, RW_EXTRA = 0.287, 2.4
SEP, SEP_Q, MIN_REL = 1.5, 0.01, 0.01
MIN_REF = 8
BFRAC = 0.25
EXTENT_FRAC = 0.9
DBL_MIN = sys.float_info.min


def median(xs):
    """Median; for an even count lo + (hi - lo) / 2 of the middle two."""
    a = sorted(xs)
    n = len(a)
    k = n // 2
    if n % 2:
        return a[k]
    lo, hi = a[k - 1], a[k]
    return lo + (hi - lo) / 2


def robust_scale(xs):
    """(1.4826 * MAD, median)"""
    c = median(xs)
    return 1.4826 * median([abs(x - c) for x in xs]), c


class Series:
    def __init__(self, steps, values):
        pts = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
        self.s = [p[0] for p in pts]
        self.v = [p[1] for p in pts]
        self.n = len(pts)
        self.cov = [0] * self.n

    # -- preparation: detrend, smooth, levels, noise --
    def prepare(self):
        n, s, v = self.n, self.s, self.v
        mu = median([(v[i + 1] - v[i]) / float(s[i + 1] - s[i]) for i in range(n - 1)])
        if not math.isfinite(mu):
            mu = 0.0
        u = [v[i] - mu * float(s[i] - s[0]) for i in range(n)]
        self.u = u
        big = max(abs(x) for x in u)
        self.m = [u[i] if i in (0, n - 1) else median(u[i - 1:i + 2]) for i in range(n)]
        self.lv = [median(u[i - HALF + 1:i + 1]) if i >= HALF - 1 else None for i in range(n)]
        self.rv = [median(u[i:i + HALF]) if i + HALF <= n else None for i in range(n)]
        self.A, self.B = 0.0, 0.0
        fit = self.vario(n, n)
        if fit:
            self.A, self.B = fit
        res = sorted(u[i] - self.m[i] for i in range(1, n - 1))
        nr = len(res)
        qlo = int(SEP_Q * (nr - 1) + 0.5)
        qhi = nr - 1 - qlo
        spread = res[qhi] - res[qlo]
        rng = max(self.m) - min(self.m)
        fl = 1e-9 * big + DBL_MIN
        if SEP * spread / THRESHOLD > fl:
            fl = SEP * spread / THRESHOLD
        if MIN_REL * rng / THRESHOLD > fl:
            fl = MIN_REL * rng / THRESHOLD
        self.floor = fl
        self.wmax = max(1, int((n - 5 * HALF + 5) / 4))  # C division truncates
        self.c, self.sc = {}, {}
        for w in range(1, self.wmax + 1):
            ds = [self.rv[i + w] - self.lv[i] for i in range(HALF - 1, n - HALF - w + 1)]
            sref, cen = robust_scale(ds)
            model = math.sqrt(MED_VAR * self.A + self.B * (w + RW_EXTRA))
            sref = model if model > sref else sref
            self.c[w] = cen
            self.sc[w] = sref if sref > fl else fl

    def touches(self, p0, p1, x0, x1):
        return (p1 >= x0 and p0 <= x1) or any(self.cov[p0:p1 + 1])

    def vario(self, x0, x1):
        """Least-squares A + B k to the squared robust scales of lag-k
        differences over pairs clear of [x0, x1] and of found transitions."""
        n = self.n
        kmax = max(2, min(n // VARIO_DIV, VARIO_KMAX))
        sk = sg = skk = skg = 0.0
        used = 0
        for k in range(1, kmax + 1):
            d = [self.u[i + k] - self.u[i] for i in range(n - k) if not self.touches(i, i + k, x0, x1)]
            if len(d) < MIN_REF:
                continue
            g = robust_scale(d)[0] ** 2
            used += 1
            sk += k
            sg += g
            skk += float(k) * k
            skg += k * g
        if used < 2:
            return None
        b = (used * skg - sk * sg) / (used * skk - sk * sk)
        a = (sg - b * sk) / used
        if b < 0:
            b, a = 0.0, sg / used
        elif a < 0:
            a, b = 0.0, skg / skk
        return a, b

    # -- scoring --
    @staticmethod
    def excess(d, c):
        return abs(d - c) if abs(d - c) < abs(d) else abs(d)

    def D(self, a, b):
        return self.rv[b] - self.lv[a]

    def zscore(self, a, b):
        w = b - a
        return self.excess(self.D(a, b), self.c[w]) / self.sc[w]

    def rescore(self, a, b):
        n, w = self.n, b - a
        x0, x1 = a - HALF + 1, b + HALF - 1
        ds = [self.D(i, i + w) for i in range(HALF - 1, n - HALF - w + 1)
              if not self.touches(i - HALF + 1, i + w + HALF - 1, x0, x1)]
        c, s = self.c[w], 0.0
        if len(ds) >= MIN_REF:
            s, c = robust_scale(ds)
        A, B = self.A, self.B
        if 3 * (x1 - x0 + 1) <= n:
            fit = self.vario(x0, x1)
            if fit:
                A, B = fit
                if B < BFRAC * self.B:
                    B = BFRAC * self.B
        model = math.sqrt(MED_VAR * A + B * (w + RW_EXTRA))
        s = model if model > s else s
        s = self.floor if self.floor > s else s
        return self.excess(self.D(a, b), c) / s

    def locate(self, lo, hi, ba, bb):
        sgn = 1.0 if self.D(ba, bb) - self.c[bb - ba] >= 0 else -1.0
        reach = bb - ba + HALF
        alo = max(lo + HALF - 1, ba - reach)
        bhi = min(hi - HALF + 1, bb + reach)
        dmax, ma, mb = -math.inf, ba, bb
        for a in range(alo, ba + 1):
            for b in range(bb, bhi + 1):
                d = sgn * self.D(a, b)
                if d > dmax:
                    dmax, ma, mb = d, a, b
        ea, eb, ed = ba, bb, sgn * self.D(ba, bb)
        for a in range(alo, ba + 1):
            for b in range(bb, bhi + 1):
                d = sgn * self.D(a, b)
                if d < EXTENT_FRAC * dmax:
                    continue
                w, ew = b - a, eb - ea
                if ed < EXTENT_FRAC * dmax or w < ew or (w == ew and d > ed):
                    ea, eb, ed = a, b, d
        l0 = self.lv[ma]
        span = self.rv[mb] - l0
        if not sgn * span > 0:
            return None, ea, eb
        first, last = ma - HALF + 1, mb + HALF - 1
        p = lambda i: (self.m[i] - l0) / span
        peak = next((i for i in range(first + 1, last + 1) if p(i) >= 0.5), mb)
        start = next((i for i in range(peak - 1, first - 1, -1) if p(i) <= 0.1), first)
        end = next((i for i in range(peak, last + 1) if p(i) >= 0.9), last)
        mag = median(self.v[mb:mb + HALF]) - median(self.v[ma - HALF + 1:ma + 1])
        return (dict(start_step=self.s[start], peak_step=self.s[peak], end_step=self.s[end], magnitude=mag),
                (first, last)), ea, eb

    def segment(self, threshold):
        """Binary segmentation, segments on a stack (last in, first out)."""
        found, best = [], 0.0
        stack = [(0, self.n - 1)]
        while stack:
            lo, hi = stack.pop()
            if hi - lo + 1 < 2 * HALF:
                continue
            ba = bb = -1
            bz = 0.0
            for a in range(lo + HALF - 1, hi - HALF + 1):
                for b in range(a + 1, min(a + self.wmax, hi - HALF + 1) + 1):
                    z = self.zscore(a, b)
                    if z > bz:
                        bz, ba, bb = z, a, b
            if ba < 0:
                continue
            bz = self.rescore(ba, bb)
            best = max(best, bz)
            if not bz >= threshold:
                continue
            got, ea, eb = self.locate(lo, hi, ba, bb)
            if got is None:
                ea, eb = ba, bb
            else:
                t, (first, last) = got
                t["score"] = bz
                found.append(t)
                for i in range(first, last + 1):
                    self.cov[i] = 1
            stack.append((lo, ea))
            stack.append((eb, hi))
        return found, best


def detect(steps, values):
    """(transitions ordered by peak step, highest score as tr_max_score)"""
    if Series(steps, values).n < MIN_POINTS:
        return [], 0.0
    s1 = Series(steps, values)
    s1.prepare()
    found, _ = s1.segment(THRESHOLD)
    s2 = Series(steps, values)
    s2.prepare()
    _, best = s2.segment(math.inf)
    return sorted(found, key=lambda t: t["peak_step"]), best


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
    rng = np.random.default_rng(20261121)
    out = []

    def add(name, steps, values):
        out.append((name, list(steps), [float(x) for x in values]))

    P, T6, T3, T1 = pythia(), toy(6000, 100), toy(3000, 100), toy(1000, 20)
    add("induction drop, pythia", P, 5.3 + sigmoid(P, 250, 100, -3.7) + 0.05 * rng.standard_normal(len(P)))
    add("induction drop, toy 1000/20", T1, 5.3 + sigmoid(T1, 250, 100, -3.7) + 0.05 * rng.standard_normal(len(T1)))
    add("grokking, toy 6000/100", T6, 0.02 + sigmoid(T6, 3000, 400, 0.96) + 0.02 * rng.standard_normal(len(T6)))
    add("grokking, toy 3000/100", T3, 0.40 + sigmoid(T3, 1000, 300, 0.58) + 0.01 * rng.standard_normal(len(T3)))
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
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden", "transitions")
    os.makedirs(root, exist_ok=True)
    doc = {"method": "ramp-v1", "threshold": THRESHOLD,
           "note": "written by tests/reference/transitions_ref.py; steps exact, numbers within 1e-9 relative",
           "cases": []}
    for name, steps, values in cases():
        found, best = detect(steps, values)
        doc["cases"].append({"name": name, "steps": steps, "values": [encode(x) for x in values],
                             "max_score": best, "transitions": found})
        print("%-42s %3d points: %d transition(s), highest score %.2f" % (name, len(steps), len(found), best))
    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
