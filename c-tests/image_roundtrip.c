/* mr_image: create -> write pages -> finish -> close -> open -> query ->
 * read pages and whole ramblocks with 1..8 threads; error paths. */
#include <pthread.h>

#include "mrtest.h"

#define PAGE 4096u
#define MEM_LEN (4u << 20)  /* 1024 pages */
#define ROM_LEN (128u << 10)

static uint8_t model_mem[MEM_LEN];
static uint8_t model_rom[ROM_LEN];

static void fill_page(uint8_t *p, uint64_t seed)
{
    for (uint32_t i = 0; i < PAGE; i++)
        p[i] = pattern(seed, i);
}

static void write_image(const char *path)
{
    mr_ramblock_desc blocks[2] = {
        { "mem", MEM_LEN, PAGE },
        { "pc.rom", ROM_LEN, PAGE },
    };
    mr_image *img = NULL;
    mr_image *sentinel = (mr_image *)(uintptr_t)0x1234;
    mr_image *out = sentinel;

    /* Argument errors leave *out alone. */
    CHECK_ERR(mr_image_create(NULL, "pc-i440fx-10.0", blocks, 2, 0, &out), EINVAL, "path");
    CHECK_ERR(mr_image_create(path, NULL, blocks, 2, 0, &out), EINVAL, "machine_type");
    CHECK_ERR(mr_image_create(path, "pc-i440fx-10.0", NULL, 2, 0, &out), EINVAL, "blocks");
    CHECK_ERR(mr_image_create(path, "pc-i440fx-10.0", blocks, 0, 0, &out), EINVAL, NULL);
    CHECK_ERR(mr_image_create(path, "pc-i440fx-10.0", blocks, 2, 0x80, &out), EINVAL, "0x80");
    CHECK_ERR(mr_image_create(path, "pc-i440fx-10.0", blocks, 2, 0, NULL), EINVAL, "out");
    CHECK(out == sentinel);

    OK(mr_image_create(path, "pc-i440fx-10.0", blocks, 2, 0, &img));
    CHECK(img != NULL);
    CHECK_EQ(mr_image_ramblock_count(img), 2);

    uint8_t page[PAGE];
    /* Single pages. */
    for (uint64_t i = 0; i < MEM_LEN / PAGE; i += 7) {
        fill_page(page, i);
        OK(mr_image_write_page(img, 0, i * PAGE, page));
        memcpy(model_mem + i * PAGE, page, PAGE);
    }
    /* A run of 16 pages in one call. */
    static uint8_t run[16 * PAGE];
    for (uint32_t i = 0; i < sizeof run; i++)
        run[i] = pattern(99, i);
    OK(mr_image_write_pages(img, 0, 100 * PAGE, run, sizeof run));
    memcpy(model_mem + 100 * PAGE, run, sizeof run);
    /* An all-zero page over a present one clears it. */
    memset(page, 0, PAGE);
    OK(mr_image_write_page(img, 0, 105 * PAGE, page));
    memset(model_mem + 105 * PAGE, 0, PAGE);
    OK(mr_image_write_page(img, 0, 7 * PAGE, page));
    memset(model_mem + 7 * PAGE, 0, PAGE);
    /* The rom block: every page. */
    for (uint64_t i = 0; i < ROM_LEN / PAGE; i++) {
        fill_page(page, 5000 + i);
        OK(mr_image_write_page(img, 1, i * PAGE, page));
        memcpy(model_rom + i * PAGE, page, PAGE);
    }

    /* Range and alignment errors. */
    CHECK_ERR(mr_image_write_page(img, 0, MEM_LEN, page), ERANGE, NULL);
    CHECK_ERR(mr_image_write_pages(img, 0, MEM_LEN - PAGE, run, 2 * PAGE), ERANGE, NULL);
    CHECK_ERR(mr_image_write_page(img, 0, 100, page), EINVAL, NULL);
    CHECK_ERR(mr_image_write_pages(img, 0, 0, run, PAGE + 1), EINVAL, "multiple");
    /* An empty write is a bad range like any other; its offset is checked. */
    CHECK_ERR(mr_image_write_pages(img, 0, UINT64_MAX, NULL, 0), EINVAL, "offset");
    CHECK_ERR(mr_image_write_pages(img, 0, 0, NULL, 0), EINVAL, "length 0");
    CHECK_ERR(mr_image_write_pages(img, 0, 0, NULL, PAGE), EINVAL, "buf");
    CHECK_ERR(mr_image_write_page(img, 2, 0, page), ENOENT, "2");
    CHECK_ERR(mr_image_write_page(img, 0, 0, NULL), EINVAL, "page");

    OK(mr_image_sync(img));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
}

static uint64_t count_present(const uint8_t *m, uint64_t len)
{
    uint64_t n = 0;
    for (uint64_t p = 0; p < len; p += PAGE) {
        for (uint32_t i = 0; i < PAGE; i++) {
            if (m[p + i]) {
                n++;
                break;
            }
        }
    }
    return n;
}

static void check_queries(mr_image *img)
{
    CHECK_EQ(mr_image_ramblock_count(img), 2);
    CHECK(strcmp(mr_image_machine_type(img), "pc-i440fx-10.0") == 0);
    int ncap = mr_image_capability_count(img);
    CHECK(ncap >= 1);
    int mapped = 0;
    for (int i = 0; i < ncap; i++)
        mapped |= strcmp(mr_image_capability(img, (uint32_t)i), "mapped-ram") == 0;
    CHECK(mapped);
    CHECK(mr_image_capability(img, (uint32_t)ncap) == NULL);
    CHECK(strstr(mr_last_error(), "capability") != NULL);
    CHECK_EQ(mr_image_is_complete(img), 1);
    uint64_t off = 99;
    OK(mr_image_stream_offset(img, &off));
    CHECK_EQ(off, 0);

    mr_ramblock_info info;
    OK(mr_image_ramblock_info(img, 0, &info));
    CHECK(strcmp(info.idstr, "mem") == 0);
    CHECK_EQ(info.used_length, MEM_LEN);
    CHECK_EQ(info.page_size, PAGE);
    CHECK_EQ(info.pages_offset % (1u << 20), 0);
    CHECK(info.bitmap_offset < info.pages_offset);
    CHECK_EQ(info.pages_present, count_present(model_mem, MEM_LEN));
    uint64_t mem_pages_end = info.pages_offset + info.used_length;

    OK(mr_image_ramblock_info(img, 1, &info));
    CHECK(strcmp(info.idstr, "pc.rom") == 0);
    CHECK_EQ(info.used_length, ROM_LEN);
    CHECK_EQ(info.pages_present, ROM_LEN / PAGE);
    CHECK(info.bitmap_offset >= mem_pages_end);

    memset(&info, 0x33, sizeof info);
    CHECK_ERR(mr_image_ramblock_info(img, 2, &info), ENOENT, NULL);
    CHECK_EQ((uint8_t)info.idstr[0], 0x33);

    CHECK_EQ(mr_image_find_ramblock(img, "mem"), 0);
    CHECK_EQ(mr_image_find_ramblock(img, "pc.rom"), 1);
    CHECK_ERR(mr_image_find_ramblock(img, "pc.bios"), ENOENT, "pc.bios");
    CHECK_ERR(mr_image_find_ramblock(img, NULL), EINVAL, "idstr");

    uint64_t size = 0, alloc = 0;
    OK(mr_image_file_size(img, &size));
    OK(mr_image_allocated_bytes(img, &alloc));
    CHECK(size >= mem_pages_end);
    /* Sparse: far less than the 4 MiB + 1 MiB of regions is allocated. */
    CHECK(alloc < size);
}

static void check_pages(mr_image *img)
{
    uint8_t page[PAGE];
    for (uint64_t i = 0; i < MEM_LEN / PAGE; i++) {
        memset(page, 0xee, PAGE);
        int present = count_present(model_mem + i * PAGE, PAGE) != 0;
        int r = mr_image_read_page(img, 0, i * PAGE, page);
        if (r != present)
            FAIL("read_page(mem, page %" PRIu64 ") = %d, want %d", i, r, present);
        if (memcmp(page, model_mem + i * PAGE, PAGE) != 0)
            FAIL("page %" PRIu64 " differs", i);
    }
    CHECK_ERR(mr_image_read_page(img, 0, MEM_LEN, page), ERANGE, NULL);
    CHECK_ERR(mr_image_read_page(img, 0, 4095, page), EINVAL, NULL);
    CHECK_ERR(mr_image_read_page(img, 1, ROM_LEN + 8 * PAGE, page), ERANGE, NULL);
}

static void check_ramblocks(mr_image *img)
{
    uint8_t *buf = malloc(MEM_LEN);
    CHECK(buf != NULL);
    for (uint32_t threads = 1; threads <= 8; threads++) {
        memset(buf, 0xaa, MEM_LEN);
        OK(mr_image_read_ramblock(img, 0, buf, MR_READ_ZERO_ABSENT, threads));
        if (memcmp(buf, model_mem, MEM_LEN) != 0)
            FAIL("read_ramblock(mem, %u threads) differs", threads);
        memset(buf, 0xaa, ROM_LEN);
        OK(mr_image_read_ramblock(img, 1, buf, 0, threads));
        if (memcmp(buf, model_rom, ROM_LEN) != 0)
            FAIL("read_ramblock(pc.rom, %u threads) differs", threads);
    }
    /* Without MR_READ_ZERO_ABSENT, absent pages are left alone. */
    memset(buf, 0xaa, MEM_LEN);
    OK(mr_image_read_ramblock(img, 0, buf, 0, 4));
    for (uint64_t i = 0; i < MEM_LEN / PAGE; i++) {
        const uint8_t *want = model_mem + i * PAGE;
        int present = count_present(want, PAGE) != 0;
        for (uint32_t k = 0; k < PAGE; k++) {
            uint8_t w = present ? want[k] : 0xaa;
            if (buf[i * PAGE + k] != w)
                FAIL("page %" PRIu64 " byte %u is 0x%02x, want 0x%02x", i, k,
                     buf[i * PAGE + k], w);
        }
    }
    CHECK_ERR(mr_image_read_ramblock(img, 0, buf, 0x2, 1), EINVAL, "flags");
    CHECK_ERR(mr_image_read_ramblock(img, 0, NULL, 0, 1), EINVAL, "host");
    CHECK_ERR(mr_image_read_ramblock(img, 9, buf, 0, 1), ENOENT, NULL);
    free(buf);
}

/* Readers on one handle from several threads at once. */
static mr_image *shared_img;

static void *page_reader(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    uint8_t page[PAGE];
    for (uint64_t i = id; i < MEM_LEN / PAGE; i += 4) {
        int r = mr_image_read_page(shared_img, 0, i * PAGE, page);
        if (r < 0 || memcmp(page, model_mem + i * PAGE, PAGE) != 0)
            FAIL("thread %u: page %" PRIu64 " (r=%d)", (unsigned)id, i, r);
    }
    return NULL;
}

int main(void)
{
    char path[4096];
    test_path(path, sizeof path, "image_roundtrip");
    write_image(path);

    mr_image *img = NULL;
    CHECK_ERR(mr_image_open(path, 0x100, &img), EINVAL, "0x100");
    CHECK(img == NULL);
    OK(mr_image_open(path, 0, &img));
    check_queries(img);
    check_pages(img);
    check_ramblocks(img);

    /* A read-only image refuses writes. */
    uint8_t page[PAGE];
    memset(page, 1, PAGE);
    int r = mr_image_write_page(img, 0, 0, page);
    CHECK(r == -EPERM || r == -EBADF);
    CHECK(mr_last_error()[0] != '\0');

    shared_img = img;
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, page_reader, (void *)i) == 0);
    for (int i = 0; i < 4; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    OK(mr_image_close(img));
    OK(mr_image_close(NULL));

    /* NULL handles. */
    CHECK_ERR(mr_image_ramblock_count(NULL), EINVAL, "img");
    CHECK(mr_image_machine_type(NULL) == NULL);
    CHECK_ERR(mr_image_sync(NULL), EINVAL, "img");
    CHECK_ERR(mr_image_finish(NULL), EINVAL, "img");
    CHECK_ERR(mr_image_cancel(NULL), EINVAL, "img");
    CHECK_ERR(mr_image_is_complete(NULL), EINVAL, "img");

    /* Not an image. */
    char missing[4200];
    snprintf(missing, sizeof missing, "%s.missing", path);
    CHECK_ERR(mr_image_open(missing, 0, &img), ENOENT, missing);

    unlink(path);
    printf("image_roundtrip: ok\n");
    return 0;
}
