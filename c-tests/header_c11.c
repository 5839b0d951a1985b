/* The public header compiles as strict C11 (-Wpedantic) on its own, and its
 * types have the layout the C contract promises. */
#include "mappedram.h"

#include <stddef.h>

_Static_assert(sizeof(mr_ramblock_desc) == 24, "mr_ramblock_desc layout");
_Static_assert(offsetof(mr_ramblock_info, used_length) == 256, "mr_ramblock_info layout");
_Static_assert(offsetof(mr_ramblock_info, pages_present) == 256 + 4 * 8, "mr_ramblock_info layout");
_Static_assert(MR_OPEN_READ == 0x1 && MR_OPEN_WRITE == 0x2 && MR_OPEN_CREATE == 0x4 &&
                   MR_OPEN_TRUNC == 0x8 && MR_OPEN_DIRECT == 0x10,
               "MR_OPEN_* values");
_Static_assert(MR_IMAGE_READ_WRITE == 0x1 && MR_IMAGE_DIRECT == 0x2 && MR_IMAGE_RECOVER == 0x4,
               "MR_IMAGE_* values");
_Static_assert(MR_READ_ZERO_ABSENT == 0x1, "MR_READ_ZERO_ABSENT");
_Static_assert(MR_EINCOMPLETE == 117, "MR_EINCOMPLETE is EUCLEAN");
_Static_assert(MR_OFFSET_DETECT == UINT64_MAX, "MR_OFFSET_DETECT");

#include <errno.h>
_Static_assert(MR_EINCOMPLETE == EUCLEAN, "MR_EINCOMPLETE is EUCLEAN");

/* Every function has the documented type. */
static int (*const open_fn)(const char *, uint32_t, mr_channel **) = mr_channel_open;
static ssize_t (*const pwritev_fn)(mr_channel *, const struct iovec *, int, uint64_t) =
    mr_channel_pwritev;
static int (*const save_fn)(mr_image *, uint32_t, const void *, const uint64_t *, uint32_t) =
    mr_image_save_ramblock;
static int (*const set_progress_fn)(mr_image *, mr_progress_fn, void *) = mr_image_set_progress;

int main(void)
{
    /* Linking proves the symbols exist; calling a trivial one proves it runs. */
    return (open_fn && pwritev_fn && save_fn && set_progress_fn && mr_version()[0]) ? 0 : 1;
}
