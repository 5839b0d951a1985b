/* Helper for the mrinspect test: make_image IMAGE RAW [unfinished] writes a
 * small image (blocks "mem" 2 MiB and "pc.bios" 256 KiB, machine
 * "pc-i440fx-10.0") and the raw expected contents of "mem" to RAW. */
#include "mrtest.h"

#define PAGE 4096u
#define MEM (2u << 20)
#define BIOS (256u << 10)

int main(int argc, char **argv)
{
    if (argc < 3)
        FAIL("usage: make_image IMAGE RAW [unfinished]");
    static uint8_t mem[MEM], bios[BIOS];
    for (uint64_t p = 0; p < MEM / PAGE; p++)
        if (p % 4 == 0 || p == 301)
            for (uint32_t i = 0; i < PAGE; i++)
                mem[p * PAGE + i] = pattern(p, i);
    for (uint32_t i = 0; i < BIOS; i++)
        bios[i] = pattern(7, i);
    mr_ramblock_desc blocks[] = { { "mem", MEM, PAGE }, { "pc.bios", BIOS, PAGE } };
    mr_image *img = NULL;
    unlink(argv[1]);
    OK(mr_image_create(argv[1], "pc-i440fx-10.0", blocks, 2, 0, &img));
    OK(mr_image_save_ramblock(img, 0, mem, NULL, 2));
    OK(mr_image_save_ramblock(img, 1, bios, NULL, 2));
    if (argc > 3 && strcmp(argv[3], "unfinished") == 0)
        OK(mr_image_sync(img));
    else
        OK(mr_image_finish(img));
    OK(mr_image_close(img));
    FILE *f = fopen(argv[2], "wb");
    CHECK(f != NULL && fwrite(mem, 1, MEM, f) == MEM && fclose(f) == 0);
    return 0;
}
