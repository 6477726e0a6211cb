//! Frame sources behind one trait: a V4L2 camera, an MJPEG stream on stdin, or image files.

pub mod camera;
pub mod files;
pub mod mjpeg;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use image::RgbImage;
use tracing::warn;

/// One captured frame.
pub struct Frame {
    /// The pixels.
    pub image: RgbImage,
    /// Where it came from, for events and logs (file name, device, "stdin #n").
    pub name: String,
}

/// Something that yields frames.
pub trait FrameSource {
    /// The next frame; `None` when the source is exhausted (end of files or of stdin).
    /// Unreadable frames are skipped, counted and logged, not returned as errors.
    fn next_frame(&mut self) -> Result<Option<Frame>>;
    /// Frames skipped because they could not be decoded.
    fn skipped(&self) -> usize;
    /// The same count, shared with a frame loop that reads it while the source blocks.
    fn skip_counter(&self) -> Arc<AtomicUsize>;
    /// A one-line description for logs.
    fn describe(&self) -> String;
}

/// Which source the sensor reads, parsed from the `source.input` setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A V4L2 device such as `/dev/video0`.
    Camera(PathBuf),
    /// An MJPEG stream on standard input (`rpicam-vid --codec mjpeg -o - | fer-sensor --source stdin`).
    Stdin,
    /// An image file, a directory of images, or a glob pattern.
    Files(String),
}

impl Input {
    /// `stdin`, a path under `/dev/` (a camera), or anything else (files).
    pub fn parse(input: &str) -> Self {
        if input == "stdin" || input == "-" {
            Self::Stdin
        } else if input.starts_with("/dev/") {
            Self::Camera(PathBuf::from(input))
        } else {
            Self::Files(input.to_string())
        }
    }
}

/// Camera pixel format to ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PixelFormat {
    /// MJPEG when the camera offers it (less USB bandwidth), else YUYV.
    #[default]
    Auto,
    /// Motion JPEG.
    Mjpeg,
    /// YUYV 4:2:2.
    Yuyv,
}

/// Source settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceOptions {
    /// `/dev/videoN`, `stdin`, or an image file, directory or glob.
    pub input: String,
    /// Requested camera frame width.
    pub width: u32,
    /// Requested camera frame height.
    pub height: u32,
    /// Requested camera frame rate.
    pub fps: u32,
    /// Requested camera pixel format.
    pub format: PixelFormat,
    /// Passes through the image files (0 = forever); for demos and throughput runs.
    pub repeat: u32,
    /// Frames each image file is shown for: 1 for frames dumped from a video, more for still
    /// photos, so smoothing sees each scene as a camera would.
    pub hold: u32,
    /// Seconds without a frame (camera reconnecting, silent stdin) after which the sensor
    /// publishes `no_face` with source "no signal", and again every as many seconds until
    /// frames return, so no output keeps a stale expression (0 = never).
    pub signal_timeout_s: f32,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            input: "/dev/video0".into(),
            width: 640,
            height: 480,
            fps: 30,
            format: PixelFormat::Auto,
            repeat: 1,
            hold: 1,
            signal_timeout_s: 5.0,
        }
    }
}

/// Opens the configured source. A missing camera or file is an error naming it.
pub fn open(options: &SourceOptions, stop: crate::Stop) -> Result<Box<dyn FrameSource>> {
    Ok(match Input::parse(&options.input) {
        Input::Camera(path) => Box::new(camera::Camera::open(path, options, stop)?),
        Input::Stdin => Box::new(mjpeg::MjpegStream::new(
            std::io::stdin().lock(),
            "stdin",
            (options.width, options.height),
        )),
        Input::Files(pattern) => Box::new(files::Files::open(&pattern, options.repeat, options.hold)?),
    })
}

/// The largest frame side the sensor accepts, from any source: above every camera it runs on
/// (a 12-megapixel module's 4608x2592), and small enough that no header can claim gigabytes.
pub const MAX_SIDE: u32 = 8192;

/// Decoder limits for an image of at most `max` (width, height): the decoded frame and the
/// decoder's own buffers, nothing like the image crate's 512 MiB default.
fn limits(max: (u32, u32)) -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max.0);
    limits.max_image_height = Some(max.1);
    limits.max_alloc = Some(u64::from(max.0) * u64::from(max.1) * 8 + (1 << 20));
    limits
}

/// Decodes a JPEG frame from a stream, refusing one larger than `max` (width, height) from its
/// header, before anything is allocated: a few bytes on stdin must not claim gigabytes.
pub fn decode_jpeg(bytes: &[u8], max: (u32, u32)) -> Result<RgbImage> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
    reader.limits(limits(max));
    match reader.decode() {
        Ok(image) => Ok(image.into_rgb8()),
        Err(image::ImageError::Limits(e)) => Err(anyhow!(
            "{e}: frames may be at most {}x{} (source.width x source.height; raise them to the stream's frame size)",
            max.0,
            max.1
        )),
        Err(e) => Err(e.into()),
    }
}

/// The largest image file read, in bytes: a photo of [`MAX_SIDE`] squared compresses to less.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads and decodes an image file within bounds: a regular file (not a device or a pipe behind
/// an image's name) of at most [`MAX_FILE_BYTES`], decoding to at most [`MAX_SIDE`] a side. The
/// error says which bound it broke.
pub fn read_image(path: &std::path::Path) -> Result<RgbImage> {
    let bytes = crate::read_file(path, MAX_FILE_BYTES)?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    reader.limits(limits((MAX_SIDE, MAX_SIDE)));
    let image = match reader.decode() {
        Ok(image) => image.into_rgb8(),
        Err(image::ImageError::Limits(e)) => {
            anyhow::bail!("{e}: images may be at most {MAX_SIDE}x{MAX_SIDE}")
        }
        Err(e) => return Err(e.into()),
    };
    anyhow::ensure!(
        image.width() > 0 && image.height() > 0,
        "{}x{}: no pixels",
        image.width(),
        image.height()
    );
    Ok(image)
}

/// The least time between two warnings about skipped frames.
const SKIP_WARNING_EVERY: Duration = Duration::from_secs(5);

/// Frames a source skipped, counted, with warnings that a stream of bad frames cannot flood: the
/// first in full, then at most one every few seconds carrying how many were skipped since.
#[derive(Debug, Default)]
pub struct Skips {
    /// Shared with the frame loop, which reads it while the source may be blocked in a read.
    count: Arc<AtomicUsize>,
    warned_at: Option<Instant>,
    unreported: usize,
}

impl Skips {
    /// Counts a skipped frame; `why` names it and says why (it is logged unless one was lately).
    pub fn skip(&mut self, why: impl std::fmt::Display) {
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.warned_at.is_some_and(|t| t.elapsed() < SKIP_WARNING_EVERY) {
            self.unreported += 1;
            return;
        }
        match std::mem::take(&mut self.unreported) {
            0 => warn!("{why}"),
            n => warn!("{why} ({n} more frames skipped since the last warning)"),
        }
        self.warned_at = Some(Instant::now());
    }

    /// Counts a skipped frame that its source reports itself.
    pub fn count_one(&mut self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Frames skipped so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The count, shared: it stays current while its source blocks.
    pub fn counter(&self) -> Arc<AtomicUsize> {
        self.count.clone()
    }
}

/// What [`Feed::next`] got within its wait.
pub enum Next {
    /// A frame, and how long the source took to deliver it.
    Frame(Frame, Duration),
    /// Nothing yet: the source is still waiting (a silent pipe, a camera reconnecting).
    Idle,
    /// The source is exhausted.
    End,
}

enum Message {
    Opened(String, Arc<AtomicUsize>),
    Frame(Frame, Duration),
    End,
    Failed(anyhow::Error),
}

/// A frame source running on its own thread, so that a read that blocks (a silent pipe, a camera
/// back-off) never blocks the frame loop: it can still publish "no signal", feed the watchdog
/// and honour a stop within its wait. One frame is queued at most, so a slow sensor drops nothing
/// and buffers nothing: the source waits.
pub struct Feed {
    frames: Receiver<Message>,
    describe: String,
    /// Frames the source skipped, counted as it skips them (not only as frames arrive: a run of
    /// bad frames ended by a stop must still show in the summary).
    skipped: Arc<AtomicUsize>,
    ended: bool,
}

impl Feed {
    /// Opens a source with `open` on a new thread; its error, if any, is returned here.
    pub fn spawn<F>(open: F, stop: crate::Stop) -> Result<Self>
    where
        F: FnOnce() -> Result<Box<dyn FrameSource>> + Send + 'static,
    {
        let (tx, rx) = sync_channel(1);
        std::thread::Builder::new()
            .name("frame source".into())
            .spawn(move || feed(open, &tx, &stop))
            .context("starting the frame source thread")?;
        match rx.recv() {
            Ok(Message::Opened(describe, skipped)) => Ok(Self {
                frames: rx,
                describe,
                skipped,
                ended: false,
            }),
            Ok(Message::Failed(e)) => Err(e),
            _ => Err(anyhow!("the frame source thread stopped while opening the source")),
        }
    }

    /// The next frame, waiting at most `wait`.
    pub fn next(&mut self, wait: Duration) -> Result<Next> {
        if self.ended {
            return Ok(Next::End);
        }
        match self.frames.recv_timeout(wait) {
            Ok(Message::Frame(frame, capture)) => Ok(Next::Frame(frame, capture)),
            Ok(Message::End) => {
                self.ended = true;
                Ok(Next::End)
            }
            Ok(Message::Failed(e)) => {
                self.ended = true;
                Err(e)
            }
            Ok(Message::Opened(..)) => unreachable!("sent once, received by spawn"),
            Err(RecvTimeoutError::Timeout) => Ok(Next::Idle),
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Err(anyhow!("the frame source thread panicked"))
            }
        }
    }

    /// Frames the source skipped as unreadable so far.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::SeqCst)
    }

    /// The source's one-line description.
    pub fn describe(&self) -> &str {
        &self.describe
    }
}

fn feed<F>(open: F, tx: &SyncSender<Message>, stop: &crate::Stop)
where
    F: FnOnce() -> Result<Box<dyn FrameSource>>,
{
    let mut source = match open() {
        Ok(source) => source,
        Err(e) => {
            let _ = tx.send(Message::Failed(e));
            return;
        }
    };
    if tx
        .send(Message::Opened(source.describe(), source.skip_counter()))
        .is_err()
    {
        return;
    }
    // A send fails only once the frame loop is gone, which ends this thread too.
    while !stop.requested() {
        let t = Instant::now();
        let message = match source.next_frame() {
            Ok(Some(frame)) => Message::Frame(frame, t.elapsed()),
            Ok(None) => Message::End,
            Err(e) => Message::Failed(e),
        };
        let last = !matches!(message, Message::Frame(..));
        if tx.send(message).is_err() || last {
            return;
        }
    }
    let _ = tx.send(Message::End);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_parse_by_shape() {
        assert_eq!(Input::parse("stdin"), Input::Stdin);
        assert_eq!(Input::parse("/dev/video2"), Input::Camera("/dev/video2".into()));
        assert_eq!(Input::parse("samples/*.jpg"), Input::Files("samples/*.jpg".into()));
    }
}
