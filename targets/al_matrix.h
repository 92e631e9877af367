/* al_matrix: the target-type / auth-method matrix, loaded from the YAML file
 * targets/matrix.yaml that the build embeds (al_matrix_yaml). The matrix is data:
 * adding a row or column is a change to that file only. */
#ifndef AL_MATRIX_H
#define AL_MATRIX_H

#include "al_table.h"

#include <stddef.h>

extern const char al_matrix_yaml[];   /* embedded copy of targets/matrix.yaml */
extern const size_t al_matrix_yaml_len;

/* 1 if `type` may use `method`. */
int al_matrix_allows(enum al_target_type type, enum al_auth_method method);
/* Writes "iam, api_key" style list of the methods `type` allows into buf. */
void al_matrix_allowed_methods(enum al_target_type type, char *buf, size_t cap);
/* Name lookups; return -1 when unknown. */
int al_matrix_type_from_name(const char *name);
int al_matrix_method_from_name(const char *name);

#endif
