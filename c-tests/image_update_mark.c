/* A crash in the middle of an in-place update leaves the update mark: the
 * image opens as -MR_EINCOMPLETE. Opening it MR_IMAGE_RECOVER |
 * MR_IMAGE_READ_WRITE and closing (with no write, or with writes and a
 * sync) must not clear the mark: the pages the crashed writer was writing
 * may be torn. Only mr_image_finish, the caller's decision, clears it. */
#include <sys/wait.h>

#include "mrtest.h"

#define PAGE 4096u
#define MEM_LEN (1u << 20)

static void fill(uint8_t *p, uint64_t seed)
{
    for (uint32_t i = 0; i < PAGE; i++)
        p[i] = pattern(seed, i);
}

static void expect_incomplete(const char *path, const char *when)
{
    mr_image *img = NULL;
    int rc = mr_image_open(path, 0, &img);
    if (rc != -MR_EINCOMPLETE)
        FAIL("%s: mr_image_open = %d (%s), want -MR_EINCOMPLETE: the update mark was cleared",
             when, rc, rc < 0 ? strerror(-rc) : "opened");
    mrtest_check_msg(when, "update", __FILE__, __LINE__);
}

int main(void)
{
    char path[512];
    test_path(path, sizeof path, "update_mark");
    mr_ramblock_desc b = { "mem", MEM_LEN, PAGE };
    mr_image *img = NULL;
    uint8_t page[PAGE], got[PAGE];
    OK(mr_image_create(path, "pc-i440fx-10.0", &b, 1, 0, &img));
    fill(page, 1);
    OK(mr_image_write_page(img, 0, 0, page));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));

    /* A writer that dies mid-update (no close; the page cache survives). */
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        mr_image *w = NULL;
        uint8_t p[PAGE];
        fill(p, 2);
        if (mr_image_open(path, MR_IMAGE_READ_WRITE, &w) != 0 ||
            mr_image_write_page(w, 0, PAGE, p) != 0)
            _exit(2);
        _exit(0);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    expect_incomplete(path, "after the crash");

    /* A bare recover-open + close. */
    OK(mr_image_open(path, MR_IMAGE_RECOVER | MR_IMAGE_READ_WRITE, &img));
    OK(mr_image_close(img));
    expect_incomplete(path, "after a bare recover-open and close");

    /* Read-only recovery, and a recovery that writes and syncs. */
    OK(mr_image_open(path, MR_IMAGE_RECOVER, &img));
    OK(mr_image_close(img));
    expect_incomplete(path, "after a read-only recover-open");
    OK(mr_image_open(path, MR_IMAGE_RECOVER | MR_IMAGE_READ_WRITE, &img));
    fill(page, 3);
    OK(mr_image_write_page(img, 0, 2 * PAGE, page));
    OK(mr_image_sync(img));
    OK(mr_image_close(img));
    expect_incomplete(path, "after recover-open, write, sync, close");

    /* The decision: rewrite the page that was being updated, finish. */
    OK(mr_image_open(path, MR_IMAGE_RECOVER | MR_IMAGE_READ_WRITE, &img));
    fill(page, 2);
    OK(mr_image_write_page(img, 0, PAGE, page));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
    OK(mr_image_open(path, 0, &img));
    for (uint64_t i = 0; i < 3; i++) {
        CHECK_EQ(mr_image_read_page(img, 0, i * PAGE, got), 1);
        fill(page, i + 1);
        CHECK(memcmp(got, page, PAGE) == 0);
    }
    OK(mr_image_close(img));
    CHECK(unlink(path) == 0);
    printf("image_update_mark: ok\n");
    return 0;
}
