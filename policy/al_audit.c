/* al_audit.c: to be written. */
