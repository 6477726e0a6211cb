//! A minimal receiver: decodes fer-sensor's serial frames from stdin and prints them, the way a
//! microcontroller would with the same `Decoder` (which needs no allocator). On a host wired to
//! the sensor through a USB serial adapter:
//!
//!   stty -F /dev/ttyUSB0 115200 raw && cargo run -p fer-protocol --example receive < /dev/ttyUSB0
use std::io::Read;

use fer_protocol::Decoder;

fn main() {
    let mut decoder = Decoder::new();
    let mut lost = 0u32;
    let mut last: Option<u16> = None;
    for byte in std::io::stdin().lock().bytes() {
        let Ok(byte) = byte else { break };
        match decoder.push(byte) {
            Some(Ok(frame)) => {
                if let Some(previous) = last {
                    lost += u32::from(frame.sequence.wrapping_sub(previous).wrapping_sub(1));
                }
                last = Some(frame.sequence);
                let reading = frame.reading.name();
                println!(
                    "#{} {reading} ({:.2}), {} face(s), {lost} lost",
                    frame.sequence,
                    frame.probability(),
                    frame.faces
                );
            }
            Some(Err(e)) => eprintln!("bad frame: {e:?}"),
            None => {}
        }
    }
}
