/* Compressed and checksummed images from C: mr_image_create_opts with the
 * versioned mr_image_options, save/read with several thread counts, page
 * calls, mr_image_ramblock_stats, a damaged chunk reported as -EBADMSG,
 * and the versioned-struct rules (too small, unknown non-zero tail). */
#include <fcntl.h>

#include "mrtest.h"

#define PAGE 4096u
#define MEM_LEN (8u << 20)

static uint8_t mem[MEM_LEN];
static uint8_t back[MEM_LEN];

static void fill(void)
{
    /* 1 MiB chunks: text-like (compressible), zero, random-ish pages. */
    for (uint32_t p = 0; p < MEM_LEN / PAGE; p++) {
        uint8_t *pg = mem + (size_t)p * PAGE;
        switch (p % 5) {
        case 0:
        case 1:
            for (uint32_t i = 0; i < PAGE; i++)
                pg[i] = (uint8_t)("mapped-ram compressed "[i % 22]);
            break;
        case 2:
            memset(pg, 0, PAGE);
            break;
        default:
            for (uint32_t i = 0; i < PAGE; i++)
                pg[i] = pattern(p, i);
        }
    }
}

int main(void)
{
    char path[512];
    test_path(path, sizeof path, "image_compress");
    fill();
    mr_ramblock_desc blocks[1] = { { "mem", MEM_LEN, PAGE } };
    mr_image *img = NULL;
    mr_image *sentinel = (mr_image *)(uintptr_t)0x1234;
    mr_image *out = sentinel;

    mr_image_options o;
    memset(&o, 0, sizeof o);
    o.codec = MR_CODEC_ZSTD;
    /* size not set: refused, *out untouched. */
    CHECK_ERR(mr_image_create_opts(path, "pc-i440fx-10.0", blocks, 1, 0, &o, &out), EINVAL,
              "size");
    /* A newer caller's struct with an unknown non-zero field: refused. */
    struct {
        mr_image_options o;
        uint64_t future;
    } big;
    memset(&big, 0, sizeof big);
    big.o.size = sizeof big;
    big.o.codec = MR_CODEC_ZSTD;
    big.future = 1;
    CHECK_ERR(mr_image_create_opts(path, "pc-i440fx-10.0", blocks, 1, 0, &big.o, &out), EINVAL,
              "byte");
    /* ...and accepted when it is zero. */
    big.future = 0;
    o.size = sizeof o;
    o.codec = 7;
    CHECK_ERR(mr_image_create_opts(path, "pc-i440fx-10.0", blocks, 1, 0, &o, &out), EINVAL,
              "codec");
    o.codec = MR_CODEC_ZSTD;
    o.flags = MR_IMAGE_OPT_CHECKSUMS | MR_IMAGE_OPT_NO_CHECKSUMS;
    CHECK_ERR(mr_image_create_opts(path, "pc-i440fx-10.0", blocks, 1, 0, &o, &out), EINVAL,
              NULL);
    CHECK(out == sentinel);
    OK(mr_image_create_opts(path, "pc-i440fx-10.0", blocks, 1, MR_IMAGE_DIRECT, &big.o, &img));
    OK(mr_image_close(img));

    o.flags = 0;
    o.level = 3;
    OK(mr_image_create_opts(path, "pc-i440fx-10.0", blocks, 1, MR_IMAGE_DIRECT, &o, &img));
    CHECK_EQ(mr_image_capability_count(img), 2);
    CHECK(strcmp(mr_image_capability(img, 1), "x-mappedram-chunks") == 0);
    OK(mr_image_save_ramblock(img, 0, mem, NULL, 3));
    /* Page calls: one page inside a chunk, then read it back. */
    uint8_t page[PAGE];
    memset(page, 0xab, PAGE);
    OK(mr_image_write_page(img, 0, 5 * PAGE, page));
    memcpy(mem + 5 * PAGE, page, PAGE);
    OK(mr_image_finish(img));
    OK(mr_image_close(img));

    uint32_t threads[] = { 1, 2, 3, 8 };
    for (unsigned t = 0; t < 4; t++) {
        OK(mr_image_open(path, MR_IMAGE_DIRECT, &img));
        memset(back, 0x5a, sizeof back);
        OK(mr_image_read_ramblock(img, 0, back, MR_READ_ZERO_ABSENT, threads[t]));
        CHECK(memcmp(back, mem, MEM_LEN) == 0);
        CHECK_EQ(mr_image_read_page(img, 0, 5 * PAGE, page), 1);
        CHECK(memcmp(page, mem + 5 * PAGE, PAGE) == 0);
        CHECK_EQ(mr_image_read_page(img, 0, 2 * PAGE, page), 0);
        mr_ramblock_stats st;
        memset(&st, 0, sizeof st);
        CHECK_ERR(mr_image_ramblock_stats(img, 0, &st), EINVAL, "size");
        st.size = sizeof st;
        OK(mr_image_ramblock_stats(img, 0, &st));
        CHECK_EQ(st.size, sizeof st);
        CHECK_EQ(st.codec, MR_CODEC_ZSTD);
        CHECK_EQ(st.checksum, MR_CHECKSUM_XXH3);
        CHECK_EQ(st.chunk_size, 1u << 20);
        CHECK_EQ(st.chunks, 8);
        CHECK(st.stored_bytes > 0 && st.stored_bytes < MEM_LEN * 3 / 4);
        CHECK(st.allocated_bytes >= st.stored_bytes / 2);
        CHECK_ERR(mr_image_ramblock_stats(img, 1, &st), ENOENT, NULL);
        OK(mr_image_close(img));
    }

    /* Damage one byte of chunk 0's frame: -EBADMSG naming the chunk. */
    OK(mr_image_open(path, 0, &img));
    mr_ramblock_info info;
    OK(mr_image_ramblock_info(img, 0, &info));
    OK(mr_image_close(img));
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    uint8_t b;
    CHECK_EQ(pread(fd, &b, 1, (off_t)info.pages_offset + 40), 1);
    b ^= 0x20;
    CHECK_EQ(pwrite(fd, &b, 1, (off_t)info.pages_offset + 40), 1);
    close(fd);
    OK(mr_image_open(path, 0, &img));
    CHECK_ERR(mr_image_read_ramblock(img, 0, back, 0, 2), EBADMSG, "chunk 0");
    CHECK_ERR(mr_image_read_page(img, 0, 0, page), EBADMSG, "chunk 0");
    OK(mr_image_close(img));

    /* Checksums without compression; NULL options = plain. */
    memset(&o, 0, sizeof o);
    o.size = sizeof o;
    o.flags = MR_IMAGE_OPT_CHECKSUMS;
    OK(mr_image_create_opts(path, "pc-i440fx-10.0", blocks, 1, 0, &o, &img));
    OK(mr_image_save_ramblock(img, 0, mem, NULL, 2));
    mr_ramblock_stats st = { .size = sizeof st };
    OK(mr_image_ramblock_stats(img, 0, &st));
    CHECK_EQ(st.codec, MR_CODEC_NONE);
    CHECK_EQ(st.checksum, MR_CHECKSUM_XXH3);
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
    OK(mr_image_create_opts(path, "pc-i440fx-10.0", blocks, 1, 0, NULL, &img));
    CHECK_EQ(mr_image_capability_count(img), 1);
    OK(mr_image_ramblock_stats(img, 0, &st));
    CHECK_EQ(st.chunks, 0);
    OK(mr_image_close(img));
    unlink(path);
    printf("image_compress: ok\n");
    return 0;
}
