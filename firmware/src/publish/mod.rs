//! Publishers: where the sensor's decisions go (GPIO pins, a serial line, stdout, an MQTT
//! broker), any combination, behind one trait.

pub mod gpio;
pub mod mqtt;
pub mod outlet;
pub mod serial;
pub mod stdout;

use std::time::{Duration, Instant};

use anyhow::Result;
use fer_protocol::Frame;
use serde::{Deserialize, Deserializer, Serialize};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::decide::Decision;

/// One frame's published decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Event counter since start (one per frame, and one per "no signal" event).
    pub sequence: u64,
    /// Milliseconds since start.
    pub time_ms: u64,
    /// Where the frame came from (file name, camera path, "stdin").
    pub source: String,
    /// The decision.
    pub decision: Decision,
}

impl Event {
    /// The serial wire frame of this event (sequence wraps at 16 bits, confidence in 1/255).
    pub fn frame(&self) -> Frame {
        Frame {
            sequence: self.sequence as u16,
            reading: self.decision.reading,
            confidence: Frame::confidence_byte(self.decision.confidence),
            faces: self.decision.faces.min(u8::MAX as usize) as u8,
        }
    }

    /// The event as one line of JSON (no newline).
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Face {
            x: f32,
            y: f32,
            width: f32,
            height: f32,
            score: f32,
        }
        #[derive(Serialize)]
        struct Line<'a> {
            sequence: u64,
            time_ms: u64,
            source: &'a str,
            reading: &'static str,
            confidence: f32,
            faces: usize,
            changed: bool,
            face: Option<Face>,
        }
        let d = &self.decision;
        let line = Line {
            sequence: self.sequence,
            time_ms: self.time_ms,
            source: &self.source,
            reading: d.reading.name(),
            confidence: (d.confidence * 1000.0).round() / 1000.0,
            faces: d.faces,
            changed: d.changed,
            face: d.face.map(|f| Face {
                x: (f.cx - f.width / 2.0).round(),
                y: (f.cy - f.height / 2.0).round(),
                width: f.width.round(),
                height: f.height.round(),
                score: (f.score * 1000.0).round() / 1000.0,
            }),
        };
        serde_json::to_string(&line).expect("a plain struct serializes")
    }
}

/// When an output sends: on every change of the reading, and also on every N-th frame
/// (`every_frames = N`; 0: changes only, 1: every frame). One rule for every output.
#[derive(Clone, Copy, Debug)]
pub struct Cadence {
    every_frames: u64,
    frames: u64,
}

impl Cadence {
    /// Changes, and every `every_frames`-th frame besides (0: changes only).
    pub fn new(every_frames: u32) -> Self {
        Self {
            every_frames: every_frames.into(),
            frames: 0,
        }
    }

    /// Counts `event`'s frame; true when it is due.
    pub fn due(&mut self, event: &Event) -> bool {
        self.frames += 1;
        event.decision.changed || (self.every_frames > 0 && self.frames.is_multiple_of(self.every_frames))
    }
}

/// Reads an `every_frames` setting: a count, or the older `every_frame = true / false` spelling
/// (every frame / changes only) that configs written before the count still use.
pub fn every_frames<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "a frame count (0: changes only, 1: every frame) or true / false"
    )]
    enum Setting {
        Count(u32),
        Flag(bool),
    }
    Ok(match Setting::deserialize(d)? {
        Setting::Count(n) => n,
        Setting::Flag(every) => every.into(),
    })
}

/// How the sensor is doing, at the status interval: the same figures as the status log line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// Seconds since start.
    pub uptime_s: f64,
    /// Frames per second over the interval.
    pub fps: f64,
    /// Frames in the interval.
    pub frames: u64,
    /// Faces detected in the interval.
    pub faces: u64,
    /// Mean milliseconds per frame of each stage over the interval.
    pub stage_ms: std::collections::BTreeMap<&'static str, f64>,
}

/// Somewhere decisions go.
pub trait Publisher {
    /// A short name for logs.
    fn name(&self) -> String;
    /// Publishes one frame's decision.
    fn publish(&mut self, event: &Event) -> Result<()>;
    /// Publishes the periodic status; most outputs have no use for it.
    fn status(&mut self, _status: &Status) -> Result<()> {
        Ok(())
    }
    /// Returns outputs to their idle state; called once on exit, also after an error.
    fn shutdown(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Opens (or reopens) a publisher.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn Publisher>>>;

/// The longest wait between reopen attempts of a failed publisher.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A publisher that fails alone: an error (an unplugged USB-serial adapter, a port missing at
/// start) is logged once per back-off step, the publisher is closed and reopened with
/// exponential back-off, and the others keep publishing meanwhile. Once reopened it is sent the
/// current decision as a change, so change-only outputs catch up at once. The back-off starts
/// over only after the reopened publisher worked for a while ([`Backoff`]). One error is not
/// contained: stdout's reader closing the pipe ([`stdout::ReaderGone`]) ends the sensor.
pub struct Supervised {
    name: String,
    open: Opener,
    current: Option<Box<dyn Publisher>>,
    backoff: Backoff,
    retry_at: Instant,
    failures: u64,
}

impl Supervised {
    /// Opens the publisher now; a failure is logged and retried after `first_backoff`.
    pub fn new(name: &str, first_backoff: Duration, open: Opener) -> Self {
        Self::with_backoff(name, Backoff::new(first_backoff, MAX_BACKOFF.max(first_backoff)), open)
    }

    /// Like [`Supervised::new`] with its own back-off.
    pub fn with_backoff(name: &str, backoff: Backoff, open: Opener) -> Self {
        let mut supervised = Self {
            name: name.to_string(),
            open,
            current: None,
            backoff,
            retry_at: Instant::now(),
            failures: 0,
        };
        supervised.reopen();
        supervised
    }

    /// Errors so far (failed opens and failed publishes).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    fn reopen(&mut self) -> bool {
        match (self.open)() {
            Ok(p) => {
                if self.failures > 0 {
                    info!("{}: open again", self.name);
                }
                self.current = Some(p);
                self.backoff.connected();
                true
            }
            Err(e) => {
                self.failed(e);
                false
            }
        }
    }

    /// Logs a contained failure and schedules the next attempt; passes on one that ends the sensor.
    fn failed(&mut self, e: anyhow::Error) {
        let wait = self.backoff.failed();
        warn!("{}: {e:#}; other outputs carry on, retrying in {wait:?}", self.name);
        self.failures += 1;
        self.retry_at = Instant::now() + wait;
    }

    /// Closes the current publisher after its error; the error comes back if it ends the sensor.
    fn lost(&mut self, e: anyhow::Error) -> Result<()> {
        if let Some(p) = &mut self.current {
            // Best effort: the device may be gone, and pins get their own idle on drop.
            let _ = p.shutdown();
        }
        self.current = None;
        if e.is::<stdout::ReaderGone>() {
            return Err(e);
        }
        self.failed(e);
        Ok(())
    }
}

impl Publisher for Supervised {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn publish(&mut self, event: &Event) -> Result<()> {
        let caught_up;
        let event = if self.current.is_some() {
            event
        } else {
            if Instant::now() < self.retry_at || !self.reopen() {
                return Ok(());
            }
            let mut e = event.clone();
            e.decision.changed = true;
            caught_up = e;
            &caught_up
        };
        let publisher = self.current.as_mut().expect("opened above");
        match publisher.publish(event) {
            Ok(()) => Ok(()),
            Err(e) => self.lost(e),
        }
    }

    fn status(&mut self, status: &Status) -> Result<()> {
        match self.current.as_mut().map(|p| p.status(status)) {
            Some(Err(e)) => self.lost(e),
            _ => Ok(()),
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        match &mut self.current {
            Some(p) => p.shutdown(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use fer_protocol::{Expression, Reading};

    use super::*;

    pub(crate) fn event(sequence: u64, reading: Reading, changed: bool) -> Event {
        Event {
            sequence,
            time_ms: 40 * sequence,
            source: "frame.jpg".into(),
            decision: Decision {
                reading,
                confidence: 0.8,
                faces: 1,
                face: None,
                changed,
            },
        }
    }

    /// Records what reaches it; fails the publishes whose sequence is in `fail`.
    struct Flaky {
        log: std::rc::Rc<std::cell::RefCell<Vec<(u64, bool)>>>,
        fail: &'static [u64],
    }

    impl Publisher for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }

        fn publish(&mut self, event: &Event) -> Result<()> {
            anyhow::ensure!(!self.fail.contains(&event.sequence), "unplugged");
            self.log.borrow_mut().push((event.sequence, event.decision.changed));
            Ok(())
        }
    }

    #[test]
    fn a_failing_publisher_is_reopened_and_catches_up_while_errors_stay_inside() {
        let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let opens = std::rc::Rc::new(std::cell::Cell::new(0));
        let (l, o) = (log.clone(), opens.clone());
        // The port is missing at start (first open fails), then publish 2 fails (unplugged).
        let open: Opener = Box::new(move || {
            o.set(o.get() + 1);
            anyhow::ensure!(o.get() > 1, "no such port");
            Ok(Box::new(Flaky {
                log: l.clone(),
                fail: &[2],
            }) as Box<dyn Publisher>)
        });
        let mut supervised = Supervised::new("flaky", Duration::ZERO, open);
        for i in 0..5 {
            let e = event(i, Reading::Expression(Expression::Happiness), i == 0);
            supervised.publish(&e).expect("errors are handled inside");
        }
        // Opened at event 0 (first retry), lost at 2, reopened at 3 which is sent as a change.
        assert_eq!(*log.borrow(), [(0, true), (1, false), (3, true), (4, false)]);
        assert_eq!((opens.get(), supervised.failures()), (3, 2));
    }

    #[test]
    fn a_failed_publisher_waits_out_its_back_off() {
        let open: Opener = Box::new(|| anyhow::bail!("no such port"));
        let mut supervised = Supervised::new("gone", Duration::from_secs(3600), open);
        for i in 0..3 {
            supervised.publish(&event(i, Reading::NoFace, true)).unwrap();
        }
        assert_eq!(supervised.failures(), 1, "no retry before the back-off ends");
    }

    #[test]
    fn an_output_that_opens_but_fails_at_once_is_retried_ever_more_slowly() {
        let opens = std::rc::Rc::new(std::cell::Cell::new(0));
        let o = opens.clone();
        // Opens fine, fails every publish: a reader that never reads, a broker that drops us.
        let open: Opener = Box::new(move || {
            o.set(o.get() + 1);
            Ok(Box::new(Flaky {
                log: Default::default(),
                fail: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            }) as Box<dyn Publisher>)
        });
        let backoff = Backoff::forgiving_after(
            Duration::from_millis(20),
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        let mut supervised = Supervised::with_backoff("flaky", backoff, open);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(400) {
            supervised.publish(&event(1, Reading::NoFace, true)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        // Waits of 20, 40, 80, 160 ms fit in 400 ms: five opens, not the twenty a back-off
        // forgiven by every successful open would make.
        assert!((4..=6).contains(&opens.get()), "{} opens", opens.get());
    }

    #[test]
    fn a_closed_stdout_is_not_contained_but_ends_the_sensor() {
        let open: Opener = Box::new(|| {
            struct Gone;
            impl Publisher for Gone {
                fn name(&self) -> String {
                    "stdout".into()
                }
                fn publish(&mut self, _: &Event) -> Result<()> {
                    Err(stdout::ReaderGone("stdout".into()).into())
                }
            }
            Ok(Box::new(Gone) as Box<dyn Publisher>)
        });
        let mut supervised = Supervised::new("stdout", Duration::ZERO, open);
        let err = supervised.publish(&event(0, Reading::NoFace, true)).unwrap_err();
        assert!(err.is::<stdout::ReaderGone>(), "{err:#}");
    }

    #[test]
    fn wire_frame_carries_the_decision() {
        let mut e = event(65_537, Reading::Uncertain, true);
        e.decision.faces = 300;
        let f = e.frame();
        assert_eq!(
            (f.sequence, f.reading, f.confidence, f.faces),
            (1, Reading::Uncertain, 204, 255)
        );
    }
}
