/* mrinspect: look inside a mapped-ram image (QEMU's or this library's).
 *
 *   mrinspect IMAGE                     machine type, capabilities, stream
 *                                       offset, completeness, ramblocks,
 *                                       file size vs allocated bytes
 *   mrinspect IMAGE --extract IDSTR OUT write ramblock IDSTR to the raw file
 *                                       OUT (absent pages as zeros)
 *
 * Unfinished images are opened with MR_IMAGE_RECOVER and reported as such.
 * Exit status: 0 ok, 1 error (message from mr_last_error()), 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mappedram.h>

static int fail(const char *what, int r)
{
    fprintf(stderr, "mrinspect: %s: %s (%s)\n", what, mr_last_error(), strerror(-r));
    return 1;
}

static int inspect(mr_image *img, const char *path)
{
    int r;
    uint64_t off = 0, size = 0, alloc = 0;
    printf("image:        %s\n", path);
    printf("machine type: %s\n", mr_image_machine_type(img));
    int ncap = mr_image_capability_count(img);
    if (ncap < 0)
        return fail("capabilities", ncap);
    printf("capabilities:");
    for (int i = 0; i < ncap; i++)
        printf(" %s", mr_image_capability(img, (uint32_t)i));
    printf("\n");
    if ((r = mr_image_stream_offset(img, &off)) < 0)
        return fail("stream offset", r);
    printf("stream at:    %" PRIu64 "\n", off);
    r = mr_image_is_complete(img);
    if (r < 0)
        return fail("completeness", r);
    printf("complete:     %s\n", r ? "yes" : "NO (unfinished or interrupted)");
    int n = mr_image_ramblock_count(img);
    if (n < 0)
        return fail("ramblocks", n);
    printf("ramblocks:    %d\n", n);
    printf("  %-28s %14s %6s %12s %12s %10s %10s\n", "idstr", "used_length", "page",
           "bitmap_off", "pages_off", "pages", "present");
    for (int i = 0; i < n; i++) {
        mr_ramblock_info info;
        if ((r = mr_image_ramblock_info(img, (uint32_t)i, &info)) < 0)
            return fail("ramblock info", r);
        printf("  %-28s %#14" PRIx64 " %6" PRIu64 " %#12" PRIx64 " %#12" PRIx64 " %10" PRIu64
               " %10" PRIu64 "\n",
               info.idstr, info.used_length, info.page_size, info.bitmap_offset,
               info.pages_offset, info.page_size ? info.used_length / info.page_size : 0,
               info.pages_present);
    }
    if ((r = mr_image_file_size(img, &size)) < 0)
        return fail("file size", r);
    if ((r = mr_image_allocated_bytes(img, &alloc)) < 0)
        return fail("allocated bytes", r);
    printf("file size:    %" PRIu64 " bytes (logical), %" PRIu64 " bytes allocated (%.1f%%)\n",
           size, alloc, size ? 100.0 * (double)alloc / (double)size : 0.0);
    return 0;
}

static int extract(mr_image *img, const char *idstr, const char *out)
{
    int b = mr_image_find_ramblock(img, idstr);
    if (b < 0)
        return fail(idstr, b);
    mr_ramblock_info info;
    int r = mr_image_ramblock_info(img, (uint32_t)b, &info);
    if (r < 0)
        return fail("ramblock info", r);
    int fd = open(out, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        fprintf(stderr, "mrinspect: %s: %s\n", out, strerror(errno));
        return 1;
    }
    /* Restore straight into the output file's pages. */
    if (info.used_length > 0) {
        if (ftruncate(fd, (off_t)info.used_length) != 0) {
            fprintf(stderr, "mrinspect: %s: %s\n", out, strerror(errno));
            close(fd);
            return 1;
        }
        void *m = mmap(NULL, info.used_length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "mrinspect: mmap %s: %s\n", out, strerror(errno));
            close(fd);
            return 1;
        }
        /* The file is new (all zeros): absent pages need no writing. */
        r = mr_image_read_ramblock(img, (uint32_t)b, m, 0, 0);
        if (r == 0 && msync(m, info.used_length, MS_SYNC) != 0)
            r = -errno;
        munmap(m, info.used_length);
        if (r < 0) {
            close(fd);
            return fail("extract", r);
        }
    }
    if (close(fd) != 0) {
        fprintf(stderr, "mrinspect: %s: %s\n", out, strerror(errno));
        return 1;
    }
    printf("%s: %" PRIu64 " bytes (%" PRIu64 " present pages) -> %s\n", info.idstr,
           info.used_length, info.pages_present, out);
    return 0;
}

int main(int argc, char **argv)
{
    if (!(argc == 2 || (argc == 5 && strcmp(argv[2], "--extract") == 0))) {
        fprintf(stderr, "usage: mrinspect IMAGE\n"
                        "       mrinspect IMAGE --extract IDSTR OUT\n");
        return 2;
    }
    mr_image *img = NULL;
    int r = mr_image_open(argv[1], 0, &img);
    if (r == -MR_EINCOMPLETE) {
        fprintf(stderr, "mrinspect: warning: %s\n", mr_last_error());
        r = mr_image_open(argv[1], MR_IMAGE_RECOVER, &img);
    }
    if (r < 0)
        return fail(argv[1], r);
    int rc = argc == 2 ? inspect(img, argv[1]) : extract(img, argv[3], argv[4]);
    r = mr_image_close(img);
    if (r < 0 && rc == 0)
        rc = fail("close", r);
    return rc;
}
