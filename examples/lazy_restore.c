/* On-demand restore of a ramblock, the way a hypervisor would use it:
 *
 *   lazy_restore [IMAGE [BLOCK-NAME]]
 *
 * Maps fresh anonymous memory for the block (as guest RAM), starts
 * mr_lazy_start (the "guest" may run at once), touches a page and reports
 * how long its data took, waits for prefetch to make every page resident,
 * stops, and checks the memory against an eager mr_image_read_ramblock.
 * Without arguments it first writes a 64 MiB demo image in $TMPDIR (or
 * /tmp). Needs userfaultfd: root, or vm.unprivileged_userfaultfd = 1, or
 * access to /dev/userfaultfd. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <mappedram.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int fail(const char *what, int r)
{
    fprintf(stderr, "lazy_restore: %s: %s (%s)\n", what, mr_last_error(), strerror(-r));
    return 1;
}

/* A demo image: 64 MiB, a third of the pages zero. */
static int make_demo(const char *path)
{
    const uint64_t len = 64u << 20;
    mr_ramblock_desc b = { "pc.ram", len, 4096 };
    uint8_t *m = malloc(len);
    if (m == NULL)
        return -ENOMEM;
    for (uint64_t i = 0; i < len; i += 8) {
        uint64_t v = (i / 4096) % 3 == 0 ? 0 : i * 0x9e3779b97f4a7c15ull | 1;
        memcpy(m + i, &v, 8);
    }
    mr_image *img = NULL;
    int r = mr_image_create(path, "pc-q35-10.0", &b, 1, 0, &img);
    if (r == 0)
        r = mr_image_save_ramblock(img, 0, m, NULL, 2);
    if (r == 0)
        r = mr_image_finish(img);
    int c = mr_image_close(img);
    free(m);
    return r ? r : c;
}

int main(int argc, char **argv)
{
    char demo[4096] = "";
    const char *path = argc > 1 ? argv[1] : NULL;
    if (path == NULL) {
        const char *dir = getenv("TMPDIR");
        snprintf(demo, sizeof demo, "%s/lazy-demo.%ld.img", dir ? dir : "/tmp", (long)getpid());
        int r = make_demo(demo);
        if (r < 0)
            return fail("writing the demo image", r);
        path = demo;
    }
    mr_image *img = NULL;
    int r = mr_image_open(path, MR_IMAGE_DIRECT, &img);
    if (r < 0)
        return fail("open", r);
    int block = argc > 2 ? mr_image_find_ramblock(img, argv[2]) : 0;
    if (block < 0)
        return fail("find_ramblock", block);
    mr_ramblock_info info;
    if ((r = mr_image_ramblock_info(img, (uint32_t)block, &info)) < 0)
        return fail("ramblock_info", r);
    uint8_t *guest = mmap(NULL, info.used_length, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (guest == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    double t0 = now_us();
    mr_lazy *lz = NULL;
    r = mr_lazy_start(img, (uint32_t)block, guest, 0, 2, &lz);
    if (r < 0)
        return fail("mr_lazy_start", r);
    double t1 = now_us();
    /* The "guest" runs: touch a page in the middle. */
    volatile uint8_t v = guest[info.used_length / 2 + 123];
    (void)v;
    double t2 = now_us();
    r = mr_lazy_wait(lz);
    double t3 = now_us();
    int s = mr_lazy_stop(lz);
    if (r < 0)
        return fail("mr_lazy_wait", r);
    if (s < 0)
        return fail("mr_lazy_stop", s);
    printf("ramblock '%s' (%" PRIu64 " MiB, %" PRIu64 " pages present)\n", info.idstr,
           info.used_length >> 20, info.pages_present);
    printf("start call %.0f us, first touched page %.0f us after start, every page resident "
           "after %.1f ms\n",
           t1 - t0, t2 - t0, (t3 - t0) / 1e3);
    uint8_t *eager = malloc(info.used_length);
    if (eager == NULL)
        return 1;
    if ((r = mr_image_read_ramblock(img, (uint32_t)block, eager, MR_READ_ZERO_ABSENT, 2)) < 0)
        return fail("read_ramblock", r);
    int same = memcmp(eager, guest, info.used_length) == 0;
    printf("on-demand restore %s the eager restore\n", same ? "equals" : "DIFFERS FROM");
    free(eager);
    munmap(guest, info.used_length);
    if ((r = mr_image_close(img)) < 0)
        return fail("close", r);
    if (demo[0])
        unlink(demo);
    return same ? 0 : 1;
}
