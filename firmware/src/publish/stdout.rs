//! JSON lines on stdout (or any writer), at the output's [`Cadence`].

use std::io::Write;
use std::os::fd::AsFd;

use anyhow::{Context, Result};

use super::outlet::{DRAIN, Outlet, QUEUE};
use super::{Cadence, Event, Publisher};

/// The reader of stdout closed the pipe (`fer-sensor | head -1`): nothing can publish there
/// again, so the sensor stops, as Unix tools do on a broken pipe.
#[derive(Debug, thiserror::Error)]
#[error("{0}: the reader closed the pipe; stopping")]
pub struct ReaderGone(pub String);

/// JSON lines on a writer, written on their own thread (see [`Outlet`]).
pub struct JsonLines {
    outlet: Outlet,
    cadence: Cadence,
    label: String,
}

impl JsonLines {
    /// Writes to `out` at the [`Cadence`] of `every_frames`; `label` names it in logs.
    pub fn new(out: impl Write + Send + 'static, every_frames: u32, label: &str) -> Result<Self> {
        Ok(Self {
            outlet: Outlet::spawn(out, label, QUEUE).with_context(|| format!("starting the {label} writer"))?,
            cadence: Cadence::new(every_frames),
            label: label.to_string(),
        })
    }

    /// JSON lines on this process's stdout, written straight to its file descriptor (no buffer
    /// or lock shared with the rest of the program).
    pub fn stdout(every_frames: u32) -> Result<Self> {
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stdout")?;
        Self::new(std::fs::File::from(fd), every_frames, "stdout")
    }
}

impl Publisher for JsonLines {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn publish(&mut self, event: &Event) -> Result<()> {
        if !self.cadence.due(event) {
            return Ok(());
        }
        let mut line = event.json();
        line.push('\n');
        self.outlet.send(line.into_bytes()).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(ReaderGone(self.label.clone())),
            _ => anyhow::Error::new(e).context(format!("writing to {}", self.label)),
        })
    }

    fn shutdown(&mut self) -> Result<()> {
        self.outlet.close(DRAIN);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use fer_protocol::{Expression, Reading};

    use super::*;
    use crate::publish::tests::event;

    /// A writer whose bytes the test reads afterwards.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_only_on_change_unless_every_frame() {
        let (changes_out, all_out) = (Shared::default(), Shared::default());
        let mut changes = JsonLines::new(changes_out.clone(), 0, "test").unwrap();
        let mut all = JsonLines::new(all_out.clone(), 1, "test").unwrap();
        for (i, changed) in [true, false, false, true].into_iter().enumerate() {
            let e = event(i as u64, Reading::Expression(Expression::Happiness), changed);
            changes.publish(&e).unwrap();
            all.publish(&e).unwrap();
        }
        changes.shutdown().unwrap();
        all.shutdown().unwrap();
        let text = String::from_utf8(changes_out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(
            String::from_utf8(all_out.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .count(),
            4
        );
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["reading"], "happiness");
        assert_eq!(first["confidence"], 0.8);
        assert_eq!(first["face"], serde_json::Value::Null);
    }
}
