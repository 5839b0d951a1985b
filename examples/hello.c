/* The smallest libmappedram consumer, built by scripts/test-pkgconfig.sh with
 * nothing but `pkg-config --cflags --libs mappedram`: prints the library
 * version and makes one round trip through a channel. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <mappedram.h>

int main(int argc, char **argv)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/hello-mappedram.%ld.tmp", argc > 1 ? argv[1] : ".",
             (long)getpid());
    printf("libmappedram %s\n", mr_version());
    mr_channel *ch = NULL;
    int r = mr_channel_open(path, MR_OPEN_READ | MR_OPEN_WRITE | MR_OPEN_CREATE | MR_OPEN_TRUNC,
                            &ch);
    if (r < 0) {
        fprintf(stderr, "hello: %s\n", mr_last_error());
        return 1;
    }
    char msg[] = "hello, mapped-ram", back[sizeof msg];
    struct iovec w = { msg, sizeof msg }, rd = { back, sizeof back };
    if (mr_channel_pwritev(ch, &w, 1, 4096) != (ssize_t)sizeof msg ||
        mr_channel_preadv(ch, &rd, 1, 4096) != (ssize_t)sizeof back ||
        memcmp(msg, back, sizeof msg) != 0) {
        fprintf(stderr, "hello: round trip failed: %s\n", mr_last_error());
        return 1;
    }
    r = mr_channel_close(ch);
    unlink(path);
    if (r < 0) {
        fprintf(stderr, "hello: %s\n", mr_last_error());
        return 1;
    }
    printf("round trip ok\n");
    return 0;
}
