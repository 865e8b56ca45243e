/* ckpt.c: model files in and out (see ckpt.h): our checkpoints (safetensors
 * with named views), Hugging Face GPT-2 directories, llm.c GPT-2 files.
 *
 * Every reader checks the whole file against what the model expects before
 * it is used; every error names the file and, where there is one, the tensor. */
#include "ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/fsutil.h"
#include "../data/json.h"
#include "ckpt_crc.h"
#include "safetensors.h"

#define CKPT_FORMAT "anatomy-ckpt"
#define CKPT_VERSION "1"
#define MOM_M "adamw.m."
#define MOM_V "adamw.v."

/* ---- metadata ---- */

void ckpt_meta_set(ckpt_meta *md, const char *key, const char *fmt, ...)
{
    char *v = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = vasprintf(&v, fmt, ap);
    va_end(ap);
    if (len < 0) {
        md->failed = 1;
        return;
    }
    int i = 0;
    while (i < md->n && strcmp(md->key[i], key))
        i++;
    if (i < md->n) {
        free(md->val[i]);
        md->val[i] = v;
        return;
    }
    if (md->n == md->cap) {
        int cap = md->cap ? 2 * md->cap : 32;
        char **k = realloc(md->key, (size_t)cap * sizeof *k);
        if (k)
            md->key = k;
        char **w = k ? realloc(md->val, (size_t)cap * sizeof *w) : NULL;
        if (w)
            md->val = w;
        if (!k || !w) {
            free(v);
            md->failed = 1;
            return;
        }
        md->cap = cap;
    }
    if (!(md->key[i] = strdup(key))) {
        free(v);
        md->failed = 1;
        return;
    }
    md->val[i] = v;
    md->n++;
}

void ckpt_meta_free(ckpt_meta *md)
{
    for (int i = 0; i < md->n; i++) {
        free(md->key[i]);
        free(md->val[i]);
    }
    free(md->key);
    free(md->val);
    *md = (ckpt_meta){ 0 };
}

const char *ckpt_meta_get(const ckpt_meta *md, const char *key)
{
    for (int i = 0; i < md->n; i++)
        if (!strcmp(md->key[i], key))
            return md->val[i];
    return NULL;
}

/* ---- our checkpoints ---- */

/* Checks a view table against a buffer of `total` elements. */
static int check_views(const char *path, const param_view *views, int nviews, size_t total,
                       char *err)
{
    for (int i = 0; i < nviews; i++) {
        const param_view *v = &views[i];
        size_t count = 1;
        if (v->ndim < 1 || v->ndim > MODEL_MAXDIM)
            return errf(err, "%s: view '%s' has bad rank %d", path, v->name, v->ndim);
        for (int k = 0; k < v->ndim; k++)
            count *= (size_t)(v->shape[k] < 0 ? 0 : v->shape[k]);
        if (count != v->count || v->offset > total || v->count > total - v->offset)
            return errf(err, "%s: view '%s' does not fit the parameter buffer", path, v->name);
    }
    return 0;
}

static void view_shape(const param_view *v, int64_t *shape)
{
    for (int k = 0; k < v->ndim; k++)
        shape[k] = v->shape[k];
}

int ckpt_save(const char *path, const param_view *views, int nviews, size_t total,
              const float *params, const float *mom_m, const float *mom_v,
              const ckpt_meta *md, char *err)
{
    return ckpt_save_extra(path, views, nviews, total, params, mom_m, mom_v, md, NULL, NULL, 0,
                           err);
}

int ckpt_save_extra(const char *path, const param_view *views, int nviews, size_t total,
                    const float *params, const float *mom_m, const float *mom_v,
                    const ckpt_meta *md, const ckpt_state *state, const ckpt_extra *extra,
                    int nextra, char *err)
{
    int nstate = state ? state->nviews : 0;
    if (!mom_m != !mom_v)
        return errf(err, "%s: both AdamW moments or neither must be saved", path);
    if (check_views(path, views, nviews, total, err) ||
        (nstate && check_views(path, state->views, nstate, state->total, err)))
        return -1;
    for (int i = 0; i < nextra; i++)
        if (strncmp(extra[i].name, CKPT_TRAIN_PREFIX, strlen(CKPT_TRAIN_PREFIX)) ||
            extra[i].ndim < 1 || extra[i].ndim > MODEL_MAXDIM)
            return errf(err, "%s: bad training-state tensor '%s'", path, extra[i].name);
    if (md && md->failed)
        return errf(err, "%s: out of memory for the metadata", path);
    int per = mom_m ? 3 : 1, nt = nviews * per, nmeta = 0, rc;
    st_out_tensor *t = calloc((size_t)nt + (size_t)nstate + (size_t)nextra + 1, sizeof(*t));
    char (*names)[80] = calloc((size_t)nt + 1, sizeof(*names));
    const char **meta = calloc(2 * ((size_t)(md ? md->n : 0) + 3), sizeof(*meta));
    char *crc = NULL;
    if (!t || !names || !meta) {
        rc = errf(err, "%s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < nviews; i++) {
        const float *src[3] = { params, mom_m, mom_v };
        const char *pre[3] = { "", MOM_M, MOM_V };
        for (int j = 0; j < per; j++) {
            /* Parameters first, then all m, then all v: a weights-only reader
             * finds the parameters at the front of the file. */
            st_out_tensor *o = &t[j * nviews + i];
            snprintf(names[j * nviews + i], sizeof(names[0]), "%s%s", pre[j], views[i].name);
            o->name = names[j * nviews + i];
            o->dtype = ST_F32;
            o->ndim = views[i].ndim;
            view_shape(&views[i], o->shape);
            o->data = src[j] + views[i].offset;
        }
    }
    for (int i = 0; i < nstate; i++) { /* after the parameters' moments: not trained */
        const param_view *v = &state->views[i];
        st_out_tensor *o = &t[nt++];
        o->name = v->name;
        o->dtype = ST_F32;
        o->ndim = v->ndim;
        view_shape(v, o->shape);
        o->data = state->data + v->offset;
    }
    for (int i = 0; i < nextra; i++) {
        st_out_tensor *o = &t[nt++];
        o->name = extra[i].name;
        o->dtype = ST_F32;
        o->ndim = extra[i].ndim;
        for (int k = 0; k < extra[i].ndim; k++)
            o->shape[k] = extra[i].shape[k];
        o->data = extra[i].data;
    }
    meta[2 * nmeta] = "format";
    meta[2 * nmeta++ + 1] = CKPT_FORMAT;
    meta[2 * nmeta] = "version";
    meta[2 * nmeta++ + 1] = CKPT_VERSION;
    for (int i = 0; md && i < md->n; i++) {
        int dup = !strcmp(md->key[i], "format") || !strcmp(md->key[i], "version") ||
                  !strcmp(md->key[i], CKPT_CRC_KEY);
        for (int j = 0; j < i && !dup; j++)
            dup = !strcmp(md->key[i], md->key[j]);
        if (dup)
            continue;
        meta[2 * nmeta] = md->key[i];
        meta[2 * nmeta++ + 1] = md->val[i];
    }
    /* each tensor's checksum, verified by every load (ckpt_crc.h) */
    crc = ckpt_crc_value(t, nt);
    if (!crc) {
        rc = errf(err, "%s: out of memory", path);
        goto out;
    }
    meta[2 * nmeta] = CKPT_CRC_KEY;
    meta[2 * nmeta++ + 1] = crc;
    rc = st_write(path, t, nt, meta, nmeta, err);
out:
    free(crc);
    free(t);
    free(names);
    free(meta);
    return rc;
}

/* Opens a safetensors file and checks that it is one of our checkpoints. */
static st_file *ckpt_open(const char *path, char *err)
{
    st_file *f = st_open(path, err);
    if (!f)
        return NULL;
    const char *fmt = st_meta(f, "format"), *ver = st_meta(f, "version");
    if (!fmt || strcmp(fmt, CKPT_FORMAT)) {
        errf(err, "%s: not an anatomy checkpoint (metadata format is '%s', expected '%s')",
             path, fmt ? fmt : "(none)", CKPT_FORMAT);
        st_close(f);
        return NULL;
    }
    if (!ver || strcmp(ver, CKPT_VERSION)) {
        errf(err, "%s: checkpoint version '%s' is not supported (expected %s)", path,
             ver ? ver : "(none)", CKPT_VERSION);
        st_close(f);
        return NULL;
    }
    return f;
}

int ckpt_read_meta(const char *path, ckpt_meta *md, char *err)
{
    st_file *f = ckpt_open(path, err);
    if (!f)
        return -1;
    int rc = 0, n = st_meta_count(f);
    *md = (ckpt_meta){ 0 };
    for (int i = 0; i < n && !rc; i++) {
        const char *k, *v;
        st_meta_at(f, i, &k, &v);
        if (!strcmp(k, CKPT_CRC_KEY))
            continue; /* for ckpt_load to verify, not a setting */
        if (ckpt_meta_get(md, k))
            rc = errf(err, "%s: duplicate metadata entry '%.80s'", path, k);
        else
            ckpt_meta_set(md, k, "%s", v);
        if (!rc && md->failed)
            rc = errf(err, "%s: out of memory for the metadata", path);
    }
    st_close(f);
    if (rc)
        ckpt_meta_free(md);
    return rc;
}

int ckpt_load_extra(const char *path, const char *name, float **data, int64_t *shape,
                    int *ndim, char *err)
{
    *data = NULL;
    *ndim = 0;
    st_file *f = ckpt_open(path, err);
    if (!f)
        return -1;
    int rc = 0;
    const st_tensor *t = st_find(f, name);
    if (t && (t->dtype != ST_F32 || t->ndim < 1 || t->ndim > MODEL_MAXDIM))
        rc = errf(err, "%s: tensor '%s' is not an F32 tensor of 1 to %d dimensions", path,
                  name, MODEL_MAXDIM);
    else if (t && !(*data = malloc(t->numel ? t->numel * sizeof(float) : 1)))
        rc = errf(err, "%s: out of memory for tensor '%s'", path, name);
    else if (t) {
        memcpy(*data, st_data(f, t), t->numel * sizeof(float));
        *ndim = t->ndim;
        for (int k = 0; k < t->ndim; k++)
            shape[k] = t->shape[k];
    }
    st_close(f);
    return rc;
}

/* Checks that tensor t (named name) is F32 with exactly the view's shape. */
static int check_tensor(const st_file *f, const char *name, const st_tensor *t,
                        const param_view *v, char *err)
{
    const char *path = st_path(f);
    if (!t)
        return errf(err, "%s: tensor '%s' missing", path, name);
    if (t->dtype != ST_F32)
        return errf(err, "%s: tensor '%s' has dtype %s, expected F32", path, name,
                    st_dtype_name(t->dtype));
    int same = t->ndim == v->ndim;
    for (int k = 0; same && k < v->ndim; k++)
        same = t->shape[k] == v->shape[k];
    if (!same) {
        char a[160], b[160];
        int64_t vs[MODEL_MAXDIM];
        view_shape(v, vs);
        return errf(err, "%s: tensor '%s' has shape %s, the model expects %s", path, name,
                    st_shape_str(t->shape, t->ndim, a, sizeof(a)),
                    st_shape_str(vs, v->ndim, b, sizeof(b)));
    }
    return 0;
}

/* The view a checkpoint tensor name refers to (moment prefixes stripped). */
static const param_view *view_of(const char *name, const param_view *views, int nviews)
{
    if (!strncmp(name, MOM_M, strlen(MOM_M)))
        name += strlen(MOM_M);
    else if (!strncmp(name, MOM_V, strlen(MOM_V)))
        name += strlen(MOM_V);
    for (int i = 0; i < nviews; i++)
        if (!strcmp(views[i].name, name))
            return &views[i];
    return NULL;
}

int ckpt_load(const char *path, const param_view *views, int nviews, size_t total,
              float *params, float *mom_m, float *mom_v, int *has_moments, char *err)
{
    return ckpt_load_model(path, views, nviews, total, params, mom_m, mom_v, has_moments, NULL,
                           err);
}

int ckpt_load_model(const char *path, const param_view *views, int nviews, size_t total,
                    float *params, float *mom_m, float *mom_v, int *has_moments,
                    const ckpt_state *state, char *err)
{
    int nstate = state ? state->nviews : 0;
    if (has_moments)
        *has_moments = 0;
    if (check_views(path, views, nviews, total, err) ||
        (nstate && check_views(path, state->views, nstate, state->total, err)))
        return -1;
    st_file *f = ckpt_open(path, err);
    if (!f)
        return -1;
    int rc = 0, nmom = 0;
    char name[80];
    /* A tensor the model does not have means another model wrote the file. */
    for (int i = 0; i < st_count(f) && !rc; i++) {
        const char *n = st_at(f, i)->name;
        if (!strncmp(n, CKPT_TRAIN_PREFIX, strlen(CKPT_TRAIN_PREFIX)))
            continue; /* training state, for train_restore */
        if (!view_of(n, views, nviews) && !(nstate && view_of(n, state->views, nstate)))
            rc = errf(err, "%s: tensor '%s' is not part of this model", path, n);
        nmom += !strncmp(n, MOM_M, strlen(MOM_M)) || !strncmp(n, MOM_V, strlen(MOM_V));
    }
    for (int i = 0; i < nviews && !rc; i++) {
        const st_tensor *t = st_find(f, views[i].name);
        rc = check_tensor(f, views[i].name, t, &views[i], err);
        if (!rc)
            memcpy(params + views[i].offset, st_data(f, t), views[i].count * sizeof(float));
    }
    for (int i = 0; i < nstate && !rc; i++) {
        const param_view *v = &state->views[i];
        const st_tensor *t = st_find(f, v->name);
        rc = check_tensor(f, v->name, t, v, err);
        if (!rc)
            memcpy(state->data + v->offset, st_data(f, t), v->count * sizeof(float));
    }
    if (!rc && mom_m && mom_v && nmom) {
        for (int i = 0; i < nviews && !rc; i++) {
            float *dst[2] = { mom_m, mom_v };
            const char *pre[2] = { MOM_M, MOM_V };
            for (int j = 0; j < 2 && !rc; j++) {
                snprintf(name, sizeof(name), "%s%s", pre[j], views[i].name);
                const st_tensor *t = st_find(f, name);
                rc = check_tensor(f, name, t, &views[i], err);
                if (!rc)
                    memcpy(dst[j] + views[i].offset, st_data(f, t),
                           views[i].count * sizeof(float));
            }
        }
        if (!rc && has_moments)
            *has_moments = 1;
    }
    /* after the layout checks, whose errors say more than a checksum's */
    if (!rc)
        rc = ckpt_crc_verify(f, err);
    st_close(f);
    return rc;
}

/* ---- Hugging Face GPT-2 ---- */

static int file_exists(const char *dir, const char *file)
{
    char *p = fs_join(dir, file);
    int ok = p && access(p, F_OK) == 0;
    free(p);
    return ok;
}

/* HF stores the matmul weights of GPT-2 (Conv1D) as [in, out]; every 2-D
 * parameter but the two embeddings is one of them. */
static int is_conv1d(const param_view *v)
{
    return v->ndim == 2 && strcmp(v->name, "wte.weight") && strcmp(v->name, "wpe.weight");
}

/* A required positive int config entry. */
static int cfg_int(const char *path, const json_value *root, const char *key, int *out,
                   char *err)
{
    int64_t v;
    if (json_int(json_get(root, key), 1, INT_MAX, &v))
        return errf(err, "%s: '%s' missing or not a positive integer", path, key);
    *out = (int)v;
    return 0;
}

/* Rejects config entries that change GPT-2's math away from ours. */
static int cfg_variant(const char *path, const json_value *root, const gpt2_config *c,
                       char *err)
{
    const json_value *v;
    const char *s;
    int b;
    if ((v = json_get(root, "model_type")) && (!(s = json_str(v)) || strcmp(s, "gpt2")))
        return errf(err, "%s: model_type is not \"gpt2\"", path);
    if ((v = json_get(root, "activation_function")) &&
        (!(s = json_str(v)) || (strcmp(s, "gelu_new") && strcmp(s, "gelu_pytorch_tanh"))))
        return errf(err, "%s: activation_function '%s' not supported (only gelu_new)", path,
                    json_str(v) ? json_str(v) : "?");
    int64_t inner;
    if ((v = json_get(root, "n_inner")) && json_typeof(v) != JSON_NULL &&
        (json_int(v, 1, INT64_MAX, &inner) || inner != 4 * (int64_t)c->C))
        return errf(err, "%s: n_inner must be null or 4 * n_embd", path);
    double eps;
    if ((v = json_get(root, "layer_norm_epsilon")) &&
        (json_num(v, &eps) || fabs(eps - 1e-5) > 1e-12))
        return errf(err, "%s: layer_norm_epsilon must be 1e-5", path);
    if ((v = json_get(root, "tie_word_embeddings")) && (json_bool(v, &b) || !b))
        return errf(err, "%s: untied word embeddings are not supported", path);
    if ((v = json_get(root, "scale_attn_weights")) && (json_bool(v, &b) || !b))
        return errf(err, "%s: scale_attn_weights must be true", path);
    if ((v = json_get(root, "scale_attn_by_inverse_layer_idx")) && (json_bool(v, &b) || b))
        return errf(err, "%s: scale_attn_by_inverse_layer_idx is not supported", path);
    if ((v = json_get(root, "add_cross_attention")) && (json_bool(v, &b) || b))
        return errf(err, "%s: add_cross_attention is not supported", path);
    return 0;
}

/* Reads config.json into a validated config. */
static int hf_read_config(const char *dir, gpt2_config *c, char *err)
{
    char *path = fs_join(dir, "config.json");
    if (!path)
        return errf(err, "%s: out of memory", dir);
    json_doc *doc = json_parse_file(path, 1 << 20, err);
    int rc = doc ? 0 : -1;
    const json_value *root = doc ? json_root(doc) : NULL;
    if (!rc && json_typeof(root) != JSON_OBJECT)
        rc = errf(err, "%s: not a JSON object", path);
    if (!rc)
        rc = cfg_int(path, root, "vocab_size", &c->V, err) ||
             cfg_int(path, root, json_get(root, "n_positions") ? "n_positions" : "n_ctx",
                     &c->maxT, err) ||
             cfg_int(path, root, "n_embd", &c->C, err) ||
             cfg_int(path, root, "n_layer", &c->L, err) ||
             cfg_int(path, root, "n_head", &c->NH, err) ? -1 : 0;
    if (!rc && c->C % c->NH)
        rc = errf(err, "%s: n_head (%d) does not divide n_embd (%d)", path, c->NH, c->C);
    char sub[ERRBUF];
    if (!rc && gpt2_check_config(c, sub))
        rc = errf(err, "%s: %s", path, sub);
    if (!rc)
        rc = cfg_variant(path, root, c, err);
    json_free(doc);
    free(path);
    return rc;
}

/* Names HF uses for buffers and the tied head: present in files, not parameters. */
static int hf_ignored(const char *n)
{
    int l, end = 0;
    if (!strcmp(n, "lm_head.weight"))
        return 1;
    if (sscanf(n, "h.%d.attn.bias%n", &l, &end) == 1 && end && !n[end])
        return 1;
    end = 0;
    return sscanf(n, "h.%d.attn.masked_bias%n", &l, &end) == 1 && end && !n[end];
}

/* Finds `name` with or without the "transformer." prefix (not both). */
static int hf_find(const st_file *f, const char *name, const st_tensor **out, char *err)
{
    char pre[96];
    snprintf(pre, sizeof(pre), "transformer.%s", name);
    const st_tensor *a = st_find(f, name), *b = st_find(f, pre);
    if (a && b)
        return errf(err, "%s: both '%s' and '%s' present", st_path(f), name, pre);
    *out = a ? a : b;
    return 0;
}

/* An untied head would make our (tied) model compute something else. */
static int hf_check_head(const st_file *f, const st_tensor *wte, const float *ours,
                         const gpt2_config *c, char *err)
{
    const st_tensor *h = st_find(f, "lm_head.weight");
    if (!h || !wte)
        return 0;
    if (h->ndim != 2 || h->shape[0] != c->V || h->shape[1] != c->C)
        return errf(err, "%s: tensor 'lm_head.weight' has a shape unlike wte.weight", st_path(f));
    int same = 1;
    if (h->dtype == wte->dtype) {
        same = !memcmp(st_data(f, h), st_data(f, wte), h->end - h->begin);
    } else {
        float row[4096];
        size_t n = (size_t)c->V * c->C, es = st_dtype_size(h->dtype);
        for (size_t i = 0; i < n && same; i += 4096) {
            size_t m = n - i < 4096 ? n - i : 4096;
            if (st_convert_f32((const char *)st_data(f, h) + i * es, h->dtype, row, m))
                return errf(err, "%s: tensor 'lm_head.weight' is not a float tensor", st_path(f));
            same = !memcmp(row, ours + i, m * sizeof(float));
        }
    }
    if (!same)
        return errf(err, "%s: tensor 'lm_head.weight' differs from wte.weight "
                    "(untied output embeddings are not supported)", st_path(f));
    return 0;
}

/* Reads every view of the layout from an opened model.safetensors. */
static int hf_read_tensors(const st_file *f, const gpt2_config *c, const param_view *views,
                           int nviews, float *p, char *err)
{
    const char *path = st_path(f);
    const st_tensor *wte = NULL;
    for (int i = 0; i < nviews; i++) {
        const param_view *v = &views[i];
        const st_tensor *t = NULL;
        if (hf_find(f, v->name, &t, err))
            return -1;
        if (!t)
            return errf(err, "%s: tensor '%s' missing", path, v->name);
        int64_t want[2] = { v->shape[0], v->ndim > 1 ? v->shape[1] : 0 };
        if (!strcmp(v->name, "wte.weight")) {
            want[0] = c->V;
            wte = t;
        }
        int tr = is_conv1d(v);
        if (tr) {
            want[0] = v->shape[1];
            want[1] = v->shape[0];
        }
        if (t->ndim != v->ndim || t->shape[0] != want[0] || (v->ndim > 1 && t->shape[1] != want[1])) {
            char a[160], b[160];
            return errf(err, "%s: tensor '%s' has shape %s, expected %s", path, t->name,
                        st_shape_str(t->shape, t->ndim, a, sizeof(a)),
                        st_shape_str(want, v->ndim, b, sizeof(b)));
        }
        if (st_read_f32(f, t, p + v->offset, tr, err))
            return -1;
    }
    for (int i = 0; i < st_count(f); i++) {
        const char *n = st_at(f, i)->name;
        const char *bare = strncmp(n, "transformer.", 12) ? n : n + 12;
        if (hf_ignored(bare))
            continue;
        int known = 0;
        for (int j = 0; j < nviews && !known; j++)
            known = !strcmp(views[j].name, bare);
        if (!known)
            return errf(err, "%s: unexpected tensor '%s' (not in a GPT-2 of this config)", path, n);
    }
    return hf_check_head(f, wte, p, c, err);
}

int hf_gpt2_import(const char *dir, gpt2_config *cfg, float **params, char *err)
{
    *params = NULL;
    cfg->nobias = 0; /* Hugging Face's GPT-2 always has biases */
    if (hf_read_config(dir, cfg, err))
        return -1;
    if (!file_exists(dir, "model.safetensors")) {
        if (file_exists(dir, "model.safetensors.index.json"))
            return errf(err, "%s: sharded safetensors (model.safetensors.index.json) are not "
                        "supported; save the model as one model.safetensors", dir);
        if (file_exists(dir, "pytorch_model.bin"))
            return errf(err, "%s: only model.safetensors is supported, not pytorch_model.bin "
                        "(convert it with safetensors first)", dir);
        return errf(err, "%s: model.safetensors missing", dir);
    }
    char *path = fs_join(dir, "model.safetensors");
    param_view *views = NULL;
    int nviews = 0, rc = -1;
    st_file *f = path ? st_open(path, err) : NULL;
    if (!path)
        errf(err, "%s: out of memory", dir);
    if (!f)
        goto out;
    size_t total = gpt2_layout(cfg, &views, &nviews);
    float *p = views ? calloc(total, sizeof(float)) : NULL;
    if (!p) {
        errf(err, "%s: out of memory", path);
        goto out;
    }
    rc = hf_read_tensors(f, cfg, views, nviews, p, err);
    if (rc)
        free(p);
    else
        *params = p;
out:
    st_close(f);
    free(views);
    free(path);
    return rc;
}

static int hf_write_config(const char *dir, const gpt2_config *c, char *err)
{
    char *path = fs_join(dir, "config.json");
    if (!path)
        return errf(err, "%s: out of memory", dir);
    int eos = c->V > 50256 ? 50256 : c->V - 1;
    json_out o = { 0 };
    json_out_fmt(&o,
        "{\n"
        "  \"model_type\": \"gpt2\",\n"
        "  \"architectures\": [\"GPT2LMHeadModel\"],\n"
        "  \"vocab_size\": %d,\n  \"n_positions\": %d,\n  \"n_ctx\": %d,\n"
        "  \"n_embd\": %d,\n  \"n_layer\": %d,\n  \"n_head\": %d,\n"
        "  \"n_inner\": null,\n  \"activation_function\": \"gelu_new\",\n"
        "  \"layer_norm_epsilon\": 1e-05,\n  \"initializer_range\": 0.02,\n"
        "  \"resid_pdrop\": 0.0,\n  \"embd_pdrop\": 0.0,\n  \"attn_pdrop\": 0.0,\n"
        "  \"scale_attn_weights\": true,\n  \"use_cache\": true,\n"
        "  \"tie_word_embeddings\": true,\n"
        "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n"
        "  \"torch_dtype\": \"float32\"\n"
        "}\n",
        c->V, c->maxT, c->maxT, c->C, c->L, c->NH, eos, eos);
    st_atomic a;
    int rc = o.failed ? errf(err, "%s: out of memory", path) : 0;
    if (!rc)
        rc = st_atomic_open(&a, path, err);
    if (!rc)
        rc = st_atomic_write(&a, o.buf, o.len, err);
    if (!rc)
        rc = st_atomic_commit(&a, err);
    json_out_free(&o);
    free(path);
    return rc;
}

int hf_gpt2_export(const char *dir, const gpt2_config *cfg, const float *params, char *err)
{
    char sub[ERRBUF];
    if (gpt2_check_config(cfg, sub))
        return errf(err, "%s: %s", dir, sub);
    if (cfg->nobias) /* Hugging Face's GPT-2 has every bias: none to leave out */
        return errf(err, "%s: a model without biases (--no-bias) has no Hugging Face GPT-2 "
                         "form", dir);
    if (st_mkdirs(dir, err))
        return -1;
    param_view *views = NULL;
    int nviews = 0, rc = -1;
    gpt2_layout(cfg, &views, &nviews);
    char *path = fs_join(dir, "model.safetensors");
    st_out_tensor *t = views ? calloc((size_t)nviews, sizeof(*t)) : NULL;
    if (!t || !path) {
        errf(err, "%s: out of memory", dir);
        goto out;
    }
    for (int i = 0; i < nviews; i++) {
        const param_view *v = &views[i];
        t[i].name = v->name;
        t[i].dtype = ST_F32;
        t[i].ndim = v->ndim;
        view_shape(v, t[i].shape);
        t[i].data = params + v->offset;
        if (!strcmp(v->name, "wte.weight"))
            t[i].shape[0] = cfg->V; /* the first V rows; padding is ours alone */
        if (is_conv1d(v)) {
            t[i].shape[0] = v->shape[1];
            t[i].shape[1] = v->shape[0];
            t[i].transpose = 1;
        }
    }
    static const char *const meta[2] = { "format", "pt" };
    rc = st_write(path, t, nviews, meta, 1, err);
    if (!rc)
        rc = hf_write_config(dir, cfg, err);
out:
    free(t);
    free(path);
    free(views);
    return rc;
}

/* ---- llm.c ---- */

#define LLMC_MAGIC 20240326
#define LLMC_HEADER 256

/* The 16 llm.c tensors in file order: our view name (per layer: the suffix
 * after "h.N.") and whether it is stacked across layers. */
static const struct { const char *name; int layered; } llmc_kinds[16] = {
    { "wte.weight", 0 }, { "wpe.weight", 0 },
    { "ln_1.weight", 1 }, { "ln_1.bias", 1 },
    { "attn.c_attn.weight", 1 }, { "attn.c_attn.bias", 1 },
    { "attn.c_proj.weight", 1 }, { "attn.c_proj.bias", 1 },
    { "ln_2.weight", 1 }, { "ln_2.bias", 1 },
    { "mlp.c_fc.weight", 1 }, { "mlp.c_fc.bias", 1 },
    { "mlp.c_proj.weight", 1 }, { "mlp.c_proj.bias", 1 },
    { "ln_f.weight", 0 }, { "ln_f.bias", 0 },
};

/* Element counts of the 16 tensors as llm.c computes them from its header. */
static void llmc_sizes(const gpt2_config *c, uint64_t Vp, uint64_t *sz)
{
    uint64_t C = (uint64_t)c->C, L = (uint64_t)c->L, T = (uint64_t)c->maxT;
    uint64_t s[16] = { Vp * C, T * C, L * C, L * C, L * 3 * C * C, L * 3 * C,
                       L * C * C, L * C, L * C, L * C, L * 4 * C * C, L * 4 * C,
                       L * C * 4 * C, L * C, C, C };
    memcpy(sz, s, sizeof(s));
}

static const param_view *find_view(const param_view *v, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(v[i].name, name))
            return &v[i];
    return NULL;
}

/* Copies the mapped llm.c tensors (after the header) into p laid out by views. */
static int llmc_copy(const char *path, const uint8_t *data, st_dtype dt, const gpt2_config *c,
                     const uint64_t *sz, const param_view *views, int nviews, float *p,
                     char *err)
{
    size_t es = st_dtype_size(dt);
    uint64_t off = 0;
    char name[96];
    for (int k = 0; k < 16; k++) {
        int nl = llmc_kinds[k].layered ? c->L : 1;
        uint64_t per = sz[k] / (uint64_t)nl;
        for (int l = 0; l < nl; l++) {
            if (llmc_kinds[k].layered)
                snprintf(name, sizeof(name), "h.%d.%s", l, llmc_kinds[k].name);
            else
                snprintf(name, sizeof(name), "%s", llmc_kinds[k].name);
            const param_view *v = find_view(views, nviews, name);
            /* wte: llm.c's Vp may differ from ours; the V real rows are what count. */
            uint64_t n = k == 0 ? (uint64_t)c->V * c->C : per;
            uint64_t want = k == 0 ? (uint64_t)gpt2_padded_vocab(c->V) * c->C : per;
            if (!v || v->count != want)
                return errf(err, "%s: tensor '%s' does not match the model's layout", path, name);
            st_convert_f32(data + (off + (uint64_t)l * per) * es, dt, p + v->offset, (size_t)n);
        }
        off += sz[k];
    }
    return 0;
}

/* Reads and checks the header; fills cfg, *Vp and *dt. */
static int llmc_header(const char *path, const int32_t *h, gpt2_config *c, int *Vp,
                       st_dtype *dt, char *err)
{
    if (h[0] != LLMC_MAGIC)
        return errf(err, "%s: bad magic %d (not an llm.c GPT-2 model file)", path, h[0]);
    if (h[1] != 3 && h[1] != 5)
        return errf(err, "%s: llm.c version %d not supported (3 = fp32, 5 = bf16)", path, h[1]);
    *dt = h[1] == 3 ? ST_F32 : ST_BF16;
    c->maxT = h[2];
    c->V = h[3];
    c->L = h[4];
    c->NH = h[5];
    c->C = h[6];
    *Vp = h[7];
    char sub[ERRBUF];
    if (gpt2_check_config(c, sub))
        return errf(err, "%s: %s", path, sub);
    if (*Vp < c->V)
        return errf(err, "%s: padded vocabulary %d smaller than vocabulary %d", path, *Vp, c->V);
    return 0;
}

int llmc_gpt2_import(const char *path, gpt2_config *cfg, float **params, char *err)
{
    *params = NULL;
    cfg->nobias = 0; /* llm.c's GPT-2 always has biases */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errf(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return errf(err, "%s: not a regular file", path);
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < LLMC_HEADER * 4) {
        close(fd);
        return errf(err, "%s: too short for an llm.c model file (%llu bytes)", path,
                    (unsigned long long)size);
    }
    void *map; /* read, not mapped: a file truncated meanwhile is an error, not SIGBUS */
    int rd = st_read_fd(fd, path, (size_t)size, &map, err);
    close(fd);
    if (rd)
        return -1;
    int32_t h[LLMC_HEADER];
    memcpy(h, map, sizeof(h));
    int Vp = 0, rc, nviews = 0;
    st_dtype dt = ST_F32;
    param_view *views = NULL;
    float *p = NULL;
    uint64_t sz[16], total = 0;
    if ((rc = llmc_header(path, h, cfg, &Vp, &dt, err)))
        goto out;
    llmc_sizes(cfg, (uint64_t)Vp, sz);
    for (int k = 0; k < 16; k++)
        total += sz[k];
    uint64_t want = LLMC_HEADER * 4 + total * st_dtype_size(dt);
    if (size != want) {
        rc = errf(err, "%s: %s: %llu bytes, the header implies %llu", path,
                  size < want ? "truncated" : "trailing data", (unsigned long long)size,
                  (unsigned long long)want);
        goto out;
    }
    size_t n = gpt2_layout(cfg, &views, &nviews);
    p = views ? calloc(n, sizeof(float)) : NULL;
    if (!p) {
        rc = errf(err, "%s: out of memory", path);
        goto out;
    }
    rc = llmc_copy(path, (const uint8_t *)map + LLMC_HEADER * 4, dt, cfg, sz, views, nviews,
                   p, err);
out:
    free(map);
    free(views);
    if (rc)
        free(p);
    else
        *params = p;
    return rc;
}
