//! Every setting of the sensor, read from a TOML file (CLI flags override), validated at start
//! with errors that name the key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use crate::align::AlignOptions;
use crate::classify::ClassifyOptions;
use crate::decide::DecideOptions;
use crate::detect::DetectOptions;
use crate::publish::gpio::GpioOptions;
use crate::publish::mqtt::MqttOptions;
use crate::publish::serial::SerialOptions;
use crate::source::{MAX_SIDE, SourceOptions};

/// The largest configuration file read: the commented example is under 5 KiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The largest `decide.max_missed`: about 33 s at 30 frames/s.
pub const MAX_MISSED: u32 = 1000;

/// The whole configuration; every section and key is optional and defaults as documented in
/// `firmware/fer-sensor.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where frames come from.
    pub source: SourceOptions,
    /// The model files.
    pub model: ModelOptions,
    /// Face detection.
    pub detect: DetectOptions,
    /// Face alignment.
    pub align: AlignOptions,
    /// Expression classification.
    pub classify: ClassifyOptions,
    /// Smoothing and decision.
    pub decide: DecideOptions,
    /// Where decisions go.
    pub publish: PublishOptions,
    /// The periodic status line.
    pub status: StatusOptions,
}

/// The model files, relative to the working directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelOptions {
    /// The expression classifier (follows the fer contract; f32 or int8).
    pub classifier: PathBuf,
    /// The BlazeFace short-range face detector.
    pub detector: PathBuf,
    /// Faces tracked per frame at most, largest first (only the published one is classified).
    pub max_faces: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            classifier: PathBuf::from("models/fer.int8.onnx"),
            detector: PathBuf::from("models/blazeface/face_detection_short_range.onnx"),
            max_faces: 4,
        }
    }
}

/// Publishers; a section's presence turns it on (stdout is on unless `enabled = false`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishOptions {
    /// JSON lines on stdout.
    pub stdout: StdoutOptions,
    /// The serial line.
    pub serial: Option<SerialOptions>,
    /// GPIO pins.
    pub gpio: Option<GpioOptions>,
    /// An MQTT broker (with Home Assistant discovery).
    pub mqtt: Option<MqttOptions>,
}

/// JSON lines on stdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutOptions {
    /// Print events at all.
    pub enabled: bool,
    /// Besides every change, a line every N-th frame (0: changes only; 1: every frame).
    #[serde(deserialize_with = "crate::publish::every_frames", alias = "every_frame")]
    pub every_frames: u32,
}

impl Default for StdoutOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            every_frames: 0,
        }
    }
}

/// The periodic status line in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusOptions {
    /// Seconds between status lines (0 = only the final summary).
    pub interval_s: f32,
}

impl Default for StatusOptions {
    fn default() -> Self {
        Self { interval_s: 10.0 }
    }
}

impl Config {
    /// Reads and validates a TOML file of at most [`MAX_CONFIG_BYTES`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            crate::read_file(path, MAX_CONFIG_BYTES).with_context(|| format!("reading config {}", path.display()))?;
        let text = String::from_utf8(bytes).with_context(|| format!("config {}: not UTF-8 text", path.display()))?;
        Self::parse(&text).with_context(|| format!("config {}", path.display()))
    }

    /// Parses and validates TOML text (unknown keys and wrong types are errors naming the key).
    pub fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks value ranges; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let in_unit = |key: &str, v: f32, zero_ok: bool| {
            ensure!(
                v <= 1.0 && (v > 0.0 || (zero_ok && v == 0.0)),
                "{key} = {v} is out of range {}0, 1]",
                if zero_ok { "[" } else { "(" }
            );
            Ok(())
        };
        let s = &self.source;
        ensure!(!s.input.is_empty(), "source.input is empty");
        ensure!(
            s.width >= 64 && s.height >= 64,
            "source.width/height = {}x{} is too small (64x64 at least)",
            s.width,
            s.height
        );
        ensure!(
            s.width <= MAX_SIDE && s.height <= MAX_SIDE,
            "source.width/height = {}x{} is too large ({MAX_SIDE}x{MAX_SIDE} at most)",
            s.width,
            s.height
        );
        ensure!(
            (1..=240).contains(&s.fps),
            "source.fps = {} is out of range 1..=240",
            s.fps
        );
        ensure!(s.hold >= 1, "source.hold must be at least 1");
        ensure!(
            (0.0..=3600.0).contains(&s.signal_timeout_s),
            "source.signal_timeout_s = {} is out of range 0..=3600",
            s.signal_timeout_s
        );
        ensure!(self.model.max_faces >= 1, "model.max_faces must be at least 1");
        let score = self.detect.score_threshold;
        // No score reaches 1 after the sigmoid: at 1 nothing would ever be detected.
        ensure!(
            score > 0.0 && score < 1.0,
            "detect.score_threshold = {score} is out of range (0, 1)"
        );
        // At 1 no overlap exceeds the threshold, so no two boxes of one face would ever merge.
        ensure!(self.detect.every_frames >= 1, "detect.every_frames must be at least 1");
        let iou = self.detect.iou_threshold;
        ensure!(
            iou > 0.0 && iou < 1.0,
            "detect.iou_threshold = {iou} is out of range (0, 1)"
        );
        ensure!(
            (1.0..=4.0).contains(&self.align.scale),
            "align.scale = {} is out of range 1..=4",
            self.align.scale
        );
        ensure!(
            self.align.shift.abs() <= 1.0,
            "align.shift = {} is out of range -1..=1",
            self.align.shift
        );
        let d = &self.decide;
        in_unit("decide.alpha", d.alpha, false)?;
        in_unit("decide.hysteresis", d.hysteresis, true)?;
        in_unit("decide.min_confidence", d.min_confidence, true)?;
        in_unit("decide.track_iou", d.track_iou, false)?;
        // Tracks unseen for longer are kept and copied every frame: a bound on their number.
        ensure!(
            d.max_missed <= MAX_MISSED,
            "decide.max_missed = {} is out of range 0..={MAX_MISSED}",
            d.max_missed
        );
        if let Some(max) = d.max_center_distance {
            ensure!(
                max > 0.0 && max.is_finite(),
                "decide.max_center_distance = {max} must be a positive number"
            );
        }
        if let Some(serial) = &self.publish.serial {
            ensure!(
                (300..=4_000_000).contains(&serial.baud),
                "publish.serial.baud = {} is out of range 300..=4000000",
                serial.baud
            );
        }
        if let Some(gpio) = &self.publish.gpio {
            gpio.assignment().context("publish.gpio")?;
        }
        if let Some(mqtt) = &self.publish.mqtt {
            mqtt.validate()?;
        }
        ensure!(
            (0.0..=86_400.0).contains(&self.status.interval_s),
            "status.interval_s = {} is out of range 0..=86400",
            self.status.interval_s
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_is_valid_and_equals_the_defaults_where_it_does_not_say_otherwise() {
        let example = Config::parse(include_str!("../fer-sensor.toml")).unwrap();
        assert_eq!(example.decide, DecideOptions::default());
        assert_eq!(example.model, ModelOptions::default());
        assert!(example.publish.serial.is_some() && example.publish.gpio.is_some());
    }

    #[test]
    fn the_example_mqtt_block_uncommented_is_valid_and_shows_the_defaults() {
        let text = include_str!("../fer-sensor.toml");
        let block: Vec<&str> = text[text.find("#[publish.mqtt]").unwrap()..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#'))
            .collect();
        let mqtt = Config::parse(&block.join("\n")).unwrap().publish.mqtt.unwrap();
        assert!(mqtt.username.is_some() && mqtt.password_file.is_some() && mqtt.ca_file.is_some());
        let examples_aside = MqttOptions {
            username: None,
            password_file: None,
            ca_file: None,
            ..mqtt
        };
        assert_eq!(examples_aside, MqttOptions::default());
    }

    #[test]
    fn a_file_that_never_ends_is_refused_after_a_bounded_read() {
        let err = format!("{:#}", Config::load(Path::new("/dev/zero")).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn every_output_counts_every_frames_alike_and_reads_the_older_flag() {
        let c = Config::parse(
            "[publish.stdout]\nevery_frame = true\n[publish.serial]\nevery_frame = false\n\
             [publish.gpio]\nevery_frames = 5\n[publish.mqtt]\nevery_frames = 30\n",
        )
        .unwrap();
        let p = c.publish;
        let counts = [
            p.stdout.every_frames,
            p.serial.unwrap().every_frames,
            p.gpio.unwrap().every_frames,
            p.mqtt.unwrap().every_frames,
        ];
        assert_eq!(counts, [1, 0, 5, 30]);
        let err = format!(
            "{:#}",
            Config::parse("[publish.stdout]\nevery_frames = \"often\"\n").unwrap_err()
        );
        assert!(err.contains("every_frames") && err.contains("a frame count"), "{err}");
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| format!("{:#}", Config::parse(text).unwrap_err());
        assert!(err("[decide]\nalfa = 0.3\n").contains("unknown field `alfa`"));
        assert!(err("[decide]\nalpha = 1.5\n").contains("decide.alpha = 1.5"));
        assert!(err("[decide]\nmax_missed = 4294967295\n").contains("decide.max_missed = 4294967295"));
        assert!(err("[source]\nfps = \"fast\"\n").contains("fps"));
        assert!(err("[publish.serial]\nbaud = 7\n").contains("publish.serial.baud"));
        assert!(err("[publish.gpio]\npins = { joyful = 17 }\n").contains("unknown expression \"joyful\""));
        assert!(err("[publish.serial]\nmode = \"morse\"\n").contains("morse"));
        // Floats that parse but cannot work: infinities, NaN, a threshold nothing exceeds.
        assert!(err("[status]\ninterval_s = inf\n").contains("status.interval_s = inf"));
        assert!(err("[detect]\niou_threshold = 1.0\n").contains("detect.iou_threshold = 1"));
        assert!(err("[detect]\nscore_threshold = 1.0\n").contains("detect.score_threshold = 1 is out of range (0, 1)"));
        assert!(err("[decide]\nalpha = 0\n").contains("decide.alpha = 0 is out of range (0, 1]"));
        assert!(err("[source]\nwidth = 100000\nheight = 100000\n").contains("8192x8192 at most"));
        assert!(err("[detect]\nscore_threshold = nan\n").contains("detect.score_threshold = NaN"));
        assert!(err("[decide]\nmax_center_distance = inf\n").contains("decide.max_center_distance = inf"));
        assert!(err("[align]\nscale = nan\n").contains("align.scale = NaN"));
        assert!(err("[source]\nsignal_timeout_s = inf\n").contains("source.signal_timeout_s = inf"));
        assert!(err("[publish.mqtt]\nurl = \"http://x\"\n").contains("publish.mqtt.url"));
        assert!(err("[publish.mqtt]\nqos = 5\n").contains("publish.mqtt.qos = 5"));
    }
}
