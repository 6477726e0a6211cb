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
use crate::detect::{Detector, Face, Tracker};
use crate::publish::{Event, Publisher, Status};
use crate::service::Watchdog;
use crate::source::{Feed, Next};

/// The longest the frame loop waits for a frame before it looks at the stop flag, the watchdog
/// and the signal timeout again: a stop is honoured well within a second in every state.
const TICK: Duration = Duration::from_millis(200);

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
    /// Faces classified (at most one per frame: the one the decider will publish).
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
    tracker: Tracker,
    aligner: Aligner,
    classifier: Classifier,
    flip: bool,
    decider: Decider,
    max_faces: usize,
    input: Vec<f32>,
    faces: Vec<(Face, Option<Classification>)>,
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
            tracker: Tracker::new(config.detect.every_frames),
            aligner: Aligner::new(config.align),
            classifier,
            flip: config.classify.flip,
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

    /// The classifier, to profile its plan.
    pub fn classifier_mut(&mut self) -> &mut Classifier {
        &mut self.classifier
    }

    /// The face detector, to profile its plan.
    pub fn detector_mut(&mut self) -> &mut Detector {
        &mut self.detector
    }

    /// The aligner, to prepare a face outside the frame loop.
    pub fn aligner_mut(&mut self) -> &mut Aligner {
        &mut self.aligner
    }

    /// Processes one frame; `capture` is how long the source took to deliver it.
    pub fn process(&mut self, frame: &RgbImage, capture: Duration) -> Result<Decision> {
        let t0 = Instant::now();
        let mut faces = match self.tracker.predict() {
            Some(carried) => carried,
            None => {
                let faces = self.detector.detect(frame)?;
                self.tracker.detected(&faces);
                faces
            }
        };
        let t1 = Instant::now();
        self.stats.faces += faces.len() as u64;
        // Largest first, so a crowd costs at most `max_faces` tracks.
        faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
        faces.truncate(self.max_faces);
        // Only the face that will be published is aligned and classified; the others keep their
        // tracks (boxes, ages) up to date for the selection.
        let published = self.decider.will_publish(&faces, frame.dimensions());
        self.faces.clear();
        let (mut align, mut classify) = (Duration::ZERO, Duration::ZERO);
        for (i, face) in faces.into_iter().enumerate() {
            let class = if published == Some(i) {
                let a = Instant::now();
                self.aligner.align(frame, &face, &mut self.input)?;
                let c = Instant::now();
                let class = self.classifier.classify_face(&mut self.input, self.flip)?;
                classify += c.elapsed();
                align += c - a;
                self.stats.classified += 1;
                Some(class)
            } else {
                None
            };
            self.faces.push((face, class));
        }
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

    /// The faces of the last frame, with the classification of the one published.
    pub fn last_faces(&self) -> &[(Face, Option<Classification>)] {
        &self.faces
    }

    /// The decision when frames stopped coming: no face, every track forgotten (a face seen
    /// before the gap is a new face after it).
    pub fn no_signal(&mut self) -> Decision {
        self.faces.clear();
        self.tracker.reset();
        self.decider.reset()
    }
}

/// How the frame loop behaves besides processing frames.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopOptions {
    /// Time between status lines; `None`: only the final summary.
    pub status_interval: Option<Duration>,
    /// Time without a frame after which `no_face` is published from source "no signal", and
    /// again every as long while it lasts; `None`: never.
    pub signal_timeout: Option<Duration>,
}

impl LoopOptions {
    /// The loop settings of a configuration (0 s turns a timer off).
    pub fn of(config: &Config) -> Self {
        let seconds = |s: f32| (s > 0.0).then(|| Duration::from_secs_f32(s));
        Self {
            status_interval: seconds(config.status.interval_s),
            signal_timeout: seconds(config.source.signal_timeout_s),
        }
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

/// Feeds frames from `feed` through `sensor` to every publisher until the source ends or a stop
/// is requested, feeding systemd's watchdog as it goes. Publishers are shut down (pins to idle)
/// on every way out, errors included.
pub fn run(
    sensor: &mut Sensor,
    feed: &mut Feed,
    publishers: &mut [Box<dyn Publisher>],
    stop: &Stop,
    options: LoopOptions,
) -> Result<Summary> {
    let result = run_inner(sensor, feed, publishers, stop, options);
    for p in publishers.iter_mut() {
        if let Err(e) = p.shutdown() {
            warn!("{}: shutdown failed: {e:#}", p.name());
        }
    }
    result
}

fn run_inner(
    sensor: &mut Sensor,
    feed: &mut Feed,
    publishers: &mut [Box<dyn Publisher>],
    stop: &Stop,
    options: LoopOptions,
) -> Result<Summary> {
    let start = Instant::now();
    let mut last_status = (start, sensor.stats.clone());
    let mut watchdog = Watchdog::from_env();
    watchdog.ready(&format!("reading {}", feed.describe()));
    info!("reading {}", feed.describe());
    let mut sequence = 0;
    // When the last frame came, and when "no signal" was last published since.
    let (mut last_frame, mut no_signal) = (start, None);
    while !stop.requested() {
        watchdog.feed();
        let (frame, capture) = match feed.next(TICK)? {
            Next::Frame(frame, capture) => (frame, capture),
            Next::End => break,
            Next::Idle => {
                if let Some(timeout) = options.signal_timeout
                    && no_signal.unwrap_or(last_frame).elapsed() >= timeout
                {
                    if no_signal.is_none() {
                        warn!("no frame for {timeout:?}: publishing no_face until frames return");
                    }
                    let event = Event {
                        sequence,
                        time_ms: start.elapsed().as_millis() as u64,
                        source: NO_SIGNAL.into(),
                        decision: sensor.no_signal(),
                    };
                    publish(publishers, &event, &mut sensor.stats)?;
                    (sequence, no_signal) = (sequence + 1, Some(Instant::now()));
                }
                continue;
            }
        };
        if no_signal.take().is_some() {
            info!("frames are back");
        }
        last_frame = Instant::now();
        let decision = sensor.process(&frame.image, capture)?;
        let event = Event {
            sequence,
            time_ms: start.elapsed().as_millis() as u64,
            source: frame.name,
            decision,
        };
        sequence += 1;
        publish(publishers, &event, &mut sensor.stats)?;
        if decision.changed {
            info!(
                "{}: {} ({:.2}), {} face(s)",
                event.source,
                decision.reading.name(),
                decision.confidence,
                decision.faces
            );
        }
        if let Some(interval) = options.status_interval
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
            let fps = frames as f64 / since.elapsed().as_secs_f64();
            let line = format!(
                "{fps:.1} frames/s, {} faces in {frames} frames, {}",
                window.faces,
                window.stage_line()
            );
            info!("status: {line}");
            watchdog.status(&line);
            let status = Status {
                uptime_s: (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                fps: (fps * 10.0).round() / 10.0,
                frames,
                faces: window.faces,
                stage_ms: STAGES
                    .into_iter()
                    .zip(window.per_frame_ms())
                    .map(|(s, ms)| (s, (ms * 100.0).round() / 100.0))
                    .collect(),
            };
            for p in publishers.iter_mut() {
                p.status(&status)?;
            }
            last_status = (Instant::now(), sensor.stats.clone());
        }
    }
    watchdog.stopping();
    let elapsed = start.elapsed();
    let stats = sensor.stats.clone();
    let fps = stats.frames as f64 / elapsed.as_secs_f64().max(1e-9);
    info!(
        "done: {} frames in {:.1} s ({fps:.1} frames/s), {} faces, {} skipped; per frame: {}",
        stats.frames,
        elapsed.as_secs_f64(),
        stats.faces,
        feed.skipped(),
        stats.stage_line()
    );
    Ok(Summary {
        stats,
        elapsed,
        skipped: feed.skipped(),
        fps,
    })
}

/// The `source` of the events published while no frames come.
pub const NO_SIGNAL: &str = "no signal";

fn publish(publishers: &mut [Box<dyn Publisher>], event: &Event, stats: &mut Stats) -> Result<()> {
    let p = Instant::now();
    for publisher in publishers.iter_mut() {
        publisher.publish(event)?;
    }
    stats.stage_time[4] += p.elapsed();
    Ok(())
}
