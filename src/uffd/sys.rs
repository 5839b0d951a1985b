//! The userfaultfd kernel ABI (`include/uapi/linux/userfaultfd.h`): the
//! structures, ioctl numbers and flag bits this crate uses. The `libc` crate
//! has only the system call number, so they are spelled out here; the
//! layouts are checked against the header's sizes in the tests below.

#![allow(non_camel_case_types)]

use libc::{_IOR, _IOWR};

pub const UFFD_API: u64 = 0xaa;
const UFFDIO: u32 = 0xaa;

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct uffdio_api {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct uffdio_range {
    pub start: u64,
    pub len: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct uffdio_register {
    pub range: uffdio_range,
    pub mode: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct uffdio_copy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct uffdio_zeropage {
    pub range: uffdio_range,
    pub mode: u64,
    pub zeropage: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct uffdio_writeprotect {
    pub range: uffdio_range,
    pub mode: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct uffdio_poison {
    pub range: uffdio_range,
    pub mode: u64,
    pub updated: i64,
}

/// `struct uffd_msg`: an event byte, padding, then a 24-byte union read
/// here as three words (pagefault: flags, address, ptid; fork: ufd;
/// remap: from, to, len; remove/unmap: start, end).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct uffd_msg {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    pub arg: [u64; 3],
}

pub const UFFDIO_API: libc::Ioctl = _IOWR::<uffdio_api>(UFFDIO, 0x3f);
pub const UFFDIO_REGISTER: libc::Ioctl = _IOWR::<uffdio_register>(UFFDIO, 0x00);
pub const UFFDIO_UNREGISTER: libc::Ioctl = _IOR::<uffdio_range>(UFFDIO, 0x01);
pub const UFFDIO_WAKE: libc::Ioctl = _IOR::<uffdio_range>(UFFDIO, 0x02);
pub const UFFDIO_COPY: libc::Ioctl = _IOWR::<uffdio_copy>(UFFDIO, 0x03);
pub const UFFDIO_ZEROPAGE: libc::Ioctl = _IOWR::<uffdio_zeropage>(UFFDIO, 0x04);
pub const UFFDIO_WRITEPROTECT: libc::Ioctl = _IOWR::<uffdio_writeprotect>(UFFDIO, 0x06);
pub const UFFDIO_POISON: libc::Ioctl = _IOWR::<uffdio_poison>(UFFDIO, 0x08);
/// `/dev/userfaultfd`'s one ioctl: a new userfaultfd (argument: flags).
pub const USERFAULTFD_IOC_NEW: libc::Ioctl = libc::_IO(UFFDIO, 0x00);

/// Bits of `uffdio_register.ioctls`: which ioctls the range supports.
pub const IOCTL_ZEROPAGE_BIT: u64 = 1 << 0x04;
pub const IOCTL_WRITEPROTECT_BIT: u64 = 1 << 0x06;
pub const IOCTL_POISON_BIT: u64 = 1 << 0x08;

pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;

pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;

pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    // `Ioctl` is u64 with glibc but an int with musl.
    #[allow(clippy::unnecessary_cast)]
    fn layouts_match_the_kernel_header() {
        assert_eq!(size_of::<uffdio_api>(), 24);
        assert_eq!(size_of::<uffdio_register>(), 32);
        assert_eq!(size_of::<uffdio_copy>(), 40);
        assert_eq!(size_of::<uffdio_zeropage>(), 32);
        assert_eq!(size_of::<uffdio_writeprotect>(), 24);
        assert_eq!(size_of::<uffdio_poison>(), 32);
        assert_eq!(size_of::<uffd_msg>(), 32);
        // Values from <linux/userfaultfd.h> on x86-64.
        assert_eq!(UFFDIO_API as u64, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER as u64, 0xc020_aa00);
        assert_eq!(UFFDIO_COPY as u64, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE as u64, 0xc020_aa04);
        assert_eq!(UFFDIO_WRITEPROTECT as u64, 0xc018_aa06);
        assert_eq!(UFFDIO_WAKE as u64, 0x8010_aa02);
        assert_eq!(UFFDIO_UNREGISTER as u64, 0x8010_aa01);
    }
}
