//! An MJPEG byte stream (concatenated JPEG images), as `rpicam-vid --codec mjpeg -o -` writes for
//! the Pi's CSI camera modules through libcamera.

use std::io::Read;

use anyhow::{Context, Result};

use super::{Frame, FrameSource, Skips};

const SOI: [u8; 2] = [0xFF, 0xD8];
/// A JPEG larger than this is garbage or a stream without end markers.
const MAX_JPEG: usize = 16 << 20;

/// Splits a byte stream into JPEG images and decodes them.
///
/// An image is found by walking its structure, not by searching for its end marker: from the
/// start marker, segment by segment (each says its length, so nothing inside one, such as an
/// embedded thumbnail, is taken for a marker) to the scan, whose entropy-coded data holds 0xFF
/// only before 0x00, a restart marker or a fill byte. Anything else ends the walk: the end marker
/// the image; a new start marker a truncated image, skipped, and the walk restarts there; bytes
/// that cannot be a JPEG's (a PNG, noise that happened to hold a start marker), skipped, and the
/// search for the next start marker resumes right after the false one. So a broken frame costs
/// itself and never the good one after it. Each byte is examined once, however the stream is
/// split into reads.
pub struct MjpegStream<R: Read> {
    reader: R,
    buffer: Vec<u8>,
    chunk: Box<[u8]>,
    /// Where the current image starts in `buffer`, once its start marker was seen.
    start: Option<usize>,
    /// Where the search (for a start marker) or the walk (through an image) resumes in `buffer`.
    scanned: usize,
    /// Whether the walk is inside a scan's entropy-coded data.
    in_scan: bool,
    max_size: (u32, u32),
    frames: usize,
    skipped: Skips,
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
            in_scan: false,
            max_size,
            frames: 0,
            skipped: Skips::default(),
            label: label.into(),
            eof: false,
        }
    }

    /// The next complete JPEG's bytes, or `None` at the end of the stream.
    fn next_jpeg(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if self.start.is_none() {
                match find(&self.buffer, &SOI, self.scanned) {
                    Some(i) => self.begin(i),
                    None => {
                        // Keep a trailing 0xFF: it may start the next marker.
                        let keep = usize::from(self.buffer.last() == Some(&0xFF));
                        self.buffer.drain(..self.buffer.len() - keep);
                        self.scanned = 0;
                    }
                }
            }
            if let Some(start) = self.start {
                match self.walk() {
                    Walk::End(end) => {
                        let jpeg = self.buffer[start..end].to_vec();
                        self.buffer.drain(..end);
                        (self.start, self.scanned) = (None, 0);
                        return Ok(Some(jpeg));
                    }
                    Walk::Restart(at) => {
                        self.skip("ends before its end marker: a new image starts inside it");
                        self.begin(at);
                        continue;
                    }
                    Walk::Broken => {
                        self.skip("is not a JPEG's structure");
                        (self.start, self.scanned) = (None, start + 2);
                        continue;
                    }
                    Walk::More if self.buffer.len() - start > MAX_JPEG => {
                        self.skip(&format!("has no end within {} MB", MAX_JPEG >> 20));
                        self.buffer.clear();
                        (self.start, self.scanned) = (None, 0);
                    }
                    Walk::More if self.eof => {
                        // A length that ran past the end may have hidden a start marker.
                        self.skip("is cut off by the end of the stream");
                        (self.start, self.scanned) = (None, start + 2);
                        continue;
                    }
                    Walk::More => {}
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

    /// Starts walking an image whose start marker is at `at`.
    fn begin(&mut self, at: usize) {
        // What lies before it is done with: a stream of broken frames must not pile up.
        self.buffer.drain(..at);
        (self.start, self.scanned, self.in_scan) = (Some(0), 2, false);
    }

    /// Counts and reports an image that cannot be decoded.
    fn skip(&mut self, why: &str) {
        self.frames += 1;
        self.skipped
            .skip(format_args!("{}: skipping frame {}: it {why}", self.label, self.frames));
    }

    /// Walks the current image from `scanned` as far as the buffer goes.
    fn walk(&mut self) -> Walk {
        let b = &self.buffer;
        loop {
            if self.in_scan {
                let Some(rest) = b.get(self.scanned..) else {
                    return Walk::More;
                };
                let Some(i) = memchr::memchr(0xFF, rest) else {
                    self.scanned = b.len();
                    return Walk::More;
                };
                let at = self.scanned + i;
                match b.get(at + 1) {
                    None => {
                        self.scanned = at;
                        return Walk::More;
                    }
                    // A stuffed 0xFF data byte, a restart marker, or a fill byte before a marker.
                    Some(0x00 | 0xD0..=0xD7) => self.scanned = at + 2,
                    Some(0xFF) => self.scanned = at + 1,
                    Some(_) => (self.scanned, self.in_scan) = (at, false),
                }
                continue;
            }
            let mut at = self.scanned;
            match b.get(at) {
                None => return Walk::More,
                Some(0xFF) => {}
                Some(_) => return Walk::Broken,
            }
            while b.get(at + 1) == Some(&0xFF) {
                at += 1;
            }
            let Some(&marker) = b.get(at + 1) else {
                self.scanned = at;
                return Walk::More;
            };
            match marker {
                0xD8 => return Walk::Restart(at),
                0xD9 => return Walk::End(at + 2),
                0x01 | 0xD0..=0xD7 => self.scanned = at + 2,
                0x00 => return Walk::Broken,
                _ => {
                    let (Some(&hi), Some(&lo)) = (b.get(at + 2), b.get(at + 3)) else {
                        self.scanned = at;
                        return Walk::More;
                    };
                    let length = usize::from(u16::from_be_bytes([hi, lo]));
                    if length < 2 {
                        return Walk::Broken;
                    }
                    // After a start-of-scan header come the scan's entropy-coded data.
                    (self.scanned, self.in_scan) = (at + 2 + length, marker == 0xDA);
                }
            }
        }
    }
}

/// How far [`MjpegStream::walk`] got.
enum Walk {
    /// The buffer ends inside the image.
    More,
    /// The image ends just before this index.
    End(usize),
    /// A new image starts at this index before the current one ended.
    Restart(usize),
    /// The bytes cannot be a JPEG's.
    Broken,
}

fn find(haystack: &[u8], needle: &[u8; 2], from: usize) -> Option<usize> {
    memchr::memmem::find(haystack.get(from..)?, needle).map(|i| i + from)
}

impl<R: Read> FrameSource for MjpegStream<R> {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        while let Some(jpeg) = self.next_jpeg()? {
            let mut from = 0;
            loop {
                self.frames += 1;
                match super::decode_jpeg(&jpeg[from..], self.max_size) {
                    Ok(image) => {
                        return Ok(Some(Frame {
                            image,
                            name: format!("{} #{}", self.label, self.frames),
                        }));
                    }
                    Err(e) => self
                        .skipped
                        .skip(format_args!("{}: skipping frame {}: {e:#}", self.label, self.frames)),
                }
                // A header cut short can give a length that jumps over the next image's start
                // marker, so that the walk takes both for one: the next image may start inside.
                match memchr::memmem::find(&jpeg[from + 2..], &[0xFF, 0xD8, 0xFF]) {
                    Some(i) => from += 2 + i,
                    None => break,
                }
            }
        }
        Ok(None)
    }

    fn skipped(&self) -> usize {
        self.skipped.count()
    }

    fn skip_counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        self.skipped.counter()
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

    /// Decodes every frame of `stream` through the splitter: (name, brightness) each, and skips.
    fn frames_of(stream: &[u8]) -> (Vec<(String, u8)>, usize) {
        let mut source = MjpegStream::new(Trickle(stream), "test", (640, 480));
        let mut frames = Vec::new();
        while let Some(f) = source.next_frame().unwrap() {
            frames.push((f.name, f.image.get_pixel(3, 3)[0]));
        }
        (frames, source.skipped())
    }

    #[test]
    fn a_truncated_frame_costs_itself_but_never_the_good_frame_after_it() {
        let whole = jpeg(250);
        let start_of_scan = whole.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        // Cut inside the entropy-coded data, inside the headers, and after one byte.
        for cut in [whole.len() - 10, start_of_scan + 30, start_of_scan - 20, 40, 3] {
            let mut stream = jpeg(10)[..cut.min(whole.len() - 10)].to_vec();
            stream.extend(&whole);
            let (frames, skipped) = frames_of(&stream);
            assert_eq!(frames.len(), 1, "cut at {cut}: {frames:?}");
            assert!(frames[0].1 > 230, "cut at {cut}: the good frame decoded");
            assert_eq!((frames[0].0.as_str(), skipped), ("test #2", 1), "cut at {cut}");
        }
    }

    #[test]
    fn other_images_and_noise_with_false_start_markers_before_a_frame_lose_nothing() {
        let mut png = Vec::new();
        image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([((x * 37) ^ (y * 11)) as u8, 0xD8, 0xFF]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let mut stream = png;
        // Start markers followed by what no JPEG holds.
        stream.extend(b"\xFF\xD8\x12\x34\xFF\xD8\xFF\x00");
        stream.extend(jpeg(250));
        let (frames, _) = frames_of(&stream);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert!(frames[0].1 > 230);
    }

    #[test]
    fn markers_inside_a_segment_such_as_a_thumbnail_do_not_end_the_image() {
        let mut with_thumbnail = jpeg(250);
        // An APP1 segment holding a whole small JPEG, as EXIF thumbnails do, right after SOI.
        let thumbnail = jpeg(10);
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend(u16::try_from(thumbnail.len() + 2).unwrap().to_be_bytes());
        app1.extend(&thumbnail);
        with_thumbnail.splice(2..2, app1);
        let mut stream = with_thumbnail;
        stream.extend(jpeg(10));
        let (frames, skipped) = frames_of(&stream);
        let shades: Vec<bool> = frames.iter().map(|f| f.1 > 230).collect();
        assert_eq!((shades, skipped), (vec![true, false], 0));
    }

    #[test]
    fn a_stream_of_truncated_frames_holds_at_most_one_frame_in_memory() {
        // Each piece starts a JPEG and stops before its end: the next start cuts it off.
        let piece = jpeg(10)[..300].to_vec();
        let repeats = 20_000;
        let stream: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * repeats).collect();
        let mut source = MjpegStream::new(stream.as_slice(), "test", (640, 480));
        while source.next_jpeg().unwrap().is_some() {}
        // A buffer's capacity never shrinks: it is the most it ever held.
        let most = source.buffer.capacity();
        assert!(source.skipped.count() >= repeats - 1, "{}", source.skipped.count());
        // 6 MB of stream went through a buffer of a few read chunks.
        assert!(most < 1 << 20, "the buffer grew to {most} bytes");
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
