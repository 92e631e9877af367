/* al_log: structured logs on stderr, one JSON object per line.
 *
 *   al_log(AL_LOG_INFO, "table.reload", "targets=%d", n);
 * prints {"ts":"2026-11-28T10:00:00.123Z","level":"info","event":"table.reload","msg":"targets=3"}
 *
 * Never pass a secret: log lines are read by people who must not see them.
 * Thread-safe: each line is formatted into a stack buffer and written with one write(2). */
#ifndef AL_LOG_H
#define AL_LOG_H

enum al_log_level { AL_LOG_DEBUG = 0, AL_LOG_INFO = 1, AL_LOG_WARN = 2, AL_LOG_ERROR = 3 };

/* Lines below this level are dropped. Default AL_LOG_INFO; AIRLOCK_LOG_LEVEL=debug lowers it. */
void al_log_set_level(enum al_log_level level);
void al_log(enum al_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
