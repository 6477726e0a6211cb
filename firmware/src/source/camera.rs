//! A V4L2 camera (USB/UVC webcams, or a CSI module exposed through a V4L2 driver) read with
//! memory-mapped streaming. A camera that disappears is reopened with back-off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use image::RgbImage;
use tracing::{info, warn};
use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};
use yuvutils_rs::{YuvPackedImage, YuvRange, YuvStandardMatrix, yuyv422_to_rgb};

use super::{Frame, FrameSource, PixelFormat, Skips, SourceOptions};
use crate::Stop;
use crate::backoff::Backoff;

const MJPG: FourCC = FourCC { repr: *b"MJPG" };
const YUYV: FourCC = FourCC { repr: *b"YUYV" };
/// Memory-mapped buffers queued with the driver.
const BUFFERS: u32 = 4;
/// First wait before reopening a camera that failed.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between reopen attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// An open capture stream and the format the driver granted.
struct Open {
    stream: Stream<'static>,
    width: u32,
    height: u32,
    /// Bytes per row as the driver lays frames out (may exceed 2·width for YUYV).
    stride: u32,
    fourcc: FourCC,
}

/// A V4L2 camera.
pub struct Camera {
    path: PathBuf,
    options: SourceOptions,
    open: Option<Open>,
    stop: Stop,
    backoff: Backoff,
    frames: u64,
    skipped: Skips,
}

impl Camera {
    /// Opens the camera; a missing or unusable device is an error naming it.
    pub fn open(path: PathBuf, options: &SourceOptions, stop: Stop) -> Result<Self> {
        if !path.exists() {
            bail!(
                "camera {} does not exist (is it plugged in? `v4l2-ctl --list-devices` lists cameras)",
                path.display()
            );
        }
        let open = start(&path, options)?;
        info!(
            "camera {}: {}x{} {}",
            path.display(),
            open.width,
            open.height,
            open.fourcc
        );
        Ok(Self {
            path,
            options: options.clone(),
            open: Some(open),
            stop,
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            frames: 0,
            skipped: Skips::default(),
        })
    }

    /// Reopens the camera until it answers or the sensor is asked to stop.
    fn reopen(&mut self) -> Result<bool> {
        while !self.stop.requested() {
            match start(&self.path, &self.options) {
                Ok(open) => {
                    info!("camera {} is back", self.path.display());
                    self.open = Some(open);
                    self.backoff.connected();
                    return Ok(true);
                }
                Err(e) => {
                    let wait = self.backoff.failed();
                    warn!("camera {}: {e:#}; retrying in {wait:?}", self.path.display());
                    self.stop.sleep(wait);
                }
            }
        }
        Ok(false)
    }
}

/// A setup call's error naming the camera, and for EBUSY who most likely holds it: V4L2 lets one
/// program stream at a time, and on a board that is usually the service while someone runs
/// `fer-sensor check`.
fn setup_error(e: std::io::Error, path: &Path) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::ResourceBusy {
        anyhow::anyhow!(
            "camera {} is busy: another program is streaming from it (the fer-sensor service? \
            `sudo systemctl stop fer-sensor` first)",
            path.display()
        )
    } else {
        anyhow::Error::new(e).context(format!("setting up camera {}", path.display()))
    }
}

/// Sets the format and frame rate and starts streaming.
fn start(path: &PathBuf, options: &SourceOptions) -> Result<Open> {
    let device = Device::with_path(path).with_context(|| format!("opening camera {}", path.display()))?;
    let caps = device.query_caps().map_err(|e| {
        anyhow::anyhow!(
            "{} is not a V4L2 video device ({e}); sources are /dev/videoN, stdin, or image files",
            path.display()
        )
    })?;
    let needed = v4l::capability::Flags::VIDEO_CAPTURE | v4l::capability::Flags::STREAMING;
    if !caps.capabilities.contains(needed) {
        bail!(
            "{} ({}) cannot stream video captures (it offers {})",
            path.display(),
            caps.card,
            caps.capabilities
        );
    }
    let offered: Vec<FourCC> = device.enum_formats()?.into_iter().map(|f| f.fourcc).collect();
    let fourcc = match options.format {
        PixelFormat::Mjpeg => MJPG,
        PixelFormat::Yuyv => YUYV,
        PixelFormat::Auto if offered.contains(&MJPG) => MJPG,
        PixelFormat::Auto => YUYV,
    };
    if !offered.contains(&fourcc) {
        bail!(
            "camera {} does not offer {fourcc} (it offers {offered:?})",
            path.display()
        );
    }
    let mut format = device.format()?;
    (format.width, format.height, format.fourcc) = (options.width, options.height, fourcc);
    let format = device.set_format(&format).map_err(|e| setup_error(e, path))?;
    if format.fourcc != fourcc {
        bail!("camera {} refused {fourcc}", path.display());
    }
    device
        .set_params(&v4l::video::capture::Parameters::with_fps(options.fps))
        .map_err(|e| setup_error(e, path))?;
    let mut stream = Stream::with_buffers(&device, Type::VideoCapture, BUFFERS).map_err(|e| setup_error(e, path))?;
    stream.set_timeout(Duration::from_secs(2));
    Ok(Open {
        stream,
        width: format.width,
        height: format.height,
        stride: format.stride,
        fourcc,
    })
}

impl FrameSource for Camera {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            let Some(open) = &mut self.open else {
                if !self.reopen()? {
                    return Ok(None);
                }
                continue;
            };
            let (width, height, stride, fourcc) = (open.width, open.height, open.stride, open.fourcc);
            match open.stream.next() {
                Ok((buffer, meta)) => {
                    self.frames += 1;
                    let data = &buffer[..(meta.bytesused as usize).min(buffer.len())];
                    let image = if meta.flags.contains(v4l::buffer::Flags::ERROR) {
                        // The driver says the data is corrupt (a USB transfer lost packets).
                        Err("the driver flagged the buffer as corrupt".to_string())
                    } else if fourcc == MJPG {
                        super::decode_jpeg(data, (width, height)).map_err(|e| format!("{e:#}"))
                    } else {
                        yuyv_to_rgb(data, width, height, stride)
                            .ok_or_else(|| format!("short YUYV frame ({} bytes)", data.len()))
                    };
                    match image {
                        Ok(image) => {
                            return Ok(Some(Frame {
                                image,
                                name: format!("{} #{}", self.path.display(), self.frames),
                            }));
                        }
                        Err(e) => {
                            self.skipped.skip(format_args!(
                                "camera {}: skipping frame {}: {e}",
                                self.path.display(),
                                self.frames
                            ));
                        }
                    }
                }
                Err(e) => {
                    // A camera that streams again at once and fails again must not spin.
                    let wait = self.backoff.failed();
                    warn!(
                        "camera {} stopped answering: {e}; reopening in {wait:?}",
                        self.path.display()
                    );
                    self.open = None;
                    self.stop.sleep(wait);
                }
            }
            if self.stop.requested() {
                return Ok(None);
            }
        }
    }

    fn skipped(&self) -> usize {
        self.skipped.count()
    }

    fn skip_counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        self.skipped.counter()
    }

    fn describe(&self) -> String {
        match &self.open {
            Some(o) => format!("camera {} ({}x{} {})", self.path.display(), o.width, o.height, o.fourcc),
            None => format!("camera {} (reconnecting)", self.path.display()),
        }
    }
}

/// Converts packed YUYV 4:2:2 (BT.601, limited range, as UVC cameras send) to RGB; rows start
/// `stride` bytes apart (the driver's bytesperline; 0 means packed, 2·width).
pub fn yuyv_to_rgb(data: &[u8], width: u32, height: u32, stride: u32) -> Option<RgbImage> {
    let (w, h) = (width as usize, height as usize);
    let stride = if stride == 0 { w * 2 } else { stride as usize };
    if w % 2 != 0 || h == 0 || stride < w * 2 || data.len() < stride * (h - 1) + w * 2 {
        return None;
    }
    let mut rgb = vec![0; w * h * 3];
    // Row by row: yuvutils wants a buffer of exactly 2·width·height bytes, so it cannot take the
    // driver's padded rows (or a last row without its padding) in one call.
    for (yuyv, rgb) in data.chunks(stride).zip(rgb.chunks_exact_mut(w * 3)) {
        let row = YuvPackedImage {
            yuy: &yuyv[..w * 2],
            yuy_stride: width * 2,
            width,
            height: 1,
        };
        yuyv422_to_rgb(&row, rgb, width * 3, YuvRange::Limited, YuvStandardMatrix::Bt601).ok()?;
    }
    RgbImage::from_raw(width, height, rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_camera_names_the_likely_holder_and_other_errors_name_the_camera() {
        let path = Path::new("/dev/video0");
        let busy_error = setup_error(std::io::Error::from_raw_os_error(16), path).to_string();
        assert!(busy_error.contains("/dev/video0 is busy"), "{busy_error}");
        assert!(busy_error.contains("systemctl stop fer-sensor"), "{busy_error}");
        let other = format!("{:#}", setup_error(std::io::Error::from_raw_os_error(22), path));
        assert!(other.starts_with("setting up camera /dev/video0: "), "{other}");
    }

    #[test]
    fn yuyv_gray_white_and_red() {
        // Black, white (video levels 16 and 235), then pure red (Y 81, U 90, V 240).
        let data = [16, 128, 235, 128, 81, 90, 81, 240];
        let rgb = yuyv_to_rgb(&data, 4, 1, 0).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255, 255, 255]);
        let red = rgb.get_pixel(2, 0).0;
        assert!(red[0] > 250 && red[1] < 5 && red[2] < 5, "{red:?}");
        assert!(yuyv_to_rgb(&data[..6], 4, 1, 0).is_none());
    }

    #[test]
    fn yuyv_matches_the_bt601_formula_within_rounding() {
        // Every Y at a spread of chroma pairs, against the limited-range BT.601 formula in f32.
        let chroma: Vec<[u8; 2]> = (16..=240)
            .step_by(28)
            .flat_map(|u| (16..=240).step_by(28).map(move |v| [u, v]))
            .collect();
        let data: Vec<u8> = chroma
            .iter()
            .flat_map(|&[u, v]| (16..=235u8).flat_map(move |y| [y, u, y, v]))
            .collect();
        let width = data.len() as u32 / 2;
        let rgb = yuyv_to_rgb(&data, width, 1, 0).unwrap();
        let mut worst = 0.0f32;
        for (quad, pixel) in data.chunks_exact(4).zip(rgb.pixels().step_by(2)) {
            let (y, u, v) = (
                1.164 * (quad[0] as f32 - 16.0),
                quad[1] as f32 - 128.0,
                quad[3] as f32 - 128.0,
            );
            let expected = [y + 1.596 * v, y - 0.392 * u - 0.813 * v, y + 2.017 * u].map(|c| c.clamp(0.0, 255.0));
            for (e, &got) in expected.iter().zip(&pixel.0) {
                worst = worst.max((e - got as f32).abs());
            }
        }
        assert!(worst <= 2.5, "worst channel error {worst}");
    }

    #[test]
    fn yuyv_rows_follow_the_drivers_stride() {
        // Two rows of 2 pixels (4 bytes each) padded to 8 bytes per row: black, then white.
        let data = [16, 128, 16, 128, 99, 99, 99, 99, 235, 128, 235, 128];
        let rgb = yuyv_to_rgb(&data, 2, 2, 8).unwrap();
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(0, 1).0, [255, 255, 255]);
        assert!(yuyv_to_rgb(&data[..11], 2, 2, 8).is_none());
        assert!(yuyv_to_rgb(&data, 2, 2, 3).is_none(), "a stride shorter than a row");
    }

    #[test]
    fn a_missing_camera_is_an_error_naming_it() {
        let err = Camera::open(
            "/dev/video-does-not-exist".into(),
            &SourceOptions::default(),
            Stop::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("/dev/video-does-not-exist"), "{err}");
    }
}
