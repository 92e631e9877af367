/* al_cred.c: to be written. */
