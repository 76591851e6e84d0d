#include "workers/train/adamw.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/model/backward.h"

struct adamw {
    struct adamw_config cfg;
    long t;
    size_t n;       /* floats of all parameters */
    float *m, *v;   /* moments, parameters concatenated in gptneox_params order */
    size_t np;
    struct gptneox_param *wp, *gp; /* scratch lists for a step */
};

int adamw_create(struct adamw **out, const struct gptneox *m, const struct adamw_config *cfg,
                 struct err *e)
{
    *out = NULL;
    int rc = gptneox_require_writable(m, "train it", e);
    if (rc < 0)
        return rc;
    if (!(cfg->lr >= 0) || !(cfg->beta1 >= 0 && cfg->beta1 < 1) ||
        !(cfg->beta2 >= 0 && cfg->beta2 < 1) || !(cfg->eps > 0) || !(cfg->weight_decay >= 0))
        return err_set(e, ERR_INVALID, NULL,
                       "AdamW needs lr >= 0, betas in [0, 1), eps > 0 and weight decay >= 0");
    struct adamw *o = calloc(1, sizeof *o);
    if (!o)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for the optimiser");
    o->cfg = *cfg;
    o->np = gptneox_params(m, NULL, 0);
    o->wp = malloc(o->np * sizeof *o->wp);
    o->gp = malloc(o->np * sizeof *o->gp);
    if (o->wp) {
        gptneox_params(m, o->wp, o->np);
        for (size_t i = 0; i < o->np; i++)
            o->n += o->wp[i].n;
    }
    o->m = calloc(o->n ? o->n : 1, sizeof(float));
    o->v = calloc(o->n ? o->n : 1, sizeof(float));
    if (!o->wp || !o->gp || !o->m || !o->v) {
        adamw_free(o);
        return err_set(e, ERR_NOMEM, NULL, "out of memory for the optimiser's moments");
    }
    *out = o;
    return 0;
}

void adamw_free(struct adamw *opt)
{
    if (!opt)
        return;
    free(opt->m);
    free(opt->v);
    free(opt->wp);
    free(opt->gp);
    free(opt);
}

long adamw_steps(const struct adamw *opt) { return opt->t; }

void adamw_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double wd,
                  const struct adamw_config *c, long t)
{
    const float decay = (float)(1.0 - lr * wd);
    const float b1 = (float)c->beta1, b2 = (float)c->beta2;
    const float a1 = (float)(1.0 - c->beta1), a2 = (float)(1.0 - c->beta2);
    const double bc1 = 1.0 - pow(c->beta1, (double)t), bc2 = 1.0 - pow(c->beta2, (double)t);
    const float step = (float)(lr / bc1), bc2s = (float)sqrt(bc2), eps = (float)c->eps;
    for (size_t i = 0; i < n; i++) {
        if (wd != 0.0)
            p[i] *= decay;
        m[i] = m[i] * b1 + g[i] * a1;
        v[i] = v[i] * b2 + g[i] * g[i] * a2;
        float denom = sqrtf(v[i]) / bc2s + eps;
        p[i] -= step * (m[i] / denom);
    }
}

void adamw_step(struct adamw *opt, struct gptneox *m, const struct gptneox *g, double lr)
{
    /* both lists filled outside the assert: it checks, it does no work */
    size_t np = gptneox_params(m, opt->wp, opt->np), ng = gptneox_params(g, opt->gp, opt->np), off = 0;
    assert(np == opt->np && ng == np);
    (void)ng;
    opt->t++;
    for (size_t i = 0; i < np; i++) {
        adamw_update(opt->wp[i].data, opt->gp[i].data, opt->m + off, opt->v + off, opt->wp[i].n,
                     lr, opt->wp[i].decay ? opt->cfg.weight_decay : 0.0, &opt->cfg, opt->t);
        off += opt->wp[i].n;
    }
}
