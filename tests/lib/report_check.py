#!/usr/bin/env python3
"""report_check.py - checks a `ckptd report` page as a browser rendered it.

    python3 tests/lib/report_check.py RUN DOM.html SHOT.png WIDTH HEIGHT

DOM.html is `chromium --dump-dom` of the page, SHOT.png its screenshot.
The expected values come from the database through psql (libpq's
environment), so every chart is compared with what SQL says the series
hold.  x positions are checked against the axis the report documents
(step 0 at the left edge, REPORT_ZERO_GAP = 24 px to the break, then
log10(step) from the decade below the smallest positive step to the
largest step).  Python's standard library only.  Prints one `ok:` or
`FAIL:` line per assertion; exit status 1 if any failed.
"""
import math
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser

RUN, DOM, SHOT, WIN_W, WIN_H = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
passed = failed = 0


def ok(cond, desc, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print("ok: " + desc)
    else:
        failed += 1
        print("FAIL: " + desc + (": " + detail if detail else ""))
    return cond


def sql(q):
    out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                          "-v", "run=" + RUN], input=q + ";\n", capture_output=True, text=True)
    if out.returncode != 0:
        print("psql failed: " + out.stderr)
        sys.exit(2)
    return [line.split("\t") for line in out.stdout.splitlines() if line]


# ---- the screenshot: a PNG decoded by hand (8-bit RGB or RGBA, no interlace) ----

def read_png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, "unexpected PNG format %r" % (hdr,)
    bpp = 3 if ctype == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, bpp, rows


w, h, bpp, rows = read_png(SHOT)
ok((w, h) == (WIN_W, WIN_H), "screenshot is %dx%d" % (WIN_W, WIN_H), "%dx%d" % (w, h))
colours, nonwhite, near = set(), 0, {"heatmap purple #440154": 0, "heatmap yellow #fde725": 0, "series blue #1f5fa8": 0}
targets = {"heatmap purple #440154": (0x44, 0x01, 0x54), "heatmap yellow #fde725": (0xfd, 0xe7, 0x25),
           "series blue #1f5fa8": (0x1f, 0x5f, 0xa8)}
lum = []
for line in rows:
    for x in range(0, w * bpp, bpp):
        px = (line[x], line[x + 1], line[x + 2])
        colours.add(px)
        if px != (255, 255, 255):
            nonwhite += 1
        lum.append(sum(px) / 3)
        for k, t in targets.items():
            if all(abs(px[i] - t[i]) <= 24 for i in range(3)):
                near[k] += 1
mean = sum(lum) / len(lum)
var = sum((v - mean) ** 2 for v in lum) / len(lum)
ok(nonwhite > 0.03 * w * h, "screenshot is not blank (%.1f%% of pixels not white)" % (100.0 * nonwhite / (w * h)))
ok(var > 100, "pixel luminance varies (variance %.0f)" % var)
ok(len(colours) > 50, "screenshot has %d distinct colours" % len(colours))
for k, n in near.items():
    ok(n > 40, "screenshot shows %s (%d pixels)" % (k, n))


# ---- the DOM ----

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, dict(attrs), parent, [], ""

    def cls(self):
        return (self.attrs.get("class") or "").split()

    def all(self):
        for c in self.children:
            yield c
            yield from c.all()

    def find(self, tag=None, cls=None, **attrs):
        return [n for n in self.all() if (tag is None or n.tag == tag) and (cls is None or cls in n.cls())
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def alltext(self):
        return self.text + "".join(c.alltext() for c in self.children)


class Tree(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.text += data


t = Tree()
t.feed(open(DOM, encoding="utf-8").read())
doc = t.root

src = sql("SELECT source, (SELECT count(*) FROM checkpoints c WHERE c.run_id = r.id),"
          " (SELECT min(step) FROM checkpoints c WHERE c.run_id = r.id AND step > 0),"
          " (SELECT max(step) FROM checkpoints c WHERE c.run_id = r.id) FROM runs r WHERE name = :'run'")[0]
source, nck, min_pos, max_step = src[0], int(src[1]), int(src[2]), int(src[3])
dups = {int(r[0]): int(r[1]) for r in sql("SELECT step, same_as_step FROM duplicate_checkpoints WHERE run = :'run'")}

h1 = doc.find("h1")
ok(h1 and h1[0].alltext() == RUN, "the page is titled with the run's name")
dd = doc.find("dd", cls="source")
ok(dd and dd[0].alltext() == source, "the source is shown verbatim (escaped, not parsed)", dd and dd[0].alltext())
ok(not doc.find("script"), "no script element: every string from the database was escaped")
ok(not doc.find("b"), "a description holding <b> made no element")
counts = doc.find("dd", cls="counts")
ok(counts and counts[0].attrs.get("data-checkpoints") == str(nck) and
   counts[0].attrs.get("data-duplicates") == str(len(dups)),
   "header counts %d checkpoints, %d duplicate(s)" % (nck, len(dups)))
for tag in ("link", "img", "iframe", "object"):
    ok(not doc.find(tag), "no <%s>: the page needs nothing from outside" % tag)
html_text = open(DOM, encoding="utf-8").read()
ok("http://" not in html_text.replace("http://www.w3.org/", "") and "https://" not in html_text,
   "no URL to fetch in the page")


def axis_x(step, left, width):
    lo = math.floor(math.log10(min_pos) + 1e-9)
    hi = max(math.log10(max_step), lo + 1)
    if step <= 0:
        return left
    return left + 24 + (math.log10(step) - lo) / (hi - lo) * (width - 24)


LINE_LEFT, LINE_WIDTH = 58, 460 - 58 - 14
HEAT_LEFT, HEAT_WIDTH = 78, 760 - 78 - 16


def metric_div(item, name):
    d = doc.find("div", cls="metric", data_item=item, data_metric=name)
    ok(len(d) == 1, "one chart block for %s/%s" % (item, name), "%d" % len(d))
    return d[0] if d else None


def fnum(s):
    return float(s)


def same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


# ---- line charts ----
def check_line(item, name):
    d = metric_div(item, name)
    if d is None:
        return None
    want = [(int(s), fnum(v)) for s, v in sql(
        "SELECT step, value FROM series WHERE run = :'run' AND item = '%s' AND metric = '%s' ORDER BY step" % (item, name))]
    want_dup = [(int(s), fnum(v)) for s, v in sql(
        "SELECT m.step, m.value FROM measurements m JOIN runs r ON r.id = m.run_id JOIN metrics mt ON mt.id = m.metric_id"
        " JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step"
        " WHERE r.name = :'run' AND mt.item = '%s' AND mt.name = '%s' AND c.duplicate_of IS NOT NULL ORDER BY m.step"
        % (item, name))]
    finite = [(s, v) for s, v in want if math.isfinite(v)]
    pts = [c for c in d.find("circle") if "pt" in c.cls()]
    plain = [(int(c.attrs["data-step"]), fnum(c.attrs["data-value"])) for c in pts if "dup" not in c.cls()]
    dup = [(int(c.attrs["data-step"]), fnum(c.attrs["data-value"])) for c in pts if "dup" in c.cls()]
    ok(plain == finite, "%s: %d points = the series view's %d finite rows, same steps and values"
       % (name, len(plain), len(finite)), "first difference %r" % (next(
           ((a, b) for a, b in zip(plain, finite) if a != b), (len(plain), len(finite))),))
    ok(dup == want_dup and len(dup) == len(dups), "%s: the duplicate step%s %s drawn grey (class dup)"
       % (name, "s" if len(dups) != 1 else "", sorted(dups)), "%r vs %r" % (dup, want_dup))
    xs = sorted((int(c.attrs["data-step"]), float(c.attrs["cx"])) for c in pts)
    ok(all(xs[i][1] < xs[i + 1][1] for i in range(len(xs) - 1)), "%s: x increases with step" % name)
    bad = [(s, x) for s, x in xs if abs(x - axis_x(s, LINE_LEFT, LINE_WIDTH)) > 0.006]
    ok(not bad, "%s: every point at the documented log-step x" % name, "%r" % bad[:3])
    poly = d.find("polyline", cls="series")
    verts = [tuple(map(float, p.split(","))) for p in poly[0].attrs["points"].split()] if poly else []
    want_x = [float(c.attrs["cx"]) for c in pts if "dup" not in c.cls()]
    ok(len(verts) == len(finite) and all(abs(a[0] - b) < 1e-9 for a, b in zip(verts, want_x)),
       "%s: the line joins the %d non-duplicate points only" % (name, len(finite)))
    return d


d = check_line("loss", "loss")
if d is not None:
    desc = d.find("p", cls="d")
    ok(desc and '<b>cross-entropy</b> & "friends"' in desc[0].alltext(), "a description with markup shows as text")
    tr = d.find("g", cls="tr")
    ok(len(tr) == 1 and (tr[0].attrs.get("data-start"), tr[0].attrs.get("data-peak"), tr[0].attrs.get("data-end"))
       == ("1000", "4000", "8000"), "loss: one transition band, steps 1000 / 4000 / 8000")
    if tr:
        band, peak = tr[0].find("rect", cls="band"), tr[0].find("line", cls="peak")
        bx, bw = float(band[0].attrs["x"]), float(band[0].attrs["width"])
        ok(abs(bx - axis_x(1000, LINE_LEFT, LINE_WIDTH)) < 0.01 and
           abs(bx + bw - axis_x(8000, LINE_LEFT, LINE_WIDTH)) < 0.02, "loss: the band spans x(1000) .. x(8000)")
        ok(abs(float(peak[0].attrs["x1"]) - axis_x(4000, LINE_LEFT, LINE_WIDTH)) < 0.01, "loss: the peak line at x(4000)")
        title = tr[0].find("title")
        ok(title and "test <pelt> & co" in title[0].alltext(), "loss: the band's tooltip names its method, escaped")
    spk = d.find("g", cls="spike")
    ok(len(spk) == 1 and spk[0].attrs.get("data-peak") == "16" and spk[0].find("circle", cls="spk")
       and abs(float(spk[0].find("circle", cls="spk")[0].attrs["cx"]) - axis_x(16, LINE_LEFT, LINE_WIDTH)) < 0.01,
       "loss: the spike at step 16 is ringed, not shaded")
    cap = d.find("figcaption")
    ok(cap and "1 transition shaded" in cap[0].alltext() and "1 spike ringed" in cap[0].alltext(),
       "loss: the caption counts 1 transition and 1 spike")
d = check_line("loss", "icl_score_scaled")
if d is not None:
    fig = d.find("figure")
    ok(fig and fig[0].attrs.get("data-idx") == "127", "icl_score_scaled: the chart is of idx 127")
    ok(len(d.find("g", cls="tr")) == 1, "icl_score_scaled: its transition is drawn")
d = check_line("llc", "llc")
if d is not None:
    ok(not [c for c in d.find("circle") if c.attrs.get("data-step") == "64"], "llc: the NaN at step 64 is not drawn")
    cap = d.find("figcaption")
    ok(cap and "1 value not finite" in cap[0].alltext(), "llc: the caption says one value is not finite")

# ---- profile ----
d = metric_div("loss", "loss_by_pos")
if d is not None:
    lines = d.find("polyline", cls="prof")
    steps = [int(p.attrs["data-step"]) for p in lines]
    ok(len(lines) == 6, "loss_by_pos: 6 profiles", "%d" % len(lines))
    ok(steps and steps[0] == 0 and steps[-1] == max_step and not set(steps) & set(dups),
       "loss_by_pos: from step 0 to the last, no duplicate (%s)" % steps)
    for p in lines:
        s = int(p.attrs["data-step"])
        want = sql("SELECT idx, value FROM series WHERE run = :'run' AND metric = 'loss_by_pos' AND step = %d ORDER BY idx" % s)
        idx = [int(i) for i in p.attrs["data-idx"].split()]
        vals = [fnum(v) for v in p.attrs["data-values"].split()]
        npts = len(p.attrs["points"].split())
        ok(idx == [int(r[0]) for r in want] and vals == [fnum(r[1]) for r in want] and npts == len(want),
           "loss_by_pos at step %d: %d points, idx and values as in SQL" % (s, len(want)))


# ---- heatmaps ----
def check_heat(item, name, want_rows, dup_fill="#bdbdbd"):
    d = metric_div(item, name)
    if d is None:
        return None
    cells = []
    order_ok = True
    for g in d.find("g", cls="row"):
        key = (int(g.attrs["data-layer"]), int(g.attrs["data-head"]), int(g.attrs["data-idx"]))
        rects = [r for r in g.find("rect") if "data-step" in r.attrs]
        xs = [(int(r.attrs["data-step"]), float(r.attrs["x"])) for r in rects]
        order_ok &= all(xs[i][0] < xs[i + 1][0] and xs[i][1] < xs[i + 1][1] for i in range(len(xs) - 1))
        cells += [(key, int(r.attrs["data-step"]), fnum(r.attrs["data-value"]), "dup" in r.cls(), r.attrs["fill"])
                  for r in rects]
    want = sql("SELECT m.layer, m.head, m.idx, m.step, m.value FROM measurements m JOIN runs r ON r.id = m.run_id"
               " JOIN metrics mt ON mt.id = m.metric_id WHERE r.name = :'run' AND mt.item = '%s' AND mt.name = '%s'"
               " ORDER BY 1, 2, 3, 4" % (item, name))
    nsteps = len({int(w[3]) for w in want})
    ok(len(cells) == want_rows * nsteps == len(want),
       "%s: %d cells = %d rows x %d steps" % (name, len(cells), want_rows, nsteps))
    got = sorted((k, s, v) for k, s, v, _, _ in cells)
    exp = [((int(a), int(b), int(c)), int(s), fnum(v)) for a, b, c, s, v in want]
    ok(got == exp, "%s: every cell's step and value as in SQL" % name)
    ok(order_ok, "%s: in every row x increases with step" % name)
    dcells = [c for c in cells if c[3]]
    ok(len(dcells) == want_rows * len(dups) and all(c[1] in dups and c[4] == dup_fill for c in dcells)
       and not [c for c in cells if c[1] in dups and not c[3]],
       "%s: the duplicate column is grey (%d cells)" % (name, len(dcells)))
    live = [c for c in cells if not c[3]]
    lo, hi = min(live, key=lambda c: c[2]), max(live, key=lambda c: c[2])
    ok(lo[4] == "#440154" and hi[4] == "#fde725", "%s: smallest value dark purple, largest yellow" % name,
       "%s %s" % (lo[4], hi[4]))
    for g in d.find("g", cls="row")[:1]:
        r0 = [r for r in g.find("rect") if "data-step" in r.attrs]
        ok(abs(float(r0[0].attrs["x"]) + float(r0[0].attrs["width"]) / 2 - axis_x(0, HEAT_LEFT, HEAT_WIDTH)) < 0.02 and
           abs(float(r0[-1].attrs["x"]) - (axis_x(142000, HEAT_LEFT, HEAT_WIDTH) + axis_x(143000, HEAT_LEFT, HEAT_WIDTH)) / 2) < 0.01,
           "%s: columns on the documented step axis" % name)
    return d


d = check_heat("heads", "induction_score", 6 * 8)
if d is not None:
    row = [g for g in d.find("g", cls="row") if (g.attrs["data-layer"], g.attrs["data-head"]) == ("1", "3")]
    trh = row[0].find("rect", cls="trh") if row else []
    ok(len(trh) == 1 and (trh[0].attrs.get("data-start"), trh[0].attrs.get("data-end")) == ("2000", "6000"),
       "induction_score: the L1 H3 transition is outlined on its row")
    others = [g for g in d.find("g", cls="row") if g.find("rect", cls="trh") and g is not (row[0] if row else None)]
    ok(not others, "induction_score: no other row has a transition")
check_heat("heads", "prev_token_score", 6 * 8)
check_heat("lens", "lens_loss", 7)

ttab = doc.find("table", cls="transitions")
ok(ttab and len(ttab[0].find("tr")) == 1 + 4, "the transitions table lists 3 transitions and 1 spike")
ok(ttab and len(ttab[0].find("tr", cls="spike")) == 1, "the spike's row says so")
h2 = [h for h in doc.find("h2") if "Transitions" in h.alltext()]
ok(h2 and "Transitions (3) and spikes (1)" in h2[0].alltext(), "the heading counts transitions and spikes")

# ---- SAE lineages ----
have = sql("SELECT to_regclass('feature_lineages') IS NOT NULL")[0][0] == "t"
if have:
    for layer, drawn in ((2, 30), (3, 200)):
        fig = doc.find("figure", cls="lineages", data_layer=str(layer))
        if not ok(len(fig) == 1, "lineages: one chart for layer %d" % layer):
            continue
        bars = fig[0].find("rect", cls="lin")
        want = sql("SELECT lineage, birth_step, coalesce(death_step::text, ''), last_step FROM feature_lineages f"
                   " JOIN runs r ON r.id = f.run_id WHERE r.name = :'run' AND layer = %d"
                   " ORDER BY birth_step, lineage LIMIT %d" % (layer, drawn))
        got = [[b.attrs["data-lineage"], b.attrs["data-birth"], b.attrs["data-death"], b.attrs["data-last"]] for b in bars]
        ok(got == want, "lineages layer %d: %d bars, sorted by birth, births and deaths as in SQL" % (layer, len(want)),
           "%d bars" % len(got))
        ys = [float(b.attrs["y"]) for b in bars]
        ok(all(ys[i] < ys[i + 1] for i in range(len(ys) - 1)), "lineages layer %d: one row per bar" % layer)
        bad = [b for b in bars if abs(float(b.attrs["x"]) - axis_x(int(b.attrs["data-birth"]), HEAT_LEFT, HEAT_WIDTH)) > 0.006
               or abs(float(b.attrs["x"]) + float(b.attrs["width"]) - axis_x(
                   int(b.attrs["data-death"] or b.attrs["data-last"]), HEAT_LEFT, HEAT_WIDTH)) > 0.02]
        ok(not bad, "lineages layer %d: bars from x(birth) to x(death or last step)" % layer)
        alive = [b for b in bars if "alive" in b.cls()]
        ok(len(alive) == sum(1 for w in want if w[2] == "") and len(fig[0].find("path", cls="arrow")) == len(alive),
           "lineages layer %d: %d alive, each with an arrow" % (layer, len(alive)))
    cap = doc.find("figure", cls="lineages", data_layer="3")
    ok(cap and "200 of 250 lineages drawn" in cap[0].alltext(), "lineages: the cap of 200 is stated")

print("# report_check: %d ok, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
