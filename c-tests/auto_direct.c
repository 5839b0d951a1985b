/* MR_IMAGE_AUTO_DIRECT: a large image on the build dir's disk file system
 * goes through O_DIRECT, a small one through the page cache, and
 * mr_image_is_direct says which; MR_IMAGE_DIRECT always wins; the flag is
 * refused on an existing channel (its I/O mode is the channel's). */
#include "mrtest.h"

#define PAGE 4096u

static void make(const char *path, uint64_t len, uint32_t flags, int want_direct)
{
    mr_ramblock_desc blocks[1] = { { "mem", len, PAGE } };
    mr_image *img = NULL;
    OK(mr_image_create(path, "pc-i440fx-10.0", blocks, 1, flags, &img));
    CHECK_EQ(mr_image_is_direct(img), want_direct);
    /* Data through whichever path was chosen. */
    static uint8_t page[PAGE] __attribute__((aligned(4096)));
    for (uint32_t i = 0; i < PAGE; i++)
        page[i] = (uint8_t)(i * 7 + 1);
    OK(mr_image_write_page(img, 0, len - PAGE, page));
    OK(mr_image_finish(img));
    OK(mr_image_close(img));
    OK(mr_image_open(path, MR_IMAGE_AUTO_DIRECT, &img));
    CHECK_EQ(mr_image_is_direct(img), want_direct);
    static uint8_t back[PAGE];
    CHECK_EQ(mr_image_read_page(img, 0, len - PAGE, back), 1);
    CHECK(memcmp(back, page, PAGE) == 0);
    OK(mr_image_close(img));
}

int main(void)
{
    char small[4096], big[4096];
    test_path(small, sizeof small, "auto-small.img");
    test_path(big, sizeof big, "auto-big.img");
    make(small, 512u << 10, MR_IMAGE_AUTO_DIRECT, 0);
    make(big, 16u << 20, MR_IMAGE_AUTO_DIRECT, 1);

    mr_image *img = NULL;
    OK(mr_image_open(small, MR_IMAGE_DIRECT | MR_IMAGE_AUTO_DIRECT, &img));
    CHECK_EQ(mr_image_is_direct(img), 1);
    OK(mr_image_close(img));
    OK(mr_image_open(big, 0, &img));
    CHECK_EQ(mr_image_is_direct(img), 0);
    OK(mr_image_close(img));
    CHECK_ERR(mr_image_is_direct(NULL), EINVAL, "img");

    /* On a channel the caller opened, the channel decides. */
    mr_channel *ch = NULL;
    OK(mr_channel_open(big, MR_OPEN_READ, &ch));
    mr_image *out = (mr_image *)(uintptr_t)0x1234;
    CHECK_ERR(mr_image_open_on(ch, 0, MR_IMAGE_AUTO_DIRECT, &out), EINVAL, "0x10");
    CHECK(out == (mr_image *)(uintptr_t)0x1234);
    OK(mr_channel_close(ch));

    unlink(small);
    unlink(big);
    printf("auto_direct: ok\n");
    return 0;
}
