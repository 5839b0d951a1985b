/* Small helpers shared by the C tests: fail loudly with file:line, the
 * expression, the value and mr_last_error(). */
#ifndef MRTEST_H
#define MRTEST_H

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mappedram.h"

#define FAIL(...)                                                              \
    do {                                                                       \
        fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);                  \
        fprintf(stderr, __VA_ARGS__);                                          \
        fprintf(stderr, "\n  mr_last_error: %s\n", mr_last_error());           \
        exit(1);                                                               \
    } while (0)

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            FAIL("%s", #cond);                                                 \
    } while (0)

/* Expect an exact (long long) value. */
#define CHECK_EQ(expr, want)                                                   \
    do {                                                                       \
        long long got_ = (long long)(expr);                                    \
        long long want_ = (long long)(want);                                   \
        if (got_ != want_)                                                     \
            FAIL("%s = %lld, want %lld (%s)", #expr, got_, want_,              \
                 got_ < 0 ? strerror((int)-got_) : "-");                       \
    } while (0)

/* Expect success (0). */
#define OK(expr) CHECK_EQ(expr, 0)

/* The last error must be non-empty and mention `needle` (unless NULL). */
static inline void mrtest_check_msg(const char *expr, const char *needle, const char *file,
                                    int line)
{
    const char *m = mr_last_error();
    if (m == NULL || m[0] == '\0' || (needle != NULL && strstr(m, needle) == NULL)) {
        fprintf(stderr, "%s:%d: FAIL: %s: mr_last_error \"%s\" lacks \"%s\"\n", file, line,
                expr, m ? m : "(NULL)", needle ? needle : "(any text)");
        exit(1);
    }
}

/* Expect -err and a non-empty last error mentioning `needle` (may be NULL). */
#define CHECK_ERR(expr, err, needle)                                           \
    do {                                                                       \
        CHECK_EQ(expr, -(err));                                                \
        mrtest_check_msg(#expr, (needle), __FILE__, __LINE__);                 \
    } while (0)

/* A fresh path for a scratch file in $MR_TEST_DIR (ext4 build dir by
 * default), removed first. */
static inline void test_path(char *buf, size_t len, const char *name)
{
    const char *dir = getenv("MR_TEST_DIR");
    if (dir == NULL || dir[0] == '\0')
        dir = ".";
    snprintf(buf, len, "%s/%s.%ld.tmp", dir, name, (long)getpid());
    unlink(buf);
}

/* Deterministic, mostly non-zero test bytes. */
static inline uint8_t pattern(uint64_t seed, uint64_t i)
{
    uint64_t x = (seed + 1) * 0x9e3779b97f4a7c15ull ^ (i * 0xbf58476d1ce4e5b9ull);
    x ^= x >> 31;
    return (uint8_t)(x | 1);
}

/* A thread touching `touches` random 4 KiB pages of `host` (`pages` of
 * them) and checking each against `want`: a guest's vCPU during an
 * on-demand restore. Pass to pthread_create with a struct mrtest_toucher. */
struct mrtest_toucher {
    const uint8_t *host;
    const uint8_t *want;
    uint64_t pages;
    int touches;
    unsigned seed;
};

static inline void *mrtest_touch_random(void *arg)
{
    struct mrtest_toucher *t = arg;
    uint64_t x = t->seed * 0x9e3779b97f4a7c15ull + 1;
    for (int i = 0; i < t->touches; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t p = x % t->pages;
        if (memcmp(t->host + p * 4096, t->want + p * 4096, 4096) != 0)
            FAIL("page %" PRIu64 " differs from the image while served", p);
    }
    return NULL;
}

#endif
