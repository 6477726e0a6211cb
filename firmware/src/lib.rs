//! The device program of the facial-expression sensor: frames from a camera, stdin or files;
//! faces found by BlazeFace and aligned; expressions classified by the exported model with
//! tract; decisions smoothed over frames and published on GPIO pins, a serial line, stdout and
//! an MQTT broker (with Home Assistant discovery).
//!
//! Data flows one way through the modules: [`source`] → [`detect`] → [`align`] → [`classify`] →
//! [`decide`] → [`publish`]; [`sensor`] joins them, [`config`] holds every setting, [`selftest`]
//! checks a device in the field, [`bench`] times its stages, [`golden`] the model against its
//! golden vectors, [`service`]
//! talks to systemd, and [`log`] writes the log to stderr without ever stalling the frame loop.

pub mod align;
pub mod backoff;
pub mod bench;
pub mod classify;
pub mod config;
pub mod decide;
pub mod detect;
pub mod golden;
pub mod log;
pub mod publish;
pub mod selftest;
pub mod sensor;
pub mod service;
pub mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared "please stop" flag, set by SIGINT/SIGTERM, polled by the main loop and by sources
/// that wait (a camera reconnecting).
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks everything holding this flag to stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Sleeps for `duration` or until a stop is asked for, whichever comes first (checked every
    /// 50 ms, so a back-off of seconds never delays a shutdown); returns whether it was asked.
    pub fn sleep(&self, duration: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + duration;
        while !self.requested() {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(50)));
        }
        true
    }
}

/// Reads a whole file the sensor needs (a model, the configuration), refusing what is not a
/// regular file (opening a FIFO blocks before any signal handler can end the wait) or is larger
/// than `max` bytes (`/dev/zero` never ends).
pub fn read_file(path: &std::path::Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    anyhow::ensure!(meta.is_file(), "not a regular file");
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    anyhow::ensure!(
        bytes.len() as u64 <= max,
        "larger than {} KiB, the most this file may be",
        max >> 10
    );
    Ok(bytes)
}

/// The largest model file read: the shipped ones are under 1 MB, BlazeFace 0.4 MB.
pub const MAX_MODEL_BYTES: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_back_off_sleep_ends_when_a_stop_is_asked_for() {
        let stop = Stop::default();
        let asker = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            asker.request();
        });
        let start = std::time::Instant::now();
        assert!(stop.sleep(std::time::Duration::from_secs(30)));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(stop.sleep(std::time::Duration::from_secs(30)), "already asked: no wait");
    }

    #[test]
    fn files_that_would_block_or_never_end_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.onnx");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let err = format!("{:#}", read_file(&fifo, 1 << 20).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; 3000]).unwrap();
        assert!(format!("{:#}", read_file(&big, 2048).unwrap_err()).contains("larger than 2 KiB"));
        assert_eq!(read_file(&big, 4096).unwrap().len(), 3000);
    }
}
