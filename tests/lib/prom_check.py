#!/usr/bin/python3
"""prom_check.py - read Prometheus text exposition format 0.0.4 strictly, for
the tests of ckptd's /metrics (tests/daemon_metrics.sh).  Standard library
only.

    prom_check.py parse FILE          check one scrape; print its samples as
                                      JSON {"name{l=\"v\",...}": value}
    prom_check.py watch URL INTERVAL STOPFILE OUT
                                      scrape URL every INTERVAL seconds until
                                      STOPFILE exists; check every scrape and
                                      that no *_total counter ever goes down;
                                      write a summary JSON to OUT:
                                      {"scrapes", "errors": [...],
                                       "latency_ms": [median, max], "last"}

What is checked, per the format's specification: every line is a comment
("# HELP name text", "# TYPE name type", or another "# ..."), or a sample
"name{label="value",...} value [timestamp]"; metric and label names match
[a-zA-Z_:][a-zA-Z0-9_:]* and [a-zA-Z_][a-zA-Z0-9_]*; label values escape
only \\\\, \\" and \\n; values are Go floats (or NaN, +Inf, -Inf); a family
has at most one HELP and one TYPE, TYPE before its samples, its samples
together; a counter's name ends in _total (ckptd's rule); no series twice;
the text ends with a newline.  Exit status 1 and the first problem on
stderr when a scrape is invalid.
"""
import json
import os
import re
import statistics
import sys
import time
import urllib.request

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
VALUE = re.compile(r"^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)$")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class Bad(Exception):
    pass


def unescape_label(s, i, line):
    """Read a quoted label value starting after its opening quote at s[i]."""
    out = []
    while True:
        if i >= len(s):
            raise Bad("unterminated label value: %r" % line)
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= len(s) or s[i + 1] not in '\\"n':
                raise Bad("bad escape in label value: %r" % line)
            out.append({"\\": "\\", '"': '"', "n": "\n"}[s[i + 1]])
            i += 2
            continue
        if c == "\n":
            raise Bad("raw newline in label value: %r" % line)
        out.append(c)
        i += 1


def parse_sample(line):
    m = NAME.match(line)
    if not m:
        raise Bad("bad metric name: %r" % line)
    name, i, labels = m.group(0), m.end(), []
    if i < len(line) and line[i] == "{":
        i += 1
        while True:
            if line[i] == "}":
                i += 1
                break
            lm = LABEL.match(line, i)
            if not lm or line[lm.end():lm.end() + 2] != '="':
                raise Bad("bad label: %r" % line)
            value, i = unescape_label(line, lm.end() + 2, line)
            if any(k == lm.group(0) for k, _ in labels):
                raise Bad("label twice: %r" % line)
            labels.append((lm.group(0), value))
            if line[i] == ",":
                i += 1
            elif line[i] != "}":
                raise Bad("bad label list: %r" % line)
    if i >= len(line) or line[i] != " ":
        raise Bad("no space before the value: %r" % line)
    parts = line[i + 1:].split(" ")
    if len(parts) not in (1, 2) or not VALUE.match(parts[0]):
        raise Bad("bad value: %r" % line)
    if len(parts) == 2 and not re.match(r"^-?\d+$", parts[1]):
        raise Bad("bad timestamp: %r" % line)
    return name, labels, float(parts[0])


def key(name, labels):
    if not labels:
        return name
    esc = lambda v: v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return name + "{" + ",".join('%s="%s"' % (k, esc(v)) for k, v in labels) + "}"


def parse(text):
    """The samples of one scrape as {key: value}; raises Bad."""
    if not text.endswith("\n"):
        raise Bad("the text does not end with a newline")
    helps, types, done_families, samples = set(), {}, set(), {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not NAME.fullmatch(name):
                    raise Bad("bad name in %r" % line)
                if parts[1] == "HELP":
                    if name in helps:
                        raise Bad("second HELP for %s" % name)
                    text_part = parts[3] if len(parts) > 3 else ""
                    if re.search(r"\\[^\\n]", text_part.replace("\\\\", "")):
                        raise Bad("bad escape in HELP: %r" % line)
                    helps.add(name)
                else:
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise Bad("bad TYPE line: %r" % line)
                    if name in types:
                        raise Bad("second TYPE for %s" % name)
                    if name in done_families or any(k.split("{")[0] == name for k in samples):
                        raise Bad("TYPE for %s after its samples" % name)
                    if parts[3] == "counter" and not name.endswith("_total"):
                        raise Bad("counter %s does not end in _total" % name)
                    types[name] = parts[3]
            continue
        if line == "":
            raise Bad("empty line")
        name, labels, value = parse_sample(line)
        if name != current:
            if name in done_families:
                raise Bad("samples of %s are not together" % name)
            if current:
                done_families.add(current)
            current = name
        if name not in types:
            raise Bad("sample %s has no TYPE" % name)
        k = key(name, labels)
        if k in samples:
            raise Bad("series twice: %s" % k)
        samples[k] = value
    return samples


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "parse":
        with open(sys.argv[2], encoding="utf-8") as f:
            text = f.read()
        try:
            print(json.dumps(parse(text), sort_keys=True))
        except Bad as e:
            print("invalid exposition: %s" % e, file=sys.stderr)
            sys.exit(1)
        return
    if len(sys.argv) == 6 and sys.argv[1] == "watch":
        url, interval, stop, out = sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
        errors, lat, last, prev = [], [], {}, {}
        n = 0
        while not os.path.exists(stop):
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    body = r.read().decode("utf-8")
                    ctype = r.headers.get("Content-Type", "")
                lat.append((time.monotonic() - t0) * 1e3)
                if ctype != "text/plain; version=0.0.4; charset=utf-8":
                    errors.append("content type %r" % ctype)
                s = parse(body)
                for k, v in s.items():
                    if k.split("{")[0].endswith("_total") and k in prev and v < prev[k]:
                        errors.append("%s went down: %s -> %s" % (k, prev[k], v))
                prev, last = s, s
                n += 1
            except Bad as e:
                errors.append("scrape %d: %s" % (n, e))
            except OSError as e:
                errors.append("scrape %d: %s" % (n, e))
            time.sleep(max(0.0, interval - (time.monotonic() - t0)))
        summary = {"scrapes": n, "errors": errors[:20],
                   "latency_ms": [statistics.median(lat), max(lat)] if lat else [None, None],
                   "last": last}
        with open(out + ".tmp", "w") as f:
            json.dump(summary, f, sort_keys=True)
        os.rename(out + ".tmp", out)
        return
    print(__doc__, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
