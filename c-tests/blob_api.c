/* Named blobs through the C API: put before finish, read back after open,
 * length queries, ENOBUFS/ENOENT/EINVAL, replacement in place, and a
 * corrupt blob reported as -EBADMSG naming it. */
#include "mrtest.h"

#include <fcntl.h>

static const char STATE[] = "vcpu registers, version 1";

static void make(const char *path)
{
    mr_ramblock_desc b[] = { { "mem", 1u << 20, 4096 } };
    mr_image *img;
    OK(mr_image_create(path, "blob-c-test", b, 1, 0, &img));
    char page[4096];
    for (size_t i = 0; i < sizeof(page); i++)
        page[i] = (char)pattern(1, i);
    OK(mr_image_write_page(img, 0, 8192, page));
    OK(mr_image_put_blob(img, "vcpu0", STATE, sizeof(STATE)));
    OK(mr_image_put_blob(img, "empty", NULL, 0));
    CHECK_ERR(mr_image_put_blob(img, "", STATE, 1), EINVAL, "blob name");
    CHECK_ERR(mr_image_put_blob(img, "x", NULL, 5), EINVAL, "data");
    CHECK_ERR(mr_image_put_blob(NULL, "x", STATE, 1), EINVAL, "img");
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
}

static void read_back(const char *path)
{
    mr_image *img;
    OK(mr_image_open(path, 0, &img));
    CHECK_EQ(mr_image_blob_count(img), 2);
    char name[256];
    CHECK_EQ(mr_image_blob_name(img, 0, name), 5);
    CHECK(strcmp(name, "vcpu0") == 0);
    CHECK_ERR(mr_image_blob_name(img, 2, name), ENOENT, "index 2");
    uint64_t len = 0;
    OK(mr_image_get_blob(img, "vcpu0", NULL, 0, &len));
    CHECK_EQ(len, sizeof(STATE));
    char buf[64];
    uint64_t got = 12345;
    CHECK_ERR(mr_image_get_blob(img, "vcpu0", buf, 4, &got), ENOBUFS, "26 bytes");
    CHECK_EQ(got, 12345); /* out-parameter untouched on failure */
    OK(mr_image_get_blob(img, "vcpu0", buf, sizeof(buf), &got));
    CHECK_EQ(got, sizeof(STATE));
    CHECK(memcmp(buf, STATE, sizeof(STATE)) == 0);
    OK(mr_image_get_blob(img, "empty", buf, sizeof(buf), &got));
    CHECK_EQ(got, 0);
    CHECK_ERR(mr_image_get_blob(img, "nope", buf, sizeof(buf), &got), ENOENT, "nope");
    CHECK_ERR(mr_image_put_blob(img, "x", STATE, 1), EPERM, "read-only");
    OK(mr_image_close(img));
}

static void replace(const char *path)
{
    mr_image *img;
    OK(mr_image_open(path, MR_IMAGE_READ_WRITE, &img));
    OK(mr_image_put_blob(img, "vcpu0", "v2", 2));
    OK(mr_image_remove_blob(img, "empty"));
    CHECK_ERR(mr_image_remove_blob(img, "empty"), ENOENT, "empty");
    OK(mr_image_close(img)); /* close writes the new blobs */
    OK(mr_image_open(path, 0, &img));
    CHECK_EQ(mr_image_blob_count(img), 1);
    char buf[8];
    uint64_t got;
    OK(mr_image_get_blob(img, "vcpu0", buf, sizeof(buf), &got));
    CHECK(got == 2 && memcmp(buf, "v2", 2) == 0);
    char page[4096];
    CHECK_EQ(mr_image_read_page(img, 0, 8192, page), 1);
    CHECK(page[0] == (char)pattern(1, 0));
    OK(mr_image_close(img));
}

static void corrupt(const char *path)
{
    /* Flip a byte of the blob's data ("v2" is the only copy of it). */
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    off_t size = lseek(fd, 0, SEEK_END);
    char *all = malloc((size_t)size);
    CHECK(all != NULL && pread(fd, all, (size_t)size, 0) == size);
    off_t at = -1;
    for (off_t i = size - 2; i > 0; i--) {
        if (all[i] == 'v' && all[i + 1] == '2') {
            at = i;
            break;
        }
    }
    CHECK(at > 0);
    CHECK(pwrite(fd, "w", 1, at) == 1);
    free(all);
    close(fd);
    mr_image *img;
    OK(mr_image_open(path, 0, &img));
    char buf[8];
    uint64_t got;
    CHECK_ERR(mr_image_get_blob(img, "vcpu0", buf, sizeof(buf), &got), EBADMSG, "vcpu0");
    mrtest_check_msg("corrupt blob", "checksum", __FILE__, __LINE__);
    OK(mr_image_close(img));
}

int main(void)
{
    char path[512];
    test_path(path, sizeof(path), "blob_api");
    make(path);
    read_back(path);
    replace(path);
    corrupt(path);
    unlink(path);
    printf("blob_api: ok\n");
    return 0;
}
