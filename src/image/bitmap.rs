//! The in-memory atomic page bitmap (u64 words, LSB first; little-endian on
//! disk, which is QEMU's host order on x86-64).
