/* The shipped prompt-pair sets (pair_gen.h). */
#include "workers/battery/pair_gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"

/* Candidates, each with its leading space.  Names after Wang et al.'s
 * list of common first names; the generator keeps those that are one
 * token. */
static const char *const names[] = {
    " Mary",    " John",   " Alice",  " Bob",     " James",  " Michael", " David",
    " Sarah",   " Emma",   " Tom",    " Paul",    " Mark",   " Anna",    " Laura",
    " Kate",    " Peter",  " Jack",   " Linda",   " Susan",  " Robert",  " William",
    " Richard", " Thomas", " Daniel", " Matthew", " George", " Edward",  " Steven",
    " Kevin",   " Brian",  " Jason",  " Jessica", " Lisa",   " Nancy",   " Karen",
    " Helen",   " Amy",    " Rachel", " Andrew",  " Joseph", " Charles", " Henry",
};
static const char *const places[] = {" store", " park", " school", " office", " beach",
                                     " station", " garden", " market", " hospital"};
static const char *const objects[] = {" drink", " book", " ball", " ring", " gift",
                                      " letter", " snack", " bag", " key"};
static const char *const nouns[] = {" war", " siege", " drought", " strike",
                                    " expedition", " reign", " trial", " famine", " journey",
                                    " plague", " dispute", " boom", " crisis"};

#define NAMES_MAX 64

/* The one-token id of text (NUL-terminated), or -1. */
static int one_token(struct tokenizer *tok, const char *text)
{
    int *ids = NULL, id = -1;
    size_t n = 0;
    if (tokenizer_encode(tok, text, strlen(text), &ids, &n, NULL) == 0 && n == 1)
        id = ids[0];
    free(ids);
    return id;
}

int pair_gen_words(struct tokenizer *tok, const char *slot, int *ids, const char **words, int cap)
{
    const char *const *list = strcmp(slot, "name") == 0     ? names
                              : strcmp(slot, "place") == 0  ? places
                              : strcmp(slot, "object") == 0 ? objects
                              : strcmp(slot, "noun") == 0   ? nouns
                                                            : NULL;
    size_t n = list == names    ? sizeof names / sizeof *names
               : list == places ? sizeof places / sizeof *places
               : list == objects ? sizeof objects / sizeof *objects
               : list == nouns  ? sizeof nouns / sizeof *nouns
                                : 0;
    int k = 0;
    for (size_t i = 0; i < n && k < cap; i++) {
        int id = one_token(tok, list[i]), dup = 0;
        for (int j = 0; j < k && !dup; j++)
            dup = ids[j] == id;
        if (id >= 0 && !dup) {
            ids[k] = id;
            words[k++] = list[i];
        }
    }
    return k;
}

/* Tokenize the pieces' concatenation into out (room for cap ids) and check
 * it is the concatenation of the pieces' own tokens, each slot piece (slot
 * bit set in slots) one token; where[i] gets piece i's first token.
 * Returns the length, or ERR_INVALID naming the text. */
static int build_prompt(struct tokenizer *tok, const char *const *pieces, int np, unsigned slots,
                        int *out, int cap, int *where, struct err *e)
{
    char text[512];
    size_t o = 0;
    int n = 0;
    for (int i = 0; i < np; i++)
        o += (size_t)snprintf(text + o, o < sizeof text ? sizeof text - o : 0, "%s", pieces[i]);
    if (o >= sizeof text)
        return err_set(e, ERR_INVALID, NULL, "prompt too long");
    for (int i = 0; i < np; i++) {
        int *ids = NULL;
        size_t m = 0;
        if (tokenizer_encode(tok, pieces[i], strlen(pieces[i]), &ids, &m, e) < 0)
            return ERR_INVALID;
        if (((slots >> i) & 1u) && m != 1) {
            free(ids);
            return err_set(e, ERR_INVALID, text, "\"%s\" is %zu tokens, not one", pieces[i], m);
        }
        where[i] = n;
        for (size_t j = 0; j < m && n < cap; j++)
            out[n++] = ids[j];
        free(ids);
    }
    int *whole = NULL;
    size_t nw = 0;
    if (tokenizer_encode(tok, text, o, &whole, &nw, e) < 0)
        return ERR_INVALID;
    int same = nw == (size_t)n && memcmp(whole, out, nw * sizeof *out) == 0;
    free(whole);
    if (!same)
        return err_set(e, ERR_INVALID, text, "the text does not tokenize as its pieces do");
    return n;
}

/* k distinct indices below n (k <= n) from the stream. */
static void pick(uint64_t *s, int n, int k, int *out)
{
    for (int i = 0; i < k; i++) {
        int v, dup;
        do {
            v = (int)rng_below(s, (uint32_t)n);
            dup = 0;
            for (int j = 0; j < i && !dup; j++)
                dup = out[j] == v;
        } while (dup);
        out[i] = v;
    }
}

#define PROMPT_MAX 64

int pair_gen_ioi(struct pair_set **out, struct tokenizer *tok, int npairs, uint64_t seed,
                 struct err *e)
{
    *out = NULL;
    int nid[NAMES_MAX], pid[16], oid[16];
    const char *nw[NAMES_MAX], *pw[16], *ow[16];
    int nn = pair_gen_words(tok, "name", nid, nw, NAMES_MAX);
    int np = pair_gen_words(tok, "place", pid, pw, 16);
    int no = pair_gen_words(tok, "object", oid, ow, 16);
    if (nn < 3 || np < 1 || no < 1)
        return err_set(e, ERR_INVALID, NULL, "the tokenizer keeps %d names, %d places and %d "
                       "objects as one token: IOI needs at least 3, 1 and 1", nn, np, no);
    if (npairs < 2 || npairs % 2 || npairs > PAIR_SET_MAX_PAIRS)
        return err_set(e, ERR_INVALID, NULL, "%d IOI pairs: an even number from 2 to %d", npairs,
                       PAIR_SET_MAX_PAIRS);
    int *clean = malloc((size_t)npairs * PROMPT_MAX * sizeof *clean);
    int *corr = malloc((size_t)npairs * PROMPT_MAX * sizeof *corr);
    int *ans = malloc((size_t)npairs * sizeof *ans), *wrong = malloc((size_t)npairs * sizeof *wrong);
    int T = 0, rc = 0, where[11], pos[4];
    if (!clean || !corr || !ans || !wrong) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
        goto out;
    }
    uint64_t s = seed ^ 0x494f495041495253ull; /* "IOIPAIRS" */
    for (int b = 0; b < npairs && rc == 0; b++) {
        int who[3], pl = (int)rng_below(&s, (uint32_t)np), ob = (int)rng_below(&s, (uint32_t)no);
        pick(&s, nn, 3, who); /* IO, S, C */
        int abba = b % 2 == 0;
        const char *A = abba ? nw[who[0]] : nw[who[1]], *Bn = abba ? nw[who[1]] : nw[who[0]];
        const char *cl[11] = {"When", A, " and", Bn, " went to the", pw[pl], ",", nw[who[1]],
                              " gave a", ow[ob], " to"};
        const char *co[11];
        memcpy(co, cl, sizeof co);
        co[7] = nw[who[2]];
        unsigned slots = 1u << 1 | 1u << 3 | 1u << 5 | 1u << 7 | 1u << 9;
        int n1 = build_prompt(tok, cl, 11, slots, clean + (size_t)b * PROMPT_MAX, PROMPT_MAX,
                              where, e);
        int n2 = n1 < 0 ? n1
                        : build_prompt(tok, co, 11, slots, corr + (size_t)b * PROMPT_MAX,
                                       PROMPT_MAX, where, e);
        if (n1 < 0 || n2 < 0) {
            rc = n1 < 0 ? n1 : n2;
            break;
        }
        if (b == 0)
            T = n1;
        if (n1 != T || n2 != T) {
            rc = err_set(e, ERR_INVALID, NULL, "IOI pair %d has %d and %d tokens, pair 0 %d", b,
                         n1, n2, T);
            break;
        }
        ans[b] = nid[who[0]];
        wrong[b] = nid[who[1]];
        pos[0] = where[1];
        pos[1] = where[3];
        pos[2] = where[7];
        pos[3] = T - 1;
    }
    if (rc == 0) { /* the rows were laid out PROMPT_MAX apart: pack them */
        for (int b = 1; b < npairs; b++) {
            memmove(clean + (size_t)b * T, clean + (size_t)b * PROMPT_MAX, (size_t)T * sizeof *clean);
            memmove(corr + (size_t)b * T, corr + (size_t)b * PROMPT_MAX, (size_t)T * sizeof *corr);
        }
        rc = pair_set_from_arrays(out, "ioi",
                                  "IOI (Wang et al. 2022): When{A} and{B} went to the{PLACE},{S2} "
                                  "gave a{OBJECT} to; ABBA and BABA alternate; corrupted: S2 "
                                  "replaced by a third name; answer IO, wrong S; positions A, B, "
                                  "S2, END",
                                  npairs, T, clean, corr, ans, wrong, pos, 4, e);
    }
out:
    free(wrong);
    free(ans);
    free(corr);
    free(clean);
    return rc;
}

int pair_gen_greater_than(struct pair_set **out, struct tokenizer *tok, int npairs,
                          uint64_t seed, struct err *e)
{
    *out = NULL;
    int wid[16], yy_ok[100], nyy = 0, yyid[100];
    const char *ww[16];
    int nw = pair_gen_words(tok, "noun", wid, ww, 16);
    /* the two-digit tokens YY for which " 17YY" splits into " 17" and YY
     * in the prompt */
    for (int y = 0; y < 100; y++) {
        char two[12];
        snprintf(two, sizeof two, "%02d", y);
        yyid[y] = tokenizer_token_id(tok, two);
        yy_ok[y] = 0;
    }
    int *clean = NULL, *corr = NULL, *ans = NULL, *wrong = NULL, *aoff = NULL, *woff = NULL;
    int T = 0, rc = 0, where[5], pos[2];
    for (int y = 0; y < 100; y++) {
        char two[12];
        snprintf(two, sizeof two, "%02d", y);
        const char *pc[5] = {"The war lasted from the year", " 17", two, " to the year", " 17"};
        int ids[PROMPT_MAX];
        struct err ignore;
        yy_ok[y] = yyid[y] >= 0 && build_prompt(tok, pc, 5, 1u << 1 | 1u << 2 | 1u << 4, ids,
                                                PROMPT_MAX, where, &ignore) > 0;
    }
    for (int y = 2; y <= 98; y++)
        nyy += yy_ok[y];
    if (nw < 1 || nyy < 1 || !yy_ok[1])
        return err_set(e, ERR_INVALID, NULL, "the tokenizer keeps %d nouns as one token and "
                       "splits \" 17YY\" into \" 17\" and YY for %d of YY = 02 .. 98 (01: %s): "
                       "greater-than needs at least one of each and 01", nw, nyy,
                       yy_ok[1] ? "yes" : "no");
    if (npairs < 1 || npairs > PAIR_SET_MAX_PAIRS)
        return err_set(e, ERR_INVALID, NULL, "%d greater-than pairs: 1 to %d", npairs,
                       PAIR_SET_MAX_PAIRS);
    clean = malloc((size_t)npairs * PROMPT_MAX * sizeof *clean);
    corr = malloc((size_t)npairs * PROMPT_MAX * sizeof *corr);
    ans = malloc((size_t)npairs * 100 * sizeof *ans);
    wrong = malloc((size_t)npairs * 100 * sizeof *wrong);
    aoff = malloc(((size_t)npairs + 1) * sizeof *aoff);
    woff = malloc(((size_t)npairs + 1) * sizeof *woff);
    if (!clean || !corr || !ans || !wrong || !aoff || !woff) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
        goto out;
    }
    uint64_t s = seed ^ 0x475245415445524eull; /* "GREATERN" */
    int na = 0, nwr = 0;
    aoff[0] = woff[0] = 0;
    for (int b = 0; b < npairs && rc == 0; b++) {
        int y;
        do
            y = 2 + (int)rng_below(&s, 97);
        while (!yy_ok[y]);
        const char *noun = ww[rng_below(&s, (uint32_t)nw)];
        char head[64], two[12];
        snprintf(head, sizeof head, "The%s lasted from the year", noun);
        snprintf(two, sizeof two, "%02d", y);
        const char *cl[5] = {head, " 17", two, " to the year", " 17"};
        const char *co[5] = {head, " 17", "01", " to the year", " 17"};
        unsigned slots = 1u << 1 | 1u << 2 | 1u << 4;
        int n1 = build_prompt(tok, cl, 5, slots, clean + (size_t)b * PROMPT_MAX, PROMPT_MAX,
                              where, e);
        int n2 = n1 < 0 ? n1
                        : build_prompt(tok, co, 5, slots, corr + (size_t)b * PROMPT_MAX,
                                       PROMPT_MAX, where, e);
        if (n1 < 0 || n2 < 0) {
            rc = n1 < 0 ? n1 : n2;
            break;
        }
        if (b == 0)
            T = n1;
        if (n1 != T || n2 != T) {
            rc = err_set(e, ERR_INVALID, NULL, "greater-than pair %d has %d and %d tokens, pair "
                         "0 %d (noun%s)", b, n1, n2, T, noun);
            break;
        }
        for (int v = 0; v < 100; v++)
            if (yyid[v] >= 0) {
                if (v > y)
                    ans[na++] = yyid[v];
                else
                    wrong[nwr++] = yyid[v];
            }
        aoff[b + 1] = na;
        woff[b + 1] = nwr;
        pos[0] = where[2];
        pos[1] = T - 1;
    }
    if (rc == 0) {
        for (int b = 1; b < npairs; b++) {
            memmove(clean + (size_t)b * T, clean + (size_t)b * PROMPT_MAX, (size_t)T * sizeof *clean);
            memmove(corr + (size_t)b * T, corr + (size_t)b * PROMPT_MAX, (size_t)T * sizeof *corr);
        }
        rc = pair_set_from_lists(out, "greater-than",
                                 "greater-than (Hanna et al. 2023): The{NOUN} lasted from the "
                                 "year 17YY to the year 17; corrupted YY = 01; answers every "
                                 "two-digit token > YY, wrong every one <= YY; positions YY, END",
                                 npairs, T, clean, corr, aoff, ans, woff, wrong, pos, 2, e);
    }
out:
    free(woff);
    free(aoff);
    free(wrong);
    free(ans);
    free(corr);
    free(clean);
    return rc;
}
