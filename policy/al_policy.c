/* al_policy: evaluation of `policy.rules` for one request. See al_policy.h.
 *
 * Rules are walked in file order; each is scored by how far it got (principal,
 * target, method, path, tool). The first full match allows; otherwise the rule with
 * the highest score (first on ties) is the "nearest" and what it missed is reported.
 * Paths are compared segment by segment on the normalised path, so the pattern
 * "/v1/<star>" never matches "/v10/x" and "/files/<star><star>" never matches
 * "/filesystem". */
#include "al_policy.h"

#include <stdio.h>
#include <string.h>

int al_policy_active(const al_table *t)
{
    return t && t->policy.rule_count > 0;
}

static int str_in(const char *s, char *const *list, size_t n)
{
    for (size_t i = 0; s && i < n; i++)
        if (!strcmp(s, list[i]))
            return 1;
    return 0;
}

/* Next segment of [*p, end): its start and length; advances *p past it and its '/'.
 * "/a/" has segments "a" and ""; "/" has one empty segment. */
static int next_seg(const char **p, const char *end, const char **seg, size_t *len)
{
    if (*p > end)
        return 0;
    const char *slash = memchr(*p, '/', (size_t)(end - *p));
    *seg = *p;
    *len = (size_t)((slash ? slash : end) - *p);
    *p = slash ? slash + 1 : end + 1;
    return 1;
}

int al_policy_path_match(const char *pat, const char *path)
{
    if (!pat || !path || path[0] != '/' || pat[0] != '/')
        return 0;
    const char *pe = path + strcspn(path, "?#"), *qe = pat + strlen(pat);
    const char *p = path + 1, *q = pat + 1;
    const char *ps, *qs;
    size_t pl, ql;
    while (next_seg(&q, qe, &qs, &ql)) {
        if (ql == 2 && qs[0] == '*' && qs[1] == '*')
            return 1; /* "**" (always last): any number of segments, none included */
        if (!next_seg(&p, pe, &ps, &pl))
            return 0;
        if (ql == 1 && qs[0] == '*' ? pl == 0 : (ql != pl || memcmp(qs, ps, pl) != 0))
            return 0; /* "*" is exactly one non-empty segment */
    }
    return !next_seg(&p, pe, &ps, &pl);
}

static int principal_applies(const al_policy_rule *r, const al_principal *p)
{
    if (!r->subject_count && !r->client_count && !r->claim_count)
        return 1;
    if (!p)
        return 0;
    if (r->subject_count && !str_in(p->sub, r->subjects, r->subject_count))
        return 0;
    if (r->client_count && !str_in(p->client_id, r->clients, r->client_count))
        return 0;
    for (size_t i = 0; i < r->claim_count; i++)
        if (!al_principal_claim_has(p, r->claims[i].key, r->claims[i].value))
            return 0;
    return 1;
}

/* How far rule r gets for request q: 0 = principal, ... 5 = all (allowed). */
static int score(const al_policy_rule *r, const al_policy_request *q)
{
    if (!principal_applies(r, q->principal))
        return 0;
    if (!str_in("*", r->targets, r->target_count) &&
        (!q->target || !str_in(q->target, r->targets, r->target_count)))
        return 1;
    if (q->method && r->method_count && !str_in(q->method, r->methods, r->method_count))
        return 2;
    if (q->path && r->path_count) {
        int ok = 0;
        for (size_t i = 0; !ok && i < r->path_count; i++)
            ok = al_policy_path_match(r->paths[i], q->path);
        if (!ok)
            return 3;
    }
    if (q->mcp_tool && r->mcp_tool_count && !str_in(q->mcp_tool, r->mcp_tools, r->mcp_tool_count))
        return 4;
    return 5;
}

void al_policy_decide(const al_table *t, const al_policy_request *q, al_policy_decision *d)
{
    d->allow = 1;
    d->rule = NULL;
    d->missing = AL_POLICY_MISS_NONE;
    if (!al_policy_active(t))
        return;
    int best = -1;
    for (size_t i = 0; i < t->policy.rule_count; i++) {
        const al_policy_rule *r = &t->policy.rules[i];
        int s = score(r, q);
        if (s == 5) {
            d->rule = r;
            return;
        }
        if (s > best && s > 0) {
            best = s;
            d->rule = r;
        }
    }
    static const enum al_policy_missing by_score[] = {AL_POLICY_MISS_PRINCIPAL,
                                                      AL_POLICY_MISS_TARGET, AL_POLICY_MISS_METHOD,
                                                      AL_POLICY_MISS_PATH, AL_POLICY_MISS_TOOL};
    d->allow = 0;
    d->missing = by_score[best < 0 ? 0 : best];
}

const char *al_policy_missing_name(enum al_policy_missing m)
{
    switch (m) {
    case AL_POLICY_MISS_NONE:
        return "none";
    case AL_POLICY_MISS_PRINCIPAL:
        return "principal";
    case AL_POLICY_MISS_TARGET:
        return "target";
    case AL_POLICY_MISS_METHOD:
        return "method";
    case AL_POLICY_MISS_PATH:
        return "path";
    case AL_POLICY_MISS_TOOL:
        return "mcp_tool";
    }
    return "?";
}

const char *al_policy_rule_label(const al_table *t, const al_policy_rule *r, char *buf, size_t n)
{
    if (!r)
        snprintf(buf, n, "none");
    else if (r->name)
        snprintf(buf, n, "%s (%s:%d)", r->name, t && t->path ? t->path : "?", r->line);
    else
        snprintf(buf, n, "%s:%d", t && t->path ? t->path : "?", r->line);
    return buf;
}

const char *al_principal_label(const al_principal *p, char *buf, size_t n)
{
    if (!p)
        snprintf(buf, n, "anonymous");
    else if (p->client_id && (!p->sub || !strcmp(p->sub, p->client_id)))
        snprintf(buf, n, "client '%.100s'", p->client_id);
    else if (p->client_id)
        snprintf(buf, n, "subject '%.100s' (client '%.100s')", p->sub, p->client_id);
    else
        snprintf(buf, n, "subject '%.100s'", p->sub ? p->sub : "?");
    return buf;
}

const char *al_policy_explain(const al_table *t, const al_policy_request *q,
                              const al_policy_decision *d, char *buf, size_t n)
{
    char who[256], rule[512];
    al_principal_label(q->principal, who, sizeof who);
    al_policy_rule_label(t, d->rule, rule, sizeof rule);
    const char *tg = q->target ? q->target : "(none)";
    if (d->allow && !d->rule) {
        snprintf(buf, n, "allowed: the table has no policy rules");
        return buf;
    }
    if (d->allow) {
        snprintf(buf, n, "%s may use target '%.63s': allowed by rule %s", who, tg, rule);
        return buf;
    }
    switch (d->missing) {
    case AL_POLICY_MISS_PRINCIPAL:
    case AL_POLICY_MISS_NONE:
        snprintf(buf, n, "%s may not use target '%.63s': no policy rule applies to it", who, tg);
        break;
    case AL_POLICY_MISS_TARGET:
        snprintf(buf, n, "%s may not use target '%.63s': no policy rule gives it this target", who,
                 tg);
        break;
    case AL_POLICY_MISS_METHOD:
        snprintf(buf, n,
                 "%s may not use method %.32s on target '%.63s' (nearest rule %s allows other "
                 "methods)",
                 who, q->method ? q->method : "?", tg, rule);
        break;
    case AL_POLICY_MISS_PATH:
        snprintf(buf, n,
                 "%s may not use path '%.200s' of target '%.63s' (nearest rule %s allows other "
                 "paths)",
                 who, q->path ? q->path : "/", tg, rule);
        break;
    case AL_POLICY_MISS_TOOL:
        snprintf(buf, n,
                 "%s may not call MCP tool '%.100s' of target '%.63s' (nearest rule %s allows "
                 "other tools)",
                 who, q->mcp_tool ? q->mcp_tool : "?", tg, rule);
        break;
    }
    return buf;
}
