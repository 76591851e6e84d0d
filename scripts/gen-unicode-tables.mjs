#!/usr/bin/env node
// gen-unicode-tables.mjs - write workers/text/unicode_tables.c, the
// character data the tokenizer needs, from the JavaScript engine's own
// Unicode support, so the C code agrees with the JavaScript reference
// (tests/reference/tokenizer_ref.mjs) code point for code point.
//
//   node scripts/gen-unicode-tables.mjs workers/text/unicode_tables.c \
//        tests/golden/nfc_cases.json
//
// What is taken from where:
//   letter, number, white space   /\p{L}/u, /\p{N}/u, /\p{White_Space}/u for
//                                 every code point (White_Space is what
//                                 Oniguruma's \s matches in Unicode mode)
//   canonical decompositions      String.prototype.normalize('NFD') of each
//                                 code point (Hangul syllables are left to
//                                 the algorithm and not tabulated)
//   canonical combining order     JavaScript exposes no combining class, so
//                                 the classes' *order* is recovered from
//                                 canonical reordering: NFD(b a) == a b
//                                 exactly when ccc(a) < ccc(b), both > 0.
//                                 The table holds that rank (1..K), which
//                                 is all NFC needs (comparisons, zero test).
//   composition pairs             for each code point c that NFC leaves
//                                 unchanged and NFD splits into d1..dn,
//                                 (NFC(d1..dn-1), dn) -> c; each pair is
//                                 checked by composing it with normalize.
// The script then runs NFC with these tables (in JavaScript, the same
// algorithm as workers/text/unicode.c) on every code point and on random
// sequences of starters, marks and jamo, and fails on any difference from
// normalize('NFC').  The random sequences and their NFC forms are written
// to the second file for the C test.
import { writeFileSync } from "node:fs";

const [outC, outCases] = process.argv.slice(2);
if (!outC || !outCases) {
    console.error("usage: node scripts/gen-unicode-tables.mjs OUT.c CASES.json");
    process.exit(2);
}

const MAXCP = 0x10ffff;
const isSurrogate = (c) => c >= 0xd800 && c <= 0xdfff;
const S = String.fromCodePoint;
const cps = (s) => Array.from(s, (ch) => ch.codePointAt(0));
const SBASE = 0xac00, SCOUNT = 11172;
const isHangulSyllable = (c) => c >= SBASE && c < SBASE + SCOUNT;

// 1. letter / number / white space classes as ranges
const reL = /^\p{L}$/u, reN = /^\p{N}$/u, reWS = /^\p{White_Space}$/u;
const CLS = { L: 1, N: 2, S: 3 };
const clsRanges = [];
for (let c = 0; c <= MAXCP; c++) {
    if (isSurrogate(c)) continue;
    const s = S(c);
    const k = reL.test(s) ? CLS.L : reN.test(s) ? CLS.N : reWS.test(s) ? CLS.S : 0;
    if (!k) continue;
    const last = clsRanges[clsRanges.length - 1];
    if (last && last[2] === k && last[1] === c - 1) last[1] = c;
    else clsRanges.push([c, c, k]);
}

// 2. decompositions
const decomp = new Map(); // cp -> [cps]
for (let c = 0; c <= MAXCP; c++) {
    if (isSurrogate(c) || isHangulSyllable(c)) continue;
    const d = S(c).normalize("NFD");
    if (d !== S(c)) decomp.set(c, cps(d));
}

// 3. combining-class order among non-starters that do not decompose.
//    U+0334 has the lowest non-zero class (1), U+0345 the highest (240):
//    a character is a non-starter iff it reorders against one of them.
const stable = (c) => !isSurrogate(c) && !decomp.has(c) && !isHangulSyllable(c);
const reorders = (a, b) => S(a, b).normalize("NFD") !== S(a, b);
const nonStarters = [];
for (let c = 0; c <= MAXCP; c++) {
    if (!stable(c) || c === 0x334 || c === 0x345) continue;
    if (reorders(c, 0x334) || reorders(0x345, c)) nonStarters.push(c);
}
nonStarters.push(0x334, 0x345);
// cmp < 0 when ccc(a) < ccc(b)
const cmp = (a, b) => (reorders(b, a) ? -1 : reorders(a, b) ? 1 : 0);
const reps = []; // one representative per class, sorted
const rankOf = new Map();
for (const c of nonStarters) {
    let lo = 0, hi = reps.length, found = -1;
    while (lo < hi) {
        const mid = (lo + hi) >> 1, r = cmp(c, reps[mid]);
        if (r === 0) { found = mid; break; }
        if (r < 0) hi = mid; else lo = mid + 1;
    }
    if (found < 0) reps.splice(lo, 0, c);
}
for (const c of nonStarters) {
    const i = reps.findIndex((r) => cmp(c, r) === 0);
    if (i < 0) throw new Error(`no class for U+${c.toString(16)}`);
    rankOf.set(c, i + 1);
}
const ccc = (c) => rankOf.get(c) ?? 0;
const cccRanges = [];
for (const c of [...rankOf.keys()].sort((a, b) => a - b)) {
    const k = rankOf.get(c), last = cccRanges[cccRanges.length - 1];
    if (last && last[2] === k && last[1] === c - 1) last[1] = c;
    else cccRanges.push([c, c, k]);
}

// 4. composition pairs
const comp = new Map(); // "first,second" -> composite
for (const [c, d] of decomp) {
    if (S(c).normalize("NFC") !== S(c) || d.length < 2) continue;
    const head = cps(S(...d.slice(0, -1)).normalize("NFC"));
    if (head.length !== 1) throw new Error(`U+${c.toString(16)}: head is not one code point`);
    const pair = [head[0], d[d.length - 1]];
    if (S(...pair).normalize("NFC") !== S(c)) throw new Error(`pair for U+${c.toString(16)} does not compose`);
    if (pair[1] < 0x300) throw new Error(`U+${c.toString(16)}: second below U+0300 (unicode.c assumes none)`);
    comp.set(pair.join(","), c);
}

// 5. NFC with these tables (mirrors workers/text/unicode.c)
const LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11a7, LCOUNT = 19, VCOUNT = 21, TCOUNT = 28;
function nfc(input) {
    const out = [];
    for (const c of input) {
        if (isHangulSyllable(c)) {
            const s = c - SBASE;
            out.push(LBASE + Math.floor(s / (VCOUNT * TCOUNT)), VBASE + Math.floor((s % (VCOUNT * TCOUNT)) / TCOUNT));
            if (s % TCOUNT) out.push(TBASE + (s % TCOUNT));
        } else out.push(...(decomp.get(c) ?? [c]));
    }
    for (let i = 1; i < out.length; i++) { // stable insertion sort of non-starter runs
        const c = out[i], k = ccc(c);
        if (!k) continue;
        let j = i;
        while (j > 0 && ccc(out[j - 1]) > k) { out[j] = out[j - 1]; j--; }
        out[j] = c;
    }
    const res = [];
    let starter = -1, last = 0;
    for (const c of out) {
        const k = ccc(c);
        if (starter >= 0 && (last < k || last === 0 && res.length - 1 === starter)) {
            const f = res[starter];
            let m = -1;
            if (f >= LBASE && f < LBASE + LCOUNT && c >= VBASE && c < VBASE + VCOUNT)
                m = SBASE + ((f - LBASE) * VCOUNT + (c - VBASE)) * TCOUNT;
            else if (isHangulSyllable(f) && (f - SBASE) % TCOUNT === 0 && c > TBASE && c < TBASE + TCOUNT)
                m = f + (c - TBASE);
            else m = comp.get(f + "," + c) ?? -1;
            if (m >= 0) { res[starter] = m; continue; }
        }
        if (k === 0) starter = res.length;
        last = k;
        res.push(c);
    }
    return res;
}
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
let checked = 0;
for (let c = 0; c <= MAXCP; c++) {
    if (isSurrogate(c)) continue;
    if (!same(nfc([c]), cps(S(c).normalize("NFC")))) throw new Error(`NFC differs at U+${c.toString(16)}`);
    checked++;
}
// random sequences from a pool that exercises reordering, blocking and jamo
let seed = 12345;
const rnd = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
const pool = [...new Set([
    ...[..."aeiouAEIOUcCnNsSzZgGkKwWyY"].map((ch) => ch.codePointAt(0)),
    0x300, 0x301, 0x302, 0x303, 0x308, 0x30a, 0x30c, 0x323, 0x327, 0x328, 0x331, 0x334, 0x345,
    0x5b0, 0x5b4, 0x5bc, 0x5c1, 0x5d0, 0x5e9, 0x0915, 0x093c, 0x0928, 0x1100, 0x1161, 0x11a8,
    0xac00, 0xac01, 0x3099, 0x309a, 0x304b, 0x30cf, 0x212b, 0x2126, 0x0f71, 0x0f72, 0x0f80,
    0x1e0b, 0x1e63, 0x0390, 0x03b9, 0x0313, 0x0342, 0x1f00, 0x0958, 0x2adc, 0x0338, 0x1d15e,
    0x1d165, 0x1d16e, 0x00c5, 0x00e9, 0x0107, 0x0344, 0x0340, 0x0f73,
    ...[...comp.keys()].map((k) => Number(k.split(",")[0])),
].slice(0, 400))];
const cases = [];
for (let t = 0; t < 20000; t++) {
    const len = 1 + rnd(7), seq = [];
    for (let i = 0; i < len; i++) seq.push(pool[rnd(pool.length)]);
    const want = cps(S(...seq).normalize("NFC"));
    if (!same(nfc(seq), want)) throw new Error(`NFC differs on ${seq.map((c) => c.toString(16))}`);
    if (t < 2000) cases.push([S(...seq), S(...want)]);
}
checked += 20000;

// 6. write the C file
const hex = (c) => "0x" + c.toString(16).toUpperCase().padStart(4, "0");
const lines = [];
const out = (s) => lines.push(s);
out("/*");
out(" * unicode_tables.c - character data for workers/text/unicode.c.");
out(" * GENERATED by `node scripts/gen-unicode-tables.mjs` from the JavaScript");
out(` * engine's Unicode ${process.versions.unicode} data (node ${process.version}); do not edit.`);
out(" * See the script's header for what each table holds and how it was checked.");
out(" */");
out('#include "workers/text/unicode_tables.h"');
out("");
out(`const struct uni_range uni_class_ranges[] = {`);
for (const [a, b, k] of clsRanges) out(`    {${hex(a)}, ${hex(b)}, ${k}},`);
out("};");
out(`const unsigned uni_class_nranges = ${clsRanges.length};`);
out("");
out(`/* rank of the canonical combining class among non-zero classes (1..${reps.length}) */`);
out(`const struct uni_range uni_ccc_ranges[] = {`);
for (const [a, b, k] of cccRanges) out(`    {${hex(a)}, ${hex(b)}, ${k}},`);
out("};");
out(`const unsigned uni_ccc_nranges = ${cccRanges.length};`);
out("");
const dkeys = [...decomp.keys()].sort((a, b) => a - b);
const poolArr = [];
out(`const struct uni_decomp uni_decomps[] = {`);
for (const c of dkeys) {
    const d = decomp.get(c);
    out(`    {${hex(c)}, ${poolArr.length}, ${d.length}},`);
    poolArr.push(...d);
}
out("};");
out(`const unsigned uni_ndecomps = ${dkeys.length};`);
out(`const unsigned uni_decomp_pool[] = {`);
for (let i = 0; i < poolArr.length; i += 8) out("    " + poolArr.slice(i, i + 8).map(hex).join(", ") + ",");
out("};");
out("");
const ckeys = [...comp.keys()].map((k) => k.split(",").map(Number))
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
out(`const struct uni_comp uni_comps[] = {`);
for (const [f, s] of ckeys) out(`    {${hex(f)}, ${hex(s)}, ${hex(comp.get(f + "," + s))}},`);
out("};");
out(`const unsigned uni_ncomps = ${ckeys.length};`);
writeFileSync(outC, lines.join("\n") + "\n");
writeFileSync(outCases, JSON.stringify({
    generator: "scripts/gen-unicode-tables.mjs",
    unicode: process.versions.unicode,
    cases: cases.map(([i, o]) => ({ in: i, nfc: o })),
}) + "\n");
console.error(`gen-unicode-tables: ${clsRanges.length} class ranges, ${cccRanges.length} ccc ranges ` +
    `(${reps.length} classes), ${dkeys.length} decompositions, ${ckeys.length} compositions; ` +
    `NFC checked on ${checked} inputs`);
