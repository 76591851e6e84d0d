#!/usr/bin/python3
"""rng_ref.py - draws of common/rng.h from its stated formulas, for test_rng.

Writes tests/golden/rng/draws.json: for a few seeds, the first outputs of
rng_next (hex), rng_mod, rng_below, rng_unit, rng_normal and three
rng_normal_pair calls (doubles, exact:
Python's math calls the same libm as the C code and the operations are
the same IEEE doubles) and rng_normals_f (computed here in double and
rounded to float32 at the end; the C code works in float with logf and
sincosf, so test_rng allows 2e-6 absolute for those).

Standard library only:  /usr/bin/python3 tests/reference/rng_ref.py
"""
import json
import math
import os
import struct

M = 0xFFFFFFFFFFFFFFFF


class Splitmix:
    def __init__(self, seed):
        self.s = seed & M

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def draws(seed):
    out = {"seed": "%016x" % seed}
    r = Splitmix(seed)
    out["next"] = ["%016x" % r.next() for _ in range(4)]
    r = Splitmix(seed)
    out["mod_1000003"] = [r.next() % 1000003 for _ in range(4)]
    r = Splitmix(seed)
    out["below_7"] = [((r.next() >> 32) * 7) >> 32 for _ in range(4)]
    r = Splitmix(seed)
    out["unit"] = [(r.next() >> 11) * 2.0 ** -53 for _ in range(4)]
    r = Splitmix(seed)
    normal = []
    for _ in range(4):
        u1 = ((r.next() >> 11) + 1.0) / 9007199254740993.0
        u2 = (r.next() >> 11) / 9007199254740992.0
        normal.append(math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2))
    out["normal"] = normal
    r = Splitmix(seed)
    pairs = []
    for _ in range(3):
        while True:
            u = 2.0 * ((r.next() >> 11) * 2.0 ** -53) - 1.0
            v = 2.0 * ((r.next() >> 11) * 2.0 ** -53) - 1.0
            q = u * u + v * v
            if 0.0 < q < 1.0:
                break
        f = math.sqrt(-2.0 * math.log(q) / q)
        pairs += [u * f, v * f]
    out["normal_pair_3"] = pairs
    r = Splitmix(seed)
    nf = []
    for i in range(0, 5, 2):
        u1 = ((r.next() >> 11) + 1.0) * 2.0 ** -53
        u2 = (r.next() >> 11) * 2.0 ** -53
        rad = math.sqrt(-2.0 * math.log(f32(u1)))
        a = f32(2.0 * math.pi * u2)
        nf.append(f32(rad * math.cos(a)))
        if i + 1 < 5:
            nf.append(f32(rad * math.sin(a)))
    out["normals_f_5"] = nf
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "golden", "rng", "draws.json")
    doc = {"about": "tests/reference/rng_ref.py", "cases": [draws(s) for s in (0, 1, 12345, 2**63 + 7)]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
