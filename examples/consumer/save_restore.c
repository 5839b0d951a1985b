/* A minimal libmappedram consumer: save a guest's RAM, restore it, compare.
 * README.md quotes this file; scripts/test-pkgconfig.sh builds it with
 * pkg-config and scripts/test-subproject.sh with meson, and both run it. */
#include <mappedram.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int save_guest(const char *path, const void *ram, uint64_t ram_size)
{
    mr_ramblock_desc blocks[] = {
        { .idstr = "mem", .used_length = ram_size, .page_size = 4096 },
    };
    mr_image *img;
    int ret = mr_image_create(path, "pc-i440fx-10.0", blocks, 1, MR_IMAGE_DIRECT, &img);
    if (ret < 0) {
        fprintf(stderr, "create %s: %s\n", path, mr_last_error());
        return ret;
    }
    /* Every page (dirty == NULL), 2 threads; zero pages stay holes. */
    ret = mr_image_save_ramblock(img, 0, ram, NULL, 2);
    if (ret == 0) {
        ret = mr_image_finish(img); /* end of stream + completion record, durable */
    }
    if (ret < 0) {
        fprintf(stderr, "save: %s\n", mr_last_error());
    }
    int cret = mr_image_close(img);
    return ret < 0 ? ret : cret;
}

static int restore_guest(const char *path, void *ram)
{
    mr_image *img;
    int ret = mr_image_open(path, MR_IMAGE_DIRECT, &img);
    if (ret < 0) { /* -MR_EINCOMPLETE: the save never finished */
        fprintf(stderr, "open %s: %s\n", path, mr_last_error());
        return ret;
    }
    int mem = mr_image_find_ramblock(img, "mem");
    ret = mem < 0 ? mem : mr_image_read_ramblock(img, (uint32_t)mem, ram, MR_READ_ZERO_ABSENT, 2);
    if (ret < 0) {
        fprintf(stderr, "restore: %s\n", mr_last_error());
    }
    mr_image_close(img);
    return ret;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
        return 2;
    }
    const uint64_t size = 16 << 20;
    unsigned char *ram = calloc(1, size), *back = malloc(size);
    if (!ram || !back) {
        return 1;
    }
    for (uint64_t i = 0; i < size; i += 3 * 4096) { /* two pages in three stay zero */
        memset(ram + i, (int)(i / 4096 % 251) + 1, 4096);
    }
    memset(back, 0xa5, size);
    if (save_guest(argv[1], ram, size) < 0 || restore_guest(argv[1], back) < 0) {
        return 1;
    }
    int same = memcmp(ram, back, size) == 0;
    printf("libmappedram %s (header %s): %s\n", mr_version(), MR_VERSION_STRING,
           same ? "restored RAM equals saved RAM" : "MISMATCH");
    free(ram);
    free(back);
    return same ? 0 : 1;
}
