//! Write the seed corpus for `open_image` into the directory given as the
//! only argument (used by scripts/fuzz.sh).

fn main() {
    let dir = std::env::args_os().nth(1).expect("usage: gen_seeds DIR");
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in mappedram_fuzz::seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
    }
}
