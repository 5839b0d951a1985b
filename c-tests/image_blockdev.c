/* Images on block devices are refused up front, with -ENOTSUP and a message
 * saying why, by mr_image_create / _create_on / _open / _open_on (an
 * image's end and completion record are found at the end of its file; a
 * device has no such end, and it cannot be truncated). Tried on a loop
 * device whose backing file holds a valid, finished image: nothing on the
 * device changes, and open does not misreport the image as incomplete.
 *
 * Needs root and losetup (util-linux); fails saying so when either is
 * missing. */
#include <fcntl.h>
#include <sys/stat.h>

#include "mrtest.h"

#define PAGE 4096u
#define MEM_LEN (1u << 20)

static char loopdev[256];

static void detach(void)
{
    if (loopdev[0] != '\0') {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "losetup -d %s", loopdev);
        if (system(cmd) != 0)
            fprintf(stderr, "warning: '%s' failed\n", cmd);
    }
}

static void attach(const char *file)
{
    if (system("command -v losetup >/dev/null 2>&1") != 0)
        FAIL("losetup not found: this test needs util-linux's losetup "
             "(Debian: apt-get install util-linux) and root");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "losetup -f --show '%s' 2>&1", file);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL);
    char out[256] = "";
    if (fgets(out, sizeof out, p) == NULL)
        out[0] = '\0';
    int rc = pclose(p);
    out[strcspn(out, "\n")] = '\0';
    if (rc != 0 || strncmp(out, "/dev/loop", 9) != 0)
        FAIL("'%s' failed (%s): this test needs root and a free loop device", cmd, out);
    snprintf(loopdev, sizeof loopdev, "%s", out);
    atexit(detach);
}

static uint8_t *slurp(const char *path, size_t len)
{
    uint8_t *buf = malloc(len);
    CHECK(buf != NULL);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    CHECK(pread(fd, buf, len, 0) == (ssize_t)len);
    close(fd);
    return buf;
}

int main(void)
{
    char path[512], link[600];
    test_path(path, sizeof path, "blockdev");
    mr_ramblock_desc b = { "mem", MEM_LEN, PAGE };
    mr_image *img = NULL, *sentinel = (mr_image *)(uintptr_t)0x1234, *out = sentinel;
    uint8_t page[PAGE];
    OK(mr_image_create(path, "pc-i440fx-10.0", &b, 1, 0, &img));
    for (uint32_t i = 0; i < PAGE; i++)
        page[i] = pattern(9, i);
    OK(mr_image_write_page(img, 0, 0, page));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
    /* A loop device's size is whole 512-byte sectors: pad the file. */
    struct stat st;
    CHECK(stat(path, &st) == 0);
    size_t len = ((size_t)st.st_size + 511) & ~(size_t)511;
    CHECK(truncate(path, (off_t)len) == 0);
    uint8_t *before = slurp(path, len);
    attach(path);

    const uint32_t open_flags[] = { 0, MR_IMAGE_RECOVER, MR_IMAGE_READ_WRITE,
                                    MR_IMAGE_READ_WRITE | MR_IMAGE_RECOVER, MR_IMAGE_NO_LOCK };
    for (size_t i = 0; i < sizeof open_flags / sizeof open_flags[0]; i++) {
        CHECK_ERR(mr_image_open(loopdev, open_flags[i], &out), ENOTSUP, "is a block device");
        mrtest_check_msg("open", loopdev, __FILE__, __LINE__);
    }
    CHECK_ERR(mr_image_create(loopdev, "pc", &b, 1, 0, &out), ENOTSUP, "is a block device");
    snprintf(link, sizeof link, "%s.link", path);
    unlink(link);
    CHECK(symlink(loopdev, link) == 0);
    CHECK_ERR(mr_image_create(link, "pc", &b, 1, 0, &out), ENOTSUP, "is a block device");
    CHECK(unlink(link) == 0);

    mr_channel *ch = NULL;
    OK(mr_channel_open(loopdev, MR_OPEN_READ | MR_OPEN_WRITE, &ch));
    CHECK_ERR(mr_image_open_on(ch, MR_OFFSET_DETECT, 0, &out), ENOTSUP, "is a block device");
    CHECK_ERR(mr_image_create_on(ch, 0, "pc", &b, 1, 0, &out), ENOTSUP, "is a block device");
    OK(mr_channel_close(ch));
    CHECK(out == sentinel);

    uint8_t *after = slurp(path, len);
    CHECK(memcmp(before, after, len) == 0);
    free(before);
    free(after);
    detach();
    loopdev[0] = '\0';
    CHECK(unlink(path) == 0);
    printf("image_blockdev: ok\n");
    return 0;
}
