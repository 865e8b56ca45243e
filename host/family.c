/* family.c: the table of model families (host/family.h). Each family's
 * object is defined in its own file under host/models/; the references are
 * weak so that the table lists exactly the families linked in. */
#include "family.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/errbuf.h"

#define FAMILY(name) extern const model_family name __attribute__((weak));
FAMILY(gpt2_family)
FAMILY(bert_family)
FAMILY(vit_family)
FAMILY(ffnn_family)
FAMILY(rnn_family)
FAMILY(lstm_family)
FAMILY(patchts_family)
FAMILY(tsgpt_family)
#undef FAMILY

/* Weak references that were not linked in are NULL: the lookups below skip
 * them. The list is in --help order. */
static const model_family *const table_all[] = {
    &gpt2_family, &bert_family, &vit_family, &ffnn_family, &rnn_family,
    &lstm_family, &patchts_family, &tsgpt_family,
};

#define NFAM ((int)(sizeof table_all / sizeof table_all[0]))

static const model_family *family_at(int i)
{
    /* the address of an undefined weak object is NULL */
    const model_family *f = table_all[i];
    return f && f->name ? f : NULL;
}

const model_family *family_next(int *i)
{
    while (*i < NFAM) {
        const model_family *f = family_at((*i)++);
        if (f)
            return f;
    }
    return NULL;
}

const model_family *family_find(const char *name)
{
    int i = 0;
    const model_family *f;
    while ((f = family_next(&i)))
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

/* 1 when `name` is a word of the space-separated list. */
static int in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t w = strcspn(p, " ");
        if (w == n && strncmp(p, name, n) == 0)
            return 1;
        p += w;
        while (*p == ' ')
            p++;
    }
    return 0;
}

const model_family *family_of_preset(const char *preset)
{
    int i = 0;
    const model_family *f;
    while ((f = family_next(&i)))
        if (in_list(f->presets, preset))
            return f;
    return NULL;
}

int family_field_index(const model_family *fam, const char *key)
{
    for (int i = 0; i < fam->nfields; i++)
        if (strcmp(fam->fields[i].key, key) == 0)
            return i;
    return -1;
}

size_t family_state_layout(const model_family *fam, const int *v, param_view **views,
                           int *nviews)
{
    param_view *local = NULL;
    size_t n = 0;
    *nviews = 0;
    if (fam->state_layout)
        n = fam->state_layout(v, &local, nviews);
    if (views)
        *views = local;
    else
        free(local);
    return n;
}

const char *family_choice_name(const family_field *fd, int value, char *buf, size_t n)
{
    const char *p = fd->choices;
    for (int i = 0; p && *p; i++) {
        size_t len = strcspn(p, " ");
        if (i == value) {
            snprintf(buf, n, "%.*s", (int)len, p);
            return buf;
        }
        p += len + (p[len] == ' ');
    }
    return NULL;
}

int family_choice_index(const family_field *fd, const char *name)
{
    const char *p = fd->choices;
    for (int i = 0; p && *p; i++) {
        size_t len = strcspn(p, " ");
        if (strlen(name) == len && !strncmp(p, name, len))
            return i;
        p += len + (p[len] == ' ');
    }
    return -1;
}

const char *family_choice_list(const family_field *fd, char *buf, size_t n)
{
    snprintf(buf, n, "%s", fd->choices ? fd->choices : "");
    for (char *p = buf; *p; p++)
        if (*p == ' ')
            *p = '|';
    return buf;
}

int family_check(const model_config *c, char *err)
{
    const model_family *f = c->family;
    for (int i = 0; i < f->nfields; i++) {
        const family_field *fd = &f->fields[i];
        char name[32], list[128];
        if (fd->choices && !family_choice_name(fd, c->v[i], name, sizeof name))
            return errf(err, "%s%s: %d is not the index of one of %s", fd->option ? "--" : "",
                        fd->option ? fd->option : fd->key, c->v[i],
                        family_choice_list(fd, list, sizeof list));
        if (c->v[i] < fd->lo || c->v[i] > fd->hi)
            return errf(err, "%s%s: %d is out of range [%d, %d] (%s)",
                        fd->option ? "--" : "", fd->option ? fd->option : fd->key, c->v[i],
                        fd->lo, fd->hi, fd->help);
    }
    return f->check(c->v, err);
}

const char *family_all_presets(void)
{
    static char buf[1024];
    int i = 0;
    const model_family *f;
    if (*buf)
        return buf;
    while ((f = family_next(&i))) {
        size_t n = strlen(buf);
        snprintf(buf + n, sizeof buf - n, "%s%s", n ? " " : "", f->presets);
    }
    return buf;
}
