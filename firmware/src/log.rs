//! The sensor's log on stderr, written on a thread of its own: a stderr nobody reads (journald
//! stalled on a slow card, `fer-sensor … 2>&1 | stuck`) would otherwise stall every `info!` on the
//! frame loop, and with the loop the watchdog's pings and SIGTERM.
//!
//! Written here rather than taken from tracing-appender, whose non-blocking writer does the same
//! but, when its queue is full at exit, prints a line to stdout (the sensor's event stream) and
//! waits up to a second. Lines beyond the queue are dropped, the newest first, and counted in a
//! line of their own once stderr takes lines again.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// A writer of whole log lines into the queue; cloned into the log subscriber.
#[derive(Clone)]
pub struct Log {
    queue: SyncSender<Entry>,
    dropped: Arc<AtomicU64>,
}

enum Entry {
    Line(Vec<u8>),
    /// Everything queued before it has been written: answer on this channel.
    Flushed(mpsc::Sender<()>),
}

impl Log {
    /// Starts the thread that writes to `sink`, with room for `capacity` lines.
    pub fn start(sink: impl Write + Send + 'static, capacity: usize) -> io::Result<Self> {
        let (queue, lines) = mpsc::sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("log".into())
            .spawn(move || write_loop(sink, &lines, &counted))?;
        Ok(Self { queue, dropped })
    }

    /// Queues `message` as one more line, then waits until everything queued has been written,
    /// all within `grace`: what a process says last, at exit, without hanging on a stalled stderr.
    pub fn finish(&self, message: Option<&str>, grace: Duration) {
        let deadline = Instant::now() + grace;
        let (done, flushed) = mpsc::channel();
        let entries = message
            .map(|m| Entry::Line(format!("{m}\n").into_bytes()))
            .into_iter()
            .chain([Entry::Flushed(done)]);
        for mut entry in entries {
            loop {
                match self.queue.try_send(entry) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                        entry = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => return,
                }
            }
        }
        let _ = flushed.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

impl Write for Log {
    /// Queues `buf` (the log subscriber writes each event whole) or, with the queue full, drops it.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.queue.try_send(Entry::Line(buf.to_vec())).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_loop(mut sink: impl Write, lines: &Receiver<Entry>, dropped: &AtomicU64) {
    for entry in lines {
        match entry {
            Entry::Line(line) => {
                let _ = sink.write_all(&line);
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    let _ = writeln!(sink, "log: {lost} lines dropped while stderr was not being read");
                }
            }
            Entry::Flushed(done) => {
                let _ = sink.flush();
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A sink that blocks while `open` is false, then records everything.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<AtomicBool>,
        taken: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            while !self.open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.taken.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_costs_the_writer_nothing_and_the_last_word_comes_after_the_rest() {
        let gate = Gate::default();
        let mut log = Log::start(gate.clone(), 4).unwrap();
        let start = Instant::now();
        for i in 0..1000 {
            log.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
        // Stalled, the exit gives up within its grace.
        let start = Instant::now();
        log.finish(Some("error: first"), Duration::from_millis(50));
        assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
        // Once the sink takes lines, the count of what was dropped follows, and the last word
        // comes after everything queued before it.
        gate.open.store(true, Ordering::SeqCst);
        log.finish(Some("error: last"), Duration::from_secs(5));
        let text = String::from_utf8(gate.taken.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("line 0\n"), "{text}");
        assert!(text.contains("lines dropped while stderr was not being read"), "{text}");
        assert!(text.ends_with("error: last\n"), "{text}");
    }
}
