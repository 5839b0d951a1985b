//! A tiny QMP client and a QEMU 10 process wrapper for the comparison runs.
//!
//! QMP is line-delimited JSON over a unix socket. The benchmark only needs
//! to send fixed commands and read two things back (whether a reply is an
//! error, and the migration `status`), so replies are scanned as text
//! rather than parsed (no JSON dependency).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One QMP connection.
pub struct Qmp {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
}

fn err(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl Qmp {
    /// Connect (retrying while QEMU starts), read the greeting and
    /// negotiate capabilities.
    pub fn connect(sock: &Path, timeout: Duration) -> io::Result<Qmp> {
        let t = Instant::now();
        let s = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) if t.elapsed() < timeout => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(err(format!("QMP connect {}: {e}", sock.display()))),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut q = Qmp {
            rd: BufReader::new(s.try_clone()?),
            wr: s,
        };
        let greeting = q.line()?;
        if !greeting.contains("\"QMP\"") {
            return Err(err(format!("unexpected QMP greeting: {greeting}")));
        }
        q.cmd("qmp_capabilities", "{}")?;
        Ok(q)
    }

    fn line(&mut self) -> io::Result<String> {
        let mut l = String::new();
        if self.rd.read_line(&mut l)? == 0 {
            return Err(err("QMP connection closed".into()));
        }
        Ok(l)
    }

    /// Run `execute` with `args` (a JSON object text); returns the reply
    /// line. Events are skipped; an error reply is an `Err` with its text.
    pub fn cmd(&mut self, execute: &str, args: &str) -> io::Result<String> {
        let msg = format!("{{\"execute\":\"{execute}\",\"arguments\":{args}}}\n");
        self.wr.write_all(msg.as_bytes())?;
        loop {
            let l = self.line()?;
            if l.starts_with("{\"event\"")
                || l.contains("\"event\":") && l.contains("\"timestamp\"")
            {
                continue;
            }
            if l.contains("\"error\"") {
                return Err(err(format!("QMP {execute} failed: {}", l.trim())));
            }
            return Ok(l);
        }
    }

    /// The `status` of `query-migrate` (e.g. "active", "completed").
    pub fn migrate_status(&mut self) -> io::Result<(String, String)> {
        let l = self.cmd("query-migrate", "{}")?;
        Ok((json_str_field(&l, "status").unwrap_or_default(), l))
    }

    /// Set mapped-ram + multifd, `channels` multifd channels, direct-io.
    pub fn setup_mapped_ram(&mut self, channels: u32, direct: bool) -> io::Result<()> {
        self.cmd(
            "migrate-set-capabilities",
            "{\"capabilities\":[{\"capability\":\"mapped-ram\",\"state\":true},{\"capability\":\"multifd\",\"state\":true}]}",
        )?;
        self.cmd(
            "migrate-set-parameters",
            &format!("{{\"multifd-channels\":{channels},\"direct-io\":{direct}}}"),
        )?;
        Ok(())
    }

    /// Poll `query-migrate` every `every` until completed (Ok) or failed.
    pub fn wait_migration(&mut self, every: Duration, timeout: Duration) -> io::Result<String> {
        let t = Instant::now();
        loop {
            let (st, line) = self.migrate_status()?;
            match st.as_str() {
                "completed" => return Ok(line),
                "failed" | "cancelled" => {
                    return Err(err(format!("QEMU migration {st}: {}", line.trim())))
                }
                _ => {}
            }
            if t.elapsed() > timeout {
                return Err(err(format!("QEMU migration timed out: {}", line.trim())));
            }
            std::thread::sleep(every);
        }
    }
}

/// The string value of `"key": "..."` in a JSON text (first occurrence).
pub fn json_str_field(text: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let i = text.find(&pat)? + pat.len();
    let rest = text[i..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// The number value of `"key": N` in a JSON text (first occurrence).
pub fn json_num_field(text: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\"");
    let i = text.find(&pat)? + pat.len();
    let rest = text[i..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A QEMU process with a paused `pc` guest whose RAM is a shared
/// `memory-backend-file`; killed on drop.
pub struct Qemu {
    child: Child,
    pub qmp: Qmp,
    sock: PathBuf,
}

impl Qemu {
    /// Start QEMU (`-S`, TCG, no devices) with `mib` MiB of RAM backed by
    /// `mem_path`; with `incoming`, waiting for `migrate-incoming`.
    pub fn start(mem_path: &Path, mib: usize, sock: &Path, incoming: bool) -> io::Result<Qemu> {
        let _ = std::fs::remove_file(sock);
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-nodefaults", "-display", "none", "-S"])
            .args(["-M", "pc,memory-backend=mem"])
            .args(["-m", &format!("{mib}M")])
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=mem,size={mib}M,mem-path={},share=on",
                mem_path.display()
            ))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()));
        if incoming {
            c.args(["-incoming", "defer"]);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().map_err(|e| {
            err(format!(
                "cannot start qemu-system-x86_64 (is QEMU 10 installed?): {e}"
            ))
        })?;
        match Qmp::connect(sock, Duration::from_secs(30)) {
            Ok(qmp) => Ok(Qemu {
                child,
                qmp,
                sock: sock.to_path_buf(),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Quit QEMU and wait for it.
    pub fn quit(mut self) {
        let _ = self.qmp.cmd("quit", "{}");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}
