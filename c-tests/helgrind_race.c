/* Proves the helgrind run can fail: two threads increment one counter with
 * no lock, a real data race. Run only under valgrind through
 * expect_sanitizer.py (meson test helgrind_catches_a_race), with the same
 * suppression file as the real tests, so the suppressions are shown not to
 * hide a plain race. Not part of the library's behaviour. */
#include <pthread.h>
#include <stdio.h>

static volatile long counter;

static void *bump(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++)
        counter = counter + 1;
    return NULL;
}

int main(void)
{
    pthread_t a, b;
    if (pthread_create(&a, NULL, bump, NULL) != 0 || pthread_create(&b, NULL, bump, NULL) != 0)
        return 2;
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("counter %ld\n", counter);
    return 0;
}
