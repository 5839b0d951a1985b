/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * kvm_snapshot -- a minimal KVM VMM that snapshots a running guest with
 * libmappedram and restores it into a fresh VM.
 *
 * Read it top to bottom to learn the library's API as a VMM uses it:
 *
 *   guest       two memory slots (128 MiB at 0, 64 MiB at 256 MiB, a hole
 *               between), one vCPU in 32-bit protected mode running a tiny
 *               program that rewrites 6112 pages spread over both slots
 *               forever and checks each page's previous contents before it
 *               overwrites it;
 *   save        (a) pre-copy: KVM dirty logging on, round 0 saves every page
 *               with mr_image_save_ramblock while the vCPU runs, later rounds
 *               save only KVM_GET_DIRTY_LOG's pages, the last one with the
 *               vCPU paused; (b) copy-on-write: pause, mr_snapshot_start on
 *               each slot, resume, mr_snapshot_wait -- the guest runs while
 *               the library saves memory as it was at the pause;
 *               vCPU state goes into the same file as a named blob
 *               (mr_image_put_blob), covered by mr_image_finish;
 *   restore     into a new VM (new /dev/kvm fd, new memory): (a) eager,
 *               mr_image_read_ramblock before the first KVM_RUN; (b) on
 *               demand, mr_lazy_start before the first KVM_RUN -- the vCPU's
 *               own faults are served by the library;
 *   check       the restored guest must continue from the saved pass count
 *               (not restart) and verify every page without a mismatch.
 *
 * Usage: kvm_snapshot [--save precopy|cow|all] [--restore eager|lazy|all]
 *                     [--dir DIR] [--threads N]
 * Exit 0 when every combination passed, 1 on failure, 77 when /dev/kvm is
 * missing (meson's skip code).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <mappedram.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* ---- guest layout ------------------------------------------------------ */

#define PAGE 4096u
#define MIB (1024u * 1024u)
#define LO_GPA 0x0u
#define LO_SIZE (128u * MIB)
#define HI_GPA (256u * MIB)
#define HI_SIZE (64u * MIB)
#define HDR_GPA 0x1000u   /* guest header: pass count, layout, delay */
#define STACK_GPA 0x7000u
#define CODE_GPA 0x8000u
#define WS_GPA (1u * MIB) /* working set starts at 1 MiB in the low slot */
#define STRIDE (8u * PAGE) /* distance between working-set pages */
#define PORT_PASS 0x10    /* out: a pass ended; value = passes done */
#define PORT_BAD 0x11     /* out: page index whose contents were wrong */

struct guest_hdr {        /* at HDR_GPA, read by the guest program */
    uint32_t passes;      /* +0x00 completed passes */
    uint32_t lo_pages;    /* +0x04 working-set pages in the low slot */
    uint32_t hi_base;     /* +0x08 guest address of the high slot */
    uint32_t hi_pages;    /* +0x0c working-set pages in the high slot */
    uint32_t delay;       /* +0x10 spin count after each page */
    uint32_t stride;      /* +0x14 bytes between working-set pages */
};

/*
 * The guest program (32-bit, flat segments, no paging). The working set is
 * every STRIDE-th page of both slots (6112 pages spread over 191 MiB). For
 * pass n and page p it expects val(n-1, p) (0 in pass 0) in the page's first
 * 16 words, checks them with `repe scasl`, then writes val(n, p) with
 * `rep stosl`. val() is never 0, so a page restored as zero (or stale) is
 * caught on its next visit. The program is kept to a few instructions per
 * page because the KVM of the machines this runs on in CI emulates 32-bit
 * guest code (about 12,000 pages per second): a whole-page check would make a
 * pass take minutes.
 */
__asm__(
    ".pushsection .rodata\n"
    ".globl guest_code_start, guest_code_end\n"
    "guest_code_start:\n"
    ".code32\n"
    "    movl 0x1000, %esi\n"          /* n = passes */
    "1:  xorl %ebx, %ebx\n"            /* p = 0 */
    "2:  movl %ebx, %edi\n"            /* edi = address of page p */
    "    cmpl 0x1004, %ebx\n"
    "    jae 3f\n"
    "    imull 0x1014, %edi\n"        /* low slot: 1 MiB + p * stride */
    "    addl $0x100000, %edi\n"
    "    jmp 4f\n"
    "3:  subl 0x1004, %edi\n"         /* high slot: base + (p - lo) * stride */
    "    imull 0x1014, %edi\n"
    "    addl 0x1008, %edi\n"
    "4:  xorl %eax, %eax\n"            /* expected = n ? val(n-1, p) : 0 */
    "    testl %esi, %esi\n"
    "    jz 5f\n"
    "    leal -1(%esi), %eax\n"
    "    call 9f\n"
    "5:  movl %edi, %ebp\n"
    "    movl $16, %ecx\n"
    "    cld\n"
    "    repe scasl\n"
    "    jne 8f\n"
    "    movl %ebp, %edi\n"
    "    movl %esi, %eax\n"
    "    call 9f\n"
    "    movl $16, %ecx\n"
    "    rep stosl\n"
    "    movl 0x1010, %ecx\n"          /* delay */
    "    testl %ecx, %ecx\n"
    "    jz 7f\n"
    "6:  pause\n"
    "    loop 6b\n"
    "7:  incl %ebx\n"
    "    movl 0x1004, %eax\n"
    "    addl 0x100c, %eax\n"
    "    cmpl %eax, %ebx\n"
    "    jb 2b\n"
    "    incl %esi\n"
    "    movl %esi, 0x1000\n"
    "    movl %esi, %eax\n"
    "    outl %eax, $0x10\n"
    "    jmp 1b\n"
    "8:  movl %ebx, %eax\n"            /* mismatch: report page, halt */
    "    outl %eax, $0x11\n"
    "    hlt\n"
    "    jmp 8b\n"
    "9:  incl %eax\n"                  /* val(eax=n, ebx=p), clobbers edx */
    "    imull $0x9e3779b1, %eax, %eax\n"
    "    movl %ebx, %edx\n"
    "    imull $0x85ebca6b, %edx, %edx\n"
    "    xorl %edx, %eax\n"
    "    orl $1, %eax\n"
    "    ret\n"
    ".code64\n"
    "guest_code_end:\n"
    ".popsection\n");
extern const unsigned char guest_code_start[], guest_code_end[];

/* ---- small helpers ----------------------------------------------------- */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kvm_snapshot: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* A library call failed: its negative errno and mr_last_error() say why. */
static void check_mr(int ret, const char *what)
{
    if (ret < 0) {
        die("%s: %s (%s)", what, mr_last_error(), strerror(-ret));
    }
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int xioctl(int fd, unsigned long req, void *arg, const char *what)
{
    int r = ioctl(fd, req, arg);
    if (r < 0) {
        die("%s: %s", what, strerror(errno));
    }
    return r;
}

/* ---- the VM ------------------------------------------------------------ */

struct slot {
    const char *idstr; /* ramblock name in the image */
    uint64_t gpa, size;
    uint8_t *host;
};

struct vm {
    int kvm, fd, vcpu;
    struct kvm_run *run;
    size_t run_size;
    struct slot slots[2];
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool pause_req, paused, stop;
    _Atomic uint32_t passes;   /* last value the guest reported */
    _Atomic uint32_t first_pass; /* first report after (re)start, 0 = none */
    _Atomic int64_t bad_page;  /* -1, or the page the guest found wrong */
    double run_start_ms;       /* when the vCPU thread first entered KVM_RUN */
};

static void vm_map_slot(struct vm *vm, int idx, bool log_dirty)
{
    struct slot *s = &vm->slots[idx];
    /* Private anonymous, untouched: what mr_lazy_start expects too. */
    s->host = mmap(NULL, s->size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s->host == MAP_FAILED) {
        die("mmap %s: %s", s->idstr, strerror(errno));
    }
    struct kvm_userspace_memory_region r = {
        .slot = (uint32_t)idx,
        .flags = log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0,
        .guest_phys_addr = s->gpa,
        .memory_size = s->size,
        .userspace_addr = (uint64_t)(uintptr_t)s->host,
    };
    xioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &r, "KVM_SET_USER_MEMORY_REGION");
}

/* A new VM with empty memory and one vCPU; registers are set by the caller. */
static void vm_create(struct vm *vm, bool log_dirty)
{
    memset(vm, 0, sizeof(*vm));
    vm->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (vm->kvm < 0) {
        die("open /dev/kvm: %s", strerror(errno));
    }
    if (ioctl(vm->kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        die("unexpected KVM API version");
    }
    vm->fd = xioctl(vm->kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
    xioctl(vm->fd, KVM_SET_TSS_ADDR, (void *)0xfffbd000ul, "KVM_SET_TSS_ADDR");
    vm->slots[0] = (struct slot){ "mem-lo", LO_GPA, LO_SIZE, NULL };
    vm->slots[1] = (struct slot){ "mem-hi", HI_GPA, HI_SIZE, NULL };
    vm_map_slot(vm, 0, log_dirty);
    vm_map_slot(vm, 1, log_dirty);
    vm->vcpu = xioctl(vm->fd, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
    vm->run_size = (size_t)xioctl(vm->kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
    vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu, 0);
    if (vm->run == MAP_FAILED) {
        die("mmap kvm_run: %s", strerror(errno));
    }
    pthread_mutex_init(&vm->lock, NULL);
    pthread_cond_init(&vm->cond, NULL);
    atomic_store(&vm->bad_page, -1);
}

static void vm_destroy(struct vm *vm)
{
    munmap(vm->run, vm->run_size);
    for (int i = 0; i < 2; i++) {
        munmap(vm->slots[i].host, vm->slots[i].size);
    }
    close(vm->vcpu);
    close(vm->fd);
    close(vm->kvm);
    pthread_mutex_destroy(&vm->lock);
    pthread_cond_destroy(&vm->cond);
}

/* Flat 4 GiB code and data segments, CR0.PE: 32-bit protected mode. */
static void vm_boot_state(struct vm *vm, uint32_t delay)
{
    struct kvm_sregs sregs;
    xioctl(vm->vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
    struct kvm_segment code = {
        .base = 0, .limit = 0xffffffff, .selector = 0x8, .type = 11,
        .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
    };
    struct kvm_segment data = code;
    data.selector = 0x10;
    data.type = 3;
    sregs.cs = code;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.cr0 |= 1;
    xioctl(vm->vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = CODE_GPA, .rsp = STACK_GPA, .rflags = 2 };
    xioctl(vm->vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");

    uint8_t *lo = vm->slots[0].host;
    memcpy(lo + CODE_GPA, guest_code_start, (size_t)(guest_code_end - guest_code_start));
    struct guest_hdr hdr = {
        .passes = 0,
        .lo_pages = (LO_SIZE - WS_GPA) / STRIDE,
        .hi_base = HI_GPA,
        .hi_pages = HI_SIZE / STRIDE,
        .delay = delay,
        .stride = STRIDE,
    };
    memcpy(lo + HDR_GPA, &hdr, sizeof(hdr));
}

static void on_sigusr1(int sig)
{
    (void)sig; /* only interrupts KVM_RUN */
}

/* The vCPU thread: KVM_RUN until stopped; parks while a pause is requested. */
static void *vcpu_thread(void *arg)
{
    struct vm *vm = arg;
    bool first = true;
    for (;;) {
        pthread_mutex_lock(&vm->lock);
        if (vm->pause_req || vm->stop) {
            vm->paused = true;
            pthread_cond_broadcast(&vm->cond);
            while (vm->pause_req && !vm->stop) {
                pthread_cond_wait(&vm->cond, &vm->lock);
            }
            vm->paused = false;
            vm->run->immediate_exit = 0;
            if (vm->stop) {
                pthread_mutex_unlock(&vm->lock);
                return NULL;
            }
        }
        pthread_mutex_unlock(&vm->lock);
        if (first) {
            vm->run_start_ms = now_ms();
            first = false;
        }
        if (ioctl(vm->vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            die("KVM_RUN: %s", strerror(errno));
        }
        struct kvm_run *r = vm->run;
        if (r->exit_reason == KVM_EXIT_IO && r->io.direction == KVM_EXIT_IO_OUT) {
            uint32_t v;
            memcpy(&v, (uint8_t *)r + r->io.data_offset, sizeof(v));
            if (r->io.port == PORT_PASS) {
                uint32_t zero = 0;
                atomic_compare_exchange_strong(&vm->first_pass, &zero, v);
                atomic_store(&vm->passes, v);
            } else if (r->io.port == PORT_BAD) {
                atomic_store(&vm->bad_page, (int64_t)v);
            }
        } else if (r->exit_reason == KVM_EXIT_HLT) {
            pthread_mutex_lock(&vm->lock);
            vm->stop = true;
            vm->paused = true;
            pthread_cond_broadcast(&vm->cond);
            pthread_mutex_unlock(&vm->lock);
            return NULL;
        } else {
            die("unexpected KVM exit %u", r->exit_reason);
        }
    }
}

static void vm_start(struct vm *vm)
{
    struct sigaction sa = { .sa_handler = on_sigusr1 };
    sigaction(SIGUSR1, &sa, NULL);
    if (pthread_create(&vm->thread, NULL, vcpu_thread, vm) != 0) {
        die("pthread_create failed");
    }
}

/* Stop the vCPU at its next exit and wait until it is out of KVM_RUN. */
static void vm_pause(struct vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    vm->pause_req = true;
    vm->run->immediate_exit = 1;
    pthread_kill(vm->thread, SIGUSR1);
    while (!vm->paused) {
        pthread_cond_wait(&vm->cond, &vm->lock);
    }
    pthread_mutex_unlock(&vm->lock);
}

static void vm_resume(struct vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    vm->pause_req = false;
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
}

static void vm_join(struct vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    vm->stop = true;
    vm->run->immediate_exit = 1;
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
    pthread_kill(vm->thread, SIGUSR1);
    pthread_join(vm->thread, NULL);
}

/* Wait until the guest reported `passes` or failed; false on timeout. */
static bool vm_wait_passes(struct vm *vm, uint32_t passes, double timeout_ms)
{
    double t0 = now_ms();
    while (atomic_load(&vm->passes) < passes && atomic_load(&vm->bad_page) < 0) {
        if (now_ms() - t0 > timeout_ms) {
            return false;
        }
        usleep(1000);
    }
    return true;
}

/* ---- vCPU state as a blob in the image --------------------------------- */

#define STATE_BLOB "kvm-snapshot/vcpu0"
#define STATE_MAGIC 0x4b56534eu /* "KVSN" */

struct vcpu_state {
    uint32_t magic, version;
    struct kvm_regs regs;
    struct kvm_sregs sregs;
};

/* Call with the vCPU paused: registers and memory describe one instant. */
static void save_vcpu_state(struct vm *vm, mr_image *img)
{
    struct vcpu_state st = { .magic = STATE_MAGIC, .version = 1 };
    xioctl(vm->vcpu, KVM_GET_REGS, &st.regs, "KVM_GET_REGS");
    xioctl(vm->vcpu, KVM_GET_SREGS, &st.sregs, "KVM_GET_SREGS");
    check_mr(mr_image_put_blob(img, STATE_BLOB, &st, sizeof(st)), "mr_image_put_blob");
}

static void load_vcpu_state(struct vm *vm, mr_image *img)
{
    struct vcpu_state st;
    uint64_t len = 0;
    check_mr(mr_image_get_blob(img, STATE_BLOB, &st, sizeof(st), &len), "mr_image_get_blob");
    if (len != sizeof(st) || st.magic != STATE_MAGIC || st.version != 1) {
        die("vCPU state blob: %llu bytes, magic %#x (want %zu bytes, %#x)",
            (unsigned long long)len, st.magic, sizeof(st), STATE_MAGIC);
    }
    xioctl(vm->vcpu, KVM_SET_SREGS, &st.sregs, "KVM_SET_SREGS");
    xioctl(vm->vcpu, KVM_SET_REGS, &st.regs, "KVM_SET_REGS");
}

/* ---- save -------------------------------------------------------------- */

struct save_stats {
    int rounds;
    uint64_t dirty[16];
    double downtime_ms, total_ms;
    uint32_t saved_passes;
};

static mr_image *create_image(const char *path, struct vm *vm)
{
    mr_ramblock_desc blocks[2];
    for (int i = 0; i < 2; i++) {
        blocks[i] = (mr_ramblock_desc){ vm->slots[i].idstr, vm->slots[i].size, PAGE };
    }
    mr_image *img;
    check_mr(mr_image_create(path, "kvm-snapshot-example", blocks, 2, MR_IMAGE_DIRECT, &img),
             "mr_image_create");
    return img;
}

/* KVM_GET_DIRTY_LOG for slot `i` into `bm`; returns the number of set bits. */
static uint64_t get_dirty(struct vm *vm, int i, uint64_t *bm)
{
    size_t words = (vm->slots[i].size / PAGE + 63) / 64;
    memset(bm, 0, words * 8);
    struct kvm_dirty_log log = { .slot = (uint32_t)i, .dirty_bitmap = bm };
    xioctl(vm->fd, KVM_GET_DIRTY_LOG, &log, "KVM_GET_DIRTY_LOG");
    uint64_t n = 0;
    for (size_t w = 0; w < words; w++) {
        n += (uint64_t)__builtin_popcountll(bm[w]);
    }
    return n;
}

/* Save every slot once more: all pages (dirty == NULL) or KVM's dirty set. */
static uint64_t save_round(struct vm *vm, mr_image *img, bool all, uint64_t **bm, uint32_t threads)
{
    uint64_t n = 0;
    for (int i = 0; i < 2; i++) {
        uint64_t d = get_dirty(vm, i, bm[i]); /* also re-arms logging */
        n += all ? vm->slots[i].size / PAGE : d;
        check_mr(mr_image_save_ramblock(img, (uint32_t)i, vm->slots[i].host,
                                        all ? NULL : bm[i], threads),
                 "mr_image_save_ramblock");
    }
    return n;
}

/* Pre-copy: round 0 everything while the guest runs, then dirty rounds until
 * the dirty set is small, then the last round with the vCPU paused. */
static void save_precopy(struct vm *vm, const char *path, uint32_t threads, struct save_stats *st)
{
    uint64_t *bm[2];
    for (int i = 0; i < 2; i++) {
        bm[i] = calloc((vm->slots[i].size / PAGE + 63) / 64, 8);
    }
    double t0 = now_ms();
    mr_image *img = create_image(path, vm);
    st->dirty[0] = save_round(vm, img, true, bm, threads);
    st->rounds = 1;
    while (st->rounds < 10) {
        uint64_t n = save_round(vm, img, false, bm, threads);
        st->dirty[st->rounds++] = n;
        if (n < 1024) {
            break;
        }
    }
    double p0 = now_ms();
    vm_pause(vm);
    st->dirty[st->rounds++] = save_round(vm, img, false, bm, threads);
    save_vcpu_state(vm, img);
    st->saved_passes = ((struct guest_hdr *)(vm->slots[0].host + HDR_GPA))->passes;
    vm_resume(vm);
    st->downtime_ms = now_ms() - p0;
    check_mr(mr_image_finish(img), "mr_image_finish");
    check_mr(mr_image_close(img), "mr_image_close");
    st->total_ms = now_ms() - t0;
    free(bm[0]);
    free(bm[1]);
}

/* Copy-on-write: pause, write-protect every slot, save vCPU state, resume;
 * the library saves memory as of the pause while the guest runs on. */
static void save_cow(struct vm *vm, const char *path, uint32_t threads, struct save_stats *st)
{
    double t0 = now_ms();
    mr_image *img = create_image(path, vm);
    mr_snapshot *snap[2];
    double p0 = now_ms();
    vm_pause(vm);
    for (int i = 0; i < 2; i++) {
        check_mr(mr_snapshot_start(img, (uint32_t)i, vm->slots[i].host, threads, &snap[i]),
                 "mr_snapshot_start");
    }
    save_vcpu_state(vm, img);
    /* Reading the header is safe: it is the VMM's own read, not a write. */
    st->saved_passes = ((struct guest_hdr *)(vm->slots[0].host + HDR_GPA))->passes;
    vm_resume(vm);
    st->downtime_ms = now_ms() - p0;
    for (int i = 0; i < 2; i++) {
        check_mr(mr_snapshot_wait(snap[i]), "mr_snapshot_wait");
        check_mr(mr_snapshot_stop(snap[i]), "mr_snapshot_stop");
    }
    check_mr(mr_image_finish(img), "mr_image_finish");
    check_mr(mr_image_close(img), "mr_image_close");
    st->rounds = 1;
    st->dirty[0] = (LO_SIZE + HI_SIZE) / PAGE;
    st->total_ms = now_ms() - t0;
}

/* ---- restore ----------------------------------------------------------- */

/* A fresh VM from the image; returns ms from the start to the first KVM_RUN. */
static double restore_and_check(const char *path, bool lazy, uint32_t threads,
                                uint32_t saved_passes)
{
    struct vm vm;
    double t0 = now_ms();
    vm_create(&vm, false);
    mr_image *img;
    check_mr(mr_image_open(path, MR_IMAGE_DIRECT, &img), "mr_image_open");
    mr_lazy *lz[2] = { NULL, NULL };
    for (int i = 0; i < 2; i++) {
        int b = mr_image_find_ramblock(img, vm.slots[i].idstr);
        check_mr(b, "mr_image_find_ramblock");
        if (lazy) {
            check_mr(mr_lazy_start(img, (uint32_t)b, vm.slots[i].host, 0, threads, &lz[i]),
                     "mr_lazy_start");
        } else {
            check_mr(mr_image_read_ramblock(img, (uint32_t)b, vm.slots[i].host, 0, threads),
                     "mr_image_read_ramblock");
        }
    }
    load_vcpu_state(&vm, img);
    vm_start(&vm);
    /* The guest must go on from the saved pass, then check every page once
     * more (one pass to finish the current one, one full pass). */
    bool ok = vm_wait_passes(&vm, saved_passes + 2, 120e3);
    double first_run = vm.run_start_ms - t0;
    vm_join(&vm);
    for (int i = 0; i < 2; i++) {
        if (lz[i] != NULL) {
            check_mr(mr_lazy_wait(lz[i]), "mr_lazy_wait");
        }
        check_mr(mr_lazy_stop(lz[i]), "mr_lazy_stop"); /* NULL is fine */
    }
    check_mr(mr_image_close(img), "mr_image_close");
    int64_t bad = atomic_load(&vm.bad_page);
    uint32_t first = atomic_load(&vm.first_pass);
    vm_destroy(&vm);
    if (bad >= 0) {
        die("restored guest found page %lld wrong", (long long)bad);
    }
    if (!ok) {
        die("restored guest made no progress past pass %u", saved_passes);
    }
    if (first != saved_passes + 1) {
        die("restored guest reported pass %u first, want %u (continue, not restart)",
            first, saved_passes + 1);
    }
    return first_run;
}

/* ---- main -------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: kvm_snapshot [--save precopy|cow|all] [--restore eager|lazy|all]\n"
                    "                    [--dir DIR] [--threads N] [--delay SPINS]\n");
    exit(2);
}

static bool want(const char *sel, const char *name)
{
    return strcmp(sel, "all") == 0 || strcmp(sel, name) == 0;
}

/* Run the source guest, save it with `mode`, restore it both ways. */
static void run_mode(const char *mode, const char *restore, const char *dir,
                     uint32_t threads, uint32_t delay)
{
    struct vm src;
    vm_create(&src, strcmp(mode, "precopy") == 0);
    vm_boot_state(&src, delay);
    vm_start(&src);
    if (!vm_wait_passes(&src, 2, 60e3) || atomic_load(&src.bad_page) >= 0) {
        die("source guest did not run two clean passes (passes %u, bad %lld)", atomic_load(&src.passes), (long long)atomic_load(&src.bad_page));
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/kvm-snapshot-%s.img", dir, mode);
    struct save_stats st = { 0 };
    if (strcmp(mode, "precopy") == 0) {
        save_precopy(&src, path, threads, &st);
    } else {
        save_cow(&src, path, threads, &st);
    }
    /* The source keeps running after the save, as a live VM would. */
    vm_wait_passes(&src, st.saved_passes + 1, 60e3);
    vm_join(&src);
    if (atomic_load(&src.bad_page) >= 0) {
        die("source guest found page %lld wrong", (long long)atomic_load(&src.bad_page));
    }
    vm_destroy(&src);

    printf("save %-7s: %d round(s), dirty pages per round:", mode, st.rounds);
    for (int r = 0; r < st.rounds; r++) {
        printf(" %llu", (unsigned long long)st.dirty[r]);
    }
    printf("\n  downtime %.2f ms, total %.0f ms, guest at pass %u\n",
           st.downtime_ms, st.total_ms, st.saved_passes);
    const char *modes[] = { "eager", "lazy" };
    for (int m = 0; m < 2; m++) {
        if (!want(restore, modes[m])) {
            continue;
        }
        double first = restore_and_check(path, m == 1, threads, st.saved_passes);
        printf("  restore %-5s: first KVM_RUN %.2f ms after start; guest continued "
               "from pass %u and verified every page\n", modes[m], first, st.saved_passes);
    }
    unlink(path);
}

int main(int argc, char **argv)
{
    const char *save = "all", *restore = "all", *dir = getenv("MR_TEST_DIR");
    uint32_t threads = 2, delay = 100;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) {
            usage();
        }
        if (strcmp(argv[i], "--save") == 0) {
            save = argv[++i];
        } else if (strcmp(argv[i], "--restore") == 0) {
            restore = argv[++i];
        } else if (strcmp(argv[i], "--dir") == 0) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--threads") == 0) {
            threads = (uint32_t)strtoul(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--delay") == 0) {
            delay = (uint32_t)strtoul(argv[++i], NULL, 0);
        } else {
            usage();
        }
    }
    if (access("/dev/kvm", R_OK | W_OK) != 0) {
        printf("SKIP: /dev/kvm is not available (%s); this example needs KVM\n", strerror(errno));
        return 77;
    }
    if (dir == NULL) {
        dir = ".";
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *modes[] = { "precopy", "cow" };
    for (int m = 0; m < 2; m++) {
        if (want(save, modes[m])) {
            run_mode(modes[m], restore, dir, threads, delay);
        }
    }
    printf("kvm_snapshot: all checks passed\n");
    return 0;
}
