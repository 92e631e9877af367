/* al_iam_credsrc: the credential source of `iam` targets (identity/al_credsrc.h's
 * interface), one per worker, over a registry of AWS credential providers shared by
 * the workers (auth/al_aws_creds.h).
 *
 * A target whose auth.source is "store" without role_arn uses the store's providers
 * exactly as api_key does (pools, rotation grace, fallback): the store source answers.
 * Any other source, or a role to assume, goes to the provider registered for that
 * (source, role_arn, external_id), made on first use and kept until the server stops:
 * it answers now from its cache, or later — the fetch thread's answer is carried to
 * this worker's loop with an ev_async, so on_done runs on the loop, never inside
 * acquire. The grant's secret view is kind "aws": value = secret access key,
 * session_token, config_json {"accessKeyId": ...}; provider = the source's name
 * ("environment", "container", "imds", "web_identity", "assume_role"). */
#ifndef AL_IAM_CREDSRC_H
#define AL_IAM_CREDSRC_H

#include <ev.h>

#include "identity/al_cred.h"
#include "identity/al_credsrc.h"

typedef struct al_iam_registry al_iam_registry;

/* store may be NULL (the store is not open). */
int al_iam_registry_new(al_cred_cache *store, al_iam_registry **out);
/* After every worker stopped. */
void al_iam_registry_free(al_iam_registry *reg);

/* The source for one worker's loop; free it with al_iam_credsrc_free after the loop
 * ended. AL_ERR_NOMEM. */
int al_iam_credsrc_new(al_iam_registry *reg, struct ev_loop *loop, al_credsrc *out);
void al_iam_credsrc_free(al_credsrc *src);

#endif
