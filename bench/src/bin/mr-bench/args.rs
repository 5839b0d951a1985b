//! mr-bench's command line: options, defaults, section names.

use mappedram_bench::parse_size;
use std::path::PathBuf;

pub(crate) struct Args {
    pub(crate) sizes: Vec<usize>,
    pub(crate) layouts: Vec<String>,
    pub(crate) layout_size: usize,
    pub(crate) layout_threads: Vec<u32>,
    pub(crate) guest: PathBuf,
    pub(crate) conc_size: usize,
    pub(crate) conc_n: Vec<usize>,
    pub(crate) reps: usize,
    pub(crate) dir: PathBuf,
    pub(crate) shm: PathBuf,
    pub(crate) qemu_size: usize,
    pub(crate) qemu_reps: usize,
    pub(crate) sparse_size: usize,
    pub(crate) rss_size: usize,
    pub(crate) threads: Vec<u32>,
    pub(crate) skip: Vec<String>,
}

pub(crate) const USAGE: &str =
    "usage: mr-bench [--sizes 1G,4G] [--reps 3] [--dir DIR (ext4; default $TMPDIR or /tmp)] \
[--shm DIR (guest RAM files for QEMU; default /dev/shm)] [--qemu-size 1G] [--qemu-reps 2] \
[--sparse-size 4G] [--rss-size 4G] [--threads 1,2,4] \
[--layouts linux-guest,fragmented,interleaved,random,50%zero-by-MiB] [--layout-size 1G] \
[--layout-threads 1,2] [--guest FILE (scripts/bench-guest.sh's capture)] \
[--conc-size 1G] [--conc-n 1,2,4] [--tune SAVE_GAP_KIB,READ_GAP_KIB,WRITERS] \
[--skip raw,qemu,zero,rss,sparse,layouts,profile,sweep,concurrent,iomode] [--only SECTION,...]\n\
       mr-bench --child restore|raw FILE THREADS direct|buffered (one process of the concurrent section)";

pub(crate) fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sizes: vec![1 << 30, 4 << 30],
        layouts: [
            "linux-guest",
            "fragmented",
            "interleaved",
            "random",
            "50%zero-by-MiB",
        ]
        .map(String::from)
        .to_vec(),
        layout_size: 1 << 30,
        layout_threads: vec![1, 2],
        guest: PathBuf::from("bench/cache/linux-guest-1024M.ram"),
        conc_size: 1 << 30,
        conc_n: vec![1, 2, 4],
        reps: 3,
        dir: std::env::temp_dir(),
        shm: PathBuf::from("/dev/shm"),
        qemu_size: 1 << 30,
        qemu_reps: 2,
        sparse_size: 4 << 30,
        rss_size: 4 << 30,
        threads: vec![1, 2, 4],
        // The sweep runs only when asked for (--only sweep).
        skip: vec!["sweep".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| format!("{k} needs a value\n{USAGE}"))
        };
        match k.as_str() {
            "--sizes" => {
                a.sizes = val()?
                    .split(',')
                    .map(parse_size)
                    .collect::<Result<_, _>>()?
            }
            "--reps" => a.reps = val()?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--dir" => a.dir = PathBuf::from(val()?),
            "--shm" => a.shm = PathBuf::from(val()?),
            "--qemu-size" => a.qemu_size = parse_size(&val()?)?,
            "--qemu-reps" => {
                a.qemu_reps = val()?.parse().map_err(|e| format!("--qemu-reps: {e}"))?
            }
            "--sparse-size" => a.sparse_size = parse_size(&val()?)?,
            "--rss-size" => a.rss_size = parse_size(&val()?)?,
            "--threads" => {
                a.threads = val()?
                    .split(',')
                    .map(|t| {
                        t.trim()
                            .parse::<u32>()
                            .map_err(|e| format!("--threads: {e}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--skip" => {
                a.skip = val()?.split(',').map(|s| s.trim().to_string()).collect();
                a.skip.push("sweep".into());
            }
            "--only" => {
                let only: Vec<String> = val()?.split(',').map(|s| s.trim().to_string()).collect();
                a.skip = SECTIONS
                    .iter()
                    .filter(|s| !only.iter().any(|o| o == *s))
                    .map(|s| s.to_string())
                    .collect();
            }
            "--layouts" => a.layouts = val()?.split(',').map(|s| s.trim().to_string()).collect(),
            "--layout-size" => a.layout_size = parse_size(&val()?)?,
            "--layout-threads" => a.layout_threads = parse_list(&val()?, "--layout-threads")?,
            "--guest" => a.guest = PathBuf::from(val()?),
            "--conc-size" => a.conc_size = parse_size(&val()?)?,
            "--conc-n" => a.conc_n = parse_list(&val()?, "--conc-n")?,
            "--tune" => {
                let v: Vec<u64> = parse_list(&val()?, "--tune")?;
                let [gap, read_gap, writers] = v[..] else {
                    return Err("--tune needs SAVE_GAP_KIB,READ_GAP_KIB,WRITERS".into());
                };
                mappedram::engine::tuning::set(gap << 10, read_gap << 10, writers);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {k}\n{USAGE}")),
        }
    }
    if a.reps == 0 || a.qemu_reps == 0 {
        return Err("--reps and --qemu-reps must be at least 1".into());
    }
    Ok(a)
}

/// Section names, in run order.
pub(crate) const SECTIONS: [&str; 10] = [
    "zero",
    "raw",
    "layouts",
    "profile",
    "sweep",
    "concurrent",
    "iomode",
    "qemu",
    "rss",
    "sparse",
];

fn parse_list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    s.split(',')
        .map(|t| t.trim().parse::<T>().map_err(|e| format!("{what}: {e}")))
        .collect()
}
