/*
 * tokenizer.h - byte-level BPE tokenizers read from HuggingFace
 * `tokenizer.json` files, computing the same ids as the HuggingFace
 * `tokenizers` library: GPT-NeoX-20B's (Pythia's), GPT-2-style ones.
 *
 * Encoding, in the library's order:
 *   1. added tokens with "normalized": false (e.g. <|endoftext|>) are cut
 *      out of the raw text, leftmost-longest (at each position the longest
 *      added token starting there; scanning resumes after it);
 *   2. the rest is normalised (NFC, or nothing), then added tokens with
 *      "normalized": true (GPT-NeoX's runs of 2-24 spaces) are cut out the
 *      same way;
 *   3. the ByteLevel pre-tokenizer splits what remains with the GPT-2
 *      pattern 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *      (\s is Unicode White_Space, as in Oniguruma which the library uses);
 *      with add_prefix_space a space is put before each piece that does not
 *      start with one; use_regex false skips the split;
 *   4. each piece's UTF-8 bytes are merged by BPE: the adjacent pair with
 *      the lowest merge rank first, the leftmost of equal ranks.
 * Decoding (the ByteLevel decoder) concatenates each token's bytes (an
 * added token's content as written) and replaces ill-formed UTF-8 by
 * U+FFFD, as the library does.
 *
 * Input text must be well-formed UTF-8: anything else is ERR_FORMAT with
 * the byte offset (the library's strings cannot hold such text either).
 *
 * Supported tokenizer.json: model BPE (no dropout, prefixes or suffixes,
 * byte_fallback), normalizer null or NFC, pre_tokenizer ByteLevel, decoder
 * ByteLevel or null, post_processor null or ByteLevel (it adds no ids),
 * added tokens without single_word/lstrip/rstrip.  Anything else is
 * refused with ERR_UNSUPPORTED naming the field, so no file is silently
 * tokenised differently from the library.
 *
 *     struct tokenizer *tok;
 *     int *ids; size_t n;
 *     if (tokenizer_load(&tok, "var/data/20B_tokenizer.json", &e) < 0) ...
 *     if (tokenizer_encode(tok, text, strlen(text), &ids, &n, &e) < 0) ...
 *     free(ids);
 *     tokenizer_free(tok);
 *
 * A tokenizer caches the BPE of words it has seen: one tokenizer must not
 * encode from two threads at once (decoding is read-only).
 */
#ifndef CKPTD_TOKENIZER_H
#define CKPTD_TOKENIZER_H

#include <stddef.h>

#include "common/err.h"

struct tokenizer;

/* Load and validate `path`.  On failure *tok is NULL and e names the file
 * and what is wrong: ERR_NOTFOUND/ERR_IO (cannot read), ERR_FORMAT (not
 * JSON, missing "model", malformed vocab or merges, a merge of tokens not
 * in the vocabulary, duplicate ids), ERR_UNSUPPORTED (a normalizer,
 * pre-tokenizer, model or decoder type not handled), ERR_NOMEM. */
int tokenizer_load(struct tokenizer **tok, const char *path, struct err *e) CK_WUR;

/* Accepts NULL. */
void tokenizer_free(struct tokenizer *tok);

/* One more than the largest id of the vocabulary and the added tokens
 * (GPT-NeoX-20B: 50277). */
int tokenizer_vocab_size(const struct tokenizer *tok);

/* The id of the added token whose content is `text` (e.g. "<|endoftext|>"),
 * else of the vocabulary token whose bytes are `text`; -1 if none. */
int tokenizer_token_id(const struct tokenizer *tok, const char *text);

/* The bytes of token `id` (borrowed, lives as long as tok; not
 * NUL-terminated) and their count in *len; NULL if id is not a token. */
const char *tokenizer_token_bytes(const struct tokenizer *tok, int id, size_t *len);

/* Encode text[0..len) into *ids (*n of them; caller frees, non-NULL even
 * when *n is 0).  ERR_FORMAT for ill-formed UTF-8 (offset in the message),
 * ERR_UNSUPPORTED for a byte without a token and no unk_token, ERR_NOMEM.
 * On failure *ids is NULL. */
int tokenizer_encode(struct tokenizer *tok, const char *text, size_t len, int **ids, size_t *n,
                     struct err *e) CK_WUR;

/* Decode ids[0..n) into *text (NUL-terminated, *len bytes without the
 * NUL; caller frees), always well-formed UTF-8.  ERR_INVALID names the
 * first id that is not a token; ERR_UNSUPPORTED if the file has no
 * decoder; ERR_NOMEM.  On failure *text is NULL. */
int tokenizer_decode(const struct tokenizer *tok, const int *ids, size_t n, char **text,
                     size_t *len, struct err *e) CK_WUR;

#endif
