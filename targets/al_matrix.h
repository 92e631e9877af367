/* al_matrix: the target-type / auth-method matrix, loaded from the YAML file
 * targets/matrix.yaml that the build embeds (al_matrix_yaml). The matrix is data:
 * adding a row or column is a change to that file (plus the enum name in al_table.h,
 * which al_matrix_parse() insists on, so code and data cannot drift apart). */
#ifndef AL_MATRIX_H
#define AL_MATRIX_H

#include "al_table.h"

#include <stddef.h>

extern const char al_matrix_yaml[]; /* embedded copy of targets/matrix.yaml */
extern const size_t al_matrix_yaml_len;

typedef struct al_matrix {
    unsigned char allow[AL_TYPE_COUNT][AL_AUTH_COUNT]; /* 1 = the pair is valid */
    int type_order[AL_TYPE_COUNT];                     /* enum values in file order */
    int method_order[AL_AUTH_COUNT];                   /* enum values in file order */
} al_matrix;

/* Parses a matrix file. Fails (AL_ERR_CONFIG, reason in err) when the file names a
 * type or method the code does not know, when the code knows one the file does not
 * name, on duplicates, or on a malformed shape. */
int al_matrix_parse(const char *yaml, size_t len, al_matrix *out, char *err, size_t errcap);

/* The embedded matrix, parsed once (thread-safe). NULL when it is inconsistent with
 * the code; al_matrix_error() says why (a build/packaging bug, caught by tests). */
const al_matrix *al_matrix_get(void);
const char *al_matrix_error(void);

/* 1 if `type` may use `method` (0 for out-of-range values or a broken matrix). */
int al_matrix_allows(enum al_target_type type, enum al_auth_method method);
/* Writes "iam, api_key" style list of the methods `type` allows into buf. */
void al_matrix_allowed_methods(enum al_target_type type, char *buf, size_t cap);
/* Name lookups against the code's names (which the matrix file must match);
 * return -1 when unknown. */
int al_matrix_type_from_name(const char *name);
int al_matrix_method_from_name(const char *name);

#endif
