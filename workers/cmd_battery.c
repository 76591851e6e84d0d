/* ckpt-worker battery: the registry of battery items, their versions and
 * the metrics each writes, as a table or (--json) as the document the
 * daemon loads into its `metrics` dictionary. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "common/args.h"
#include "common/log.h"
#include "workers/battery/battery.h"
#include "workers/cli.h"

static const char battery_usage[] =
    "usage: ckpt-worker battery [--json]\n"
    "\n"
    "Lists the battery items, their versions, what they need, and every metric\n"
    "each writes: name, unit, description and what layer/head/idx mean (an index\n"
    "without a meaning is always -1).  --json prints\n"
    "  {\"items\":[{\"name\",\"version\",\"needs\":[..],\"metrics\":[{\"name\",\"unit\",\n"
    "    \"description\",\"layer\",\"head\",\"idx\"}]}]}\n"
    "(\"depends_on\" when an item reads another's artifacts; \"default\": false for items\n"
    "too costly for ckptd add-run's default battery).\n";

static json_t *registry_json(void)
{
    json_t *items = json_array();
    for (size_t i = 0; items && i < battery_count(); i++) {
        const struct battery_item *it = battery_get(i);
        json_t *needs = json_array(), *metrics = json_array();
        for (int k = 0; needs && k < BATTERY_NEED_COUNT; k++)
            if (it->needs & BATTERY_NEEDS(k))
                json_array_append_new(needs, json_string(battery_need_name((enum battery_need)k)));
        for (size_t j = 0; metrics && j < it->nmetrics; j++) {
            const struct metric_def *md = &it->metrics[j];
            json_array_append_new(metrics, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "name",
                                                     md->name, "unit", md->unit, "description",
                                                     md->description, "layer", md->layer,
                                                     "head", md->head, "idx", md->idx));
        }
        /* json_pack's "o" takes the references, also when it fails */
        json_t *o = json_pack("{s:s, s:i, s:o, s:o}", "name", it->name, "version", it->version,
                              "needs", needs, "metrics", metrics);
        if (o && it->depends_on &&
            json_object_set_new(o, "depends_on", json_string(it->depends_on)) != 0) {
            json_decref(o);
            o = NULL;
        }
        if (o && it->opt_in && json_object_set_new(o, "opt_in", json_true()) != 0) {
            json_decref(o);
            o = NULL;
        }
        if (!o || json_array_append_new(items, o) != 0 ||
            json_array_size(metrics) != it->nmetrics) {
            json_decref(items);
            return NULL;
        }
    }
    return items ? json_pack("{s:o}", "items", items) : NULL;
}

/* One line per metric; the item columns only on its first metric, the
 * meanings of the indices on indented lines below. */
static void print_table(void)
{
    printf("%-10s %-7s %-12s %-16s %-14s %s\n", "ITEM", "VERSION", "NEEDS", "METRIC", "UNIT",
           "DESCRIPTION");
    for (size_t i = 0; i < battery_count(); i++) {
        const struct battery_item *it = battery_get(i);
        char needs[128] = "-";
        size_t o = 0;
        for (int k = 0; k < BATTERY_NEED_COUNT; k++)
            if (it->needs & BATTERY_NEEDS(k) && o < sizeof needs)
                o += (size_t)snprintf(needs + o, sizeof needs - o, "%s%s", o ? "," : "",
                                      battery_need_name((enum battery_need)k));
        for (size_t j = 0; j < it->nmetrics; j++) {
            const struct metric_def *md = &it->metrics[j];
            if (j == 0)
                printf("%-10s %-7d %-12s ", it->name, it->version, needs);
            else
                printf("%-10s %-7s %-12s ", "", "", "");
            printf("%-16s %-14s %s\n", md->name, md->unit, md->description);
            const char *names[3] = {"layer", "head", "idx"};
            const char *means[3] = {md->layer, md->head, md->idx};
            for (int k = 0; k < 3; k++)
                if (means[k][0])
                    printf("%-31s   %s: %s\n", "", names[k], means[k]);
        }
    }
}

int cmd_battery(int argc, char **argv)
{
    int as_json = 0;
    enum { O_HELP = 256, O_JSON };
    static const struct option opts[] = {
        {"help", no_argument, NULL, O_HELP},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == O_HELP) {
            fputs(battery_usage, stdout);
            return 0;
        } else if (k == O_JSON) {
            as_json = 1;
        } else {
            fprintf(stderr, "ckpt-worker battery: unexpected argument '%s'\n%s", c.word,
                    battery_usage);
            return EXIT_USAGE;
        }
    }
    struct err e;
    err_clear(&e);
    if (as_json) {
        json_t *doc = registry_json();
        int rc = !doc ? err_set(&e, ERR_NOMEM, NULL, "cannot build the registry JSON")
                 : json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0 ||
                         fputc('\n', stdout) == EOF
                     ? err_set(&e, ERR_IO, "stdout", "write failed")
                     : 0;
        json_decref(doc);
        if (rc < 0) {
            log_err("battery failed", &e);
            return EXIT_INPUT;
        }
    } else {
        print_table();
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        err_set(&e, ERR_IO, "stdout", "write failed");
        log_err("battery failed", &e);
        return EXIT_INPUT;
    }
    return 0;
}
