//! End to end on the bundled sample frames (FER+ faces pasted into 640x480 frames, see
//! samples/README.md): faces found where they were pasted, expression events out of the
//! `fer-sensor` binary, smoothing as specified, and clear errors on bad input.
//!
//! The f32 classifier is used to keep the tests fast: tract runs the int8 model several times
//! slower on x86 (docs/sensor.md); the golden tests cover the int8 model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fer_firmware::classify::Classifier;
use fer_firmware::detect::{DetectOptions, Detector};
use fer_firmware::golden;
use fer_protocol::Expression;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const F32: &str = "models/fer.f32.onnx";
const DETECTOR: &str = "models/blazeface/face_detection_short_range.onnx";

/// Runs fer-sensor from the repository root, with the f32 classifier unless `args` name one.
fn sensor(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fer-sensor"));
    if !args.contains(&"--classifier") {
        command.args(["--classifier", F32]);
    }
    command
        .current_dir(root())
        .args(["--status-interval", "0"])
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("running fer-sensor")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// (source, reading) of every JSON line on stdout.
fn events(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (
                v["source"].as_str().unwrap().to_string(),
                v["reading"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct Sample {
    file: String,
    faces: Vec<Placed>,
}

#[derive(serde::Deserialize)]
struct Placed {
    case: String,
    x: f32,
    y: f32,
    side: f32,
}

fn samples() -> Vec<Sample> {
    serde_json::from_slice(&std::fs::read(root().join("samples/faces.json")).unwrap()).unwrap()
}

#[test]
fn faces_are_found_where_they_were_pasted_and_nowhere_else() {
    let mut detector = Detector::load(&root().join(DETECTOR), DetectOptions::default()).unwrap();
    for sample in samples() {
        let frame = image::open(root().join("samples").join(&sample.file))
            .unwrap()
            .to_rgb8();
        let faces = detector.detect(&frame).unwrap();
        assert_eq!(faces.len(), sample.faces.len(), "{}", sample.file);
        for placed in &sample.faces {
            let (cx, cy) = (placed.x + placed.side / 2.0, placed.y + placed.side / 2.0);
            // FER+ crops are loose and not always centred on the face: the box centre must lie in
            // the central half of the pasted square.
            let found = faces
                .iter()
                .find(|f| (f.cx - cx).abs() < 0.25 * placed.side && (f.cy - cy).abs() < 0.25 * placed.side)
                .unwrap_or_else(|| panic!("{}: no face near ({cx}, {cy}) in {faces:?}", sample.file));
            // The FER+ crop is about 1.17 detector boxes wide (median; docs/sensor.md).
            let ratio = placed.side / found.width.max(found.height);
            assert!((0.8..1.5).contains(&ratio), "{}: crop/box ratio {ratio}", sample.file);
            // Eyes in the upper half of the box, left of the image before right.
            let [re, le] = [found.keypoints[0], found.keypoints[1]];
            assert!(
                re[0] < le[0] && re[1] < found.cy && le[1] < found.cy,
                "{}: eyes {re:?} {le:?}",
                sample.file
            );
        }
    }
}

#[test]
fn the_sensor_reports_each_sample_as_the_model_sees_the_original_crop() {
    // The expected expression of each sample is what the f32 model says on the original 48x48
    // crop (the golden vectors). Where the model is sure of it (> 0.5) the camera path must give
    // the same; where it is not (the first face of a class in FER+ valid may split its
    // annotators' votes too), resampling the face may tip it between the crop's two most probable
    // expressions, so the reading must be one of those two or `uncertain`.
    let golden = golden::parse(&std::fs::read(root().join("models/fer.golden.json")).unwrap()).unwrap();
    let mut classifier = Classifier::load(&root().join(F32)).unwrap();
    // Held for 6 frames: the last scene has no face, and "no face" comes once the track has been
    // missed for more than `decide.max_missed` (5) frames.
    let out = sensor(&["--source", "samples", "--hold", "6", "--every-frame"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events = events(&out);
    assert_eq!(events.len(), 60);
    let single: Vec<_> = samples().into_iter().filter(|s| s.faces.len() == 1).collect();
    assert_eq!(single.len(), 8, "one sample per expression and a second neutral one");
    for sample in &single {
        let case = golden.cases.iter().find(|c| c.name == sample.faces[0].case).unwrap();
        let crop = classifier.classify(&golden::preprocess(case).unwrap()).unwrap();
        let (expression, p) = crop.top();
        // The reading after the sample has been in view for 6 frames.
        let last = &events.iter().rfind(|(source, _)| *source == sample.file).unwrap().1;
        if p > 0.5 {
            assert_eq!(last, expression.name(), "{}", sample.file);
        } else {
            let mut ranked = Expression::ALL;
            ranked.sort_by(|a, b| crop.probabilities[*b as usize].total_cmp(&crop.probabilities[*a as usize]));
            let allowed = [ranked[0].name(), ranked[1].name(), "uncertain"];
            assert!(
                allowed.contains(&last.as_str()),
                "{}: read {last}, the crop gives {:?}",
                sample.file,
                crop.probabilities
            );
        }
    }
    assert_eq!(
        events.last().unwrap(),
        &("10-no-face.png".to_string(), "no_face".to_string())
    );
}

#[test]
fn flip_averaging_reads_a_face_and_its_mirror_image_alike() {
    let golden = golden::parse(&std::fs::read(root().join("models/fer.golden.json")).unwrap()).unwrap();
    let mut classifier = Classifier::load(&root().join(F32)).unwrap();
    let mut differs = 0;
    for case in &golden.cases {
        let face = golden::preprocess(case).unwrap();
        let mut mirrored = face.clone();
        fer_protocol::INPUT.mirror(&mut mirrored);
        let plain = classifier.classify(&face).unwrap();
        differs += usize::from(
            (plain.probabilities[0] - classifier.classify(&mirrored).unwrap().probabilities[0]).abs() > 1e-3,
        );
        let a = classifier.classify_face(&mut face.clone(), true).unwrap();
        let b = classifier.classify_face(&mut mirrored, true).unwrap();
        for (p, q) in a.probabilities.iter().zip(&b.probabilities) {
            assert!(
                (p - q).abs() < 1e-5,
                "{}: {:?} vs {:?}",
                case.name,
                a.probabilities,
                b.probabilities
            );
        }
        assert!((a.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    assert!(
        differs > 0,
        "the model alone already reads mirror images alike: the test shows nothing"
    );
}

#[test]
fn one_odd_frame_does_not_flip_the_reading_but_a_sustained_change_does_once() {
    let dir = tempfile::tempdir().unwrap();
    let happy = root().join("samples/04-happiness.png");
    let surprised = root().join("samples/01-surprise.png");
    let sequence = [(&happy, 8), (&surprised, 1), (&happy, 4), (&surprised, 8)];
    let mut n = 0;
    for (file, count) in sequence {
        for _ in 0..count {
            std::fs::copy(file, dir.path().join(format!("{n:03}.png"))).unwrap();
            n += 1;
        }
    }
    let out = sensor(&["--source", dir.path().to_str().unwrap(), "--every-frame"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let readings: Vec<String> = events(&out).into_iter().map(|e| e.1).collect();
    assert_eq!(readings.len(), 21);
    assert!(readings[..13].iter().all(|r| r == "happiness"), "{readings:?}");
    // The moving average (alpha 0.3) plus the hysteresis margin needs a few frames to switch.
    let switch = readings
        .iter()
        .position(|r| r == "surprise")
        .expect("switches to surprise");
    assert!((14..19).contains(&switch), "switched at frame {switch}: {readings:?}");
    assert!(readings[switch..].iter().all(|r| r == "surprise"), "{readings:?}");
}

#[test]
fn unreadable_images_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("samples/02-fear.png"), dir.path().join("a.png")).unwrap();
    std::fs::write(dir.path().join("b.png"), b"not a png").unwrap();
    let mut truncated = std::fs::read(root().join("samples/05-sadness.png")).unwrap();
    truncated.truncate(truncated.len() / 2);
    std::fs::write(dir.path().join("c.png"), truncated).unwrap();
    let out = sensor(&["--source", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 frames") && stderr(&out).contains("2 skipped"),
        "{}",
        stderr(&out)
    );
    assert_eq!(events(&out).len(), 1);
}

#[test]
fn the_end_of_stdin_is_a_failure_so_a_service_restarts() {
    // `rpicam-vid | fer-sensor --source stdin` ends only when the camera side died: that must
    // exit non-zero, or systemd's Restart=on-failure never restarts the pipeline.
    let mut child = Command::new(env!("CARGO_BIN_EXE_fer-sensor"))
        .current_dir(root())
        .args(["--classifier", F32, "--source", "stdin", "--status-interval", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let noise: Vec<u8> = (0..300_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &noise).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("stdin ended"), "{}", stderr(&out));
}

#[test]
fn a_serial_port_that_fails_is_retried_while_stdout_keeps_publishing() {
    let out = sensor(&["--source", "samples", "--serial", "/dev/ttyNOPE"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("serial /dev/ttyNOPE: opening serial port /dev/ttyNOPE")
            && stderr(&out).contains("other outputs carry on, retrying in"),
        "{}",
        stderr(&out)
    );
    assert!(events(&out).len() >= 8, "{:?}", events(&out));
}

/// Lines a child writes on stdout, received on a channel so a test can wait with a timeout.
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next JSON event within `limit`, as (source, reading).
fn next_event(lines: &std::sync::mpsc::Receiver<String>, limit: Duration) -> (String, String) {
    let line = lines
        .recv_timeout(limit)
        .unwrap_or_else(|e| panic!("no event within {limit:?}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    (
        v["source"].as_str().unwrap().into(),
        v["reading"].as_str().unwrap().into(),
    )
}

#[test]
fn a_silent_stream_publishes_no_face_then_recovers_and_sigterm_ends_a_blocked_read_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fer-sensor.toml");
    std::fs::write(&config, "[source]\ninput = \"stdin\"\nsignal_timeout_s = 0.5\n").unwrap();
    let mut jpeg = Vec::new();
    image::open(root().join("samples/04-happiness.png"))
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fer-sensor"))
        .current_dir(root())
        .args(["--classifier", F32, "--status-interval", "0", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let limit = Duration::from_secs(20);
    std::io::Write::write_all(&mut stdin, &jpeg).unwrap();
    let (source, first) = next_event(&lines, limit);
    assert_eq!(source, "stdin #1");
    assert_ne!(first, "no_face");
    // Nothing more comes: the outputs must not keep showing that face.
    let silent = Instant::now();
    assert_eq!(next_event(&lines, limit), ("no signal".into(), "no_face".into()));
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    std::io::Write::write_all(&mut stdin, &jpeg).unwrap();
    assert_eq!(next_event(&lines, limit), ("stdin #2".into(), first));
    // The source thread is blocked reading stdin, which stays open: SIGTERM must still end the
    // process within a second, and as a requested stop, not a failure.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(asked.elapsed() < Duration::from_secs(1), "{:?}", asked.elapsed());
    assert!(status.success(), "{status:?}");
    drop(stdin);
}

#[test]
fn systemd_hears_ready_watchdog_pings_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // Read while the sensor runs, as systemd does: a datagram queue nobody reads fills after a
    // few messages and then blocks the sender.
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut messages, mut buf) = (Vec::new(), [0u8; 4096]);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                match socket.recv(&mut buf) {
                    Ok(n) => messages.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(_) if done.load(std::sync::atomic::Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            messages
        })
    };
    let out = Command::new(env!("CARGO_BIN_EXE_fer-sensor"))
        .current_dir(root())
        .args(["--classifier", F32, "--source", "samples", "--hold", "10", "--quiet"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "100000")
        // The test is fer-sensor's parent, as the unit's shell is in a pipeline.
        .env("WATCHDOG_PID", std::process::id().to_string())
        .output()
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let messages = reader.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let count = |m: &str| messages.iter().filter(|l| l.lines().any(|l| l == m)).count();
    assert_eq!(count("READY=1"), 1, "{messages:?}");
    assert!(count("WATCHDOG=1") >= 2, "{messages:?}");
    assert_eq!(messages.last().map(|m| m.trim()), Some("STOPPING=1"), "{messages:?}");
    assert!(
        messages[0].contains("STATUS=reading 10 image file(s) from samples"),
        "{messages:?}"
    );
}

#[test]
fn idle_pins_without_gpio_configured_has_nothing_to_do() {
    let out = sensor(&["idle-pins"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no pins to idle"));
}

#[test]
fn bad_input_gives_clear_errors() {
    let cases: [(&[&str], i32, &str); 8] = [
        (&["--source", "no/such/frames"], 1, "\"no/such/frames\": no such file"),
        (&["--source", "/dev/video77"], 1, "camera /dev/video77 does not exist"),
        (&["--source", "/dev/null"], 1, "/dev/null is not a V4L2 video device"),
        (
            &["--source", "samples", "--detector", F32],
            1,
            "not the BlazeFace short-range detector: its input is 1x1x48x48",
        ),
        (
            &["--source", "samples", "--mqtt", "mqtt://fer:SECRET@127.0.0.1"],
            2,
            "\"mqtt://***@127.0.0.1\": put credentials in publish.mqtt.username",
        ),
        (&["--config", "/dev/zero"], 2, "/dev/zero: not a regular file"),
        (
            &["--source", "samples", "--classifier", DETECTOR],
            1,
            "the model breaks the fer contract",
        ),
        (
            &["--config", "firmware/tests/data/bad-key.toml"],
            2,
            "unknown field `treshold`",
        ),
    ];
    for (args, code, message) in cases {
        let out = sensor(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("SECRET"), "a password reached the log");
        assert!(
            stderr(&out).contains(message),
            "{args:?}: expected {message:?} in {}",
            stderr(&out)
        );
    }
}

#[test]
fn check_and_its_older_flag_validate_and_selftest_passes_on_the_host() {
    // Every flag of the sensor's own run is accepted after the subcommand too.
    let ok = sensor(&["check", "--source", "samples", "--hold", "3", "--baud", "9600"]);
    let text = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(ok.status.success(), "{text}");
    assert!(
        text.contains("PASS  classifier") && text.contains("4 checks, 0 failed"),
        "{text}"
    );
    // The flag scripts already use is the same command.
    let flag = sensor(&["--source", "samples", "--check"]);
    assert_eq!(String::from_utf8_lossy(&flag.stdout), text);

    let bad = sensor(&["check", "--source", "samples", "--classifier", DETECTOR]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("FAIL  classifier"));

    let selftest = sensor(&["selftest", "--source", "samples", "--frames", "3"]);
    let text = String::from_utf8_lossy(&selftest.stdout).into_owned();
    assert!(selftest.status.success(), "{text}\n{}", stderr(&selftest));
    for line in [
        "PASS  golden models/fer.f32.onnx",
        "PASS  golden models/fer.int8.onnx",
        "PASS  face detector",
        "SKIP  gpio",
        "SKIP  serial loopback",
        "PASS  source samples",
    ] {
        assert!(text.contains(line), "{line:?} missing in\n{text}");
    }
}

#[test]
fn bench_times_every_stage_and_profiles_both_networks() {
    let out = sensor(&["bench", "--frames", "3", "--nodes"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for line in [
        "frame:      640x480, 2 face(s), 1 classified per frame",
        "classifier: f32, kernels ",
        "| detect | ",
        "| align | ",
        "| classify | ",
        "| whole frame | ",
        "frames/s from the mean frame",
        "face detector: ",
        "classifier: ",
        "DepthWiseConv",
    ] {
        assert!(text.contains(line), "{line:?} missing in\n{text}");
    }
    let bad = sensor(&["bench", "--frames", "0"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("at least one frame"), "{}", stderr(&bad));
}

/// tract picks a VNNI int8 kernel (AVX-512 VNNI, or AVX-VNNI on ymm) where the CPU has one; the
/// AVX2 kernel, which the patched tract-linalg (patches/tract-linalg) changes, runs on every other
/// x86 host. Switching both VNNI families off (the AMX kernels need AVX-512 too) forces the AVX2
/// kernel on any host, and it must compute the golden vectors.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_patched_avx2_int8_kernel_computes_the_golden_vectors() {
    if !std::arch::is_x86_feature_detected!("avx2") {
        eprintln!("SKIP: this CPU has no AVX2, so tract never runs the patched kernel here");
        return;
    }
    let avx2 = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fer-sensor"));
        command
            .current_dir(root())
            .args(args)
            .env("TRACT_CPU_ISA", "-avx512f,-avxvnni");
        let out = command.output().expect("running fer-sensor");
        (String::from_utf8_lossy(&out.stdout).into_owned(), out)
    };
    let (text, out) = avx2(&["--classifier", "models/fer.int8.onnx", "bench", "--frames", "1"]);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("avx2_mmm_i32_8x8"),
        "the AVX2 kernel was not chosen:\n{text}"
    );
    let (text, out) = avx2(&["selftest", "--frames", "0"]);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("PASS  golden models/fer.int8.onnx"), "{text}");
}

/// A FER+ face pasted along a straight path, 12 px right and 4 px down per frame, on grey.
fn walking_face() -> Vec<image::RgbImage> {
    let sample = &samples()[0];
    let placed = &sample.faces[0];
    let frame = image::open(root().join("samples").join(&sample.file))
        .unwrap()
        .to_rgb8();
    let (x, y, side) = (placed.x as u32, placed.y as u32, placed.side as u32);
    let face = image::imageops::crop_imm(&frame, x, y, side, side).to_image();
    (0..37)
        .map(|t| {
            let mut canvas = image::RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128]));
            image::imageops::replace(&mut canvas, &face, 20 + 12 * t, 60 + 4 * t);
            canvas
        })
        .collect()
}

#[test]
fn detecting_every_third_frame_keeps_a_walking_face_under_its_box_and_its_reading() {
    use fer_firmware::config::Config;
    use fer_firmware::sensor::Sensor;
    let frames = walking_face();
    let run = |every_frames: u32| {
        let mut config = Config::default();
        config.model.classifier = root().join(F32);
        config.model.detector = root().join(DETECTOR);
        config.detect.every_frames = every_frames;
        let mut sensor = Sensor::load(&config).unwrap();
        frames
            .iter()
            .map(|frame| {
                let decision = sensor.process(frame, Duration::ZERO).unwrap();
                (decision.reading, decision.face.expect("a face on every frame"))
            })
            .collect::<Vec<_>>()
    };
    let (every, third) = (run(1), run(3));
    let mut worst = 0.0f32;
    for (t, ((reading, face), (carried_reading, carried))) in every.iter().zip(&third).enumerate() {
        let off = (face.cx - carried.cx).hypot(face.cy - carried.cy) / face.width;
        // Until the second detection (frame 3) the speed is unknown and the box stays behind.
        if t >= 3 {
            assert_eq!(reading, carried_reading, "frame {t}");
            worst = worst.max(off);
        } else {
            assert!(off < 0.25, "frame {t}: {off:.3} face widths off");
            // The shipped model reads this face near its confidence threshold in the first
            // frames (neutral at 0.44-0.54 against `min_confidence` 0.4), so the lagging box may
            // make the sensor abstain; it must never make it report another expression.
            assert!(
                reading == carried_reading || *carried_reading == fer_protocol::Reading::Uncertain,
                "frame {t}: {reading:?} every frame, {carried_reading:?} every third"
            );
        }
        eprintln!("frame {t}: carried box {off:.3} face widths from the detected one");
    }
    // Training shifts faces by up to 8 % of the crop; a box this close crops a face the classifier
    // knows. Measured: 0.075 at worst (the speed comes from two detections, each a few px off).
    assert!(
        worst < 0.1,
        "a carried box strayed {worst:.3} face widths from the detected one"
    );
}
