// tokenizer_ref.mjs - reference encodings of tests/cases/tokenizer/corpus.json
// by HuggingFace's pure-JavaScript tokenizers library, written to
// tests/golden/tokenizer_ref.json for tests/test_tokenizer.c.
//
//   scripts/fetch-tokenizer
//   T=$(mktemp -d) && (cd "$T" && npm install --no-save @huggingface/tokenizers@0.2.0)
//   NODE_PATH="$T/node_modules" node tests/reference/tokenizer_ref.mjs \
//       var/data/20B_tokenizer.json "$T/node_modules"
//
// One deliberate change to the library: its ByteLevel pre-tokenizer uses
// JavaScript's \s, which (unlike Oniguruma's \s, used by the Rust library
// that made Pythia's data) matches U+FEFF and not U+0085.  The pattern is
// replaced by the same pattern with \p{White_Space} for \s, so the goldens
// follow the Rust library; the corpus has both characters.
//
// Per string the golden holds the ids, the decoded text (no clean-up of
// tokenization spaces) and whether decoding gives the text back.
//
// With `--check TEXT IDS.u16` appended (e.g. var/data/eval.txt and
// var/data/eval.u16 from scripts/fetch-corpus) it instead encodes TEXT and
// compares with the uint16 ids written by `ckpt-worker tokenize`; exit 1
// on any difference.  Nothing is written then.
import { readFileSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [tokPath = "var/data/20B_tokenizer.json", modules = process.env.NODE_PATH] =
    process.argv.slice(2).filter((a) => !a.startsWith("--"));
if (!modules) {
    console.error("usage: node tests/reference/tokenizer_ref.mjs TOKENIZER.json NODE_MODULES_DIR");
    process.exit(2);
}
const VERSION = "0.2.0";
const pkgDir = path.join(modules, "@huggingface", "tokenizers");
const pkg = JSON.parse(readFileSync(path.join(pkgDir, "package.json"), "utf8"));
if (pkg.version !== VERSION) throw new Error(`need @huggingface/tokenizers@${VERSION}, found ${pkg.version}`);
const { Tokenizer } = await import(pathToFileURL(path.join(pkgDir, "dist", "tokenizers.mjs")).href);

const raw = readFileSync(tokPath);
const tok = new Tokenizer(JSON.parse(raw.toString("utf8")), {});
const pat = tok.pre_tokenizer.pattern;
if (!pat || pat.source !== String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`)
    throw new Error("unexpected ByteLevel pattern: " + pat);
tok.pre_tokenizer.pattern = new RegExp(
    pat.source.replaceAll(String.raw`\s`, String.raw`\p{White_Space}`).replaceAll(String.raw`\S`, String.raw`\P{White_Space}`),
    "gu");

const check = process.argv.indexOf("--check");
if (check > 0) {
    const text = readFileSync(process.argv[check + 1], "utf8");
    const b = readFileSync(process.argv[check + 2]);
    const c = new Uint16Array(b.buffer, b.byteOffset, b.length / 2);
    const t0 = Date.now();
    const ids = tok.encode(text).ids;
    const ms = Date.now() - t0;
    let diff = ids.length === c.length ? -1 : Math.min(ids.length, c.length);
    for (let i = 0; i < Math.min(ids.length, c.length) && diff < 0; i++) if (ids[i] !== c[i]) diff = i;
    console.log(`tokenizer_ref: ${ids.length} ids (${ms} ms), file ${c.length}: ` +
        (diff < 0 ? "identical" : `first difference at index ${diff}`));
    process.exit(diff < 0 ? 0 : 1);
}
const corpus = JSON.parse(readFileSync("tests/cases/tokenizer/corpus.json", "utf8"));
const cases = corpus.map((text) => {
    const ids = tok.encode(text, { add_special_tokens: true }).ids;
    const decoded = ids.length ? tok.decode(ids, { clean_up_tokenization_spaces: false }) : "";
    return { text, ids, decoded, roundtrip: decoded === text };
});
const out = {
    generator: "tests/reference/tokenizer_ref.mjs",
    library: `@huggingface/tokenizers@${VERSION}`,
    node: process.version,
    tokenizer_sha256: createHash("sha256").update(raw).digest("hex"),
    cases,
};
writeFileSync("tests/golden/tokenizer_ref.json", JSON.stringify(out, null, 0) + "\n");
console.error(`tokenizer_ref: ${cases.length} strings, ${cases.reduce((a, c) => a + c.ids.length, 0)} ids, ` +
    `${cases.filter((c) => c.roundtrip).length} round-trip`);
