/* al_policy: the per-principal policy decision, an engine without I/O.
 *
 * The rules are compiled with the table (`policy.rules`, targets/al_schema.c rows,
 * checked by targets/al_table.c); this module answers one question for the data path
 * and for `airlock explain` alike: may this principal send this method to this path of
 * this target (and call this MCP tool)? When not, it names the nearest rule and what
 * that rule lacked, so a refusal says what to change without printing the policy.
 *
 * Semantics: no rules = everything allowed. Otherwise a request is allowed when one
 * rule (a) applies to the principal: each selector the rule has (subjects, clients,
 * claims) matches, and (b) names the target (or "*"), (c) the method (or has none),
 * (d) a path pattern matching the path (or has none), (e) for a `tools/call`, the
 * tool (or has none). The first allowing rule in file order decides. */
#ifndef AL_POLICY_H
#define AL_POLICY_H

#include "al_jwt.h"
#include "targets/al_table.h"

#include <stddef.h>

/* What the nearest rule lacked; al_policy_missing_name() is the stable code. */
enum al_policy_missing {
    AL_POLICY_MISS_NONE,      /* allowed */
    AL_POLICY_MISS_PRINCIPAL, /* "principal": no rule applies to this principal */
    AL_POLICY_MISS_TARGET,    /* "target" */
    AL_POLICY_MISS_METHOD,    /* "method" */
    AL_POLICY_MISS_PATH,      /* "path" */
    AL_POLICY_MISS_TOOL,      /* "mcp_tool" */
};

typedef struct al_policy_request {
    const al_principal *principal; /* NULL = anonymous (inbound.mode none) */
    const char *target; /* target name; NULL = no target (a passthrough CONNECT: only
                           rules naming "*" allow it) */
    const char *method; /* upper-case; NULL = not checked (CONNECT: the requests inside
                           the tunnel are decided one by one) */
    const char *path;   /* normalised, below the target's base; query ignored; NULL =
                           not checked (CONNECT) */
    const char *mcp_tool;          /* a tools/call's name; NULL when not a tools/call */
} al_policy_request;

typedef struct al_policy_decision {
    int allow;
    /* Allowed: the rule that allowed (NULL when the table has no rules). Denied: the
     * nearest rule (the one that got furthest), NULL when none applies. */
    const al_policy_rule *rule;
    enum al_policy_missing missing;
} al_policy_decision;

void al_policy_decide(const al_table *t, const al_policy_request *r, al_policy_decision *d);

/* 1 if the table has policy rules (so a decision can deny). */
int al_policy_active(const al_table *t);

/* 1 if `path` (query ignored) matches the segment pattern. */
int al_policy_path_match(const char *pattern, const char *path);

const char *al_policy_missing_name(enum al_policy_missing m);

/* "name" or "FILE:LINE" of a rule, into buf. */
const char *al_policy_rule_label(const al_table *t, const al_policy_rule *r, char *buf, size_t n);

/* One sentence for a refusal body / explain: what was asked and what was missing,
 * e.g. "client 'agent-b' may not use target 'echo-a': no policy rule gives it this
 * target". Never the whole policy, never a token. Returns buf. */
const char *al_policy_explain(const al_table *t, const al_policy_request *r,
                              const al_policy_decision *d, char *buf, size_t n);

/* "client 'x'" / "subject 'y'" / "anonymous": how a principal is named in messages. */
const char *al_principal_label(const al_principal *p, char *buf, size_t n);

#endif
