//! Faults a sensor meets in the field, against the real `fer-sensor` binary: a reader that stops
//! reading stdout, a reader that closes it, a serial receiver that stops reading, a file without
//! pixels among good ones, truncated and foreign bytes on stdin. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// fer-sensor from the repository root with the f32 classifier, every pipe captured.
fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fer-sensor"))
        .current_dir(root())
        .args(["--classifier", "models/fer.f32.onnx"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running fer-sensor")
}

/// The child's stderr as it grows, read on a thread so the child never blocks on it.
fn log_of(child: &mut Child) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let (sink, stderr) = (log.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

/// Waits at most `limit` for `done` on the log; the log either way.
fn wait_for_log(log: &Mutex<String>, limit: Duration, done: impl Fn(&str) -> bool) -> (bool, String) {
    let end = Instant::now() + limit;
    loop {
        let text = log.lock().unwrap().clone();
        if done(&text) || Instant::now() >= end {
            return (done(&text), text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM and waits at most 5 s; returns the exit status and how long the exit took.
fn terminate(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let pid = nix_pid(child);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let asked = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, asked.elapsed());
        }
        if asked.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("still running 5 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn nix_pid(child: &Child) -> i32 {
    i32::try_from(child.id()).unwrap()
}

/// Waits at most `limit` for the child to exit on its own.
fn exits_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sample frames for ever: an event per frame on stdout, a status line every `interval` s.
fn spawn_streaming(interval: &str) -> Child {
    spawn(&[
        "--source",
        "samples",
        "--repeat",
        "0",
        "--every-frame",
        "--status-interval",
        interval,
    ])
}

/// Shrinks a pipe to one page, which a reader that stops leaves full within a few writes instead
/// of a few hundred.
fn one_page(pipe: &impl AsRawFd) {
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
}

#[test]
fn a_stdout_nobody_reads_freezes_nothing_and_sigterm_still_ends_the_sensor() {
    let mut child = spawn_streaming("0.5");
    let stdout = child.stdout.take().unwrap();
    one_page(&stdout);
    let log = log_of(&mut child);
    let (full, text) = wait_for_log(&log, Duration::from_secs(60), |l| {
        l.contains("stdout: the reader is not keeping up")
    });
    assert!(full, "stdout never filled up:\n{text}");
    // The frame loop goes on: status lines keep coming while nobody reads.
    let before = text.matches("status:").count();
    let (going, text) = wait_for_log(&log, Duration::from_secs(10), |l| {
        l.matches("status:").count() >= before + 3
    });
    assert!(going, "the frame loop stalled with stdout full:\n{text}");
    let (status, took) = terminate(&mut child);
    assert!(status.success(), "{status:?}\n{}", log.lock().unwrap());
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    drop(stdout);
}

#[test]
fn a_stderr_nobody_reads_freezes_nothing_and_sigterm_still_ends_the_sensor() {
    // 20 status lines a second fill a page within a second or two.
    let mut child = spawn_streaming("0.05");
    let stderr = child.stderr.take().unwrap();
    one_page(&stderr);
    let lines = Arc::new(Mutex::new(0usize));
    let (count, stdout) = (lines.clone(), child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line.is_err() {
                return;
            }
            *count.lock().unwrap() += 1;
        }
    });
    std::thread::sleep(Duration::from_secs(5));
    let mut pending: libc::c_int = 0;
    assert_eq!(
        unsafe { libc::ioctl(stderr.as_raw_fd(), libc::FIONREAD, &mut pending) },
        0
    );
    // Full: too little room left for another log line.
    assert!(
        pending >= 4096 - 512,
        "stderr never filled up ({pending} bytes waiting)"
    );
    // The frame loop goes on: events keep coming on stdout while nobody reads stderr.
    let before = *lines.lock().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let after = *lines.lock().unwrap();
    assert!(
        after >= before + 10,
        "the frame loop stalled with stderr full: {before} then {after} lines"
    );
    let (status, took) = terminate(&mut child);
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    drop(stderr);
}

#[test]
fn a_closed_stdout_ends_the_sensor_with_the_broken_pipe_status() {
    let mut child = spawn(&["--source", "samples", "--repeat", "0", "--every-frame"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let log = log_of(&mut child);
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"reading\""), "{first}");
    drop(stdout);
    let status = exits_within(&mut child, Duration::from_secs(20));
    let (_, text) = wait_for_log(&log, Duration::from_secs(2), |l| l.contains("error:"));
    assert_eq!(status.code(), Some(141), "{text}");
    assert!(text.contains("stdout: the reader closed the pipe; stopping"), "{text}");
    assert!(
        text.matches("retrying in").count() == 0,
        "a closed stdout was retried:\n{text}"
    );
}

#[test]
fn a_serial_receiver_that_stops_reading_costs_no_stall_no_retries_and_no_half_lines() {
    let pair = nix::pty::openpty(None, None).expect("openpty");
    let tty = nix::unistd::ttyname(&pair.slave).expect("ttyname");
    let mut child = spawn(&[
        "--source",
        "samples",
        "--repeat",
        "0",
        "--quiet",
        "--status-interval",
        "0.5",
        "--serial",
        tty.to_str().unwrap(),
        "--serial-mode",
        "json",
    ]);
    let log = log_of(&mut child);
    let (full, text) = wait_for_log(&log, Duration::from_secs(60), |l| {
        l.contains("the reader is not keeping up")
    });
    assert!(full, "the pty never filled up:\n{text}");
    let before = text.matches("status:").count();
    let (going, text) = wait_for_log(&log, Duration::from_secs(10), |l| {
        l.matches("status:").count() >= before + 3
    });
    assert!(going, "the frame loop stalled on the serial line:\n{text}");
    assert!(!text.contains("retrying in"), "a slow receiver was reopened:\n{text}");
    // The receiver reads again: whole lines only, and new ones keep coming.
    let mut master = std::fs::File::from(pair.master);
    let mut received = String::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(10);
    while received.lines().count() < 100 && Instant::now() < end {
        let k = master.read(&mut buf).unwrap();
        received.push_str(std::str::from_utf8(&buf[..k]).unwrap());
    }
    let lines: Vec<&str> = received.lines().collect();
    assert!(lines.len() >= 100, "{} lines", lines.len());
    for line in &lines[..lines.len() - 1] {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    }
    let (status, _) = terminate(&mut child);
    assert!(status.success(), "{status:?}\n{}", log.lock().unwrap());
    drop(pair.slave);
}

#[test]
fn a_file_without_pixels_is_skipped_by_name_and_the_others_publish() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("01-empty.ppm"), b"P6\n0 0\n255\n").unwrap();
    std::fs::copy(root().join("samples/04-happiness.png"), dir.path().join("02-happy.png")).unwrap();
    let mut child = spawn(&["--source", dir.path().to_str().unwrap(), "--status-interval", "0"]);
    let log = log_of(&mut child);
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let status = exits_within(&mut child, Duration::from_secs(30));
    let (_, text) = wait_for_log(&log, Duration::from_secs(2), |l| l.contains("done:"));
    assert!(status.success(), "{text}");
    assert!(
        text.contains("01-empty.ppm: 0x0: no pixels") && text.contains("1 skipped"),
        "{text}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("happiness"), "{stdout}");
}

/// A sample as JPEG bytes.
fn jpeg_of(sample: &str) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::open(root().join("samples").join(sample))
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    jpeg
}

#[test]
fn truncated_and_foreign_bytes_on_stdin_cost_themselves_and_not_the_next_frame() {
    let good = jpeg_of("04-happiness.png");
    let half = jpeg_of("06-anger.png");
    let png = std::fs::read(root().join("samples/10-no-face.png")).unwrap();
    let mut stream = half[..half.len() / 2].to_vec();
    stream.extend(&good);
    stream.extend(&png);
    stream.extend(&good);
    let mut child = spawn(&["--source", "stdin", "--every-frame", "--status-interval", "0"]);
    let log = log_of(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&stream);
    });
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let _ = exits_within(&mut child, Duration::from_secs(30));
    feeder.join().unwrap();
    let readings: Vec<(String, String)> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["source"].as_str().unwrap().into(),
                v["reading"].as_str().unwrap().into(),
            )
        })
        .collect();
    let text = log.lock().unwrap().clone();
    assert_eq!(readings.len(), 2, "{readings:?}\n{text}");
    assert!(readings.iter().all(|(_, r)| r != "no_face"), "{readings:?}");
    assert_eq!(readings[0].0, "stdin #2", "the truncated frame is #1");
}

#[test]
fn sigterm_while_the_broker_has_not_answered_ends_the_sensor_within_a_second() {
    // A listener that accepts and never answers: the MQTT client waits for its CONNACK.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            h.lock().unwrap().push(stream);
        }
    });
    let url = format!("mqtt://127.0.0.1:{port}");
    let mut child = spawn(&["--source", "samples", "--repeat", "0", "--quiet", "--mqtt", &url]);
    let log = log_of(&mut child);
    let (reading, text) = wait_for_log(&log, Duration::from_secs(30), |l| {
        l.contains("reading 10 image file(s)")
    });
    assert!(reading, "{text}");
    let end = Instant::now() + Duration::from_secs(10);
    while held.lock().unwrap().is_empty() {
        assert!(Instant::now() < end, "the sensor never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, took) = terminate(&mut child);
    assert!(status.success(), "{status:?}\n{}", log.lock().unwrap());
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
}

#[test]
fn frames_skipped_before_a_stop_are_counted_in_the_summary() {
    // Undecodable frames on a stdin that stays open, then SIGTERM: the summary must count them,
    // although no good frame or end of stream ever carried the count to the frame loop.
    // A frame whose header claims 9000x9000, over the configured 640x480: skipped unread.
    let mut broken = jpeg_of("04-happiness.png");
    let sof = broken.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    broken[sof + 5..sof + 9].copy_from_slice(&[0x23, 0x28, 0x23, 0x28]);
    let mut child = spawn(&["--source", "stdin", "--status-interval", "0"]);
    let log = log_of(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    for _ in 0..80 {
        stdin.write_all(&broken).unwrap();
    }
    stdin.flush().unwrap();
    let (skipping, text) = wait_for_log(&log, Duration::from_secs(30), |l| l.contains("skipping frame"));
    assert!(skipping, "{text}");
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = terminate(&mut child);
    drop(stdin);
    let (_, text) = wait_for_log(&log, Duration::from_secs(5), |l| l.contains("done:"));
    assert!(status.success(), "{status:?}\n{text}");
    assert!(text.contains("0 frames") && text.contains("80 skipped"), "{text}");
    // One warning for the first, the rest counted: not eighty lines.
    assert!(text.matches("skipping frame").count() < 5, "{text}");
}
