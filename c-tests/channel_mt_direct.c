/* mr_channel with O_DIRECT from many threads: interleaved, unaligned ranges
 * that share 4 KiB blocks (so the channel's read-modify-write of edge blocks
 * must not lose a neighbour's bytes), several rounds, then every byte is
 * verified through the channel and through a plain descriptor. The file
 * lives in $MR_TEST_DIR (the build dir: ext4, which enforces alignment). */
#include <fcntl.h>
#include <pthread.h>

#include "mrtest.h"

#define NTHREADS 8
#define FILE_LEN (1u << 20)
#define ROUNDS 4

struct piece {
    uint64_t off;
    uint32_t len;
};

static struct piece pieces[FILE_LEN / 64];
static size_t npieces;
static mr_channel *ch;
static uint8_t expect[FILE_LEN];

struct job {
    int id;
    unsigned round;
};

static uint8_t byte_at(unsigned round, uint64_t off)
{
    return pattern(round, off);
}

/* Pieces of 1..700 bytes covering the file; piece i belongs to thread
 * i % NTHREADS, so neighbours (which share blocks) belong to different
 * threads. */
static void plan(unsigned seed)
{
    uint64_t off = 0;
    uint64_t x = seed * 2654435761u + 1;
    npieces = 0;
    while (off < FILE_LEN) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t len = (uint32_t)(1 + (x >> 33) % 700);
        /* Every few pieces, an aligned 4 KiB run: the zero-copy path. */
        if ((x >> 20) % 11 == 0 && off % 4096 == 0)
            len = 4096 * (uint32_t)(1 + (x >> 40) % 3);
        if (off + len > FILE_LEN)
            len = (uint32_t)(FILE_LEN - off);
        pieces[npieces].off = off;
        pieces[npieces].len = len;
        npieces++;
        off += len;
    }
}

static void *writer(void *arg)
{
    struct job *j = arg;
    uint8_t *buf = malloc(3 * 4096 + 1);
    if (buf == NULL)
        FAIL("malloc");
    for (size_t i = (size_t)j->id; i < npieces; i += NTHREADS) {
        struct piece p = pieces[i];
        /* Deliberately misaligned memory too. */
        uint8_t *src = buf + (i % 2);
        for (uint32_t k = 0; k < p.len; k++)
            src[k] = byte_at(j->round, p.off + k);
        ssize_t n;
        if (p.len > 1 && i % 3 == 0) {
            struct iovec iov[2] = { { src, p.len / 2 }, { src + p.len / 2, p.len - p.len / 2 } };
            n = mr_channel_pwritev(ch, iov, 2, p.off);
        } else {
            struct iovec iov = { src, p.len };
            n = mr_channel_pwritev(ch, &iov, 1, p.off);
        }
        if (n != (ssize_t)p.len)
            FAIL("thread %d: pwritev of %u bytes at %" PRIu64 " returned %zd", j->id, p.len,
                 p.off, n);
    }
    free(buf);
    return NULL;
}

static void *reader(void *arg)
{
    struct job *j = arg;
    uint8_t *buf = malloc(3 * 4096 + 1);
    if (buf == NULL)
        FAIL("malloc");
    for (size_t i = (size_t)j->id; i < npieces; i += NTHREADS) {
        struct piece p = pieces[i];
        uint8_t *dst = buf + (i % 2);
        struct iovec iov = { dst, p.len };
        ssize_t n = mr_channel_preadv(ch, &iov, 1, p.off);
        if (n != (ssize_t)p.len)
            FAIL("thread %d: preadv of %u bytes at %" PRIu64 " returned %zd", j->id, p.len,
                 p.off, n);
        if (memcmp(dst, expect + p.off, p.len) != 0)
            FAIL("thread %d: bytes differ in [%" PRIu64 ", +%u)", j->id, p.off, p.len);
    }
    free(buf);
    return NULL;
}

static void run(void *(*fn)(void *), unsigned round)
{
    pthread_t t[NTHREADS];
    struct job jobs[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        jobs[i].id = i;
        jobs[i].round = round;
        CHECK(pthread_create(&t[i], NULL, fn, &jobs[i]) == 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
}

int main(void)
{
    char path[4096];
    test_path(path, sizeof path, "channel_mt_direct");
    OK(mr_channel_open(path, MR_OPEN_READ | MR_OPEN_WRITE | MR_OPEN_CREATE | MR_OPEN_TRUNC |
                                 MR_OPEN_DIRECT, &ch));
    uint32_t mem_align = 0, off_align = 0;
    OK(mr_channel_dio_align(ch, &mem_align, &off_align));
    printf("dio alignment: memory %u, offset %u\n", mem_align, off_align);

    for (unsigned round = 0; round < ROUNDS; round++) {
        plan(round);
        for (uint64_t k = 0; k < FILE_LEN; k++)
            expect[k] = byte_at(round, k);
        run(writer, round);
        OK(mr_channel_sync(ch));

        /* A different split for reading, also in parallel. */
        plan(round + 100);
        run(reader, round);

        /* Every byte through an independent, buffered descriptor. */
        int fd = open(path, O_RDONLY);
        CHECK(fd >= 0);
        static uint8_t back[FILE_LEN];
        CHECK_EQ(pread(fd, back, FILE_LEN, 0), FILE_LEN);
        close(fd);
        for (uint64_t k = 0; k < FILE_LEN; k++)
            if (back[k] != expect[k])
                FAIL("round %u: byte %" PRIu64 " is 0x%02x, want 0x%02x", round, k, back[k],
                     expect[k]);
        printf("round %u: %zu pieces by %d threads verified\n", round, npieces, NTHREADS);
    }
    uint64_t size = 0;
    OK(mr_channel_size(ch, &size));
    CHECK_EQ(size, FILE_LEN);
    OK(mr_channel_close(ch));
    unlink(path);
    return 0;
}
