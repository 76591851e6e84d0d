/*
 * unicode_tables.h - the data of unicode_tables.c, which
 * `node scripts/gen-unicode-tables.mjs` generates.  Only unicode.c reads it.
 * Every table is sorted by code point (uni_comps by first, then second).
 */
#ifndef CKPTD_UNICODE_TABLES_H
#define CKPTD_UNICODE_TABLES_H

struct uni_range {
    unsigned lo, hi; /* inclusive */
    unsigned char v; /* uni_class_ranges: enum uni_class; uni_ccc_ranges: class rank */
};

struct uni_decomp {
    unsigned cp;
    unsigned short off; /* into uni_decomp_pool */
    unsigned char len;
};

struct uni_comp {
    unsigned first, second, composite;
};

extern const struct uni_range uni_class_ranges[];
extern const unsigned uni_class_nranges;
extern const struct uni_range uni_ccc_ranges[];
extern const unsigned uni_ccc_nranges;
extern const struct uni_decomp uni_decomps[];
extern const unsigned uni_ndecomps;
extern const unsigned uni_decomp_pool[];
extern const struct uni_comp uni_comps[];
extern const unsigned uni_ncomps;

#endif
