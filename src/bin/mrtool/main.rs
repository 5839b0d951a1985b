//! mrtool: inspect, verify, extract, compress, expand and copy mapped-ram
//! images (QEMU's and this library's). `mrtool --help` is the manual.

mod copy;
mod info;
mod progress;
mod verify;

use mappedram::compress::convert::convert;
use mappedram::compress::{codec, ImageOptions, DEFAULT_CHUNK_BYTES};
use mappedram::{Error, Image, ImageFlags};
use std::path::Path;
use std::process::ExitCode;

const MANUAL: &str = "\
NAME
    mrtool - inspect, verify, extract, compress, expand and copy mapped-ram images

SYNOPSIS
    mrtool info IMG [--json]
    mrtool verify IMG [--threads N]
    mrtool extract IMG IDSTR OUT
    mrtool compress IN OUT [--level N] [--threads N] [--chunk-size BYTES] [--no-checksums]
    mrtool checksum IN OUT [--threads N] [--chunk-size BYTES]
    mrtool expand IN OUT [--threads N]
    mrtool copy IN OUT [--threads N]

DESCRIPTION
    IMG is a mapped-ram migration file as QEMU 9.0+ writes it (migrate to
    file: with the mapped-ram capability), possibly inside a libvirt save
    image, or one written by libmappedram, plain or compressed.

    info      Machine type, capabilities, stream offset, completeness and per
              ramblock: length, page size, bitmap and page offsets, pages
              present, codec, chunk size, stored and allocated bytes, checksum
              kind; named blobs and their lengths; file size against
              allocated bytes. --json prints one JSON
              object instead. An unfinished image is reported (with a warning
              on stderr), not refused.
    verify    Every structure, every present page readable, every checksum
              (pages, chunks and named blobs).
              Each damaged chunk or unreadable range is reported.
    extract   Ramblock IDSTR as raw memory into OUT (mode 0600; absent pages
              are holes).
    compress  IN (plain or compressed) to a compressed image OUT: zstd chunks
              (default level 1, 1 MiB chunks) with xxh3-64 checksums.
              Everything that is not RAM (libvirt header and XML, stream
              header, device state, JSON description) is kept verbatim.
              QEMU refuses such a file (capability x-mappedram-chunks);
              expand it first.
    checksum  IN to a plain (uncompressed) image OUT that carries the
              checksum table.
    expand    IN to the plain layout QEMU reads: expand(compress(F)) equals F
              in every header byte, bitmap, all device state and every
              present page; absent slots are holes.
    copy      Sparse-aware, parallel, O_DIRECT copy of any file (holes stay
              holes, 1 MiB-aligned page regions copied with direct I/O).

OPTIONS
    --json            info: machine-readable output.
    --level N         zstd level, -7..22 (default 1; 1-3 are the fast ones).
    --threads N       worker threads (default: the CPUs, at most 8).
    --chunk-size B    guest bytes per chunk, a power of two 4096..16777216.
    --no-checksums    compress without the checksum table entries.
    -h, --help        this manual.

PROGRESS
    Long operations draw a progress bar on stderr when it is a terminal.

EXIT STATUS
    0   success
    1   an operation failed (I/O error, no such ramblock, ...)
    2   usage error
    3   verify: the structure is damaged (the image does not open)
    4   verify: the image is not complete (unfinished or interrupted)
    5   verify: page data is damaged (checksum, decompression, truncation)
";

/// A failure with its exit status.
pub struct Fail(pub u8, pub String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail(1, e.to_string())
    }
}

type Res = Result<(), Fail>;

fn usage(msg: &str) -> Fail {
    Fail(2, format!("{msg} (see mrtool --help)"))
}

/// Parsed command line: positional arguments and options.
pub struct Args {
    pos: Vec<String>,
    json: bool,
    no_checksums: bool,
    level: i32,
    threads: u32,
    chunk: u64,
}

fn parse(argv: &[String]) -> Result<Args, Fail> {
    let mut a = Args {
        pos: Vec::new(),
        json: false,
        no_checksums: false,
        level: codec::DEFAULT_LEVEL,
        threads: 0,
        chunk: DEFAULT_CHUNK_BYTES,
    };
    let mut it = argv.iter();
    while let Some(s) = it.next() {
        let mut val = |name: &str| -> Result<i64, Fail> {
            let v = it
                .next()
                .ok_or_else(|| usage(&format!("{name} needs a value")))?;
            v.parse()
                .map_err(|_| usage(&format!("{name}: '{v}' is not a number")))
        };
        match s.as_str() {
            "--json" => a.json = true,
            "--no-checksums" => a.no_checksums = true,
            "--level" => a.level = val("--level")? as i32,
            "--threads" => a.threads = val("--threads")?.clamp(0, 256) as u32,
            "--chunk-size" => a.chunk = val("--chunk-size")?.max(0) as u64,
            o if o.starts_with('-') && o.len() > 1 => {
                return Err(usage(&format!("unknown option '{o}'")))
            }
            _ => a.pos.push(s.clone()),
        }
    }
    Ok(a)
}

/// Open for reading; an unfinished image is opened with RECOVER after a
/// warning.
pub fn open_lenient(path: &str) -> Result<Image, Fail> {
    match Image::open(Path::new(path), ImageFlags::default()) {
        Err(Error::Incomplete(m)) => {
            eprintln!("mrtool: warning: {m}");
            Ok(Image::open(Path::new(path), ImageFlags::RECOVER)?)
        }
        r => Ok(r?),
    }
}

fn run(argv: &[String]) -> Res {
    if argv.is_empty()
        || argv
            .iter()
            .any(|a| a == "-h" || a == "--help" || a == "help")
    {
        if argv.is_empty() {
            return Err(usage("no command"));
        }
        print!("{MANUAL}");
        return Ok(());
    }
    let a = parse(&argv[1..])?;
    let want = |n: usize| -> Res {
        if a.pos.len() == n {
            Ok(())
        } else {
            Err(usage(&format!(
                "'{}' takes {n} argument(s), got {}",
                argv[0],
                a.pos.len()
            )))
        }
    };
    match argv[0].as_str() {
        "info" => {
            want(1)?;
            info::run(&a.pos[0], a.json)
        }
        "verify" => {
            want(1)?;
            verify::run(&a.pos[0], a.threads)
        }
        "extract" => {
            want(3)?;
            info::extract(&a.pos[0], &a.pos[1], &a.pos[2])
        }
        "compress" | "checksum" | "expand" => {
            want(2)?;
            let opts = match argv[0].as_str() {
                "compress" => ImageOptions {
                    level: a.level,
                    chunk_bytes: a.chunk,
                    checksums: !a.no_checksums,
                    ..ImageOptions::zstd(a.level)
                },
                "checksum" => ImageOptions {
                    checksums: true,
                    chunk_bytes: a.chunk,
                    ..ImageOptions::default()
                },
                _ => ImageOptions::default(),
            };
            let src = Image::open(Path::new(&a.pos[0]), ImageFlags::DIRECT)?;
            let bar = progress::Bar::new(&argv[0]);
            convert(&src, Path::new(&a.pos[1]), &opts, a.threads, &|d, t| {
                bar.update(d, t)
            })?;
            bar.finish();
            Ok(())
        }
        "copy" => {
            want(2)?;
            copy::run(&a.pos[0], &a.pos[1], a.threads)
        }
        c => Err(usage(&format!("unknown command '{c}'"))),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("mrtool: {msg}");
            ExitCode::from(code)
        }
    }
}
