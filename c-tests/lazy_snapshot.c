/* On-demand restore (mr_lazy_*) and live snapshots (mr_snapshot_*) through
 * the public header, for real (userfaultfd; run as root here):
 * - 4 threads touch random pages while prefetch runs; every page they see
 *   and the whole block afterwards equal the saved memory;
 * - mr_lazy_start_opts: rate limit + hot pages, no prefetch; versioned
 *   options refused when too small, reserved set, or unknown fields set;
 * - bad arguments name what is wrong; the stop functions accept NULL;
 * - a process without the right to use userfaultfd gets -EPERM and a
 *   message naming vm.unprivileged_userfaultfd and /dev/userfaultfd; a
 *   kernel without userfaultfd (seccomp: ENOSYS) gets -ENOSYS saying so;
 * - a live snapshot while a thread writes: the image equals the memory at
 *   the start instant;
 * - a child forked while a range is served or protected has no mapping
 *   there (MADV_DONTFORK): its touch is SIGSEGV, never zeros;
 * - mr_image_map_ramblock: a private map of the block equals the saved
 *   memory, writes stay private.
 * Without userfaultfd for this process (not root, vm.unprivileged_userfaultfd
 * = 0, no access to /dev/userfaultfd; or a kernel without it) the parts that
 * need it print NOT RUN and the test exits 77 (meson: SKIP) after running the
 * rest; under the full suite (MR_TEST_REQUIRE_ALL=1) it fails instead. */
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "mrtest.h"

#define PAGE 4096u
#define LEN (16u << 20)
#define PAGES (LEN / PAGE)

static mr_ramblock_desc blocks[] = { { "mem", LEN, PAGE } };

/* Whether this process can use userfaultfd, probed the way the library
 * opens it: the system call, then (on EPERM) /dev/userfaultfd, then the API
 * handshake. On failure `why` says what failed. */
static int uffd_usable(char *why, size_t len)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == EPERM) {
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev < 0) {
            snprintf(why, len,
                     "userfaultfd(2): EPERM, and /dev/userfaultfd cannot be opened: %s",
                     strerror(errno));
            return 0;
        }
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        close(dev);
    }
    if (fd < 0) {
        snprintf(why, len, "creating a userfaultfd: %s", strerror(errno));
        return 0;
    }
    struct uffdio_api api = { .api = UFFD_API };
    int r = ioctl(fd, UFFDIO_API, &api);
    int e = errno;
    close(fd);
    if (r != 0) {
        snprintf(why, len, "UFFDIO_API: %s", strerror(e));
        return 0;
    }
    return 1;
}

/* A forked child touching `p` must die by SIGSEGV (no mapping there). */
static void child_touch_segv(volatile uint8_t *p, int write)
{
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        struct rlimit none = { 0, 0 };
        setrlimit(RLIMIT_CORE, &none);
        signal(SIGSEGV, SIG_DFL); /* not ASan's handler: die by the signal */
        if (write)
            *p = 1;
        else
            (void)*p;
        _exit(0);
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGSEGV)
        FAIL("child touching %p (write %d): status 0x%x, want killed by SIGSEGV", (void *)p,
             write, st);
}

static void fill_guest(uint8_t *m, unsigned seed)
{
    for (uint64_t p = 0; p < PAGES; p++) {
        uint8_t *pg = m + p * PAGE;
        if (p % 7 == 3 || (p >= 1000 && p < 1300)) {
            memset(pg, 0, PAGE);
            continue;
        }
        for (uint32_t i = 0; i < PAGE; i += 8)
            memset(pg + i, pattern(seed, p * PAGE + i), 8);
    }
}

static uint8_t *map_anon(void)
{
    void *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    return p;
}

static void make_image(const char *path, const uint8_t *mem)
{
    mr_image *img = NULL;
    OK(mr_image_create(path, "pc-q35-10.0", blocks, 1, 0, &img));
    OK(mr_image_save_ramblock(img, 0, mem, NULL, 2));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
}

static void lazy_with_touchers(mr_image *img, const uint8_t *want)
{
    uint8_t *host = map_anon();
    mr_lazy *lz = NULL;
    OK(mr_lazy_start(img, 0, host, 0, 2, &lz));
    CHECK(lz != NULL);
    pthread_t th[4];
    struct mrtest_toucher t[4];
    for (unsigned i = 0; i < 4; i++) {
        t[i] = (struct mrtest_toucher){ host, want, PAGES, 500, i + 1 };
        CHECK(pthread_create(&th[i], NULL, mrtest_touch_random, &t[i]) == 0);
    }
    for (unsigned i = 0; i < 4; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    OK(mr_lazy_wait(lz));
    OK(mr_lazy_stop(lz));
    CHECK(memcmp(host, want, LEN) == 0);
    CHECK(munmap(host, LEN) == 0);
}

static void lazy_options(mr_image *img, const uint8_t *want)
{
    uint8_t *host = map_anon();
    uint64_t hot[PAGES / 64];
    memset(hot, 0, sizeof(hot));
    hot[PAGES / 64 - 1] = ~0ull; /* the last 64 pages first */
    mr_lazy_options o;
    memset(&o, 0, sizeof(o));
    o.size = sizeof(o);
    o.threads = 1;
    o.rate_limit = 64u << 20;
    o.hot = hot;
    o.hot_words = PAGES / 64;
    mr_lazy *lz = NULL;
    OK(mr_lazy_start_opts(img, 0, host, &o, &lz));
    OK(mr_lazy_wait(lz));
    OK(mr_lazy_stop(lz));
    CHECK(memcmp(host, want, LEN) == 0);
    CHECK(munmap(host, LEN) == 0);

    /* No prefetch: only touched pages come in; stop fills the rest. */
    host = map_anon();
    o.flags = MR_LAZY_NO_PREFETCH;
    OK(mr_lazy_start_opts(img, 0, host, &o, &lz));
    CHECK(memcmp(host + 5 * PAGE, want + 5 * PAGE, PAGE) == 0);
    unsigned char vec[PAGES];
    CHECK(mincore(host, LEN, vec) == 0);
    CHECK((vec[5] & 1) == 1);
    CHECK((vec[4000] & 1) == 0);
    child_touch_segv(host + 4000 * PAGE, 0);
    child_touch_segv(host + 5 * PAGE, 1);
    CHECK(mincore(host, LEN, vec) == 0);
    CHECK((vec[4000] & 1) == 0); /* the child's touch placed nothing */
    OK(mr_lazy_stop(lz));
    CHECK(memcmp(host, want, LEN) == 0);
    CHECK(munmap(host, LEN) == 0);

    /* Versioned options. */
    host = map_anon();
    struct {
        mr_lazy_options o;
        uint64_t newer_field;
    } big;
    memset(&big, 0, sizeof(big));
    big.o.size = sizeof(big);
    OK(mr_lazy_start_opts(img, 0, host, &big.o, &lz)); /* zero extra: fine */
    OK(mr_lazy_stop(lz));
    big.newer_field = 1;
    CHECK_ERR(mr_lazy_start_opts(img, 0, host, &big.o, &lz), EINVAL, "does not know");
    o.size = 8;
    CHECK_ERR(mr_lazy_start_opts(img, 0, host, &o, &lz), EINVAL, "opts->size");
    o.size = sizeof(o);
    o.reserved = 1;
    CHECK_ERR(mr_lazy_start_opts(img, 0, host, &o, &lz), EINVAL, "reserved");
    o.reserved = 0;
    o.hot_words = 3;
    CHECK_ERR(mr_lazy_start_opts(img, 0, host, &o, &lz), EINVAL, "hot-page bitmap");
    CHECK_ERR(mr_lazy_start_opts(img, 0, host, NULL, &lz), EINVAL, "opts");
    CHECK(munmap(host, LEN) == 0);
}

static void bad_arguments(mr_image *img)
{
    uint8_t *host = map_anon();
    mr_lazy *lz = NULL;
    mr_snapshot *s = NULL;
    CHECK_ERR(mr_lazy_start(img, 0, NULL, 0, 1, &lz), EINVAL, "host");
    CHECK_ERR(mr_lazy_start(img, 0, host + 8, 0, 1, &lz), EINVAL, "aligned");
    CHECK_ERR(mr_lazy_start(img, 7, host, 0, 1, &lz), ENOENT, "7");
    CHECK_ERR(mr_lazy_start(img, 0, host, 0x40, 1, &lz), EINVAL, "flags");
    CHECK_ERR(mr_lazy_start(NULL, 0, host, 0, 1, &lz), EINVAL, "img");
    CHECK_ERR(mr_lazy_start(img, 0, host, 0, 1, NULL), EINVAL, "out");
    CHECK_ERR(mr_lazy_wait(NULL), EINVAL, "lz");
    CHECK_ERR(mr_snapshot_start(img, 0, NULL, 1, &s), EINVAL, "host");
    CHECK_ERR(mr_snapshot_wait(NULL), EINVAL, "s");
    CHECK_ERR(mr_snapshot_start(img, 0, host, 1, &s), EPERM, "read-only");
    CHECK(lz == NULL && s == NULL);
    OK(mr_lazy_stop(NULL));
    OK(mr_snapshot_stop(NULL));
    CHECK(munmap(host, LEN) == 0);
}

/* A process that may not use userfaultfd (nobody, with
 * vm.unprivileged_userfaultfd = 0 and /dev/userfaultfd root-only). */
static void no_permission(mr_image *img)
{
    if (geteuid() != 0) {
        printf("no_permission: not root, checked as the current user\n");
    }
    uint8_t *host = map_anon();
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
            _exit(3);
        mr_lazy *lz = NULL;
        int r = mr_lazy_start(img, 0, host, 0, 1, &lz);
        if (r == 0) {
            /* Permitted after all (an unprivileged userfaultfd system). */
            _exit(mr_lazy_stop(lz) == 0 ? 4 : 5);
        }
        const char *m = mr_last_error();
        if (r != -EPERM || !strstr(m, "vm.unprivileged_userfaultfd") ||
            !strstr(m, "/dev/userfaultfd")) {
            fprintf(stderr, "child: r=%d msg=%s\n", r, m);
            _exit(1);
        }
        _exit(0);
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st));
    if (geteuid() == 0 || WEXITSTATUS(st) != 4)
        CHECK_EQ(WEXITSTATUS(st), 0);
    CHECK(munmap(host, LEN) == 0);
}

static void map_block(mr_image *img, const uint8_t *want)
{
    void *p = NULL;
    OK(mr_image_map_ramblock(img, 0, NULL, 0, &p));
    CHECK(p != NULL);
    CHECK(memcmp(p, want, LEN) == 0);
    memset(p, 0x77, PAGE); /* private: the file does not change */
    CHECK(munmap(p, LEN) == 0);
    uint8_t page[PAGE];
    CHECK(mr_image_read_page(img, 0, 0, page) >= 0);
    CHECK(memcmp(page, want, PAGE) == 0);
    /* Over the caller's reserved range. */
    uint8_t *host = map_anon();
    OK(mr_image_map_ramblock(img, 0, host, 0, &p));
    CHECK(p == host);
    CHECK(memcmp(host, want, LEN) == 0);
    CHECK_ERR(mr_image_map_ramblock(img, 0, host + 1, 0, &p), EINVAL, "aligned");
    CHECK_ERR(mr_image_map_ramblock(img, 0, NULL, 1, &p), EINVAL, "flags");
    CHECK_ERR(mr_image_map_ramblock(img, 3, NULL, 0, &p), ENOENT, "3");
    CHECK(munmap(host, LEN) == 0);
}

/* A kernel without userfaultfd, simulated in a child with a seccomp filter
 * that answers the system call with ENOSYS. */
static void no_userfaultfd(mr_image *img)
{
    uint8_t *host = map_anon();
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_userfaultfd, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { (unsigned short)(sizeof(f) / sizeof(f[0])), f };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
            _exit(3);
        mr_lazy *lz = NULL;
        int r = mr_lazy_start(img, 0, host, 0, 1, &lz);
        const char *m = mr_last_error();
        if (r != -ENOSYS || !strstr(m, "CONFIG_USERFAULTFD")) {
            fprintf(stderr, "child: lazy r=%d msg=%s\n", r, m);
            _exit(1);
        }
        _exit(0);
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st));
    CHECK_EQ(WEXITSTATUS(st), 0);
    CHECK(munmap(host, LEN) == 0);
}

struct writer {
    uint8_t *host;
    volatile int quit;
};

static void *write_pages(void *arg)
{
    struct writer *w = arg;
    uint64_t i = 0;
    while (!w->quit) {
        uint64_t p = (i * 2654435761u) % PAGES;
        memset(w->host + p * PAGE + 64, 0xee, 64);
        i++;
    }
    return NULL;
}

static void live_snapshot(const char *path, const uint8_t *init)
{
    uint8_t *host = map_anon();
    memcpy(host, init, LEN);
    uint8_t *at_start = malloc(LEN);
    CHECK(at_start != NULL);
    memcpy(at_start, host, LEN);
    mr_image *img = NULL;
    OK(mr_image_create(path, "pc-q35-10.0", blocks, 1, 0, &img));
    mr_snapshot *s = NULL;
    OK(mr_snapshot_start(img, 0, host, 2, &s));
    struct writer w = { host, 0 };
    child_touch_segv(host + 3 * PAGE, 1);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, write_pages, &w) == 0);
    OK(mr_snapshot_wait(s));
    w.quit = 1;
    CHECK(pthread_join(th, NULL) == 0);
    OK(mr_snapshot_stop(s));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
    CHECK(memcmp(host, at_start, LEN) != 0); /* the writer did write */
    OK(mr_image_open(path, 0, &img));
    uint8_t *got = malloc(LEN);
    CHECK(got != NULL);
    OK(mr_image_read_ramblock(img, 0, got, MR_READ_ZERO_ABSENT, 2));
    for (uint64_t p = 0; p < PAGES; p++)
        if (memcmp(got + p * PAGE, at_start + p * PAGE, PAGE) != 0)
            FAIL("snapshot page %" PRIu64 " is not the start instant's", p);
    OK(mr_image_close(img));
    free(got);
    free(at_start);
    CHECK(munmap(host, LEN) == 0);
}

int main(void)
{
    char path[512], snap[512];
    test_path(path, sizeof(path), "lazy");
    test_path(snap, sizeof(snap), "snapshot");
    uint8_t *want = malloc(LEN);
    CHECK(want != NULL);
    fill_guest(want, 11);
    make_image(path, want);
    mr_image *img = NULL;
    OK(mr_image_open(path, MR_IMAGE_DIRECT, &img));
    char why[512];
    int usable = uffd_usable(why, sizeof(why));
    if (!usable) {
        const char *all = getenv("MR_TEST_REQUIRE_ALL");
        if (all != NULL && strcmp(all, "1") == 0)
            FAIL("lazy_snapshot needs userfaultfd and MR_TEST_REQUIRE_ALL=1 (the full suite "
                 "skips nothing): %s; run the tests as root, or `sysctl "
                 "vm.unprivileged_userfaultfd=1`, or give this user read/write access to "
                 "/dev/userfaultfd (the kernel needs CONFIG_USERFAULTFD)",
                 why);
    }
    if (usable) {
        lazy_with_touchers(img, want);
        lazy_options(img, want);
    }
    bad_arguments(img);
    no_permission(img);
    no_userfaultfd(img);
    map_block(img, want);
    OK(mr_image_close(img));
    if (usable)
        live_snapshot(snap, want);
    unlink(path);
    unlink(snap);
    free(want);
    if (!usable) {
        printf("NOT RUN: lazy_snapshot's on-demand restores and live snapshot need "
               "userfaultfd (%s); the error paths ran and passed; run scripts/test-all.sh\n",
               why);
        return 77;
    }
    printf("lazy_snapshot: ok\n");
    return 0;
}
