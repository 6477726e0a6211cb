//! The frame decoder survives garbage, arbitrary bytes and byte-by-byte delivery.

use fer_protocol::Expression;
use fer_protocol::wire::{Decoder, FRAME_LEN, Frame, Reading, START};
use proptest::prelude::*;

fn frames() -> impl Strategy<Value = Vec<Frame>> {
    let reading = prop_oneof![
        (0..Expression::COUNT).prop_map(|i| Reading::Expression(Expression::from_index(i).unwrap())),
        Just(Reading::Uncertain),
        Just(Reading::NoFace),
    ];
    prop::collection::vec(
        (any::<u16>(), reading, any::<u8>(), any::<u8>()).prop_map(|(sequence, reading, confidence, faces)| Frame {
            sequence,
            reading,
            confidence,
            faces,
        }),
        1..8,
    )
}

/// Any byte but the start byte, drawn uniformly without rejection (a filter rejects 1 byte in 256,
/// which at hundreds of thousands of cases exhausts proptest's limit on local rejections).
fn not_start() -> impl Strategy<Value = u8> {
    (0..u8::MAX).prop_map(|b| if b >= START { b + 1 } else { b })
}

proptest! {
    /// Frames separated by noise (which may hold start-byte look-alikes only as part of real
    /// frames) all come out, in order, whatever the read sizes.
    #[test]
    fn every_frame_survives_noise(
        sent in frames(),
        noise in prop::collection::vec(prop::collection::vec(not_start(), 0..20), 8),
    ) {
        let mut stream = Vec::new();
        for (frame, noise) in sent.iter().zip(&noise) {
            stream.extend_from_slice(noise);
            stream.extend_from_slice(&frame.encode());
        }
        let mut decoder = Decoder::new();
        let received: Vec<Frame> = stream.iter().filter_map(|&b| decoder.push(b)).map(Result::unwrap).collect();
        prop_assert_eq!(received, sent);
    }

    /// Truncated frames followed by whole ones: the whole ones still decode. Left out: a cut-off
    /// frame whose first nine bytes with the next frame's pass the CRC (1 in 65,536) and decode,
    /// which no decoder without lookahead can tell from a real frame; one that passes the CRC but
    /// does not decode stays in.
    #[test]
    fn truncated_frames_do_not_swallow_the_next(sent in frames(), cut in 1usize..8) {
        let mut stream = Vec::new();
        for frame in &sent {
            let mut window = [0; FRAME_LEN];
            window[..cut].copy_from_slice(&frame.encode()[..cut]);
            window[cut..].copy_from_slice(&frame.encode()[..FRAME_LEN - cut]);
            prop_assume!(Frame::decode(&window).is_err());
            stream.extend_from_slice(&frame.encode()[..cut]);
            stream.extend_from_slice(&frame.encode());
        }
        let mut decoder = Decoder::new();
        let received: Vec<Frame> = stream.iter().filter_map(|&b| decoder.push(b)).filter_map(Result::ok).collect();
        prop_assert_eq!(received, sent);
    }

    /// Arbitrary bytes: every frame the decoder returns is the last nine bytes it was given and
    /// re-encodes to them, and every byte is accounted for (skipped, in a returned frame or
    /// error, or at most a frame's worth still buffered).
    #[test]
    fn arbitrary_bytes_give_only_real_frames_and_every_byte_is_counted(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut decoder = Decoder::new();
        let mut emitted = 0u32;
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(result) = decoder.push(b) {
                emitted += 1;
                prop_assert!(i + 1 >= FRAME_LEN, "a frame before nine bytes arrived");
                let last: &[u8] = &bytes[i + 1 - FRAME_LEN..=i];
                prop_assert_eq!(last[0], START);
                if let Ok(frame) = result {
                    prop_assert_eq!(&frame.encode()[..], last);
                }
            }
            let accounted = decoder.skipped + emitted * FRAME_LEN as u32;
            let given = i as u32 + 1;
            prop_assert!(accounted <= given && given - accounted < FRAME_LEN as u32,
                "{given} bytes given, {accounted} accounted for");
        }
    }
}
