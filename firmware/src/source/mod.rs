//! Frame sources behind one trait: a V4L2 camera, an MJPEG stream on stdin, or image files.

pub mod camera;
pub mod files;
pub mod mjpeg;

use std::path::PathBuf;

use anyhow::Result;
use image::RgbImage;

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
        }
    }
}

/// Opens the configured source. A missing camera or file is an error naming it.
pub fn open(options: &SourceOptions, stop: crate::Stop) -> Result<Box<dyn FrameSource>> {
    Ok(match Input::parse(&options.input) {
        Input::Camera(path) => Box::new(camera::Camera::open(path, options, stop)?),
        Input::Stdin => Box::new(mjpeg::MjpegStream::new(std::io::stdin().lock(), "stdin")),
        Input::Files(pattern) => Box::new(files::Files::open(&pattern, options.repeat, options.hold)?),
    })
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
