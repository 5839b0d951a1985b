/* mr_image_save_ramblock / mr_image_read_ramblock: from malloc'ed and
 * posix_memalign'ed memory, with 1, 2, 3 and 8 threads, restored with other
 * thread counts, with and without O_DIRECT; dirty-page saves; unfinished
 * images (-MR_EINCOMPLETE unless MR_IMAGE_RECOVER); cancel through the
 * progress callback; images inside a container (create_on/open_on). */
#include <pthread.h>

#include "mrtest.h"

#define PAGE 4096u
#define LEN (16u << 20)  /* 4096 pages: several engine work units */
#define PAGES (LEN / PAGE)

static const char *MACHINE = "pc-q35-10.0";

/* Guest-like contents: data runs, zero runs, single zero pages and a large
 * zero range. (Not too fragmented: freeing thousands of extents is slow on
 * file systems mounted with online discard.) */
static void fill_guest(uint8_t *m, unsigned seed)
{
    for (uint64_t p = 0; p < PAGES; p++) {
        uint8_t *pg = m + p * PAGE;
        if ((p / 32) % 4 == 1 || p % 97 == 3 || (p >= 1500 && p < 2500)) {
            memset(pg, 0, PAGE);
        } else {
            for (uint32_t i = 0; i < PAGE; i += 8)
                memset(pg + i, pattern(seed, p * PAGE + i), 8);
            /* A page that is zero except its last byte is not zero. */
            if (p % 5 == 0) {
                memset(pg, 0, PAGE);
                pg[PAGE - 1] = 1;
            }
        }
    }
}

static uint64_t nonzero_pages(const uint8_t *m)
{
    uint64_t n = 0;
    for (uint64_t p = 0; p < PAGES; p++)
        for (uint32_t i = 0; i < PAGE; i++)
            if (m[p * PAGE + i]) {
                n++;
                break;
            }
    return n;
}

static mr_ramblock_desc blocks[] = { { "pc.ram", LEN, PAGE } };

static void restore_and_compare(const char *path, const uint8_t *want, uint32_t threads,
                                uint32_t open_flags)
{
    mr_image *img = NULL;
    OK(mr_image_open(path, open_flags, &img));
    mr_ramblock_info info;
    OK(mr_image_ramblock_info(img, 0, &info));
    CHECK_EQ(info.pages_present, nonzero_pages(want));
    uint8_t *buf = NULL;
    CHECK(posix_memalign((void **)&buf, 4096, LEN) == 0);
    memset(buf, 0x5c, LEN);
    OK(mr_image_read_ramblock(img, 0, buf, MR_READ_ZERO_ABSENT, threads));
    for (uint64_t k = 0; k < LEN; k++)
        if (buf[k] != want[k])
            FAIL("restore with %u threads: byte %" PRIu64 " (page %" PRIu64
                 ") is 0x%02x, want 0x%02x",
                 threads, k, k / PAGE, buf[k], want[k]);
    /* Into malloc'ed (not page aligned) memory too. */
    uint8_t *m = malloc(LEN + 1);
    CHECK(m != NULL);
    memset(m + 1, 0x5c, LEN);
    OK(mr_image_read_ramblock(img, 0, m + 1, MR_READ_ZERO_ABSENT, threads + 1));
    CHECK(memcmp(m + 1, want, LEN) == 0);
    free(m);
    free(buf);
    OK(mr_image_close(img));
}

static void save_file(const char *path, const uint8_t *host, uint32_t threads, uint32_t flags)
{
    mr_image *img = NULL;
    /* A fresh file: ext4 takes seconds to truncate a just-written one. */
    unlink(path);
    OK(mr_image_create(path, MACHINE, blocks, 1, flags, &img));
    OK(mr_image_save_ramblock(img, 0, host, NULL, threads));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
}

static void test_threads(const char *path)
{
    static const uint32_t save_threads[] = { 1, 2, 3, 8 };
    static const uint32_t restore_threads[] = { 8, 3, 1, 2 };
    uint8_t *heap = malloc(LEN + 16);
    uint8_t *aligned = NULL;
    CHECK(heap != NULL);
    CHECK(posix_memalign((void **)&aligned, 4096, LEN) == 0);
    /* Misalign the malloc'ed copy on purpose. */
    uint8_t *unaligned = heap + 8;
    fill_guest(unaligned, 1);
    fill_guest(aligned, 2);
    for (size_t i = 0; i < 4; i++) {
        uint32_t flags = (i % 2) ? MR_IMAGE_DIRECT : 0;
        save_file(path, unaligned, save_threads[i], flags);
        restore_and_compare(path, unaligned, restore_threads[i], flags);
        save_file(path, aligned, save_threads[i], flags ^ MR_IMAGE_DIRECT);
        restore_and_compare(path, aligned, restore_threads[(i + 1) % 4], flags);
        printf("save with %u threads (%s): ok\n", save_threads[i],
               flags ? "O_DIRECT" : "buffered");
    }
    free(heap);
    free(aligned);
}

static void test_dirty(const char *path)
{
    uint8_t *host = NULL;
    CHECK(posix_memalign((void **)&host, 4096, LEN) == 0);
    fill_guest(host, 3);
    mr_image *img = NULL;
    unlink(path);
    OK(mr_image_create(path, MACHINE, blocks, 1, MR_IMAGE_DIRECT, &img));
    OK(mr_image_save_ramblock(img, 0, host, NULL, 4));

    /* A second round: page 4 changes, page 6 becomes zero, page 7 becomes
     * data, page 9 changes but is not marked dirty (so not saved). */
    uint64_t dirty[(PAGES + 63) / 64];
    memset(dirty, 0, sizeof dirty);
    uint8_t *want = malloc(LEN);
    CHECK(want != NULL);
    memcpy(want, host, LEN);
    memset(host + 4 * PAGE, 0x44, PAGE);
    memset(host + 6 * PAGE, 0, PAGE);
    memset(host + 7 * PAGE, 0x77, PAGE);
    memset(host + 9 * PAGE, 0x99, PAGE);
    memcpy(want + 4 * PAGE, host + 4 * PAGE, PAGE);
    memcpy(want + 6 * PAGE, host + 6 * PAGE, PAGE);
    memcpy(want + 7 * PAGE, host + 7 * PAGE, PAGE);
    dirty[0] = (1ull << 4) | (1ull << 6) | (1ull << 7);
    /* And one in the last word. */
    memset(host + (PAGES - 1) * PAGE, 0xab, PAGE);
    memcpy(want + (PAGES - 1) * PAGE, host + (PAGES - 1) * PAGE, PAGE);
    dirty[(PAGES - 1) / 64] |= 1ull << ((PAGES - 1) % 64);
    OK(mr_image_save_ramblock(img, 0, host, dirty, 3));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
    restore_and_compare(path, want, 5, 0);
    printf("dirty save: ok\n");
    free(want);
    free(host);
}

static void test_incomplete(const char *path)
{
    uint8_t *host = malloc(LEN);
    CHECK(host != NULL);
    fill_guest(host, 4);
    mr_image *img = NULL;
    unlink(path);
    OK(mr_image_create(path, MACHINE, blocks, 1, 0, &img));
    OK(mr_image_save_ramblock(img, 0, host, NULL, 2));
    OK(mr_image_sync(img));
    OK(mr_image_close(img)); /* never finished */

    mr_image *out = NULL;
    CHECK_ERR(mr_image_open(path, 0, &out), MR_EINCOMPLETE, NULL);
    CHECK(out == NULL);
    OK(mr_image_open(path, MR_IMAGE_RECOVER, &out));
    CHECK_EQ(mr_image_is_complete(out), 0);
    OK(mr_image_close(out));
    /* What was synced is there. */
    restore_and_compare(path, host, 3, MR_IMAGE_RECOVER);
    printf("unfinished image: ok\n");
    free(host);
}

struct progress {
    unsigned calls;
    unsigned cancel_at;
    uint64_t last_done, total;
    int bad;
    pthread_t thread;
};

static int on_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct progress *p = opaque;
    p->calls++;
    if (done > total || done < p->last_done || (p->total && total != p->total))
        p->bad = 1;
    if (!pthread_equal(pthread_self(), p->thread))
        p->bad = 2;
    p->last_done = done;
    p->total = total;
    return p->cancel_at && p->calls >= p->cancel_at;
}

static void test_progress_cancel(const char *path)
{
    uint8_t *host = malloc(LEN);
    CHECK(host != NULL);
    fill_guest(host, 5);
    mr_image *img = NULL;
    unlink(path);
    OK(mr_image_create(path, MACHINE, blocks, 1, 0, &img));

    struct progress p = { 0, 1, 0, 0, 0, pthread_self() };
    OK(mr_image_set_progress(img, on_progress, &p));
    CHECK_ERR(mr_image_save_ramblock(img, 0, host, NULL, 4), ECANCELED, NULL);
    CHECK(p.calls >= 1 && p.bad == 0);

    /* Later operations are not affected; progress reaches the total. */
    memset(&p, 0, sizeof p);
    p.thread = pthread_self();
    OK(mr_image_save_ramblock(img, 0, host, NULL, 4));
    CHECK(p.calls >= 1 && p.bad == 0);
    CHECK(p.total > 0 && p.last_done == p.total);

    /* Removing the callback. */
    OK(mr_image_set_progress(img, NULL, NULL));
    unsigned before = p.calls;
    OK(mr_image_save_ramblock(img, 0, host, NULL, 2));
    CHECK_EQ(p.calls, before);
    OK(mr_image_cancel(img)); /* nothing running: no effect on what follows */
    OK(mr_image_finish(img));
    OK(mr_image_close(img));

    /* Cancel a restore. */
    OK(mr_image_open(path, 0, &img));
    memset(&p, 0, sizeof p);
    p.thread = pthread_self();
    p.cancel_at = 1;
    OK(mr_image_set_progress(img, on_progress, &p));
    CHECK_ERR(mr_image_read_ramblock(img, 0, host, MR_READ_ZERO_ABSENT, 3), ECANCELED, NULL);
    OK(mr_image_close(img));
    printf("progress and cancel: ok\n");
    free(host);
}

static void test_container(const char *path)
{
    const uint64_t base = 8192;
    uint8_t *host = malloc(LEN);
    CHECK(host != NULL);
    fill_guest(host, 6);

    mr_channel *ch = NULL;
    unlink(path);
    OK(mr_channel_open(path, MR_OPEN_READ | MR_OPEN_WRITE | MR_OPEN_CREATE | MR_OPEN_TRUNC, &ch));
    char hdr[64] = "MYCONTAINER v1";
    struct iovec iov = { hdr, sizeof hdr };
    CHECK_EQ(mr_channel_pwritev(ch, &iov, 1, 0), sizeof hdr);
    mr_image *img = NULL;
    OK(mr_image_create_on(ch, base, MACHINE, blocks, 1, 0, &img));
    /* The image holds its own reference. */
    OK(mr_channel_close(ch));
    OK(mr_image_save_ramblock(img, 0, host, NULL, 3));
    uint64_t off = 0;
    OK(mr_image_stream_offset(img, &off));
    CHECK_EQ(off, base);
    OK(mr_image_finish(img));
    OK(mr_image_close(img));

    OK(mr_channel_open(path, MR_OPEN_READ, &ch));
    /* No QEMU stream (nor libvirt header) at 0. */
    CHECK(mr_image_open_on(ch, MR_OFFSET_DETECT, 0, &img) < 0);
    CHECK(mr_last_error()[0] != '\0');
    OK(mr_image_open_on(ch, base, 0, &img));
    OK(mr_channel_close(ch));
    OK(mr_image_stream_offset(img, &off));
    CHECK_EQ(off, base);
    mr_ramblock_info info;
    OK(mr_image_ramblock_info(img, 0, &info));
    CHECK_EQ(info.pages_offset % (1u << 20), 0);
    uint8_t *buf = malloc(LEN);
    CHECK(buf != NULL);
    OK(mr_image_read_ramblock(img, 0, buf, MR_READ_ZERO_ABSENT, 2));
    CHECK(memcmp(buf, host, LEN) == 0);
    OK(mr_image_close(img));
    /* The container header is intact. */
    OK(mr_channel_open(path, MR_OPEN_READ, &ch));
    char back[64];
    struct iovec riov = { back, sizeof back };
    CHECK_EQ(mr_channel_preadv(ch, &riov, 1, 0), sizeof back);
    CHECK(memcmp(back, hdr, sizeof hdr) == 0);
    OK(mr_channel_close(ch));
    printf("image inside a container: ok\n");
    free(buf);
    free(host);
}

int main(void)
{
    char path[4096];
    test_path(path, sizeof path, "image_save");
    test_threads(path);
    test_dirty(path);
    test_incomplete(path);
    test_progress_cancel(path);
    test_container(path);

    /* Argument errors. */
    mr_image *img = NULL;
    unlink(path);
    OK(mr_image_create(path, MACHINE, blocks, 1, 0, &img));
    CHECK_ERR(mr_image_save_ramblock(img, 0, NULL, NULL, 1), EINVAL, "host");
    CHECK_ERR(mr_image_save_ramblock(img, 1, path, NULL, 1), ENOENT, NULL);
    OK(mr_image_close(img));
    unlink(path);
    return 0;
}
