#!/usr/bin/env python3
"""Run a test program that needs userfaultfd (an example using mr_lazy_* or
mr_snapshot_*), after probing for it the way the library opens it: the
system call, then (on EPERM) /dev/userfaultfd's USERFAULTFD_IOC_NEW, then the
UFFDIO_API handshake.

    need_userfaultfd.py PROGRAM [ARGS...]

Without userfaultfd it prints NOT RUN with the reason and exits 77 (meson:
SKIP), or fails under the full suite (MR_TEST_REQUIRE_ALL=1) saying how to
get it. With it, it runs PROGRAM and exits with its status."""

import ctypes
import errno
import fcntl
import os
import struct
import sys

# userfaultfd's system call number per architecture (asm-generic: 282).
SYS_USERFAULTFD = {"x86_64": 323, "i686": 374, "aarch64": 282, "riscv64": 282}
USERFAULTFD_IOC_NEW = 0xAA00
UFFDIO_API = 0xC018AA3F
UFFD_API = 0xAA
HOW = ("run the tests as root, or `sysctl vm.unprivileged_userfaultfd=1`, or give "
       "this user read/write access to /dev/userfaultfd (the kernel needs "
       "CONFIG_USERFAULTFD)")


def probe():
    """None when usable, else why not."""
    nr = SYS_USERFAULTFD.get(os.uname().machine)
    if nr is None:
        return None  # unknown here: let the program say
    libc = ctypes.CDLL(None, use_errno=True)
    flags = os.O_CLOEXEC | os.O_NONBLOCK
    fd = libc.syscall(nr, flags)
    if fd < 0:
        err = ctypes.get_errno()
        if err != errno.EPERM:
            return f"userfaultfd(2): {os.strerror(err)}"
        try:
            dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            return f"userfaultfd(2): EPERM, and /dev/userfaultfd cannot be opened: {e.strerror}"
        try:
            fd = fcntl.ioctl(dev, USERFAULTFD_IOC_NEW, flags)
        except OSError as e:
            return f"/dev/userfaultfd USERFAULTFD_IOC_NEW: {e.strerror}"
        finally:
            os.close(dev)
    try:
        fcntl.ioctl(fd, UFFDIO_API, struct.pack("QQQ", UFFD_API, 0, 0))
    except OSError as e:
        return f"UFFDIO_API: {e.strerror}"
    finally:
        os.close(fd)
    return None


def main():
    why = probe()
    if why is not None:
        name = os.path.basename(sys.argv[1])
        if os.environ.get("MR_TEST_REQUIRE_ALL") == "1":
            print(f"FAIL: {name} needs userfaultfd and MR_TEST_REQUIRE_ALL=1 (the full "
                  f"suite skips nothing): {why}; {HOW}", file=sys.stderr)
            return 1
        print(f"NOT RUN: {name} needs userfaultfd ({why}); {HOW}")
        return 77
    os.execv(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
