/* The progress callback's removal contract (after mr_image_set_progress(img,
 * NULL, NULL) returns, the old callback is never called again: from another
 * thread and from inside the callback), error text without Rust wording,
 * and a save that cannot start threads (RLIMIT_NPROC): it still succeeds
 * and nothing reaches stderr. Run under ASan, a call of a removed callback
 * is a heap-use-after-free of its freed context. */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "mrtest.h"

#define PAGE 4096u
#define LEN (64u << 20) /* 16 engine units: the save takes a while */

static mr_image *img;
static uint8_t *host;

struct ctx {
    atomic_uint calls;
    atomic_int removed; /* set once removal returned: no call may follow */
    int self_remove;
};

static int on_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct ctx *c = opaque;
    (void)done;
    (void)total;
    if (atomic_load(&c->removed))
        FAIL("callback called after its removal returned");
    atomic_fetch_add(&c->calls, 1);
    if (c->self_remove) {
        OK(mr_image_set_progress(img, NULL, NULL));
        atomic_store(&c->removed, 1);
        free(c); /* never called again: freeing the context is allowed */
        return 0;
    }
    usleep(20000); /* the remover acts while a call runs */
    return 0;
}

static void new_image(const char *path)
{
    mr_ramblock_desc blocks[1] = { { "pc.ram", LEN, PAGE } };
    OK(mr_image_create(path, "pc-q35-9.0", blocks, 1, 0, &img));
}

static void test_self_removal(void)
{
    struct ctx *c = calloc(1, sizeof *c);
    CHECK(c != NULL);
    c->self_remove = 1;
    OK(mr_image_set_progress(img, on_progress, c));
    OK(mr_image_save_ramblock(img, 0, host, NULL, 4));
    /* Not called in the next operation (its context is freed). */
    OK(mr_image_save_ramblock(img, 0, host, NULL, 4));
    OK(mr_image_read_ramblock(img, 0, host, 0, 1));
    printf("self-removal: ok\n");
}

static void *remover(void *arg)
{
    struct ctx *c = arg;
    while (atomic_load(&c->calls) < 1)
        usleep(100);
    OK(mr_image_set_progress(img, NULL, NULL));
    atomic_store(&c->removed, 1);
    free(c);
    return NULL;
}

static void test_removal_from_other_thread(void)
{
    for (int round = 0; round < 3; round++) {
        struct ctx *c = calloc(1, sizeof *c);
        CHECK(c != NULL);
        OK(mr_image_set_progress(img, on_progress, c));
        pthread_t t;
        CHECK(pthread_create(&t, NULL, remover, c) == 0);
        OK(mr_image_save_ramblock(img, 0, host, NULL, 2));
        CHECK(pthread_join(t, NULL) == 0);
        /* The next operation must not bring the old callback back. */
        OK(mr_image_save_ramblock(img, 0, host, NULL, 2));
    }
    printf("removal from another thread: ok\n");
}

static void test_error_text(void)
{
    mr_image *none = NULL;
    CHECK_ERR(mr_image_open("/nonexistent/mr-image", 0, &none), ENOENT,
              "No such file or directory");
    const char *m = mr_last_error();
    if (strstr(m, "os error") || strstr(m, "Some(") || strstr(m, "panic"))
        FAIL("Rust wording in \"%s\"", m);
    printf("error text: ok\n");
}

static void *idle(void *arg)
{
    return arg;
}

/* In a child: no threads may be created; the save still succeeds, writes
 * every page and prints nothing to stderr. */
static int child_without_threads(const char *errpath)
{
    int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || dup2(fd, 2) < 0)
        return 10;
    if (setuid(65534) != 0)
        return 11;
    struct rlimit one = { 1, 1 };
    if (setrlimit(RLIMIT_NPROC, &one) != 0)
        return 12;
    pthread_t t;
    if (pthread_create(&t, NULL, idle, NULL) == 0)
        return 13; /* the limit does not bite: the test would prove nothing */
    for (uint64_t i = 0; i < LEN; i++)
        host[i] = pattern(7, i);
    int rc = mr_image_save_ramblock(img, 0, host, NULL, 4);
    if (rc != 0)
        return 14;
    memset(host, 0, LEN);
    if (mr_image_read_ramblock(img, 0, host, 0, 4) != 0)
        return 15;
    for (uint64_t i = 0; i < LEN; i++)
        if (host[i] != pattern(7, i))
            return 16;
    return 0;
}

static void test_no_threads(const char *path)
{
    if (geteuid() != 0) {
        printf("thread limit: SKIPPED (needs root to switch to an unprivileged user)\n");
        return;
    }
    char errpath[512];
    snprintf(errpath, sizeof errpath, "%s.stderr", path);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(child_without_threads(errpath)); /* _exit: no LSan thread */
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    FILE *f = fopen(errpath, "r");
    CHECK(f != NULL);
    char buf[512];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (n != 0)
        FAIL("the library wrote to stderr: \"%s\"", buf);
    unlink(errpath);
    printf("thread limit: ok\n");
}

int main(void)
{
    char path[512];
    test_path(path, sizeof path, "progress_contract");
    host = malloc(LEN);
    CHECK(host != NULL);
    for (uint64_t i = 0; i < LEN; i++)
        host[i] = pattern(3, i);
    new_image(path);
    test_self_removal();
    test_removal_from_other_thread();
    test_error_text();
    test_no_threads(path);
    OK(mr_image_close(img));
    unlink(path);
    free(host);
    return 0;
}
