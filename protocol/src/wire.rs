//! The serial wire format: one fixed-size frame per published reading, and a decoder that finds
//! frames in a byte stream with garbage, split reads and lost bytes.
//!
//! ```text
//! offset  size  field
//! 0       1     START (0xA5)
//! 1       1     VERSION (1)
//! 2       2     sequence number, little-endian, wraps at 65535
//! 4       1     reading: 0..=6 an Expression index, 0xFE uncertain, 0xFF no face
//! 5       1     confidence, 0..=255 (probability · 255, rounded)
//! 6       1     number of faces in view (saturates at 255)
//! 7       2     CRC-16/CCITT-FALSE of bytes 1..=6, little-endian
//! ```
//!
//! A fixed size and a CRC over everything but the start byte let a receiver resynchronise on its
//! own: a start byte inside the payload fails the CRC and the decoder moves one byte on. The CRC's
//! 16 bits bound that: nine bytes that are not a frame pass it 1 time in 65,536, and are taken for
//! a frame when they also decode.

use crc::{CRC_16_IBM_3740, Crc};

use crate::Expression;

/// First byte of every frame.
pub const START: u8 = 0xA5;
/// Wire format version carried in every frame.
pub const VERSION: u8 = 1;
/// Bytes in one frame.
pub const FRAME_LEN: usize = 9;

const CRC: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);
const UNCERTAIN: u8 = 0xFE;
const NO_FACE: u8 = 0xFF;

/// What the sensor sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Reading {
    /// A face with this expression.
    Expression(Expression),
    /// A face, but no expression is sure enough (low probability or far from every center).
    Uncertain,
    /// No face in view.
    NoFace,
}

impl Reading {
    /// Every reading, expressions first in label order.
    pub const ALL: [Reading; Expression::COUNT + 2] = {
        let mut all = [Reading::Uncertain; Expression::COUNT + 2];
        let mut i = 0;
        while i < Expression::COUNT {
            all[i] = Reading::Expression(Expression::ALL[i]);
            i += 1;
        }
        all[Expression::COUNT + 1] = Reading::NoFace;
        all
    };

    /// The name every output uses: an expression's name, `uncertain` or `no_face`.
    pub const fn name(self) -> &'static str {
        match self {
            Reading::Expression(e) => e.name(),
            Reading::Uncertain => "uncertain",
            Reading::NoFace => "no_face",
        }
    }
}

/// One published reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Frame {
    /// Increments with every frame, so a receiver can count lost frames.
    pub sequence: u16,
    /// The reading.
    pub reading: Reading,
    /// Confidence of the reading, 0..=255.
    pub confidence: u8,
    /// Faces in view.
    pub faces: u8,
}

impl Frame {
    /// The confidence byte that carries a probability: `p · 255`, rounded; outside 0..=1 it
    /// saturates, and NaN is 0.
    pub fn confidence_byte(probability: f32) -> u8 {
        // `+ 0.5` and truncation round a non-negative value as `f32::round` does, which `no_std`
        // lacks.
        (probability.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
    }

    /// The probability the confidence byte carries (within 1/510 of the one sent).
    pub fn probability(&self) -> f32 {
        f32::from(self.confidence) / 255.0
    }

    /// The frame's bytes.
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let reading = match self.reading {
            Reading::Expression(e) => e.index() as u8,
            Reading::Uncertain => UNCERTAIN,
            Reading::NoFace => NO_FACE,
        };
        let [s0, s1] = self.sequence.to_le_bytes();
        let mut bytes = [START, VERSION, s0, s1, reading, self.confidence, self.faces, 0, 0];
        let [c0, c1] = CRC.checksum(&bytes[1..7]).to_le_bytes();
        bytes[7] = c0;
        bytes[8] = c1;
        bytes
    }

    /// Parses exactly one frame.
    pub fn decode(bytes: &[u8; FRAME_LEN]) -> Result<Self, FrameError> {
        if bytes[0] != START {
            return Err(FrameError::Start);
        }
        if CRC.checksum(&bytes[1..7]) != u16::from_le_bytes([bytes[7], bytes[8]]) {
            return Err(FrameError::Crc);
        }
        if bytes[1] != VERSION {
            return Err(FrameError::Version(bytes[1]));
        }
        let reading = match bytes[4] {
            UNCERTAIN => Reading::Uncertain,
            NO_FACE => Reading::NoFace,
            i => Reading::Expression(Expression::from_index(i as usize).ok_or(FrameError::Reading(i))?),
        };
        Ok(Self {
            sequence: u16::from_le_bytes([bytes[2], bytes[3]]),
            reading,
            confidence: bytes[5],
            faces: bytes[6],
        })
    }
}

/// Why some bytes are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FrameError {
    /// The first byte is not [`START`].
    Start,
    /// The checksum does not match: noise, or a start byte that was not one.
    Crc,
    /// A valid frame of a wire version this build does not know.
    Version(u8),
    /// A valid frame whose reading byte names no expression.
    Reading(u8),
}

/// Finds frames in a byte stream, one byte at a time, in a fixed buffer (no allocation).
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: heapless::Vec<u8, FRAME_LEN>,
    /// Bytes thrown away while looking for a frame.
    pub skipped: u32,
}

impl Decoder {
    /// A decoder waiting for a start byte.
    pub const fn new() -> Self {
        Self {
            buffer: heapless::Vec::new(),
            skipped: 0,
        }
    }

    /// Feeds one byte; returns a frame when this byte completes one.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, FrameError>> {
        if self.buffer.is_empty() && byte != START {
            self.skipped += 1;
            return None;
        }
        // Cannot fail: the buffer is drained below before it fills up.
        let _ = self.buffer.push(byte);
        if !self.buffer.is_full() {
            return None;
        }
        let mut bytes = [0; FRAME_LEN];
        bytes.copy_from_slice(&self.buffer);
        let next = bytes[1..].iter().position(|&b| b == START).map(|i| i + 1);
        match (Frame::decode(&bytes), next) {
            // Not a frame after all: rescan from the next start byte inside it.
            (Err(FrameError::Crc), _) => self.rescan(&bytes, next.unwrap_or(FRAME_LEN)),
            // The CRC passed but the frame does not decode, and a start byte inside may begin the
            // real frame: a cut-off frame followed by a whole one passes the CRC by chance 1 in
            // 65,536 times, and reporting it would swallow the whole one. A frame of an unknown
            // version or reading is still reported whenever it holds no other start byte.
            (Err(FrameError::Version(_) | FrameError::Reading(_)), Some(next)) => self.rescan(&bytes, next),
            (result, _) => {
                self.buffer.clear();
                Some(result)
            }
        }
    }

    /// Drops the bytes before `next` and keeps the rest to scan again; never returns a frame.
    fn rescan(&mut self, bytes: &[u8; FRAME_LEN], next: usize) -> Option<Result<Frame, FrameError>> {
        self.skipped += next as u32;
        self.buffer.clear();
        let _ = self.buffer.extend_from_slice(&bytes[next..]);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_bytes_round_and_read_back_within_half_a_step() {
        let cases = [
            (0.0, 0),
            (1.0, 255),
            (0.5, 128),
            (0.499, 127),
            (-0.2, 0),
            (1.7, 255),
            (f32::NAN, 0),
        ];
        for (p, byte) in cases {
            assert_eq!(Frame::confidence_byte(p), byte, "{p}");
        }
        for i in 0..=1000 {
            let p = i as f32 / 1000.0;
            let mut frame = Frame {
                sequence: 0,
                reading: Reading::NoFace,
                confidence: 0,
                faces: 0,
            };
            frame.confidence = Frame::confidence_byte(p);
            assert!((frame.probability() - p).abs() <= 0.5 / 255.0 + 1e-6, "{p}");
        }
    }

    fn frame(sequence: u16, reading: Reading) -> Frame {
        Frame {
            sequence,
            reading,
            confidence: 200,
            faces: 1,
        }
    }

    #[test]
    fn every_reading_has_its_own_name_and_survives_the_wire() {
        let names = Reading::ALL.map(Reading::name);
        assert_eq!(&names[7..], ["uncertain", "no_face"]);
        for (i, r) in Reading::ALL.into_iter().enumerate() {
            assert!(!names[..i].contains(&r.name()), "{} twice", r.name());
            assert_eq!(Frame::decode(&frame(0, r).encode()).unwrap().reading, r);
        }
    }

    #[test]
    fn encodes_the_documented_bytes() {
        let bytes = frame(0x0102, Reading::Expression(Expression::Happiness)).encode();
        assert_eq!(&bytes[..7], &[0xA5, 1, 0x02, 0x01, 3, 200, 1]);
        // CRC-16/CCITT-FALSE check value of "123456789" is 0x29B1.
        assert_eq!(CRC.checksum(b"123456789"), 0x29B1);
        assert_eq!(u16::from_le_bytes([bytes[7], bytes[8]]), CRC.checksum(&bytes[1..7]));
    }

    #[test]
    fn round_trips_every_reading() {
        let readings = Expression::ALL
            .map(Reading::Expression)
            .into_iter()
            .chain([Reading::Uncertain, Reading::NoFace]);
        for (i, reading) in readings.enumerate() {
            let f = frame(i as u16, reading);
            assert_eq!(Frame::decode(&f.encode()), Ok(f));
        }
    }

    #[test]
    fn rejects_what_is_not_a_frame() {
        let good = frame(7, Reading::NoFace).encode();
        let mut bad = good;
        bad[5] ^= 1;
        assert_eq!(Frame::decode(&bad), Err(FrameError::Crc));
        let mut bad = good;
        bad[0] = 0;
        assert_eq!(Frame::decode(&bad), Err(FrameError::Start));
        let mut future = good;
        future[1] = 2;
        let [c0, c1] = CRC.checksum(&future[1..7]).to_le_bytes();
        (future[7], future[8]) = (c0, c1);
        assert_eq!(Frame::decode(&future), Err(FrameError::Version(2)));
    }

    #[test]
    fn decoder_resynchronises_after_garbage_and_false_starts() {
        let mut stream = heapless::Vec::<u8, 64>::new();
        stream.extend_from_slice(&[0x00, START, 0x13, START]).unwrap();
        let a = frame(1, Reading::Uncertain);
        let b = frame(2, Reading::Expression(Expression::Fear));
        stream.extend_from_slice(&a.encode()).unwrap();
        stream.extend_from_slice(&b.encode()[..4]).unwrap();
        stream.extend_from_slice(&b.encode()[4..]).unwrap();
        let mut decoder = Decoder::new();
        let mut found = heapless::Vec::<Frame, 4>::new();
        for &byte in &stream {
            if let Some(Ok(f)) = decoder.push(byte) {
                found.push(f).unwrap();
            }
        }
        assert_eq!(found.as_slice(), &[a, b]);
        assert!(decoder.skipped >= 4, "skipped {}", decoder.skipped);
    }

    fn decode_all(stream: &[u8]) -> heapless::Vec<Result<Frame, FrameError>, 4> {
        let mut decoder = Decoder::new();
        stream.iter().filter_map(|&b| decoder.push(b)).collect()
    }

    #[test]
    fn a_cut_off_start_byte_that_passes_the_crc_does_not_swallow_the_frame_after_it() {
        // A lone start byte and the first eight bytes of this frame pass the CRC by chance
        // (A5 A5 01 FD 11 03 54 D2 9B): the window decodes to version 0xA5, and the real frame
        // starts at its second byte.
        let whole = Frame {
            sequence: 4605,
            reading: Reading::Expression(Expression::Happiness),
            confidence: 84,
            faces: 210,
        };
        let mut window = [START; FRAME_LEN];
        window[1..].copy_from_slice(&whole.encode()[..8]);
        assert_eq!(Frame::decode(&window), Err(FrameError::Version(START)));
        let mut stream = heapless::Vec::<u8, 16>::new();
        stream.push(START).unwrap();
        stream.extend_from_slice(&whole.encode()).unwrap();
        assert_eq!(decode_all(&stream).as_slice(), &[Ok(whole)]);
    }

    #[test]
    fn a_frame_of_an_unknown_version_is_reported() {
        let mut future = frame(7, Reading::NoFace).encode();
        future[1] = 2;
        let [c0, c1] = CRC.checksum(&future[1..7]).to_le_bytes();
        (future[7], future[8]) = (c0, c1);
        assert!(
            !future[1..].contains(&START),
            "no start byte inside, so nothing to rescan"
        );
        assert_eq!(decode_all(&future).as_slice(), &[Err(FrameError::Version(2))]);
    }
}
