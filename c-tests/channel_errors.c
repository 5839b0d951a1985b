/* mr_channel: error paths, NULL handling, out-parameters, messages, and the
 * basic operations (write/read/size/truncate/punch/dio_align/from_fd). */
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>

#include "mrtest.h"

static mr_channel *const SENTINEL_CH = (mr_channel *)(uintptr_t)0x5a5a5a5a;

static void test_open_errors(const char *dir)
{
    char missing[4096];
    snprintf(missing, sizeof missing, "%s/no-such-dir-%ld/file", dir, (long)getpid());
    mr_channel *ch = SENTINEL_CH;

    CHECK_ERR(mr_channel_open(missing, MR_OPEN_READ, &ch), ENOENT, missing);
    CHECK(ch == SENTINEL_CH);

    /* A directory cannot be opened for writing. */
    CHECK_ERR(mr_channel_open(dir, MR_OPEN_READ | MR_OPEN_WRITE, &ch), EISDIR, dir);
    CHECK(ch == SENTINEL_CH);

    /* Bad flags. */
    CHECK_ERR(mr_channel_open(missing, 0, &ch), EINVAL, "MR_OPEN_READ");
    CHECK_ERR(mr_channel_open(missing, 0x100u | MR_OPEN_READ, &ch), EINVAL, "0x100");
    CHECK_ERR(mr_channel_open(missing, MR_OPEN_READ | MR_OPEN_CREATE, &ch), EINVAL,
              "MR_OPEN_CREATE");
    CHECK_ERR(mr_channel_open(missing, MR_OPEN_READ | MR_OPEN_TRUNC, &ch), EINVAL,
              "MR_OPEN_TRUNC");
    CHECK(ch == SENTINEL_CH);

    /* NULL pointers. */
    CHECK_ERR(mr_channel_open(NULL, MR_OPEN_READ, &ch), EINVAL, "path");
    CHECK_ERR(mr_channel_open(missing, MR_OPEN_READ, NULL), EINVAL, "out");
    CHECK_ERR(mr_channel_from_fd(0, MR_OPEN_READ, NULL), EINVAL, "out");
    CHECK(ch == SENTINEL_CH);

    /* Bad descriptors. */
    CHECK_ERR(mr_channel_from_fd(-1, MR_OPEN_READ, &ch), EBADF, NULL);
    CHECK(ch == SENTINEL_CH);

    /* A FIFO is refused at once (it used to block in open(2) forever), with
     * the error /dev/null gets. The alarm kills the test if it blocks. */
    char fifo[4096];
    snprintf(fifo, sizeof fifo, "%s/fifo-%ld", dir, (long)getpid());
    CHECK(mkfifo(fifo, 0600) == 0);
    alarm(30);
    CHECK_ERR(mr_channel_open("/dev/null", MR_OPEN_READ, &ch), EINVAL,
              "not a regular file or block device");
    CHECK_ERR(mr_channel_open(fifo, MR_OPEN_READ, &ch), EINVAL,
              "not a regular file or block device");
    CHECK_ERR(mr_channel_open(fifo, MR_OPEN_WRITE, &ch), EINVAL,
              "not a regular file or block device");
    CHECK(ch == SENTINEL_CH);
    struct mr_image *img = NULL;
    CHECK_ERR(mr_image_open(fifo, 0, &img), EINVAL, fifo);
    CHECK(img == NULL);
    alarm(0);
    CHECK(unlink(fifo) == 0);
}

static void test_null_handles(void)
{
    char buf[8];
    struct iovec iov = { buf, sizeof buf };
    uint64_t u = 77;
    uint32_t a = 5, b = 6;

    CHECK_ERR(mr_channel_pwritev(NULL, &iov, 1, 0), EINVAL, "ch");
    CHECK_ERR(mr_channel_preadv(NULL, &iov, 1, 0), EINVAL, "ch");
    CHECK_ERR(mr_channel_sync(NULL), EINVAL, "ch");
    CHECK_ERR(mr_channel_size(NULL, &u), EINVAL, "ch");
    CHECK_ERR(mr_channel_truncate(NULL, 0), EINVAL, "ch");
    CHECK_ERR(mr_channel_punch_hole(NULL, 0, 4096), EINVAL, "ch");
    CHECK_ERR(mr_channel_dio_align(NULL, &a, &b), EINVAL, "ch");
    CHECK(u == 77 && a == 5 && b == 6);
    /* close takes NULL */
    OK(mr_channel_close(NULL));
}

static void test_basic_io(const char *path)
{
    mr_channel *ch = NULL;
    OK(mr_channel_open(path, MR_OPEN_READ | MR_OPEN_WRITE | MR_OPEN_CREATE | MR_OPEN_TRUNC, &ch));
    CHECK(ch != NULL);

    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK_EQ(st.st_mode & 0777, 0600);

    char a[100], b[5000], r1[100], r2[5000];
    for (size_t i = 0; i < sizeof a; i++)
        a[i] = (char)pattern(1, i);
    for (size_t i = 0; i < sizeof b; i++)
        b[i] = (char)pattern(2, i);
    struct iovec w[2] = { { a, sizeof a }, { b, sizeof b } };
    CHECK_EQ(mr_channel_pwritev(ch, w, 2, 12345), sizeof a + sizeof b);

    uint64_t size = 0;
    OK(mr_channel_size(ch, &size));
    CHECK_EQ(size, 12345 + sizeof a + sizeof b);

    struct iovec r[2] = { { r1, sizeof r1 }, { r2, sizeof r2 } };
    CHECK_EQ(mr_channel_preadv(ch, r, 2, 12345), sizeof a + sizeof b);
    CHECK(memcmp(a, r1, sizeof a) == 0 && memcmp(b, r2, sizeof b) == 0);

    /* Before the data: zeros (a hole). */
    CHECK_EQ(mr_channel_preadv(ch, r, 1, 0), sizeof r1);
    for (size_t i = 0; i < sizeof r1; i++)
        CHECK(r1[i] == 0);

    /* Reads stop at end of file. */
    CHECK_EQ(mr_channel_preadv(ch, r, 2, size - 10), 10);
    CHECK_EQ(mr_channel_preadv(ch, r, 2, size + 100000), 0);

    /* Zero-length transfers. */
    CHECK_EQ(mr_channel_pwritev(ch, NULL, 0, 0), 0);
    CHECK_EQ(mr_channel_preadv(ch, NULL, 0, 0), 0);
    struct iovec empty = { a, 0 };
    CHECK_EQ(mr_channel_pwritev(ch, &empty, 1, 5), 0);
    CHECK_EQ(mr_channel_preadv(ch, &empty, 1, 5), 0);

    /* Bad iovec counts and NULL iov. */
    CHECK_ERR(mr_channel_pwritev(ch, w, -1, 0), EINVAL, "iovcnt");
    CHECK_ERR(mr_channel_pwritev(ch, w, INT_MAX, 0), EINVAL, "iovcnt");
    CHECK_ERR(mr_channel_preadv(ch, r, INT_MIN, 0), EINVAL, "iovcnt");
    CHECK_ERR(mr_channel_preadv(ch, r, 1025, 0), EINVAL, "iovcnt");
    CHECK_ERR(mr_channel_pwritev(ch, NULL, 1, 0), EINVAL, "iov");

    /* Out-parameters on failure and NULL out-parameters. */
    CHECK_ERR(mr_channel_size(ch, NULL), EINVAL, "out");
    uint32_t ma = 11, oa = 12;
    CHECK_ERR(mr_channel_dio_align(ch, &ma, &oa), ENOTSUP, "O_DIRECT");
    CHECK(ma == 11 && oa == 12);

    /* Truncate and punch a hole. */
    OK(mr_channel_truncate(ch, 12345 + 50));
    OK(mr_channel_size(ch, &size));
    CHECK_EQ(size, 12345 + 50);
    OK(mr_channel_truncate(ch, 3 * 4096));
    char page[4096];
    memset(page, 0x77, sizeof page);
    struct iovec pw = { page, sizeof page };
    CHECK_EQ(mr_channel_pwritev(ch, &pw, 1, 4096), 4096);
    OK(mr_channel_punch_hole(ch, 4096, 4096));
    OK(mr_channel_size(ch, &size));
    CHECK_EQ(size, 3 * 4096);
    CHECK_EQ(mr_channel_preadv(ch, &pw, 1, 4096), 4096);
    for (size_t i = 0; i < sizeof page; i++)
        CHECK(page[i] == 0);

    OK(mr_channel_sync(ch));
    OK(mr_channel_close(ch));
}

static void test_read_only(const char *path)
{
    mr_channel *ch = NULL;
    OK(mr_channel_open(path, MR_OPEN_READ, &ch));
    char buf[16] = "read only";
    struct iovec iov = { buf, sizeof buf };
    ssize_t n = mr_channel_pwritev(ch, &iov, 1, 0);
    if (n != -EBADF && n != -EPERM)
        FAIL("write on a read-only channel returned %zd, want -EBADF or -EPERM", n);
    CHECK(mr_last_error()[0] != '\0');
    CHECK(n == -EPERM || strstr(mr_last_error(), path) != NULL);
    n = mr_channel_truncate(ch, 0);
    CHECK(n < 0);
    /* Nothing was written. */
    uint64_t size = 0;
    OK(mr_channel_size(ch, &size));
    CHECK_EQ(size, 3 * 4096);
    OK(mr_channel_close(ch));
}

static void test_from_fd(const char *path)
{
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    mr_channel *ch = SENTINEL_CH;
    CHECK_ERR(mr_channel_from_fd(fd, MR_OPEN_READ | MR_OPEN_WRITE | MR_OPEN_CREATE, &ch), EINVAL,
              NULL);
    CHECK(ch == SENTINEL_CH);
    OK(mr_channel_from_fd(fd, MR_OPEN_READ | MR_OPEN_WRITE, &ch));
    const char msg[] = "through a duplicated descriptor";
    struct iovec iov = { (void *)msg, sizeof msg };
    CHECK_EQ(mr_channel_pwritev(ch, &iov, 1, 100), sizeof msg);
    OK(mr_channel_close(ch));
    /* The caller's descriptor is still open and sees the bytes. */
    char back[sizeof msg];
    CHECK_EQ(pread(fd, back, sizeof back, 100), sizeof back);
    CHECK(memcmp(back, msg, sizeof msg) == 0);
    CHECK(close(fd) == 0);
}

static void test_direct_align(const char *path)
{
    mr_channel *ch = NULL;
    OK(mr_channel_open(path, MR_OPEN_READ | MR_OPEN_WRITE | MR_OPEN_DIRECT, &ch));
    uint32_t ma = 0, oa = 0;
    OK(mr_channel_dio_align(ch, &ma, &oa));
    CHECK(ma >= 1 && ma <= 4096 && (ma & (ma - 1)) == 0);
    CHECK(oa >= 1 && oa <= 4096 && (oa & (oa - 1)) == 0);
    CHECK_ERR(mr_channel_dio_align(ch, NULL, &oa), EINVAL, "mem_align");
    OK(mr_channel_close(ch));
}

int main(void)
{
    const char *dir = getenv("MR_TEST_DIR");
    if (dir == NULL || dir[0] == '\0')
        dir = ".";
    CHECK(strcmp(mr_last_error(), "") == 0);
    CHECK(mr_version() != NULL && mr_version()[0] != '\0');

    char path[4096];
    test_path(path, sizeof path, "channel_errors");
    test_open_errors(dir);
    test_null_handles();
    test_basic_io(path);
    test_read_only(path);
    test_from_fd(path);
    test_direct_align(path);
    unlink(path);
    printf("channel_errors: ok\n");
    return 0;
}
