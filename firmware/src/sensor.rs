//! The pipeline: one frame through detection, alignment, classification and decision, with
//! per-stage timing; and the main loop that feeds it from a source and publishes the results.

use std::time::{Duration, Instant};

use anyhow::Result;
use fer_protocol::INPUT;
use image::RgbImage;
use tracing::{info, warn};

use crate::Stop;
use crate::align::Aligner;
use crate::classify::{Classification, Classifier};
use crate::config::Config;
use crate::decide::{Decider, Decision};
use crate::detect::{Detector, Face};
use crate::publish::{Event, Publisher, reading_name};
use crate::source::FrameSource;

/// The stages timed per frame.
pub const STAGES: [&str; 5] = ["capture", "detect", "align", "classify", "publish"];

/// Accumulated time per stage, frames and faces.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Total time per stage, in [`STAGES`] order.
    pub stage_time: [Duration; 5],
    /// Frames processed.
    pub frames: u64,
    /// Faces detected, summed over frames.
    pub faces: u64,
    /// Faces classified (at most `model.max_faces` per frame).
    pub classified: u64,
}

impl Stats {
    /// Mean milliseconds per frame of each stage.
    pub fn per_frame_ms(&self) -> [f64; 5] {
        self.stage_time
            .map(|t| t.as_secs_f64() * 1e3 / self.frames.max(1) as f64)
    }

    /// "capture 1.2 ms, detect 3.4 ms, …".
    pub fn stage_line(&self) -> String {
        STAGES
            .iter()
            .zip(self.per_frame_ms())
            .map(|(s, ms)| format!("{s} {ms:.1} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Models and state for processing frames.
pub struct Sensor {
    detector: Detector,
    aligner: Aligner,
    classifier: Classifier,
    decider: Decider,
    max_faces: usize,
    input: Vec<f32>,
    faces: Vec<(Face, Classification)>,
    /// Timings and counts so far.
    pub stats: Stats,
}

impl Sensor {
    /// Loads both models and builds their plans.
    pub fn load(config: &Config) -> Result<Self> {
        let detector = Detector::load(&config.model.detector, config.detect)?;
        let classifier = Classifier::load(&config.model.classifier)?;
        Ok(Self::new(detector, classifier, config))
    }

    /// A sensor from loaded models.
    pub fn new(detector: Detector, classifier: Classifier, config: &Config) -> Self {
        Self {
            detector,
            aligner: Aligner::new(config.align),
            classifier,
            decider: Decider::new(config.decide),
            max_faces: config.model.max_faces,
            input: vec![0.0; INPUT.len()],
            faces: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// The classifier (its contract information).
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Processes one frame; `capture` is how long the source took to deliver it.
    pub fn process(&mut self, frame: &RgbImage, capture: Duration) -> Result<Decision> {
        let t0 = Instant::now();
        let mut faces = self.detector.detect(frame)?;
        let t1 = Instant::now();
        self.stats.faces += faces.len() as u64;
        // Largest first, so a crowd costs at most `max_faces` classifications.
        faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
        faces.truncate(self.max_faces);
        self.faces.clear();
        let (mut align, mut classify) = (Duration::ZERO, Duration::ZERO);
        for face in faces {
            let a = Instant::now();
            self.aligner.align(frame, &face, &mut self.input)?;
            let c = Instant::now();
            let class = self.classifier.classify(&self.input)?;
            classify += c.elapsed();
            align += c - a;
            self.faces.push((face, class));
        }
        self.stats.classified += self.faces.len() as u64;
        let decision = self.decider.update(&self.faces, frame.dimensions());
        self.stats.frames += 1;
        for (total, t) in self
            .stats
            .stage_time
            .iter_mut()
            .zip([capture, t1 - t0, align, classify])
        {
            *total += t;
        }
        Ok(decision)
    }

    /// The faces and classifications of the last frame.
    pub fn last_faces(&self) -> &[(Face, Classification)] {
        &self.faces
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Timings and counts.
    pub stats: Stats,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Frames the source skipped as unreadable.
    pub skipped: usize,
    /// Frames per second over the whole run.
    pub fps: f64,
}

/// Feeds frames from `source` through `sensor` to every publisher until the source ends or a
/// stop is requested. Publishers are shut down (pins to idle) on every way out, errors included.
pub fn run(
    sensor: &mut Sensor,
    source: &mut dyn FrameSource,
    publishers: &mut [Box<dyn Publisher>],
    stop: &Stop,
    status_interval: Option<Duration>,
) -> Result<Summary> {
    let result = run_inner(sensor, source, publishers, stop, status_interval);
    for p in publishers.iter_mut() {
        if let Err(e) = p.shutdown() {
            warn!("{}: shutdown failed: {e:#}", p.name());
        }
    }
    result
}

fn run_inner(
    sensor: &mut Sensor,
    source: &mut dyn FrameSource,
    publishers: &mut [Box<dyn Publisher>],
    stop: &Stop,
    status_interval: Option<Duration>,
) -> Result<Summary> {
    let start = Instant::now();
    let mut last_status = (start, sensor.stats.clone());
    info!("reading {}", source.describe());
    while !stop.requested() {
        let t = Instant::now();
        let Some(frame) = source.next_frame()? else { break };
        let decision = sensor.process(&frame.image, t.elapsed())?;
        let event = Event {
            sequence: sensor.stats.frames - 1,
            time_ms: start.elapsed().as_millis() as u64,
            source: frame.name,
            decision,
        };
        let p = Instant::now();
        for publisher in publishers.iter_mut() {
            publisher.publish(&event)?;
        }
        sensor.stats.stage_time[4] += p.elapsed();
        if decision.changed {
            info!(
                "{}: {} ({:.2}), {} face(s)",
                event.source,
                reading_name(decision.reading),
                decision.confidence,
                decision.faces
            );
        }
        if let Some(interval) = status_interval
            && last_status.0.elapsed() >= interval
        {
            let (since, before) = &last_status;
            let frames = sensor.stats.frames - before.frames;
            let window = Stats {
                stage_time: std::array::from_fn(|i| sensor.stats.stage_time[i] - before.stage_time[i]),
                frames,
                faces: sensor.stats.faces - before.faces,
                classified: sensor.stats.classified - before.classified,
            };
            info!(
                "status: {:.1} frames/s, {} faces in {frames} frames, {}",
                frames as f64 / since.elapsed().as_secs_f64(),
                window.faces,
                window.stage_line()
            );
            last_status = (Instant::now(), sensor.stats.clone());
        }
    }
    let elapsed = start.elapsed();
    let stats = sensor.stats.clone();
    let fps = stats.frames as f64 / elapsed.as_secs_f64().max(1e-9);
    info!(
        "done: {} frames in {:.1} s ({fps:.1} frames/s), {} faces, {} skipped; per frame: {}",
        stats.frames,
        elapsed.as_secs_f64(),
        stats.faces,
        source.skipped(),
        stats.stage_line()
    );
    Ok(Summary {
        stats,
        elapsed,
        skipped: source.skipped(),
        fps,
    })
}
