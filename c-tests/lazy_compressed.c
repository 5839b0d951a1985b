/* On-demand restore (mr_lazy_*) of compressed and checksum-only images
 * through the public header, for real (userfaultfd; run as root here):
 * - zstd and checksum-only images: 4 threads touch random pages while
 *   prefetch runs, then the whole block equals the saved memory; the same
 *   with MR_LAZY_NO_PREFETCH (stop fills the rest);
 * - a byte flipped inside chunk 3's stored zstd frame: mr_lazy_wait and
 *   mr_lazy_stop return -EBADMSG naming the chunk; the chunk's pages are
 *   poisoned, never filled, and every other page holds its data.
 * Without userfaultfd for this process (mr_lazy_start: -ENOSYS or -EPERM)
 * it prints NOT RUN and exits 77 (meson: SKIP); under the full suite
 * (MR_TEST_REQUIRE_ALL=1) it fails instead. */
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>

#include "mrtest.h"

#define PAGE 4096u
#define MIB (1u << 20)
#define LEN (16u * MIB)
#define PAGES (LEN / PAGE)

static mr_ramblock_desc blocks[] = { { "mem", LEN, PAGE } };

/* Mostly compressible pages (a 512-byte record repeated), every 5th page
 * zero and chunk 9 all zero. */
static void fill_guest(uint8_t *m, unsigned seed)
{
    for (uint64_t p = 0; p < PAGES; p++) {
        uint8_t *pg = m + p * PAGE;
        if (p % 5 == 2 || p / (MIB / PAGE) == 9) {
            memset(pg, 0, PAGE);
            continue;
        }
        for (uint32_t i = 0; i < PAGE; i++)
            pg[i] = pattern(seed, p * PAGE + i % 512);
    }
}

static uint8_t *map_anon(void)
{
    void *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    return p;
}

static void make_image(const char *path, const uint8_t *mem, uint32_t codec, uint32_t flags)
{
    mr_image_options o;
    memset(&o, 0, sizeof(o));
    o.size = sizeof(o);
    o.codec = codec;
    o.flags = flags;
    mr_image *img = NULL;
    OK(mr_image_create_opts(path, "pc-q35-10.0", blocks, 1, 0, &o, &img));
    OK(mr_image_save_ramblock(img, 0, mem, NULL, 2));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
}

static void lazy_with_touchers(const char *path, const uint8_t *want, uint32_t lazy_flags)
{
    mr_image *img = NULL;
    OK(mr_image_open(path, MR_IMAGE_DIRECT, &img));
    uint8_t *host = map_anon();
    mr_lazy *lz = NULL;
    OK(mr_lazy_start(img, 0, host, lazy_flags, 2, &lz));
    pthread_t th[4];
    struct mrtest_toucher t[4];
    for (unsigned i = 0; i < 4; i++) {
        t[i] = (struct mrtest_toucher){ host, want, PAGES, 300, i + 1 };
        CHECK(pthread_create(&th[i], NULL, mrtest_touch_random, &t[i]) == 0);
    }
    for (unsigned i = 0; i < 4; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    if (!(lazy_flags & MR_LAZY_NO_PREFETCH))
        OK(mr_lazy_wait(lz));
    OK(mr_lazy_stop(lz));
    CHECK(memcmp(host, want, LEN) == 0);
    CHECK(munmap(host, LEN) == 0);
    OK(mr_image_close(img));
}

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    uint8_t b = 0;
    CHECK(pread(fd, &b, 1, (off_t)off) == 1);
    b ^= 0x5a;
    CHECK(pwrite(fd, &b, 1, (off_t)off) == 1);
    CHECK(fsync(fd) == 0);
    CHECK(close(fd) == 0);
}

static void damaged_chunk(const char *path, const uint8_t *want)
{
    mr_image *img = NULL;
    OK(mr_image_open(path, 0, &img));
    mr_ramblock_info info;
    OK(mr_image_ramblock_info(img, 0, &info));
    OK(mr_image_close(img));
    flip_byte(path, info.pages_offset + 3 * MIB + 700);
    OK(mr_image_open(path, MR_IMAGE_DIRECT, &img));
    uint8_t *host = map_anon();
    mr_lazy *lz = NULL;
    OK(mr_lazy_start(img, 0, host, 0, 2, &lz));
    CHECK_ERR(mr_lazy_wait(lz), EBADMSG, "chunk 3 ");
    CHECK_ERR(mr_lazy_stop(lz), EBADMSG, "poisoned");
    mrtest_check_msg("mr_lazy_stop", "chunk 3 ", __FILE__, __LINE__);
    unsigned char vec[PAGES];
    CHECK(mincore(host, LEN, vec) == 0);
    for (uint64_t p = 0; p < PAGES; p++) {
        int in3 = p / (MIB / PAGE) == 3;
        if (in3 && (vec[p] & 1))
            FAIL("page %" PRIu64 " of the damaged chunk is resident", p);
        if (!in3 && memcmp(host + p * PAGE, want + p * PAGE, PAGE) != 0)
            FAIL("page %" PRIu64 " differs", p);
    }
    CHECK(munmap(host, LEN) == 0);
    OK(mr_image_close(img));
}

/* Whether on-demand restore can run here: a start that fails with -ENOSYS
 * or -EPERM (no userfaultfd for this process) says no; anything else must
 * succeed. */
static int uffd_usable(const char *path)
{
    mr_image *img = NULL;
    OK(mr_image_open(path, 0, &img));
    uint8_t *host = map_anon();
    mr_lazy *lz = NULL;
    int r = mr_lazy_start(img, 0, host, MR_LAZY_NO_PREFETCH, 1, &lz);
    if (r == 0)
        OK(mr_lazy_stop(lz));
    else if (r != -ENOSYS && r != -EPERM)
        FAIL("mr_lazy_start = %d", r);
    CHECK(munmap(host, LEN) == 0);
    OK(mr_image_close(img));
    return r == 0;
}

int main(void)
{
    char path[512];
    test_path(path, sizeof(path), "lazy_compressed");
    uint8_t *want = malloc(LEN);
    CHECK(want != NULL);
    fill_guest(want, 21);
    make_image(path, want, MR_CODEC_ZSTD, 0);
    if (!uffd_usable(path)) {
        const char *all = getenv("MR_TEST_REQUIRE_ALL");
        if (all != NULL && strcmp(all, "1") == 0)
            FAIL("lazy_compressed needs userfaultfd and MR_TEST_REQUIRE_ALL=1 (the full "
                 "suite skips nothing)");
        printf("NOT RUN: lazy_compressed needs userfaultfd (%s); run the tests as root, or "
               "`sysctl vm.unprivileged_userfaultfd=1`, or give this user access to "
               "/dev/userfaultfd\n",
               mr_last_error());
        unlink(path);
        free(want);
        return 77;
    }
    lazy_with_touchers(path, want, 0);
    lazy_with_touchers(path, want, MR_LAZY_NO_PREFETCH);
    damaged_chunk(path, want);
    make_image(path, want, MR_CODEC_NONE, MR_IMAGE_OPT_CHECKSUMS);
    lazy_with_touchers(path, want, 0);
    lazy_with_touchers(path, want, MR_LAZY_NO_PREFETCH);
    unlink(path);
    free(want);
    printf("lazy_compressed: ok\n");
    return 0;
}
