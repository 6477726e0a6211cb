//! Publishers: where the sensor's decisions go (GPIO pins, a serial line, stdout), any
//! combination, behind one trait.

pub mod gpio;
pub mod serial;

use std::io::Write;

use anyhow::Result;
use fer_protocol::{Frame, Reading};
use serde::Serialize;

use crate::decide::Decision;

/// One frame's published decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Frame counter since start.
    pub sequence: u64,
    /// Milliseconds since start.
    pub time_ms: u64,
    /// Where the frame came from (file name, camera path, "stdin").
    pub source: String,
    /// The decision.
    pub decision: Decision,
}

impl Event {
    /// The serial wire frame of this event (sequence wraps at 16 bits, confidence in 1/255).
    pub fn frame(&self) -> Frame {
        Frame {
            sequence: self.sequence as u16,
            reading: self.decision.reading,
            confidence: (self.decision.confidence.clamp(0.0, 1.0) * 255.0).round() as u8,
            faces: self.decision.faces.min(u8::MAX as usize) as u8,
        }
    }

    /// The event as one line of JSON (no newline).
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Face {
            x: f32,
            y: f32,
            width: f32,
            height: f32,
            score: f32,
        }
        #[derive(Serialize)]
        struct Line<'a> {
            sequence: u64,
            time_ms: u64,
            source: &'a str,
            reading: &'static str,
            confidence: f32,
            faces: usize,
            changed: bool,
            face: Option<Face>,
        }
        let d = &self.decision;
        let line = Line {
            sequence: self.sequence,
            time_ms: self.time_ms,
            source: &self.source,
            reading: reading_name(d.reading),
            confidence: (d.confidence * 1000.0).round() / 1000.0,
            faces: d.faces,
            changed: d.changed,
            face: d.face.map(|f| Face {
                x: (f.cx - f.width / 2.0).round(),
                y: (f.cy - f.height / 2.0).round(),
                width: f.width.round(),
                height: f.height.round(),
                score: (f.score * 1000.0).round() / 1000.0,
            }),
        };
        serde_json::to_string(&line).expect("a plain struct serializes")
    }
}

/// The name of a reading in JSON and logs: an expression's name, `uncertain` or `no_face`.
pub fn reading_name(reading: Reading) -> &'static str {
    match reading {
        Reading::Expression(e) => e.name(),
        Reading::Uncertain => "uncertain",
        Reading::NoFace => "no_face",
    }
}

/// Somewhere decisions go.
pub trait Publisher {
    /// A short name for logs.
    fn name(&self) -> String;
    /// Publishes one frame's decision.
    fn publish(&mut self, event: &Event) -> Result<()>;
    /// Returns outputs to their idle state; called once on exit, also after an error.
    fn shutdown(&mut self) -> Result<()> {
        Ok(())
    }
}

/// JSON lines on a writer (stdout in the sensor): one per change, or one per frame.
pub struct JsonLines<W: Write> {
    out: W,
    every_frame: bool,
    label: String,
}

impl<W: Write> JsonLines<W> {
    /// Writes to `out`; `label` names it in logs.
    pub fn new(out: W, every_frame: bool, label: &str) -> Self {
        Self {
            out,
            every_frame,
            label: label.to_string(),
        }
    }
}

impl<W: Write> Publisher for JsonLines<W> {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn publish(&mut self, event: &Event) -> Result<()> {
        if self.every_frame || event.decision.changed {
            writeln!(self.out, "{}", event.json())?;
            self.out.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use fer_protocol::Expression;

    use super::*;

    pub(crate) fn event(sequence: u64, reading: Reading, changed: bool) -> Event {
        Event {
            sequence,
            time_ms: 40 * sequence,
            source: "frame.jpg".into(),
            decision: Decision {
                reading,
                confidence: 0.8,
                faces: 1,
                face: None,
                changed,
            },
        }
    }

    #[test]
    fn json_lines_only_on_change_unless_every_frame() {
        let mut changes = JsonLines::new(Vec::new(), false, "test");
        let mut all = JsonLines::new(Vec::new(), true, "test");
        for (i, changed) in [true, false, false, true].into_iter().enumerate() {
            let e = event(i as u64, Reading::Expression(Expression::Happiness), changed);
            changes.publish(&e).unwrap();
            all.publish(&e).unwrap();
        }
        let text = String::from_utf8(changes.out).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(String::from_utf8(all.out).unwrap().lines().count(), 4);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["reading"], "happiness");
        assert_eq!(first["confidence"], 0.8);
        assert_eq!(first["face"], serde_json::Value::Null);
    }

    #[test]
    fn wire_frame_carries_the_decision() {
        let mut e = event(65_537, Reading::Uncertain, true);
        e.decision.faces = 300;
        let f = e.frame();
        assert_eq!(
            (f.sequence, f.reading, f.confidence, f.faces),
            (1, Reading::Uncertain, 204, 255)
        );
    }
}
