//! An MJPEG byte stream (concatenated JPEG images), as `rpicam-vid --codec mjpeg -o -` writes for
//! the Pi's CSI camera modules through libcamera.

use std::io::Read;

use anyhow::{Context, Result};
use tracing::warn;

use super::{Frame, FrameSource};

const SOI: [u8; 2] = [0xFF, 0xD8];
const EOI: [u8; 2] = [0xFF, 0xD9];
/// A JPEG larger than this is garbage or a stream without end markers.
const MAX_JPEG: usize = 16 << 20;

/// Splits a byte stream into JPEG images at their start and end markers and decodes them.
///
/// Inside a JPEG's entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker,
/// so the first 0xFF 0xD9 after the start marker ends the image (cameras write no embedded
/// thumbnails in MJPEG frames).
pub struct MjpegStream<R: Read> {
    reader: R,
    buffer: Vec<u8>,
    chunk: Box<[u8]>,
    frames: usize,
    skipped: usize,
    label: String,
    eof: bool,
}

impl<R: Read> MjpegStream<R> {
    /// Reads JPEGs from `reader`; `label` names it in frame names and logs.
    pub fn new(reader: R, label: &str) -> Self {
        Self {
            reader,
            buffer: Vec::new(),
            chunk: vec![0; 64 << 10].into_boxed_slice(),
            frames: 0,
            skipped: 0,
            label: label.into(),
            eof: false,
        }
    }

    /// The next complete JPEG's bytes, or `None` at the end of the stream.
    fn next_jpeg(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(start) = find(&self.buffer, &SOI, 0) {
                if let Some(end) = find(&self.buffer, &EOI, start + 2) {
                    let jpeg = self.buffer[start..end + 2].to_vec();
                    self.buffer.drain(..end + 2);
                    return Ok(Some(jpeg));
                }
                if self.buffer.len() - start > MAX_JPEG {
                    warn!(
                        "{}: no end marker within {} MB, dropping the data",
                        self.label,
                        MAX_JPEG >> 20
                    );
                    self.skipped += 1;
                    self.buffer.clear();
                }
            } else {
                // Keep a trailing 0xFF: it may start the next marker.
                let keep = usize::from(self.buffer.last() == Some(&0xFF));
                self.buffer.drain(..self.buffer.len() - keep);
            }
            if self.eof {
                return Ok(None);
            }
            let n = self
                .reader
                .read(&mut self.chunk)
                .with_context(|| format!("reading {}", self.label))?;
            if n == 0 {
                self.eof = true;
            }
            self.buffer.extend_from_slice(&self.chunk[..n]);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8; 2], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(2)
        .position(|w| w == needle)
        .map(|i| i + from)
}

impl<R: Read> FrameSource for MjpegStream<R> {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        while let Some(jpeg) = self.next_jpeg()? {
            self.frames += 1;
            match image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg) {
                Ok(image) => {
                    return Ok(Some(Frame {
                        image: image.to_rgb8(),
                        name: format!("{} #{}", self.label, self.frames),
                    }));
                }
                Err(e) => {
                    self.skipped += 1;
                    warn!("{}: skipping frame {}: {e}", self.label, self.frames);
                }
            }
        }
        Ok(None)
    }

    fn skipped(&self) -> usize {
        self.skipped
    }

    fn describe(&self) -> String {
        format!("MJPEG stream on {}", self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(shade: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        image::RgbImage::from_pixel(16, 8, image::Rgb([shade, shade, shade]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        bytes
    }

    /// Hands out at most one byte per read, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((&b, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buf[0] = b;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn frames_split_across_reads_with_garbage_between_and_a_corrupt_one_skipped() {
        let mut stream = b"junk\xFF".to_vec();
        stream.extend(jpeg(10));
        stream.extend(b"\x00\x01noise");
        let mut broken = jpeg(20);
        broken.drain(20..200);
        stream.extend(broken);
        stream.extend(jpeg(250));
        let mut source = MjpegStream::new(Trickle(&stream), "test");
        let first = source.next_frame().unwrap().unwrap();
        assert_eq!(
            (first.image.dimensions(), first.image.get_pixel(3, 3)[0] < 30),
            ((16, 8), true)
        );
        let second = source.next_frame().unwrap().unwrap();
        assert!(second.image.get_pixel(3, 3)[0] > 230);
        assert_eq!(second.name, "test #3");
        assert!(source.next_frame().unwrap().is_none());
        assert_eq!(source.skipped(), 1);
    }
}
