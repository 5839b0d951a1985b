//! A progress bar on stderr, drawn only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

pub struct Bar {
    what: String,
    tty: bool,
    start: Instant,
    last: Mutex<Option<Instant>>,
}

impl Bar {
    pub fn new(what: &str) -> Bar {
        Bar {
            what: what.to_string(),
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
            last: Mutex::new(None),
        }
    }

    /// Redraw at most 10 times a second.
    pub fn update(&self, done: u64, total: u64) {
        if !self.tty {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed().as_millis() < 100) && done < total {
            return;
        }
        *last = Some(Instant::now());
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let width = 40;
        let fill = (frac * width as f64) as usize;
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r{} [{}{}] {:5.1}% {:8.1} MiB/s",
            self.what,
            "=".repeat(fill),
            " ".repeat(width - fill),
            frac * 100.0,
            done as f64 / secs / (1 << 20) as f64
        );
        let _ = std::io::stderr().flush();
    }

    pub fn finish(&self) {
        if self.tty && self.last.lock().map(|l| l.is_some()).unwrap_or(false) {
            eprintln!();
        }
    }
}
