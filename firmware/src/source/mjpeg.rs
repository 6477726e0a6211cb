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
/// thumbnails in MJPEG frames). Each byte is searched once, however the stream is split into reads.
pub struct MjpegStream<R: Read> {
    reader: R,
    buffer: Vec<u8>,
    chunk: Box<[u8]>,
    /// Where the current image starts in `buffer`, once its start marker was seen.
    start: Option<usize>,
    /// Where the next marker search resumes in `buffer`.
    scanned: usize,
    max_size: (u32, u32),
    frames: usize,
    skipped: usize,
    label: String,
    eof: bool,
}

impl<R: Read> MjpegStream<R> {
    /// Reads JPEGs from `reader`; `label` names it in frame names and logs; frames larger than
    /// `max_size` (width, height) are skipped unread.
    pub fn new(reader: R, label: &str, max_size: (u32, u32)) -> Self {
        Self {
            reader,
            buffer: Vec::new(),
            chunk: vec![0; 64 << 10].into_boxed_slice(),
            start: None,
            scanned: 0,
            max_size,
            frames: 0,
            skipped: 0,
            label: label.into(),
            eof: false,
        }
    }

    /// The next complete JPEG's bytes, or `None` at the end of the stream.
    fn next_jpeg(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if self.start.is_none() {
                match find(&self.buffer, &SOI, self.scanned) {
                    Some(i) => (self.start, self.scanned) = (Some(i), i + 2),
                    None => {
                        // Keep a trailing 0xFF: it may start the next marker.
                        let keep = usize::from(self.buffer.last() == Some(&0xFF));
                        self.buffer.drain(..self.buffer.len() - keep);
                        self.scanned = 0;
                    }
                }
            }
            if let Some(start) = self.start {
                if let Some(end) = find(&self.buffer, &EOI, self.scanned) {
                    let jpeg = self.buffer[start..end + 2].to_vec();
                    self.buffer.drain(..end + 2);
                    (self.start, self.scanned) = (None, 0);
                    return Ok(Some(jpeg));
                }
                // The last byte may be the 0xFF of a marker split across reads.
                self.scanned = self.buffer.len().saturating_sub(1).max(start + 2);
                if self.buffer.len() - start > MAX_JPEG {
                    warn!(
                        "{}: no end marker within {} MB, dropping the data",
                        self.label,
                        MAX_JPEG >> 20
                    );
                    self.skipped += 1;
                    self.buffer.clear();
                    (self.start, self.scanned) = (None, 0);
                }
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
    memchr::memmem::find(haystack.get(from..)?, needle).map(|i| i + from)
}

impl<R: Read> FrameSource for MjpegStream<R> {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        while let Some(jpeg) = self.next_jpeg()? {
            self.frames += 1;
            match super::decode_jpeg(&jpeg, self.max_size) {
                Ok(image) => {
                    return Ok(Some(Frame {
                        image,
                        name: format!("{} #{}", self.label, self.frames),
                    }));
                }
                Err(e) => {
                    self.skipped += 1;
                    warn!("{}: skipping frame {}: {e:#}", self.label, self.frames);
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
    use super::super::decode_jpeg;
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
        let mut source = MjpegStream::new(Trickle(&stream), "test", (640, 480));
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

    /// The JPEG of [`jpeg`] with its frame header claiming `width`x`height`.
    fn claiming(width: u16, height: u16) -> Vec<u8> {
        let mut bytes = jpeg(30);
        let sof = bytes
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline JPEG");
        bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        bytes
    }

    #[test]
    fn a_frame_claiming_more_than_the_configured_size_is_skipped_before_it_is_decoded() {
        let mut stream = claiming(30_000, 30_000);
        stream.extend(claiming(640, 481));
        stream.extend(jpeg(250));
        let mut source = MjpegStream::new(stream.as_slice(), "test", (640, 480));
        let frame = source.next_frame().unwrap().unwrap();
        assert_eq!((frame.name.as_str(), frame.image.dimensions()), ("test #3", (16, 8)));
        assert_eq!(source.skipped(), 2);
        let err = decode_jpeg(&claiming(30_000, 30_000), (640, 480)).unwrap_err();
        assert!(format!("{err:#}").contains("source.width"), "{err:#}");
    }

    #[test]
    fn splitting_is_linear_in_the_stream_even_one_byte_per_read() {
        // A 512 KiB frame handed over a byte at a time: a splitter that rescans its buffer after
        // each read touches ~10^11 bytes here; one that resumes where it stopped, 5·10^5.
        let mut big = jpeg(40);
        let eoi = big.len() - 2;
        big.splice(eoi..eoi, std::iter::repeat_n(0u8, 512 << 10));
        let mut stream = big;
        stream.extend(jpeg(250));
        let start = std::time::Instant::now();
        let mut source = MjpegStream::new(Trickle(&stream), "test", (640, 480));
        let mut frames = 0;
        while source.next_frame().unwrap().is_some() {
            frames += 1;
        }
        assert_eq!(frames + source.skipped(), 2);
        assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
    }
}
