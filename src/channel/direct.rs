//! Direct-I/O alignment discovery (`statx` `STATX_DIOALIGN`, then fallbacks)
//! and the `O_DIRECT` descriptor.

/// Alignment `O_DIRECT` needs on this file: of memory addresses, and of file
/// offsets and lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlign {
    pub mem: u32,
    pub offset: u32,
}
