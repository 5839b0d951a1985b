//! Hostile input: any file must open or fail cleanly (with and without
//! RECOVER), and an image that opens must read back or fail cleanly. The
//! input describes a sparse file (see the crate docs); it is written to a
//! memfd and opened through `Channel::from_fd` + `Image::open_on`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (pieces, size) = mappedram_fuzz::decode(data);
    let fd = mappedram_fuzz::memfd(&pieces, size);
    mappedram_fuzz::exercise(&fd);
});
