//! `fer-sensor bench`: what each stage of the frame path costs on the device it runs on, so the
//! first real board gives its true figures with one command (docs/sensor.md collects them).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use fer_protocol::INPUT;
use fer_runtime::NodeTime;
use image::RgbImage;

use crate::config::Config;
use crate::sensor::{STAGES, Sensor, Stats};

/// The stages a bench frame goes through (capture is the camera's, not measured here).
const TIMED: [&str; 3] = ["detect", "align", "classify"];

/// Mean, median and 90th percentile of one stage over the timed frames.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Mean time per frame: the steady-state cost when the detector skips frames.
    pub mean: Duration,
    /// Median time per frame.
    pub median: Duration,
    /// 90th percentile per frame.
    pub p90: Duration,
}

impl Timing {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            mean: samples.iter().sum::<Duration>() / samples.len() as u32,
            median: at(0.5),
            p90: at(0.9),
        }
    }
}

/// What a bench run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The board or CPU, as the kernel names it.
    pub device: String,
    /// Frame size, faces found on it and faces classified (the published one).
    pub frame: (u32, u32, usize, usize),
    /// The classifier's precision (`f32` or `int8`, and whether faces are mirrored too) and the
    /// distinct matrix kernels it runs.
    pub classifier: (String, Vec<String>),
    /// Frames timed (after as many warm-up frames).
    pub frames: usize,
    /// The detector runs on every this many frames.
    pub detect_every: u32,
    /// Per stage in [`TIMED`] order, then the whole frame.
    pub stages: Vec<(&'static str, Timing)>,
    /// The slowest nodes of the detector's and the classifier's plans, when asked for.
    pub nodes: Option<(Vec<NodeTime>, Vec<NodeTime>)>,
}

/// Runs `frame` through the configured models `frames` times (after as many warm-up frames) and
/// times every stage; with `nodes`, also profiles both plans node by node.
pub fn run(config: &Config, frame: &RgbImage, frames: usize, nodes: bool) -> Result<Report> {
    ensure!(frames >= 1, "bench needs at least one frame");
    let mut sensor = Sensor::load(config)?;
    for _ in 0..frames {
        sensor.process(frame, Duration::ZERO)?;
    }
    let found = sensor.last_faces().len();
    let classified = sensor.last_faces().iter().filter(|(_, class)| class.is_some()).count();
    let mut samples = vec![Vec::with_capacity(frames); TIMED.len() + 1];
    for _ in 0..frames {
        let before = sensor.stats.clone();
        let start = Instant::now();
        sensor.process(frame, Duration::ZERO)?;
        let whole = start.elapsed();
        for (i, stage) in TIMED.iter().enumerate() {
            samples[i].push(stage_time(&sensor.stats, stage) - stage_time(&before, stage));
        }
        samples[TIMED.len()].push(whole);
    }
    let stages = TIMED
        .into_iter()
        .chain(["whole frame"])
        .zip(samples.into_iter().map(Timing::of))
        .collect();
    let nodes = match nodes {
        true => {
            let runs = frames.clamp(1, 50);
            let face = sensor
                .last_faces()
                .iter()
                .find_map(|(face, class)| class.is_some().then_some(*face));
            let detector = sensor.detector_mut().profile(frame, runs)?;
            let mut input = vec![0.0; INPUT.len()];
            if let Some(face) = face {
                sensor.aligner_mut().align(frame, &face, &mut input)?;
            }
            Some((detector, sensor.classifier_mut().profile(&input, runs)?))
        }
        false => None,
    };
    let classifier = sensor.classifier();
    let mut kernels = classifier.kernels();
    kernels.sort();
    kernels.dedup();
    Ok(Report {
        device: device(),
        frame: (frame.width(), frame.height(), found, classified),
        classifier: (
            if config.classify.flip {
                format!("{}, each face also mirrored (classify.flip)", classifier.info.precision)
            } else {
                classifier.info.precision.to_string()
            },
            kernels,
        ),
        frames,
        detect_every: config.detect.every_frames,
        stages,
        nodes,
    })
}

fn stage_time(stats: &Stats, stage: &str) -> Duration {
    stats.stage_time[STAGES.iter().position(|s| *s == stage).expect("a timed stage")]
}

/// The board's model (device tree, e.g. "Raspberry Pi 4 Model B Rev 1.4") or else the CPU's,
/// with the architecture and the cores the process may use.
fn device() -> String {
    let board = std::fs::read_to_string("/proc/device-tree/model")
        .ok()
        .map(|m| m.trim_end_matches('\0').trim().to_string());
    let cpu = || {
        std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    let name = board
        .filter(|b| !b.is_empty())
        .or_else(cpu)
        .unwrap_or_else(|| "unknown device".into());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    format!("{name} ({}, {cores} cores)", std::env::consts::ARCH)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (w, h, found, classified) = self.frame;
        let (precision, kernels) = &self.classifier;
        writeln!(f, "device:     {}", self.device)?;
        writeln!(
            f,
            "frame:      {w}x{h}, {found} face(s), {classified} classified per frame"
        )?;
        writeln!(f, "classifier: {precision}, kernels {}", kernels.join(", "))?;
        writeln!(
            f,
            "timed:      {} frames after {} warm-up frames",
            self.frames, self.frames
        )?;
        writeln!(f)?;
        writeln!(f, "| stage | mean | median | p90 |")?;
        writeln!(f, "| --- | ---: | ---: | ---: |")?;
        for (stage, t) in &self.stages {
            writeln!(f, "| {stage} | {} | {} | {} |", ms(t.mean), ms(t.median), ms(t.p90))?;
        }
        let whole = self.stages.last().expect("whole frame").1.mean;
        writeln!(f)?;
        write!(
            f,
            "{:.1} frames/s from the mean frame (detection every {} frame(s); without capture and publishing)",
            1.0 / whole.as_secs_f64().max(1e-9),
            self.detect_every
        )?;
        if let Some((detector, classifier)) = &self.nodes {
            for (name, nodes) in [("face detector", detector), ("classifier", classifier)] {
                let total: Duration = nodes.iter().map(|n| n.time).sum();
                writeln!(
                    f,
                    "\n\n{name}: {} per run in {} nodes; the slowest:",
                    ms(total),
                    nodes.len()
                )?;
                let share = |time: Duration| time.as_secs_f64() / total.as_secs_f64().max(1e-12) * 100.0;
                let mut table = String::new();
                for n in nodes.iter().take(12) {
                    writeln!(
                        table,
                        "  {:>9} {:5.1} %  {}  {}",
                        ms(n.time),
                        share(n.time),
                        n.name,
                        n.op
                    )?;
                }
                // Per kind of op too: many small nodes of one kind (the int8 plan's requantization)
                // can cost more than the slowest single node.
                let mut kinds: Vec<(&str, Duration, usize)> = Vec::new();
                for n in nodes {
                    let kind = n.op.split_whitespace().next().unwrap_or("?");
                    match kinds.iter_mut().find(|k| k.0 == kind) {
                        Some(k) => {
                            k.1 += n.time;
                            k.2 += 1;
                        }
                        None => kinds.push((kind, n.time, 1)),
                    }
                }
                kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
                writeln!(table, "by kind of op:")?;
                for &(kind, time, count) in kinds.iter().take(8) {
                    writeln!(table, "  {:>9} {:5.1} %  {kind} ({count} nodes)", ms(time), share(time))?;
                }
                write!(f, "{}", table.trim_end())?;
            }
        }
        Ok(())
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
