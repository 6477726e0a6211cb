//! The serial publisher and the self-test's loopback over a real pseudo-terminal pair: rppal
//! opens the pty's tty end exactly as it opens a UART, the test reads the other end.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use fer_firmware::decide::Decision;
use fer_firmware::publish::serial::{self, Mode, Serial, SerialPort, UartWriter};
use fer_firmware::publish::{Event, Publisher};
use fer_firmware::selftest;
use fer_protocol::{Decoder, Expression, Frame, Reading};
use proptest::prelude::*;

/// Ends the test binary with a failure when the test it guards is still running after `limit`.
/// Reads from a pty block: a lost frame must fail the test, not hang CI.
struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    fn new(test: &'static str, limit: Duration) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = done.clone();
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            if !seen.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!("{test}: still waiting on the pty after {limit:?}: failing instead of hanging");
                std::process::exit(101);
            }
        });
        Self(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

const LIMIT: Duration = Duration::from_secs(20);

/// A pty pair: the tty path the sensor opens, and the other end as a file.
fn pty() -> (PathBuf, File, std::os::fd::OwnedFd) {
    let pair = nix::pty::openpty(None, None).expect("openpty");
    let path = nix::unistd::ttyname(&pair.slave).expect("ttyname");
    (path, File::from(pair.master), pair.slave)
}

fn event(sequence: u64, reading: Reading, changed: bool) -> Event {
    Event {
        sequence,
        time_ms: sequence * 33,
        source: "test".into(),
        decision: Decision {
            reading,
            confidence: 0.75,
            faces: 1,
            face: None,
            changed,
        },
    }
}

/// Reads from the pty until `n` frames decoded or five seconds passed (a read that never returns
/// trips the watchdog).
fn read_frames(master: &mut File, n: usize) -> Vec<Frame> {
    let _watchdog = Watchdog::new("read_frames", LIMIT);
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while frames.len() < n && std::time::Instant::now() < deadline {
        let k = master.read(&mut buf).expect("reading the pty");
        frames.extend(
            buf[..k]
                .iter()
                .filter_map(|&b| decoder.push(b))
                .map(|r| r.expect("a valid frame")),
        );
    }
    frames
}

#[test]
fn binary_frames_arrive_exactly_over_a_pty() {
    let (path, mut master, _slave) = pty();
    let mut publisher = Serial::new(
        UartWriter(serial::open(&path, 115_200).unwrap()),
        Mode::Binary,
        1,
        "pty",
    )
    .unwrap();
    let readings = [
        Reading::Expression(Expression::Happiness),
        Reading::Uncertain,
        Reading::NoFace,
        Reading::Expression(Expression::Anger),
    ];
    let events: Vec<Event> = readings
        .iter()
        .enumerate()
        .map(|(i, &r)| event(65_530 + i as u64, r, i % 2 == 0))
        .collect();
    for e in &events {
        publisher.publish(e).unwrap();
    }
    let frames = read_frames(&mut master, events.len());
    assert_eq!(frames, events.iter().map(Event::frame).collect::<Vec<_>>());
    // The sequence number wraps at 16 bits.
    assert_eq!(
        frames.iter().map(|f| f.sequence).collect::<Vec<_>>(),
        [65_530, 65_531, 65_532, 65_533]
    );
}

#[test]
fn json_mode_sends_changes_only_as_lines() {
    let _watchdog = Watchdog::new("json_mode_sends_changes_only_as_lines", LIMIT);
    let (path, mut master, _slave) = pty();
    let mut publisher = Serial::new(UartWriter(serial::open(&path, 9600).unwrap()), Mode::Json, 0, "pty").unwrap();
    publisher
        .publish(&event(0, Reading::Expression(Expression::Sadness), true))
        .unwrap();
    publisher
        .publish(&event(1, Reading::Expression(Expression::Sadness), false))
        .unwrap();
    publisher.publish(&event(2, Reading::NoFace, true)).unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 512];
    while text.lines().count() < 2 {
        let k = master.read(&mut buf).unwrap();
        text.push_str(std::str::from_utf8(&buf[..k]).unwrap());
    }
    let readings: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reading"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(readings, ["sadness", "no_face"]);
}

#[test]
fn a_receiver_that_stops_reading_never_stalls_the_sensor_and_then_gets_whole_lines() {
    let _watchdog = Watchdog::new(
        "a_receiver_that_stops_reading_never_stalls_the_sensor_and_then_gets_whole_lines",
        LIMIT,
    );
    // Nobody reads the pty's other end for now: its buffer fills within a few kilobytes.
    let (path, mut master, _slave) = pty();
    let mut publisher = Serial::new(UartWriter(serial::open(&path, 115_200).unwrap()), Mode::Json, 1, "pty").unwrap();
    let start = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..20_000 {
        let t = std::time::Instant::now();
        publisher.publish(&event(i, Reading::NoFace, true)).unwrap();
        slowest = slowest.max(t.elapsed());
    }
    assert!(slowest < Duration::from_millis(50), "one publish took {slowest:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert!(publisher.dropped() > 0, "20000 lines cannot fit a pty's buffer");
    // The receiver reads again: every line it gets is whole, and the newest one arrives.
    publisher.publish(&event(99_999, Reading::Uncertain, true)).unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Until the newest line has arrived whole: a read may end in the middle of a line.
    while !(text.contains("\"sequence\":99999") && text.ends_with('\n')) {
        assert!(std::time::Instant::now() < deadline, "the newest line never came");
        let k = master.read(&mut buf).unwrap();
        text.push_str(std::str::from_utf8(&buf[..k]).unwrap());
    }
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    }
}

#[test]
fn a_missing_port_is_an_error_naming_it() {
    let err = serial::open("/dev/ttyDOES-NOT-EXIST".as_ref(), 115_200).unwrap_err();
    assert!(format!("{err:#}").contains("/dev/ttyDOES-NOT-EXIST"), "{err:#}");
}

#[test]
fn selftest_loopback_passes_through_an_echoing_pty_and_fails_without_it() {
    let _watchdog = Watchdog::new(
        "selftest_loopback_passes_through_an_echoing_pty_and_fails_without_it",
        LIMIT,
    );
    let (path, mut master, _slave) = pty();
    let mut uart = serial::open(&path, 115_200).unwrap();
    // Nothing echoes yet: like a missing TX→RX jumper.
    let err = selftest::serial_loopback(&mut uart).unwrap_err();
    assert!(err.to_string().contains("nothing came back"), "{err}");
    // Drain what was sent, then echo everything back, as a jumper would.
    let mut sink = [0u8; 4096];
    let _ = master.read(&mut sink).unwrap();
    let mut echo = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(k) = master.read(&mut buf) {
            if k == 0 || echo.write_all(&buf[..k]).is_err() {
                break;
            }
        }
    });
    let ok = selftest::serial_loopback(&mut uart).unwrap();
    assert!(ok.starts_with("9 frames sent and decoded"), "{ok}");
    let mut buf = [0u8; 8];
    assert_eq!(uart.receive(&mut buf, Duration::from_millis(50)).unwrap(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random garbage between frames and random write sizes through a real tty: every frame
    /// comes out, in order. Start bytes are taken out of the garbage so that it cannot form a
    /// valid frame by chance (a 2^-16 CRC collision); false starts are covered by fer-protocol's
    /// truncated-frame property test.
    #[test]
    fn decoder_recovers_frames_from_garbage_and_split_writes_over_a_pty(
        garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 5),
        chunk in 1usize..12,
    ) {
        let (path, mut master, _slave) = pty();
        let mut uart = serial::open(&path, 115_200).unwrap();
        let frames: Vec<Frame> = (0..5u16)
            .map(|i| Frame {
                sequence: i,
                reading: Reading::Expression(Expression::ALL[i as usize]),
                confidence: 9 * i as u8,
                faces: 1,
            })
            .collect();
        let mut stream = Vec::new();
        for (g, f) in garbage.iter().zip(&frames) {
            stream.extend(g.iter().map(|&b| if b == fer_protocol::wire::START { 0 } else { b }));
            stream.extend(f.encode());
        }
        for piece in stream.chunks(chunk) {
            uart.send(piece).unwrap();
        }
        prop_assert_eq!(read_frames(&mut master, frames.len()), frames);
    }
}
