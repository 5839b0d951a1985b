/* Proves the sanitizers really are linked into the test binaries (built
 * only with -Db_sanitize=address,...): the ASan runtime's entry point must
 * resolve, and deliberate errors must be reported (run through
 * expect_sanitizer.py: `sanitizer_linked overflow`, `... signed-overflow`). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern void __asan_init(void) __attribute__((weak));

int main(int argc, char **argv)
{
    if (__asan_init == NULL) {
        fprintf(stderr, "FAIL: __asan_init is not linked: the sanitizer is not active\n");
        return 1;
    }
    if (argc > 1 && strcmp(argv[1], "overflow") == 0) {
        volatile char *p = malloc(16);
        p[16] = 1; /* heap-buffer-overflow: ASan must abort here */
        free((void *)p);
        fprintf(stderr, "FAIL: heap overflow was not detected\n");
        return 0; /* should_fail test: returning 0 fails it */
    }
    if (argc > 1 && strcmp(argv[1], "signed-overflow") == 0) {
        volatile int x = INT_MAX;
        x = x + argc; /* signed overflow: UBSan must report it */
        fprintf(stderr, "FAIL: signed overflow (%d) was not detected\n", x);
        return 0;
    }
    printf("ASan runtime linked\n");
    return 0;
}
