//! An output's messages written on a thread of their own, so that a reader that stops reading (a
//! pipe nobody drains, a serial receiver that is busy or gone quiet) never stalls the frame loop.
//!
//! The frame loop only queues. While the reader keeps up the queue is empty; while it does not,
//! the queue holds the newest messages and drops the oldest, counted and logged once per stall.
//! Each message is written whole, in order, so a reader that resumes never sees half of one.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Messages queued for a reader that does not keep up; the oldest is dropped beyond this.
pub const QUEUE: usize = 64;

/// How long a stop waits for queued messages to reach a slow reader before it gives up on them.
pub const DRAIN: Duration = Duration::from_millis(200);

/// How long a sink that takes no bytes (a non-blocking tty whose buffer is full) is polled.
const POLL: Duration = Duration::from_millis(1);

/// A writer thread and its bounded queue; see the module docs.
pub struct Outlet {
    shared: Arc<Shared>,
    label: String,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Set when the outlet closes: the writer abandons a message it cannot finish.
    closing: AtomicBool,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Vec<u8>>,
    capacity: usize,
    /// Whether the writer holds a message it has not finished.
    busy: bool,
    /// Drops since the reader last kept up, for one warning per stall and one on recovery.
    dropped_in_stall: u64,
    dropped: u64,
    failed: Option<io::Error>,
    /// The writer has stopped on an error: nothing queued will go out any more.
    gone: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a queue that is still a valid queue.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Outlet {
    /// Starts the writer thread on `sink`; `label` names the output in logs.
    pub fn spawn(sink: impl Write + Send + 'static, label: &str, capacity: usize) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                capacity: capacity.max(1),
                ..State::default()
            }),
            wake: Condvar::new(),
            closing: AtomicBool::new(false),
        });
        let (s, l) = (shared.clone(), label.to_string());
        // Not joined: a thread blocked in a write to a pipe nobody reads cannot be woken, and
        // must not keep the sensor from stopping.
        std::thread::Builder::new()
            .name(format!("{label} writer"))
            .spawn(move || write_loop(sink, &s, &l))?;
        Ok(Self {
            shared,
            label: label.to_string(),
        })
    }

    /// Queues one message without waiting; returns the writer's error once it has failed (the
    /// reader closed the pipe, the device is gone).
    pub fn send(&mut self, message: Vec<u8>) -> io::Result<()> {
        let mut state = self.shared.state();
        if let Some(e) = state.failed.take() {
            return Err(e);
        }
        if state.queue.len() >= state.capacity {
            state.queue.pop_front();
            state.dropped += 1;
            state.dropped_in_stall += 1;
            if state.dropped_in_stall == 1 {
                warn!(
                    "{}: the reader is not keeping up; keeping the newest {} messages and dropping older \
                    ones until it does",
                    self.label, state.capacity
                );
            }
        }
        state.queue.push_back(message);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Messages dropped in all because the reader did not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.state().dropped
    }

    /// Gives what is queued at most `grace` to go out, then stops the writer (a message it is
    /// still stuck in is abandoned).
    pub fn close(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut state = self.shared.state();
        while (state.busy || !state.queue.is_empty()) && !state.gone {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .wake
                .wait_timeout(state, left.min(Duration::from_millis(10)))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
    }
}

impl Drop for Outlet {
    fn drop(&mut self) {
        self.close(Duration::ZERO);
    }
}

fn write_loop(mut sink: impl Write, shared: &Shared, label: &str) {
    loop {
        let message = {
            let mut state = shared.state();
            loop {
                if shared.closing.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(m) = state.queue.pop_front() {
                    state.busy = true;
                    break m;
                }
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let written = write_whole(&mut sink, &message, &shared.closing);
        let mut state = shared.state();
        state.busy = false;
        match written {
            Ok(true) => {
                if state.dropped_in_stall > 0 {
                    info!(
                        "{label}: the reader keeps up again; {} messages were dropped meanwhile",
                        std::mem::take(&mut state.dropped_in_stall)
                    );
                }
            }
            Ok(false) => return,
            Err(e) => {
                state.failed = Some(e);
                state.gone = true;
                shared.wake.notify_all();
                return;
            }
        }
        shared.wake.notify_all();
    }
}

/// Writes all of `bytes`, waiting on a sink that takes none for now; `Ok(false)` when the outlet
/// closed first.
fn write_whole(sink: &mut impl Write, bytes: &[u8], closing: &AtomicBool) -> io::Result<bool> {
    let mut sent = 0;
    while sent < bytes.len() {
        match sink.write(&bytes[sent..]) {
            Ok(0) => {}
            Ok(n) => {
                sent += n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if closing.load(Ordering::SeqCst) {
            return Ok(false);
        }
        std::thread::sleep(POLL);
    }
    sink.flush()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes nothing while `open` is false, then everything; records what it took.
    #[derive(Clone, Default)]
    struct Valve {
        open: Arc<AtomicBool>,
        taken: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Valve {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.open.load(Ordering::SeqCst) {
                return Ok(0);
            }
            // A byte at a time, so a message is always written in several pieces.
            self.taken.lock().unwrap().push(buf[0]);
            Ok(1)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_costs_the_sender_nothing_and_gets_the_newest_messages_whole() {
        let valve = Valve::default();
        let mut outlet = Outlet::spawn(valve.clone(), "test", 4).unwrap();
        outlet.send(b"message 0\n".to_vec()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !outlet.shared.state().busy {
            assert!(Instant::now() < deadline, "the writer never took the first message");
            std::thread::sleep(Duration::from_millis(1));
        }
        let start = Instant::now();
        for i in 1..1000 {
            outlet.send(format!("message {i}\n").into_bytes()).unwrap();
        }
        assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
        // The writer took the first message and is stuck in it; four more wait, the rest dropped.
        assert_eq!(outlet.dropped(), 1000 - 1 - 4);
        valve.open.store(true, Ordering::SeqCst);
        outlet.close(Duration::from_secs(5));
        let text = String::from_utf8(valve.taken.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            ["message 0", "message 996", "message 997", "message 998", "message 999"]
        );
    }

    /// A sink whose reader has gone.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writers_error_comes_back_to_the_sender() {
        let mut outlet = Outlet::spawn(Closed, "test", 4).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = loop {
            if let Err(e) = outlet.send(b"x\n".to_vec()) {
                break e;
            }
            assert!(Instant::now() < deadline, "the error never came back");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        // What is sent after the error was taken has no writer left: closing does not wait for it.
        outlet.send(b"y\n".to_vec()).unwrap();
        let start = Instant::now();
        outlet.close(Duration::from_secs(5));
        assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
    }

    #[test]
    fn closing_abandons_a_stuck_message_within_the_grace() {
        let valve = Valve::default();
        let mut outlet = Outlet::spawn(valve, "test", 4).unwrap();
        outlet.send(b"never taken\n".to_vec()).unwrap();
        let start = Instant::now();
        outlet.close(Duration::from_millis(100));
        assert!(start.elapsed() < Duration::from_millis(600), "{:?}", start.elapsed());
    }
}
