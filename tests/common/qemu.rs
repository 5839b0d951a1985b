//! Running real QEMU (qemu-system-x86_64 >= 9.0) for interop tests: find
//! and version-check the binary, start a paused guest whose RAM is a file
//! the test filled, save it in mapped-ram format, restore a file into a
//! fresh guest and hand back its RAM.

use super::dirs::TmpDir;
use super::qmp::{quote, Json, Qmp};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const INSTALL_HINT: &str =
    "install qemu-system-x86 >= 9.0 from bookworm-backports (scripts/setup-deps.sh does it)";

/// How long a save or restore may take before the test fails.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long QEMU may take to create its QMP socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The QEMU binary (`$QEMU_SYSTEM_X86_64` or `qemu-system-x86_64` on
/// `PATH`), checked to be version >= 9.0. Panics with the install hint
/// otherwise; tests gate on `need::met(Need::Qemu)` before getting here.
pub fn qemu_binary() -> &'static Path {
    match find() {
        Ok(p) => p,
        Err(e) => panic!("{e}: {INSTALL_HINT}"),
    }
}

/// The QEMU binary, or why there is none usable (looked up once).
pub fn find() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(find_qemu).as_deref().map_err(Clone::clone)
}

fn find_qemu() -> Result<PathBuf, String> {
    let bin = match std::env::var_os("QEMU_SYSTEM_X86_64") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("qemu-system-x86_64"))
                    .find(|p| p.is_file())
            })
            .ok_or_else(|| "qemu-system-x86_64 not found on PATH".to_string())?,
    };
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (major, minor) = parse_version(&text)
        .ok_or_else(|| format!("cannot read the version of {}: {text:?}", bin.display()))?;
    if major < 9 {
        return Err(format!(
            "{} is version {major}.{minor}, mapped-ram needs >= 9.0",
            bin.display()
        ));
    }
    Ok(bin)
}

/// "QEMU emulator version 10.0.2 (...)" -> (10, 0).
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let rest = &text[text.find("version ")? + 8..];
    let mut it = rest.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Migration settings, applied the same way on the saving and the
/// restoring side.
#[derive(Clone, Copy, Debug, Default)]
pub struct MigOpts {
    /// Some(n): enable multifd with n channels.
    pub multifd_channels: Option<u32>,
    /// direct-io (needs multifd).
    pub direct_io: bool,
}

impl MigOpts {
    pub fn plain() -> MigOpts {
        MigOpts::default()
    }
    pub fn multifd(n: u32) -> MigOpts {
        MigOpts {
            multifd_channels: Some(n),
            direct_io: false,
        }
    }
    pub fn multifd_direct(n: u32) -> MigOpts {
        MigOpts {
            multifd_channels: Some(n),
            direct_io: true,
        }
    }
}

/// One ramblock as QEMU reports it (`info ramblock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamBlock {
    pub idstr: String,
    pub page_size: u64,
    pub used_length: u64,
}

/// Parse HMP `info ramblock` output.
pub fn parse_info_ramblock(text: &str) -> Vec<RamBlock> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 8 {
            continue;
        }
        let unit = match t[2] {
            "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            u => panic!("unknown page size unit {u:?} in {line:?}"),
        };
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
        out.push(RamBlock {
            idstr: t[0].to_string(),
            page_size: t[1].parse::<u64>().unwrap() * unit,
            used_length: hex(t[4]),
        });
    }
    out
}

/// A running, paused QEMU guest with a QMP session. Killed on drop.
pub struct Vm {
    child: Child,
    qmp: Qmp,
    stderr: PathBuf,
    name: String,
}

impl Vm {
    /// Start `qemu-system-x86_64 -M pc` paused, RAM from `mem_path`
    /// (`mem_len` bytes), QMP on a socket in `dir`; with `incoming`, add
    /// `-incoming defer`.
    pub fn start(dir: &TmpDir, name: &str, mem_path: &Path, mem_len: u64, incoming: bool) -> Vm {
        let bin = qemu_binary();
        let sock = dir.join(&format!("{name}.qmp"));
        assert!(
            sock.as_os_str().len() < 108,
            "socket path too long for sun_path: {}",
            sock.display()
        );
        let stderr = dir.join(&format!("{name}.stderr"));
        let errf = fs::File::create(&stderr).unwrap();
        let mib = mem_len >> 20;
        assert_eq!(mib << 20, mem_len, "guest RAM must be whole MiB");
        let mut cmd = Command::new(bin);
        cmd.args(["-nodefaults", "-display", "none", "-S"])
            .args(["-M", "pc,memory-backend=mem", "-m", &format!("{mib}M")])
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=mem,size={mib}M,mem-path={},share=on",
                mem_path.display()
            ))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()));
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(errf);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}: {INSTALL_HINT}", bin.display()));
        let t0 = Instant::now();
        let qmp = loop {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "QEMU {name} exited at start ({st}): {}",
                    fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            if sock.exists() {
                match Qmp::connect(&sock) {
                    Ok(q) => break q,
                    Err(e) if t0.elapsed() > START_TIMEOUT => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("QEMU {name}: QMP: {e}");
                    }
                    Err(_) => {}
                }
            }
            if t0.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "QEMU {name}: no QMP socket after {START_TIMEOUT:?}: {}",
                    fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Vm {
            child,
            qmp,
            stderr,
            name: name.to_string(),
        }
    }

    /// QEMU's stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Run a QMP command; an error reply or a dead QEMU fails the test
    /// with QMP's text and QEMU's stderr.
    pub fn qmp(&mut self, cmd: &str, args: Option<&str>) -> Json {
        match self.qmp.execute(cmd, args) {
            Ok(v) => v,
            Err(e) => {
                // Give an exiting QEMU a moment to flush its last words.
                std::thread::sleep(Duration::from_millis(100));
                panic!("QEMU {}: {e}; stderr: {}", self.name, self.stderr_text())
            }
        }
    }

    /// A QMP command that is expected to maybe fail.
    pub fn try_qmp(&mut self, cmd: &str, args: Option<&str>) -> Result<Json, String> {
        self.qmp.execute(cmd, args)
    }

    /// The guest's ramblocks as `info ramblock` lists them.
    pub fn ramblocks(&mut self) -> Vec<RamBlock> {
        let r = self.qmp(
            "human-monitor-command",
            Some(r#"{"command-line": "info ramblock"}"#),
        );
        let blocks = parse_info_ramblock(r.as_str().expect("HMP text"));
        assert!(
            blocks.iter().any(|b| b.idstr == "mem"),
            "no `mem` ramblock in {r:?}"
        );
        blocks
    }

    /// Enable mapped-ram (+ multifd) and set the parameters of `o`.
    pub fn set_migration(&mut self, o: &MigOpts) {
        let mut caps = vec![r#"{"capability": "mapped-ram", "state": true}"#.to_string()];
        if o.multifd_channels.is_some() {
            caps.push(r#"{"capability": "multifd", "state": true}"#.to_string());
        }
        self.qmp(
            "migrate-set-capabilities",
            Some(&format!("{{\"capabilities\": [{}]}}", caps.join(", "))),
        );
        let mut params = Vec::new();
        if let Some(n) = o.multifd_channels {
            params.push(format!("\"multifd-channels\": {n}"));
        }
        if o.direct_io {
            params.push("\"direct-io\": true".to_string());
        }
        if !params.is_empty() {
            self.qmp(
                "migrate-set-parameters",
                Some(&format!("{{{}}}", params.join(", "))),
            );
        }
    }

    /// Poll `query-migrate` until `completed`; `failed`/`cancelled` or the
    /// timeout fail the test. Returns the final reply.
    pub fn wait_migration(&mut self, what: &str) -> Json {
        match self.try_wait_migration(what) {
            Ok(r) => r,
            Err(e) => panic!("{e}; stderr: {}", self.stderr_text()),
        }
    }

    /// As [`wait_migration`](Self::wait_migration), but `failed` or
    /// `cancelled` come back as `Err` with QEMU's `error-desc`.
    pub fn try_wait_migration(&mut self, what: &str) -> Result<Json, String> {
        let t0 = Instant::now();
        loop {
            // A QEMU whose incoming migration failed may exit at once.
            let r = self
                .try_qmp("query-migrate", None)
                .map_err(|e| format!("QEMU {} {what}: query-migrate: {e}", self.name))?;
            match r.get("status").and_then(Json::as_str) {
                Some("completed") => return Ok(r),
                Some(s @ ("failed" | "cancelled")) => {
                    return Err(format!(
                        "QEMU {} {what}: {s}: {}",
                        self.name,
                        r.get("error-desc").and_then(Json::as_str).unwrap_or("?")
                    ))
                }
                _ => {}
            }
            if t0.elapsed() > MIGRATION_TIMEOUT {
                panic!(
                    "QEMU {} {what}: not completed after {MIGRATION_TIMEOUT:?}: {r:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `quit` and wait for the process.
    pub fn quit(mut self) {
        let _ = self.qmp.execute("quit", None);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Drop kills it.
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `file:PATH` or `file:PATH,offset=N`.
pub fn file_uri(path: &Path, offset: u64) -> String {
    if offset == 0 {
        format!("file:{}", path.display())
    } else {
        format!("file:{},offset={offset}", path.display())
    }
}

/// What a save produced.
pub struct Saved {
    pub file: PathBuf,
    pub offset: u64,
    /// The ramblocks as the saving QEMU listed them.
    pub blocks: Vec<RamBlock>,
    /// The final `query-migrate` reply.
    pub info: Json,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Start a fresh QEMU whose RAM is `mem`, save it with mapped-ram to `file`
/// (at `offset`), quit.
pub fn save(dir: &TmpDir, mem: &[u8], opts: &MigOpts, file: &Path, offset: u64) -> Saved {
    let n = seq();
    let backing = dir.join(&format!("src{n}.ram"));
    fs::write(&backing, mem).unwrap();
    let mut vm = Vm::start(dir, &format!("s{n}"), &backing, mem.len() as u64, false);
    let blocks = vm.ramblocks();
    vm.set_migration(opts);
    vm.qmp(
        "migrate",
        Some(&format!("{{\"uri\": {}}}", quote(&file_uri(file, offset)))),
    );
    let info = vm.wait_migration("save");
    vm.quit();
    let _ = fs::remove_file(&backing);
    Saved {
        file: file.to_path_buf(),
        offset,
        blocks,
        info,
    }
}

/// Start a fresh QEMU with `mem_len` bytes of new, zero RAM, restore `file`
/// (stream at `offset`) into it, and return its RAM (the `mem` block).
pub fn restore(dir: &TmpDir, file: &Path, offset: u64, mem_len: usize, opts: &MigOpts) -> Vec<u8> {
    match try_restore(dir, file, offset, mem_len, opts) {
        Ok(ram) => ram,
        Err(e) => panic!("{e}"),
    }
}

/// As [`restore`], but a failed incoming migration is returned as its
/// `error-desc` plus QEMU's stderr instead of failing the test.
pub fn try_restore(
    dir: &TmpDir,
    file: &Path,
    offset: u64,
    mem_len: usize,
    opts: &MigOpts,
) -> Result<Vec<u8>, String> {
    let n = seq();
    let backing = dir.join(&format!("dst{n}.ram"));
    let f = fs::File::create(&backing).unwrap();
    f.set_len(mem_len as u64).unwrap();
    drop(f);
    let mut vm = Vm::start(dir, &format!("d{n}"), &backing, mem_len as u64, true);
    vm.set_migration(opts);
    vm.qmp(
        "migrate-incoming",
        Some(&format!("{{\"uri\": {}}}", quote(&file_uri(file, offset)))),
    );
    let res = vm.try_wait_migration("restore");
    let stderr = vm.stderr_text();
    vm.quit();
    let ram = fs::read(&backing).unwrap();
    let _ = fs::remove_file(&backing);
    match res {
        Ok(_) => Ok(ram),
        Err(e) => Err(format!("{e}; stderr: {stderr}")),
    }
}
