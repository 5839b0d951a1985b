/* mr_image_create must not harm what is at the path: every argument error
 * (and a size past what the file system can hold) leaves an existing
 * finished image byte for byte as it was and leaves no file where there was
 * none, in a directory of its own so any leftover temporary shows. A
 * successful create over a 0644 file (another owner, an access ACL granting
 * a second user) gives a 0600 file of the caller without ACL. Flags: READ_WRITE
 * is accepted (and changes nothing), RECOVER is not. A symbolic link is
 * followed: the link stays, its target is replaced. mr_image_create_opts with
 * compression takes the same safe path: the same argument errors and bad
 * options leave the image and the directory alone. */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "mrtest.h"

#define PAGE 4096u
#define MEM_LEN (1u << 20)

static char dir[4096];

/* Entries in `dir` other than . and .. */
static int dir_entries(void)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    CHECK(fseek(f, 0, SEEK_END) == 0);
    long n = ftell(f);
    CHECK(n >= 0);
    rewind(f);
    uint8_t *buf = malloc((size_t)n + 1);
    CHECK(buf != NULL);
    CHECK(fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void make_finished(const char *path)
{
    mr_ramblock_desc b = { "mem", MEM_LEN, PAGE };
    mr_image *img = NULL;
    OK(mr_image_create(path, "pc-i440fx-10.0", &b, 1, 0, &img));
    uint8_t page[PAGE];
    for (uint32_t i = 0; i < PAGE; i++)
        page[i] = pattern(5, i);
    OK(mr_image_write_page(img, 0, 3 * PAGE, page));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
}

struct bad_case {
    const char *what;
    const char *machine;
    mr_ramblock_desc blocks[2];
    uint32_t nblocks;
    uint32_t flags;
    int err;
    const char *needle;
};

static char long_machine[2000];
static char long_idstr[300];

static const struct bad_case *bad_cases(size_t *n)
{
    memset(long_machine, 'm', sizeof long_machine - 1);
    memset(long_idstr, 'i', sizeof long_idstr - 1);
    static struct bad_case c[16];
    size_t k = 0;
    c[k++] = (struct bad_case){ "page size 3000", "pc", { { "mem", MEM_LEN, 3000 } }, 1, 0,
                                EINVAL, "page size" };
    c[k++] = (struct bad_case){ "page size 512", "pc", { { "mem", MEM_LEN, 512 } }, 1, 0,
                                EINVAL, "target-page-bits" };
    c[k++] = (struct bad_case){ "used_length 4097", "pc", { { "mem", 4097, PAGE } }, 1, 0,
                                EINVAL, "multiple of the page size" };
    c[k++] = (struct bad_case){ "used_length 0", "pc", { { "mem", 0, PAGE } }, 1, 0, EINVAL,
                                "non-zero" };
    c[k++] = (struct bad_case){ "duplicate idstr", "pc",
                                { { "mem", MEM_LEN, PAGE }, { "mem", MEM_LEN, PAGE } }, 2, 0,
                                EINVAL, "listed twice" };
    c[k++] = (struct bad_case){ "empty idstr", "pc", { { "", MEM_LEN, PAGE } }, 1, 0, EINVAL,
                                "idstr" };
    c[k++] = (struct bad_case){ "idstr of 299 bytes", "pc", { { long_idstr, MEM_LEN, PAGE } },
                                1, 0, EINVAL, "idstr" };
    c[k++] = (struct bad_case){ "empty machine type", "", { { "mem", MEM_LEN, PAGE } }, 1, 0,
                                EINVAL, "machine type" };
    c[k++] = (struct bad_case){ "machine type of 1999 bytes", long_machine,
                                { { "mem", MEM_LEN, PAGE } }, 1, 0, EINVAL, "machine type" };
    c[k++] = (struct bad_case){ "used_length 1<<63", "pc", { { "mem", 1ull << 63, PAGE } }, 1,
                                0, EFBIG, "largest file offset" };
    /* Fits in a file offset, not in an ext4 file: the file system says so
     * while the image is still unnamed. */
    c[k++] = (struct bad_case){ "used_length 1<<62", "pc", { { "mem", 1ull << 62, PAGE } }, 1,
                                0, EFBIG, NULL };
    c[k++] = (struct bad_case){ "MR_IMAGE_RECOVER", "pc", { { "mem", MEM_LEN, PAGE } }, 1,
                                MR_IMAGE_RECOVER, EINVAL, "not valid for create" };
    c[k++] = (struct bad_case){ "unknown flag", "pc", { { "mem", MEM_LEN, PAGE } }, 1, 0x100,
                                EINVAL, "unknown image flags" };
    *n = k;
    return c;
}

static void bad_creates_leave_everything_alone(void)
{
    char path[4200], fresh[4200];
    snprintf(path, sizeof path, "%s/old.img", dir);
    snprintf(fresh, sizeof fresh, "%s/new.img", dir);
    make_finished(path);
    size_t before_len;
    uint8_t *before = slurp(path, &before_len);
    size_t n;
    const struct bad_case *c = bad_cases(&n);
    for (size_t i = 0; i < n; i++) {
        mr_image *img = NULL;
        for (int target = 0; target < 2; target++) {
            const char *p = target == 0 ? path : fresh;
            int rc = mr_image_create(p, c[i].machine, c[i].blocks, c[i].nblocks, c[i].flags,
                                     &img);
            if (rc != -c[i].err)
                FAIL("%s on %s: rc %d (%s), want -%d", c[i].what, target ? "a new path" :
                     "an existing image", rc, strerror(-rc), c[i].err);
            mrtest_check_msg(c[i].what, c[i].needle, __FILE__, __LINE__);
            CHECK(img == NULL);
            size_t after_len;
            uint8_t *after = slurp(path, &after_len);
            if (after_len != before_len || memcmp(before, after, before_len) != 0)
                FAIL("%s: the existing image changed (%zu -> %zu bytes)", c[i].what,
                     before_len, after_len);
            free(after);
            if (dir_entries() != 1)
                FAIL("%s on %s: %d entries in %s, want only old.img", c[i].what,
                     target ? "a new path" : "an existing image", dir_entries(), dir);
        }
    }
    free(before);
    /* The old image still opens complete and holds its page. */
    mr_image *img = NULL;
    OK(mr_image_open(path, 0, &img));
    uint8_t page[PAGE];
    CHECK_EQ(mr_image_read_page(img, 0, 3 * PAGE, page), 1);
    CHECK_EQ(page[7], pattern(5, 7));
    OK(mr_image_close(img));
    CHECK(unlink(path) == 0);
    printf("%zu bad creates (x2 targets) left the image and the directory alone\n", n);
}

/* The same bad creates through mr_image_create_opts with zstd, plus bad
 * options, over an existing compressed image and at a new path. */
static void bad_compressed_creates_leave_everything_alone(void)
{
    char path[4200], fresh[4200];
    snprintf(path, sizeof path, "%s/old.img", dir);
    snprintf(fresh, sizeof fresh, "%s/new.img", dir);
    mr_image_options z = { .size = sizeof z, .codec = MR_CODEC_ZSTD };
    mr_ramblock_desc b = { "mem", MEM_LEN, PAGE };
    mr_image *img = NULL;
    OK(mr_image_create_opts(path, "pc-i440fx-10.0", &b, 1, 0, &z, &img));
    uint8_t page[PAGE];
    for (uint32_t i = 0; i < PAGE; i++)
        page[i] = pattern(6, i);
    OK(mr_image_write_page(img, 0, 5 * PAGE, page));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
    size_t before_len;
    uint8_t *before = slurp(path, &before_len);
    size_t n;
    const struct bad_case *c = bad_cases(&n);
    mr_image_options bad_opts[3] = { z, z, z };
    bad_opts[0].codec = 7;
    bad_opts[1].level = 23;
    bad_opts[2].chunk_size = 2048;
    const char *bad_what[3] = { "codec 7", "level 23", "chunk size 2048" };
    const char *bad_needle[3] = { "codec", "level", "chunk size" };
    for (size_t i = 0; i < n + 3; i++) {
        int opt = i >= n;
        const char *what = opt ? bad_what[i - n] : c[i].what;
        for (int target = 0; target < 2; target++) {
            const char *p = target == 0 ? path : fresh;
            img = NULL;
            int rc = opt ? mr_image_create_opts(p, "pc", &b, 1, 0, &bad_opts[i - n], &img)
                         : mr_image_create_opts(p, c[i].machine, c[i].blocks, c[i].nblocks,
                                                c[i].flags, &z, &img);
            int want = opt ? EINVAL : c[i].err;
            if (rc != -want)
                FAIL("zstd, %s on %s: rc %d (%s), want -%d", what,
                     target ? "a new path" : "an existing image", rc, strerror(-rc), want);
            mrtest_check_msg(what, opt ? bad_needle[i - n] : c[i].needle, __FILE__, __LINE__);
            CHECK(img == NULL);
            size_t after_len;
            uint8_t *after = slurp(path, &after_len);
            if (after_len != before_len || memcmp(before, after, before_len) != 0)
                FAIL("zstd, %s: the existing image changed (%zu -> %zu bytes)", what,
                     before_len, after_len);
            free(after);
            if (dir_entries() != 1)
                FAIL("zstd, %s: %d entries in %s, want only old.img", what, dir_entries(),
                     dir);
        }
    }
    free(before);
    OK(mr_image_open(path, 0, &img));
    CHECK_EQ(mr_image_read_page(img, 0, 5 * PAGE, page), 1);
    CHECK_EQ(page[9], pattern(6, 9));
    OK(mr_image_close(img));
    CHECK(unlink(path) == 0);
    printf("%zu bad compressed creates (x2 targets) left the image and the directory alone\n",
           n + 3);
}

/* Give `path` an access ACL granting user 65534 read-write (the binary
 * form of system.posix_acl_access: version 2, then tag/perm/id entries). */
static void set_acl(const char *path)
{
    struct {
        uint32_t version;
        struct {
            uint16_t tag, perm;
            uint32_t id;
        } e[5];
    } acl = { 2, { { 0x01, 6, 0xffffffffu },    /* user:: rw */
                   { 0x02, 6, 65534 },          /* user:65534: rw */
                   { 0x04, 4, 0xffffffffu },    /* group:: r */
                   { 0x10, 6, 0xffffffffu },    /* mask:: rw */
                   { 0x20, 4, 0xffffffffu } } }; /* other:: r */
    if (setxattr(path, "system.posix_acl_access", &acl, sizeof acl, 0) != 0)
        FAIL("setting an access ACL on %s: %s (the test directory's file system needs "
             "ACL support)", path, strerror(errno));
}

static void create_over_0644_gives_0600(void)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/perm.img", dir);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(fchmod(fd, 0644) == 0);
    CHECK(write(fd, "old", 3) == 3);
    close(fd);
    set_acl(path);
    /* Another owner (when we may give it one): ownership is not inherited. */
    if (geteuid() == 0)
        CHECK(chown(path, 65534, 65534) == 0);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK_EQ(st.st_mode & 0707, 0604);
    mr_ramblock_desc b = { "mem", MEM_LEN, PAGE };
    mr_image *img = NULL;
    /* READ_WRITE is accepted on create and changes nothing. */
    OK(mr_image_create(path, "pc", &b, 1, MR_IMAGE_READ_WRITE, &img));
    CHECK(stat(path, &st) == 0);
    if ((st.st_mode & 07777) != 0600)
        FAIL("mode after create over a 0644 file: 0%o, want 0600", st.st_mode & 07777);
    CHECK(st.st_uid == geteuid());
    CHECK(st.st_gid == getegid());
    char buf[256];
    if (getxattr(path, "system.posix_acl_access", buf, sizeof buf) >= 0 || errno != ENODATA)
        FAIL("the new image still has an access ACL (or getxattr failed: %s)", strerror(errno));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
    CHECK(unlink(path) == 0);
}

static void symlink_target_is_replaced(void)
{
    char target[4200], link[4200];
    snprintf(target, sizeof target, "%s/target.img", dir);
    snprintf(link, sizeof link, "%s/link.img", dir);
    make_finished(target);
    CHECK(symlink("target.img", link) == 0);
    mr_ramblock_desc b = { "other", 2 * MEM_LEN, PAGE };
    mr_image *img = NULL;
    OK(mr_image_create(link, "pc", &b, 1, 0, &img));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
    struct stat st;
    CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
    OK(mr_image_open(target, 0, &img));
    CHECK_EQ(mr_image_find_ramblock(img, "other"), 0);
    OK(mr_image_close(img));
    CHECK_EQ(dir_entries(), 2);
    /* A link to nothing is not followed into a new file. */
    CHECK(unlink(target) == 0);
    CHECK_ERR(mr_image_create(link, "pc", &b, 1, 0, &img), ENOENT, "symbolic link");
    CHECK_EQ(dir_entries(), 1);
    CHECK(unlink(link) == 0);
}

static void rw_flag_on_create_on(void)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/on.img", dir);
    mr_channel *ch = NULL;
    OK(mr_channel_open(path, MR_OPEN_READ | MR_OPEN_WRITE | MR_OPEN_CREATE, &ch));
    mr_ramblock_desc b = { "mem", MEM_LEN, PAGE };
    mr_image *img = NULL;
    CHECK_ERR(mr_image_create_on(ch, 0, "pc", &b, 1, MR_IMAGE_RECOVER, &img), EINVAL,
              "not valid for create");
    OK(mr_image_create_on(ch, 0, "pc", &b, 1, MR_IMAGE_READ_WRITE, &img));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
    OK(mr_channel_close(ch));
    CHECK(unlink(path) == 0);
}

int main(void)
{
    const char *base = getenv("MR_TEST_DIR");
    snprintf(dir, sizeof dir, "%s/create_safe.XXXXXX", base && base[0] ? base : ".");
    CHECK(mkdtemp(dir) != NULL);
    bad_creates_leave_everything_alone();
    bad_compressed_creates_leave_everything_alone();
    create_over_0644_gives_0600();
    symlink_target_is_replaced();
    rw_flag_on_create_on();
    CHECK_EQ(dir_entries(), 0);
    CHECK(rmdir(dir) == 0);
    printf("image_create_safe: ok\n");
    return 0;
}
