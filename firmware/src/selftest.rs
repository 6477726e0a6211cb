//! `fer-sensor selftest`: checks a device in the field. Golden vectors through the device's own
//! tract build, the face detector on a fixture frame, each GPIO pin (read back through jumpers),
//! serial frames through a TX→RX loopback, and a few camera frames. Each check passes, fails or
//! is skipped with a reason.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fer_protocol::contract::Precision;
use fer_protocol::{Decoder, Expression, Frame, Reading};

use crate::classify::Classifier;
use crate::config::Config;
use crate::detect::{DetectOptions, Detector, Face};
use crate::publish::gpio::{InputPin, OutputPin, pi};
use crate::publish::mqtt;
use crate::publish::serial::{self, SerialPort};
use crate::{Stop, golden, source};

/// The fixture frame the detector is checked on (two FER+ faces pasted into a 640x480 frame; see
/// samples/README.md), compiled in so the self-test needs no extra files.
pub const FIXTURE_FRAME: &[u8] = include_bytes!("../../samples/09-two-faces.png");
/// The faces the host's detector found in it.
pub const FIXTURE_FACES: &str = include_str!("../fixtures/blazeface-faces.json");

/// Largest difference allowed in a fixture face's box and key points, in pixels, and in its
/// score. The input tensor is bit-exact on every target (integer image ops, then one IEEE
/// division); only the network's float sums differ, by about 1e-6 relative (see the golden
/// tolerances), which moves a coordinate in a 640-pixel frame by well under 0.01 pixel.
pub const FIXTURE_TOLERANCE: f32 = 0.01;

/// How a check ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It passed; what was measured.
    Pass(String),
    /// It failed; why.
    Fail(String),
    /// It did not run; why.
    Skip(String),
}

/// One named check.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
}

impl Check {
    /// Passes with the result's text or fails with its error.
    pub fn pass_or_fail(name: impl Into<String>, result: Result<String>) -> Self {
        let outcome = match result {
            Ok(detail) => Outcome::Pass(detail),
            Err(e) => Outcome::Fail(format!("{e:#}")),
        };
        Self {
            name: name.into(),
            outcome,
        }
    }

    /// A skipped check.
    pub fn skip(name: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outcome: Outcome::Skip(why.into()),
        }
    }

    /// Whether it failed.
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail(_))
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Pass(d) => write!(f, "PASS  {}: {d}", self.name),
            Outcome::Fail(d) => write!(f, "FAIL  {}: {d}", self.name),
            Outcome::Skip(d) => write!(f, "SKIP  {}: {d}", self.name),
        }
    }
}

/// The golden vectors' path for a classifier `NAME.int8.onnx` or `NAME.f32.onnx`:
/// `NAME.golden.json`, and the model pair's two files.
pub fn model_family(classifier: &Path) -> Option<(PathBuf, [PathBuf; 2])> {
    let file = classifier.file_name()?.to_str()?;
    let stem = Precision::ALL
        .into_iter()
        .find_map(|p| file.strip_suffix(p.file_suffix())?.strip_suffix('.'))?;
    let sibling = |suffix: &str| classifier.with_file_name(format!("{stem}.{suffix}"));
    Some((
        sibling(fer_protocol::golden::FILE_SUFFIX),
        Precision::ALL.map(|p| sibling(p.file_suffix())),
    ))
}

/// Runs the golden vectors through both models of the classifier's pair (those present).
pub fn golden_checks(classifier: &Path) -> Vec<Check> {
    let Some((golden_path, models)) = model_family(classifier) else {
        return vec![Check::skip(
            "golden vectors",
            format!("{} is not named NAME.int8.onnx or NAME.f32.onnx", classifier.display()),
        )];
    };
    let set = match std::fs::read(&golden_path)
        .context("reading")
        .and_then(|b| golden::parse(&b))
    {
        Ok(set) => set,
        Err(e) => {
            return vec![Check::pass_or_fail(
                format!("golden vectors {}", golden_path.display()),
                Err(e),
            )];
        }
    };
    models
        .iter()
        .filter(|m| m.exists() || m.as_path() == classifier)
        .map(|model| {
            Check::pass_or_fail(format!("golden {}", model.display()), {
                Classifier::load(model)
                    .and_then(|mut c| golden::check_all(&set, &mut c))
                    .map(|worst| format!("{} faces, max |Δ| {worst:.1e}, top-1 identical", set.cases.len()))
            })
        })
        .collect()
}

/// The fixture's expected faces.
pub fn fixture_faces() -> Result<Vec<Face>> {
    let raw: Vec<FaceJson> = serde_json::from_str(FIXTURE_FACES).context("parsing the fixture faces")?;
    Ok(raw.into_iter().map(Face::from).collect())
}

/// A face as stored in fixtures: box centre and size, six key points, score.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaceJson {
    /// Box centre x, y and width, height in pixels.
    pub r#box: [f32; 4],
    /// Key points in pixels.
    pub keypoints: [[f32; 2]; 6],
    /// Score.
    pub score: f32,
}

impl From<FaceJson> for Face {
    fn from(f: FaceJson) -> Self {
        let [cx, cy, width, height] = f.r#box;
        Face {
            cx,
            cy,
            width,
            height,
            keypoints: f.keypoints,
            score: f.score,
        }
    }
}

impl From<&Face> for FaceJson {
    fn from(f: &Face) -> Self {
        Self {
            r#box: [f.cx, f.cy, f.width, f.height],
            keypoints: f.keypoints,
            score: f.score,
        }
    }
}

/// Largest difference between two face lists (coordinates in pixels, scores), or an error when
/// the counts differ.
pub fn face_deviation(got: &[Face], expected: &[Face]) -> Result<f32> {
    ensure!(
        got.len() == expected.len(),
        "found {} faces, expected {}",
        got.len(),
        expected.len()
    );
    let mut worst: f32 = 0.0;
    for (g, e) in got.iter().zip(expected) {
        let coords = [
            g.cx - e.cx,
            g.cy - e.cy,
            g.width - e.width,
            g.height - e.height,
            g.score - e.score,
        ];
        let points = g
            .keypoints
            .iter()
            .zip(&e.keypoints)
            .flat_map(|(a, b)| [a[0] - b[0], a[1] - b[1]]);
        worst = coords.into_iter().chain(points).map(f32::abs).fold(worst, f32::max);
    }
    Ok(worst)
}

/// Runs the detector on the fixture frame and compares with the host's faces.
pub fn detector_check(detector_path: &Path) -> Check {
    Check::pass_or_fail(
        format!("face detector {}", detector_path.display()),
        (|| {
            let mut detector = Detector::load(detector_path, DetectOptions::default())?;
            let frame = image::load_from_memory(FIXTURE_FRAME)?.to_rgb8();
            let faces = detector.detect(&frame)?;
            let worst = face_deviation(&faces, &fixture_faces()?)?;
            ensure!(
                worst <= FIXTURE_TOLERANCE,
                "fixture faces moved by {worst:.2e} (tolerance {FIXTURE_TOLERANCE})"
            );
            Ok(format!(
                "{} face(s) on the fixture frame, max |Δ| {worst:.1e}",
                faces.len()
            ))
        })(),
    )
}

/// Drives an output pin high and low; with a jumpered input, reads both levels back.
pub fn pin_check(out: &mut dyn OutputPin, input: Option<&mut dyn InputPin>) -> Result<String> {
    match input {
        None => {
            out.write(true)?;
            out.write(false)?;
            Ok("driven high and low".into())
        }
        Some(input) => {
            for level in [true, false, true, false] {
                out.write(level)?;
                std::thread::sleep(Duration::from_millis(1));
                ensure!(
                    input.read()? == level,
                    "drove {}, read back {}",
                    level_name(level),
                    level_name(!level)
                );
            }
            Ok("driven and read back high and low".into())
        }
    }
}

fn level_name(high: bool) -> &'static str {
    if high { "high" } else { "low" }
}

/// Sends one frame per reading through a TX→RX loopback and decodes what comes back.
pub fn serial_loopback(port: &mut dyn SerialPort) -> Result<String> {
    let readings = Expression::ALL
        .map(Reading::Expression)
        .into_iter()
        .chain([Reading::Uncertain, Reading::NoFace]);
    let sent: Vec<Frame> = readings
        .enumerate()
        .map(|(i, reading)| Frame {
            sequence: 1000 + i as u16,
            reading,
            confidence: 200,
            faces: 1,
        })
        .collect();
    let start = Instant::now();
    for frame in &sent {
        port.send(&frame.encode())?;
    }
    let mut decoder = Decoder::new();
    let mut received = Vec::new();
    let mut buffer = [0u8; 64];
    while received.len() < sent.len() && start.elapsed() < Duration::from_secs(2) {
        let n = port.receive(&mut buffer, Duration::from_millis(100))?;
        received.extend(
            buffer[..n]
                .iter()
                .filter_map(|&b| decoder.push(b))
                .filter_map(std::result::Result::ok),
        );
    }
    ensure!(
        !received.is_empty(),
        "nothing came back within 2 s (is TX jumpered to RX?)"
    );
    ensure!(
        received == sent,
        "sent {} frames, decoded {} that differ: {received:?}",
        sent.len(),
        received.len()
    );
    Ok(format!(
        "{} frames sent and decoded in {:.0} ms",
        sent.len(),
        start.elapsed().as_secs_f64() * 1e3
    ))
}

/// Grabs `frames` frames from a source and reports their size and rate.
pub fn source_check(source: &mut dyn crate::source::FrameSource, frames: usize) -> Result<String> {
    let start = Instant::now();
    let mut size = None;
    for i in 0..frames {
        let frame = source
            .next_frame()?
            .with_context(|| format!("the source ended after {i} frames"))?;
        size = Some(frame.image.dimensions());
    }
    let (w, h) = size.unwrap_or_default();
    Ok(format!(
        "{}: {frames} frames of {w}x{h} at {:.1} frames/s",
        source.describe(),
        frames as f64 / start.elapsed().as_secs_f64()
    ))
}

/// `fer-sensor check`: every part the configuration names, opened once.
pub fn check(config: &Config) -> Vec<Check> {
    let mut checks = vec![
        Check::pass_or_fail("configuration", Ok("valid".into())),
        Check::pass_or_fail(
            format!("classifier {}", config.model.classifier.display()),
            Classifier::load(&config.model.classifier).map(|c| format!("{} ({})", c.info.version, c.info.precision)),
        ),
        Check::pass_or_fail(
            format!("face detector {}", config.model.detector.display()),
            Detector::load(&config.model.detector, config.detect).map(|_| "BlazeFace signature".into()),
        ),
        Check::pass_or_fail(
            format!("source {}", config.source.input),
            source::open(&config.source, Stop::default()).map(|s| s.describe()),
        ),
    ];
    if let Some(s) = &config.publish.serial {
        checks.push(Check::pass_or_fail(
            format!("serial {}", s.port.display()),
            serial::open(&s.port, s.baud).map(|_| format!("{} baud", s.baud)),
        ));
    }
    if let Some(m) = &config.publish.mqtt {
        checks.push(Check::pass_or_fail(
            format!("mqtt {}", m.url),
            mqtt::probe(m, Duration::from_secs(5)),
        ));
    }
    if let Some(g) = &config.publish.gpio {
        // Claiming the pins drives them idle, which is what they show when the sensor is not running.
        let pins = pi::claim(g).and_then(|_| Ok(format!("{} pins claimed", g.assignment()?.len())));
        checks.push(Check::pass_or_fail("gpio", pins));
    }
    checks
}

/// `fer-sensor selftest`: the golden vectors, the detector, each pin, the serial loopback and the
/// source (see the module docs).
pub fn run(config: &Config, jumpers: &[(u8, u8)], loopback: bool, frames: usize) -> Vec<Check> {
    let mut checks = golden_checks(&config.model.classifier);
    checks.push(detector_check(&config.model.detector));
    match &config.publish.gpio {
        None if jumpers.is_empty() => checks.push(Check::skip(
            "gpio",
            "no [publish.gpio] in the configuration and no --jumper",
        )),
        gpio => match pi::controller() {
            Err(e) => checks.push(Check::pass_or_fail("gpio", Err(e))),
            Ok(controller) => {
                let mut outputs: Vec<u8> = gpio
                    .iter()
                    .flat_map(|g| g.assignment().unwrap_or_default())
                    .map(|(p, _)| p)
                    .collect();
                for (out, _) in jumpers {
                    if !outputs.contains(out) {
                        outputs.push(*out);
                    }
                }
                for pin in outputs {
                    let jumper = jumpers.iter().find(|j| j.0 == pin).map(|j| j.1);
                    let result = (|| {
                        let mut out = pi::output(&controller, pin)?;
                        match jumper {
                            Some(i) => pin_check(&mut out, Some(&mut pi::input(&controller, i)?)),
                            None => pin_check(&mut out, None),
                        }
                    })();
                    let name = match jumper {
                        Some(i) => format!("gpio {pin} → {i}"),
                        None => format!("gpio {pin}"),
                    };
                    checks.push(Check::pass_or_fail(name, result));
                }
            }
        },
    }
    match (&config.publish.serial, loopback) {
        (Some(s), true) => checks.push(Check::pass_or_fail(
            format!("serial loopback {}", s.port.display()),
            serial::open(&s.port, s.baud).and_then(|mut uart| serial_loopback(&mut uart)),
        )),
        (None, true) => checks.push(Check::pass_or_fail(
            "serial loopback",
            Err(anyhow::anyhow!("no serial port configured (--serial PORT)")),
        )),
        (_, false) => checks.push(Check::skip(
            "serial loopback",
            "needs --serial-loopback and a TX→RX jumper",
        )),
    }
    if frames == 0 {
        checks.push(Check::skip("source", "--frames 0"));
    } else {
        let result = source::open(&config.source, Stop::default()).and_then(|mut s| source_check(s.as_mut(), frames));
        checks.push(Check::pass_or_fail(format!("source {}", config.source.input), result));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_family_finds_the_golden_file_and_both_models() {
        let (golden, models) = model_family(Path::new("models/fer.int8.onnx")).unwrap();
        assert_eq!(golden, Path::new("models/fer.golden.json"));
        assert_eq!(
            models,
            [Path::new("models/fer.f32.onnx"), Path::new("models/fer.int8.onnx")]
        );
        let (_, from_f32) = model_family(Path::new("models/fer.f32.onnx")).unwrap();
        assert_eq!(from_f32, models);
        assert!(model_family(Path::new("models/other.onnx")).is_none());
        assert!(model_family(Path::new("models/f32.onnx")).is_none());
    }

    struct Wire(Option<bool>);
    struct Floating;

    impl OutputPin for Wire {
        fn write(&mut self, high: bool) -> Result<()> {
            self.0 = Some(high);
            Ok(())
        }
    }

    impl InputPin for Floating {
        fn read(&mut self) -> Result<bool> {
            Ok(false)
        }
    }

    #[test]
    fn a_missing_jumper_fails_the_pin_check() {
        let mut out = Wire(None);
        assert_eq!(pin_check(&mut out, None).unwrap(), "driven high and low");
        let err = pin_check(&mut out, Some(&mut Floating)).unwrap_err();
        assert_eq!(err.to_string(), "drove high, read back low");
    }
}
