/* al_egress.c: to be written. */
