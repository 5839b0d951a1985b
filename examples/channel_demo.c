/* Writes pages through an O_DIRECT channel from several threads, reads them
 * back, verifies them and prints the throughput of each phase.
 *
 *   channel_demo [FILE] [MIB] [THREADS]     (defaults: ./channel_demo.img 256 4)
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mappedram.h>

#define CHUNK (4u << 20)

struct worker {
    mr_channel *ch;
    uint64_t first, end; /* chunk indices */
    int write;
    int failed;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill(uint8_t *buf, uint64_t chunk)
{
    uint64_t *w = (uint64_t *)(void *)buf;
    for (size_t i = 0; i < CHUNK / 8; i++)
        w[i] = (chunk << 32) ^ (i * 0x9e3779b97f4a7c15ull);
}

static void *work(void *arg)
{
    struct worker *w = arg;
    uint8_t *buf = NULL, *want = NULL;
    if (posix_memalign((void **)&buf, 4096, CHUNK) != 0 ||
        posix_memalign((void **)&want, 4096, CHUNK) != 0) {
        w->failed = ENOMEM;
        return NULL;
    }
    for (uint64_t c = w->first; c < w->end && !w->failed; c++) {
        struct iovec iov = { buf, CHUNK };
        if (w->write) {
            fill(buf, c);
            ssize_t n = mr_channel_pwritev(w->ch, &iov, 1, c * CHUNK);
            if (n != (ssize_t)CHUNK) {
                fprintf(stderr, "channel_demo: write: %s\n", mr_last_error());
                w->failed = n < 0 ? (int)-n : EIO;
            }
        } else {
            ssize_t n = mr_channel_preadv(w->ch, &iov, 1, c * CHUNK);
            fill(want, c);
            if (n != (ssize_t)CHUNK || memcmp(buf, want, CHUNK) != 0) {
                fprintf(stderr, "channel_demo: chunk %" PRIu64 " read back wrong (%zd): %s\n",
                        c, n, mr_last_error());
                w->failed = EIO;
            }
        }
    }
    free(buf);
    free(want);
    return NULL;
}

static int phase(mr_channel *ch, uint64_t chunks, int threads, int write, double *secs)
{
    pthread_t t[64];
    struct worker w[64];
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        w[i] = (struct worker){ ch, chunks * (uint64_t)i / (uint64_t)threads,
                                chunks * (uint64_t)(i + 1) / (uint64_t)threads, write, 0 };
        if (pthread_create(&t[i], NULL, work, &w[i]) != 0)
            return -1;
    }
    int failed = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        failed |= w[i].failed;
    }
    if (write && !failed && mr_channel_sync(ch) < 0) {
        fprintf(stderr, "channel_demo: sync: %s\n", mr_last_error());
        failed = 1;
    }
    *secs = now() - t0;
    return failed ? -1 : 0;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "channel_demo.img";
    uint64_t mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 256;
    int threads = argc > 3 ? atoi(argv[3]) : 4;
    if (mib < 4 || threads < 1 || threads > 64) {
        fprintf(stderr, "usage: channel_demo [FILE] [MIB>=4] [THREADS 1..64]\n");
        return 2;
    }
    uint64_t chunks = mib * (1u << 20) / CHUNK;
    mr_channel *ch = NULL;
    if (mr_channel_open(path, MR_OPEN_READ | MR_OPEN_WRITE | MR_OPEN_CREATE | MR_OPEN_TRUNC |
                                  MR_OPEN_DIRECT, &ch) < 0) {
        fprintf(stderr, "channel_demo: %s\n", mr_last_error());
        return 1;
    }
    uint32_t ma = 0, oa = 0;
    if (mr_channel_dio_align(ch, &ma, &oa) == 0)
        printf("%s: O_DIRECT, alignment memory %u / offset %u\n", path, ma, oa);
    double ws = 0, rs = 0;
    double mb = (double)(chunks * CHUNK) / 1e6;
    if (phase(ch, chunks, threads, 1, &ws) < 0)
        return 1;
    printf("write: %.0f MB in %.3f s = %.0f MB/s (%d threads, incl. fdatasync)\n", mb, ws,
           mb / ws, threads);
    if (phase(ch, chunks, threads, 0, &rs) < 0)
        return 1;
    printf("read+verify: %.0f MB in %.3f s = %.0f MB/s (%d threads)\n", mb, rs, mb / rs,
           threads);
    if (mr_channel_close(ch) < 0) {
        fprintf(stderr, "channel_demo: close: %s\n", mr_last_error());
        return 1;
    }
    unlink(path);
    printf("channel_demo: ok\n");
    return 0;
}
