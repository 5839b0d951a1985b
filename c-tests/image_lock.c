/* Image locking (open file description locks, like QEMU's image locks):
 * a writer (mr_image_create, MR_IMAGE_READ_WRITE) excludes other writers
 * and readers, readers share; a conflict fails at once with -EBUSY and a
 * message naming the holder. OFD locks conflict between two opens in one
 * process as between processes. MR_IMAGE_NO_LOCK opts out.
 *
 * Without locks, two writers silently lose updates (each close rewrites
 * the bitmap from its own copy); the two-process case checks that the
 * second writer is refused and, once the first is done, both updates are
 * there. */
#include <signal.h>
#include <sys/wait.h>

#include "mrtest.h"

#define PAGE 4096u
#define MEM_LEN (1u << 20)

static void fill(uint8_t *p, uint64_t seed)
{
    for (uint32_t i = 0; i < PAGE; i++)
        p[i] = pattern(seed, i);
}

static void make_image(const char *path)
{
    mr_ramblock_desc b = { "mem", MEM_LEN, PAGE };
    mr_image *img = NULL;
    uint8_t page[PAGE];
    OK(mr_image_create(path, "pc-i440fx-10.0", &b, 1, 0, &img));
    fill(page, 1);
    OK(mr_image_write_page(img, 0, 0, page));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
}

static void one_process(const char *path)
{
    mr_image *w = NULL, *o = NULL, *r1 = NULL, *r2 = NULL;
    OK(mr_image_open(path, MR_IMAGE_READ_WRITE, &w));
    CHECK_ERR(mr_image_open(path, MR_IMAGE_READ_WRITE, &o), EBUSY, "locked for writing");
    mrtest_check_msg("second writer", "(this process)", __FILE__, __LINE__);
    CHECK(o == NULL);
    CHECK_ERR(mr_image_open(path, 0, &o), EBUSY, "locked for writing");
    CHECK_ERR(mr_image_open(path, MR_IMAGE_RECOVER, &o), EBUSY, "MR_IMAGE_NO_LOCK");
    /* Create must not replace an image a writer holds. */
    mr_ramblock_desc b = { "other", MEM_LEN, PAGE };
    CHECK_ERR(mr_image_create(path, "pc", &b, 1, 0, &o), EBUSY, "was not replaced");
    /* Opt-out: a caller that coordinates itself. */
    OK(mr_image_open(path, MR_IMAGE_NO_LOCK, &o));
    OK(mr_image_close(o));
    OK(mr_image_close(w));

    /* Readers share; a writer is refused while they read. */
    OK(mr_image_open(path, 0, &r1));
    OK(mr_image_open(path, MR_IMAGE_DIRECT, &r2));
    CHECK_ERR(mr_image_open(path, MR_IMAGE_READ_WRITE, &o), EBUSY, "locked for reading");
    OK(mr_image_close(r2));
    CHECK_ERR(mr_image_open(path, MR_IMAGE_READ_WRITE, &o), EBUSY, "locked for reading");
    /* Create replaces the file (a new inode) while a reader reads the old
     * one: allowed, and the reader keeps reading what it opened. */
    OK(mr_image_create(path, "pc", &b, 1, 0, &w));
    uint8_t page[PAGE], got[PAGE];
    fill(page, 1);
    CHECK_EQ(mr_image_read_page(r1, 0, 0, got), 1);
    CHECK(memcmp(got, page, PAGE) == 0);
    OK(mr_image_close(r1));
    OK(mr_image_finish(w));
    OK(mr_image_close(w));
    OK(mr_image_open(path, MR_IMAGE_READ_WRITE, &w));
    OK(mr_image_close(w));

    /* A new image is held for writing from its creation. */
    OK(mr_image_create(path, "pc", &b, 1, 0, &w));
    CHECK_ERR(mr_image_open(path, MR_IMAGE_RECOVER, &o), EBUSY, "locked for writing");
    OK(mr_image_finish(w));
    OK(mr_image_close(w));
    OK(mr_image_open(path, 0, &o));
    CHECK_EQ(mr_image_find_ramblock(o, "other"), 0);
    OK(mr_image_close(o));
}

static void xread(int fd, char *c)
{
    CHECK(read(fd, c, 1) == 1);
}

static void xwrite(int fd, char c)
{
    CHECK(write(fd, &c, 1) == 1);
}

/* The child holds the image for writing until told to finish. */
static void child(const char *path, int ready_w, int go_r)
{
    mr_image *w = NULL;
    uint8_t page[PAGE];
    char c;
    if (mr_image_open(path, MR_IMAGE_READ_WRITE, &w) != 0)
        _exit(2);
    fill(page, 2);
    if (mr_image_write_page(w, 0, PAGE, page) != 0)
        _exit(3);
    xwrite(ready_w, 'r');
    xread(go_r, &c);
    if (mr_image_close(w) != 0)
        _exit(4);
    _exit(0);
}

static void two_processes(const char *path)
{
    make_image(path);
    int ready[2], go[2];
    CHECK(pipe(ready) == 0 && pipe(go) == 0);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        child(path, ready[1], go[0]);
    char c;
    xread(ready[0], &c);
    mr_image *img = NULL;
    CHECK_ERR(mr_image_open(path, MR_IMAGE_READ_WRITE, &img), EBUSY, "locked for writing");
    char holder[64];
    snprintf(holder, sizeof holder, "process %ld", (long)pid);
    mrtest_check_msg("writer vs. another process", holder, __FILE__, __LINE__);
    CHECK_ERR(mr_image_open(path, 0, &img), EBUSY, holder);
    xwrite(go[1], 'g');
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        FAIL("child failed (status 0x%x)", status);
    /* Our turn: both updates survive. */
    uint8_t page[PAGE], got[PAGE];
    OK(mr_image_open(path, MR_IMAGE_READ_WRITE, &img));
    fill(page, 3);
    OK(mr_image_write_page(img, 0, 2 * PAGE, page));
    OK(mr_image_close(img));
    OK(mr_image_open(path, 0, &img));
    for (uint64_t i = 0; i < 3; i++) {
        CHECK_EQ(mr_image_read_page(img, 0, i * PAGE, got), 1);
        fill(page, i + 1);
        CHECK(memcmp(got, page, PAGE) == 0);
    }
    OK(mr_image_close(img));
    close(ready[0]);
    close(ready[1]);
    close(go[0]);
    close(go[1]);
}

int main(void)
{
    char path[512];
    test_path(path, sizeof path, "lock");
    make_image(path);
    one_process(path);
    CHECK(unlink(path) == 0);
    two_processes(path);
    CHECK(unlink(path) == 0);
    printf("image_lock: ok\n");
    return 0;
}
