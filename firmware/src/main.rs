//! `fer-sensor`: the headless facial-expression sensor. See `fer-sensor --help`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fer_firmware::bench;
use fer_firmware::config::Config;
use fer_firmware::decide::Select;
use fer_firmware::log::Log;
use fer_firmware::publish::gpio::pi;
use fer_firmware::publish::mqtt::{Mqtt, MqttOptions};
use fer_firmware::publish::serial::{self, Mode, Serial, SerialOptions, UartWriter};
use fer_firmware::publish::stdout::{JsonLines, ReaderGone};
use fer_firmware::publish::{Opener, Publisher, Supervised};
use fer_firmware::selftest::{self, Check};
use fer_firmware::sensor::{self, LoopOptions, Sensor};
use fer_firmware::source::Feed;
use fer_firmware::{Stop, source};
use tracing::info;

/// Reads frames from a camera, an MJPEG stream on stdin or image files, finds faces, classifies
/// their expression and publishes it as JSON lines on stdout, frames on a serial line, levels on
/// GPIO pins and messages to an MQTT broker. Logs go to stderr (RUST_LOG=debug for more).
///
/// Examples:
///   fer-sensor --source samples/ --hold 10                # the bundled sample frames
///   fer-sensor --config /etc/fer-sensor.toml              # a Pi with a USB camera, run from
///                                                         # /usr/share/fer-sensor (the models)
///   rpicam-vid -t 0 --codec mjpeg -o - | fer-sensor --source stdin   # a Pi camera module
///   fer-sensor --source samples/ --hold 10 --mqtt mqtt://127.0.0.1:1883  # also to a broker
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// TOML configuration file (every setting; see firmware/fer-sensor.toml).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Frame source: /dev/videoN, `stdin` (MJPEG), or an image file, directory or glob.
    #[arg(short, long, global = true)]
    source: Option<String>,
    /// Expression classifier (ONNX following the fer contract).
    #[arg(long, global = true)]
    classifier: Option<PathBuf>,
    /// BlazeFace face detector (ONNX).
    #[arg(long, global = true)]
    detector: Option<PathBuf>,
    /// Print a JSON line for every frame, not only on changes.
    #[arg(long, global = true)]
    every_frame: bool,
    /// Print nothing on stdout.
    #[arg(long, global = true)]
    quiet: bool,
    /// Serial port to publish on (turns the serial output on).
    #[arg(long, global = true)]
    serial: Option<PathBuf>,
    /// MQTT broker to publish on, mqtt://host[:port] or mqtts://host[:port] (turns MQTT on; the
    /// rest of its settings live in [publish.mqtt]).
    #[arg(long, global = true, value_name = "URL")]
    mqtt: Option<String>,
    /// Serial line speed.
    #[arg(long, global = true)]
    baud: Option<u32>,
    /// Serial format.
    #[arg(long, value_enum, global = true)]
    serial_mode: Option<Mode>,
    /// Passes over image files (0 = forever).
    #[arg(long, global = true)]
    repeat: Option<u32>,
    /// Frames each image file is shown for (still photos: e.g. 10).
    #[arg(long, global = true)]
    hold: Option<u32>,
    /// Run the face detector on every N-th frame only; faces move on at their speed between.
    #[arg(long, global = true, value_name = "N")]
    detect_every: Option<u32>,
    /// Which face to publish when there are several.
    #[arg(long, value_enum, global = true)]
    select: Option<Select>,
    /// Seconds between status lines (0 = only the final summary).
    #[arg(long, global = true)]
    status_interval: Option<f32>,
    /// The `check` subcommand, spelled as a flag (scripts written before it use this).
    #[arg(long, hide = true)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validates the configuration and opens every part it names once (models, source, serial
    /// port, broker, pins), then exits; exit status 0 only when all of them work.
    Check,
    /// Checks this device (hardware in the loop); exit status 0 only when no check fails.
    ///
    /// Runs the golden vectors through this build's tract, the face detector on a fixture frame,
    /// drives the GPIO pins (reading jumpered ones back), sends serial frames through a TX→RX
    /// loopback and grabs camera frames. Prints PASS, FAIL or SKIP per check.
    Selftest {
        /// A jumper from an output pin to an input pin, BCM numbers: `--jumper 17:5`. Each
        /// configured output pin is driven; jumpered pins are also read back.
        #[arg(long, value_parser = parse_jumper)]
        jumper: Vec<(u8, u8)>,
        /// Send frames through the serial port and expect them back (TX jumpered to RX).
        #[arg(long)]
        serial_loopback: bool,
        /// Frames to grab from the source (0 skips the source check).
        #[arg(long, default_value_t = 30)]
        frames: usize,
    },
    /// Times every stage of the frame path on this device and prints a table (for docs/sensor.md).
    ///
    /// Runs a 640x480 frame (the built-in two-face fixture, or --image) through the configured
    /// detector, aligner and classifier: warm-up frames first, then the timed ones; prints the
    /// mean, median and 90th percentile per stage, the frames/s they allow, the device and the
    /// SIMD kernels tract chose. --nodes adds where each network spends its time, node by node.
    /// Compare precisions with --classifier models/fer.f32.onnx and models/fer.int8.onnx, and
    /// the steady state of skipping detections with --detect-every N.
    Bench {
        /// Frames to time (as many again run first as warm-up).
        #[arg(long, default_value_t = 100)]
        frames: usize,
        /// An RGB image to use instead of the built-in fixture frame.
        #[arg(long)]
        image: Option<PathBuf>,
        /// Also profile both networks node by node (the slowest nodes first).
        #[arg(long)]
        nodes: bool,
    },
    /// Drives the configured GPIO pins to their idle levels and exits.
    ///
    /// The systemd unit runs it after every stop (`ExecStopPost=`): a sensor killed with SIGKILL,
    /// by its watchdog or by a crash cannot idle its pins itself, and they would go on showing
    /// the last expression.
    IdlePins,
}

fn parse_jumper(s: &str) -> Result<(u8, u8), String> {
    let (a, b) = s.split_once(':').ok_or("expected OUT:IN, e.g. 17:5")?;
    Ok((
        a.parse().map_err(|e| format!("{a}: {e}"))?,
        b.parse().map_err(|e| format!("{b}: {e}"))?,
    ))
}

impl Cli {
    /// The file's configuration with the flags applied, validated.
    fn config(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let c = &mut config;
        if let Some(s) = &self.source {
            c.source.input = s.clone();
        }
        if let Some(p) = &self.classifier {
            c.model.classifier = p.clone();
        }
        if let Some(p) = &self.detector {
            c.model.detector = p.clone();
        }
        if self.every_frame {
            c.publish.stdout.every_frames = 1;
        }
        c.publish.stdout.enabled &= !self.quiet;
        if let Some(port) = &self.serial {
            c.publish.serial.get_or_insert_with(SerialOptions::default).port = port.clone();
        }
        if let Some(url) = &self.mqtt {
            c.publish.mqtt.get_or_insert_with(MqttOptions::default).url = url.clone();
        }
        if let Some(serial) = &mut c.publish.serial {
            serial.baud = self.baud.unwrap_or(serial.baud);
            serial.mode = self.serial_mode.unwrap_or(serial.mode);
        }
        c.source.repeat = self.repeat.unwrap_or(c.source.repeat);
        c.source.hold = self.hold.unwrap_or(c.source.hold);
        c.decide.select = self.select.unwrap_or(c.decide.select);
        c.detect.every_frames = self.detect_every.unwrap_or(c.detect.every_frames);
        c.status.interval_s = self.status_interval.unwrap_or(c.status.interval_s);
        config.validate().context("after applying the command-line flags")?;
        Ok(config)
    }
}

/// The exit status when stdout's reader closed the pipe: what a shell reports for a tool that
/// SIGPIPE killed (128 + 13), so pipelines read it as a broken pipe, not a crash.
const BROKEN_PIPE: u8 = 141;

/// Wait before the first reopen of a failed publisher (doubling up to 30 s).
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Every configured publisher, each failing alone (see [`Supervised`]): a serial adapter
/// missing at start or unplugged later is retried while the others keep publishing. `model`
/// names the classifier to Home Assistant.
fn publishers(config: &Config, model: &str) -> Vec<Box<dyn Publisher>> {
    let mut openers: Vec<(String, Opener)> = Vec::new();
    let p = &config.publish;
    if p.stdout.enabled {
        let every_frames = p.stdout.every_frames;
        openers.push((
            "stdout".into(),
            Box::new(move || Ok(Box::new(JsonLines::stdout(every_frames)?))),
        ));
    }
    if let Some(s) = p.serial.clone() {
        let name = format!("serial {}", s.port.display());
        let label = name.clone();
        openers.push((
            name,
            Box::new(move || {
                let uart = serial::open(&s.port, s.baud)?;
                Ok(Box::new(Serial::new(UartWriter(uart), s.mode, s.every_frames, &label)?))
            }),
        ));
    }
    if let Some(g) = p.gpio.clone() {
        openers.push(("gpio".into(), Box::new(move || Ok(Box::new(pi::claim(&g)?)))));
    }
    if let Some(m) = p.mqtt.clone() {
        let model = model.to_string();
        openers.push((
            format!("mqtt {}", m.url),
            Box::new(move || Ok(Box::new(Mqtt::start(&m, &model)?))),
        ));
    }
    openers
        .into_iter()
        .map(|(name, open)| Box::new(Supervised::new(&name, REOPEN_AFTER, open)) as Box<dyn Publisher>)
        .collect()
}

fn run(config: &Config) -> Result<()> {
    let stop = Stop::default();
    let handler = stop.clone();
    ctrlc::set_handler(move || handler.request()).context("installing the SIGINT/SIGTERM handler")?;
    let mut sensor = Sensor::load(config)?;
    let info = &sensor.classifier().info;
    let model = format!("{} ({})", info.version, info.precision);
    info!("classifier {} {model}", config.model.classifier.display());
    let (options, source_stop) = (config.source.clone(), stop.clone());
    let mut feed = Feed::spawn(move || source::open(&options, source_stop), stop.clone())?;
    let mut publishers = publishers(config, &model);
    sensor::run(&mut sensor, &mut feed, &mut publishers, &stop, LoopOptions::of(config))?;
    // Files run out by design; a stream on stdin ends only when the process feeding it died,
    // and a zero exit would keep systemd's Restart=on-failure from restarting the pipeline.
    let stdin = fer_firmware::source::Input::Stdin;
    if fer_firmware::source::Input::parse(&config.source.input) == stdin && !stop.requested() {
        anyhow::bail!("stdin ended (end of stream): the program feeding frames stopped");
    }
    Ok(())
}

fn bench(config: &Config, frames: usize, image: Option<&std::path::Path>, nodes: bool) -> Result<bench::Report> {
    let frame = match image {
        Some(path) => image::open(path).with_context(|| format!("reading {}", path.display()))?,
        None => image::load_from_memory(selftest::FIXTURE_FRAME)?,
    };
    bench::run(config, &frame.to_rgb8(), frames, nodes)
}

fn report(checks: &[Check]) -> ExitCode {
    for c in checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| c.failed()).count();
    println!("{} checks, {failed} failed", checks.len());
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The log filter: `RUST_LOG` when it sets a level for everything (`debug`, `warn`, `off`),
/// else `info` plus whatever it says of particular targets. An empty `Environment=RUST_LOG=` or a
/// lone target name must not hide every warning of a headless sensor.
fn log_filter(env: Option<&str>) -> tracing_subscriber::EnvFilter {
    let env = env.unwrap_or_default().trim();
    let sets_all = env
        .split(',')
        .any(|d| d.trim().parse::<tracing_subscriber::filter::LevelFilter>().is_ok());
    let filter = match env {
        "" => "info".to_string(),
        env if sets_all => env.to_string(),
        env => format!("info,{env}"),
    };
    tracing_subscriber::EnvFilter::builder().parse_lossy(filter)
}

/// Log lines queued for stderr while its reader (journald, a pipe) does not keep up; beyond this
/// they are dropped.
const LOG_QUEUE: usize = 1024;
/// How long the exit waits for queued log lines and the final error to reach a slow stderr.
const LOG_DRAIN: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let log = match Log::start(std::io::stderr(), LOG_QUEUE) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("error: starting the log writer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(log_filter(std::env::var("RUST_LOG").ok().as_deref()))
        .init();
    let (code, error) = execute();
    // The final error goes the same way as the log, after the lines before it.
    log.finish(error.map(|e| format!("error: {e:#}")).as_deref(), LOG_DRAIN);
    code
}

/// Runs the command; its exit status, with the error to print last.
fn execute() -> (ExitCode, Option<anyhow::Error>) {
    let cli = Cli::parse();
    let config = match cli.config() {
        Ok(c) => c,
        Err(e) => return (ExitCode::from(2), Some(e)),
    };
    let command = match cli.command {
        None if cli.check => Some(Command::Check),
        command => command,
    };
    match command {
        Some(Command::Check) => (report(&selftest::check(&config)), None),
        Some(Command::Selftest {
            jumper,
            serial_loopback,
            frames,
        }) => (report(&selftest::run(&config, &jumper, serial_loopback, frames)), None),
        Some(Command::Bench { frames, image, nodes }) => {
            outcome(bench(&config, frames, image.as_deref(), nodes).map(|report| println!("{report}")))
        }
        Some(Command::IdlePins) => outcome(idle_pins(&config)),
        None => match run(&config) {
            Err(e) if e.is::<ReaderGone>() => (ExitCode::from(BROKEN_PIPE), Some(e)),
            result => outcome(result),
        },
    }
}

/// Exit status 0, or 1 with the error to print.
fn outcome(result: Result<()>) -> (ExitCode, Option<anyhow::Error>) {
    match result {
        Ok(()) => (ExitCode::SUCCESS, None),
        Err(e) => (ExitCode::FAILURE, Some(e)),
    }
}

/// `idle-pins`: claims the configured pins, which drives them to their idle levels.
fn idle_pins(config: &Config) -> Result<()> {
    match &config.publish.gpio {
        None => println!("no [publish.gpio] in the configuration: no pins to idle"),
        Some(g) => {
            pi::claim(g)?;
            println!("gpio: every configured pin idle");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_target_only_log_filter_still_shows_warnings() {
        for env in [None, Some(""), Some("garbage"), Some("fer_firmware::sensor=debug")] {
            let filter = log_filter(env).to_string();
            assert!(filter.split(',').any(|d| d == "info"), "{env:?} gave {filter}");
        }
        assert_eq!(log_filter(Some("warn")).to_string(), "warn");
        assert_eq!(log_filter(Some("off")).to_string(), "off");
    }
}
