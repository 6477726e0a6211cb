//! Face detection with MediaPipe's BlazeFace short-range model (models/blazeface): letterbox to
//! 128x128, decode the 896 SSD anchors, threshold the scores, weighted non-maximum suppression.
//! The signature and post-processing follow the model's README.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::U8x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Side of the detector's square input.
pub const SIDE: usize = 128;
/// Number of anchors the model predicts for.
pub const ANCHORS: usize = 896;
/// Values per anchor in `regressors`: box (4) and six key points (12).
const REGRESSORS: usize = 16;

/// A face in frame pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Face {
    /// Box centre x.
    pub cx: f32,
    /// Box centre y.
    pub cy: f32,
    /// Box width.
    pub width: f32,
    /// Box height.
    pub height: f32,
    /// Key points: right eye, left eye (as seen in the image: left, then right), nose tip, mouth
    /// centre, right ear tragion, left ear tragion.
    pub keypoints: [[f32; 2]; 6],
    /// Face score after the sigmoid, in [0, 1].
    pub score: f32,
}

impl Face {
    /// The same face moved by `(dx, dy)` pixels, key points included.
    pub fn shifted(&self, [dx, dy]: [f32; 2]) -> Self {
        Self {
            cx: self.cx + dx,
            cy: self.cy + dy,
            keypoints: self.keypoints.map(|[x, y]| [x + dx, y + dy]),
            ..*self
        }
    }

    /// Box area in square pixels.
    pub fn area(&self) -> f32 {
        self.width * self.height
    }

    /// Whether the box can be a face: finite, positive size, finite centre and key points (the
    /// regressors of an odd input can decode to anything).
    pub fn is_plausible(&self) -> bool {
        let finite = [self.cx, self.cy, self.width, self.height]
            .into_iter()
            .chain(self.keypoints.iter().flatten().copied())
            .all(f32::is_finite);
        finite && self.width > 0.0 && self.height > 0.0
    }

    /// Intersection over union of two boxes.
    pub fn iou(&self, other: &Face) -> f32 {
        let overlap = |c0: f32, s0: f32, c1: f32, s1: f32| {
            ((c0 + s0 / 2.0).min(c1 + s1 / 2.0) - (c0 - s0 / 2.0).max(c1 - s1 / 2.0)).max(0.0)
        };
        let inter =
            overlap(self.cx, self.width, other.cx, other.width) * overlap(self.cy, self.height, other.cy, other.height);
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// Detector settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectOptions {
    /// Minimum face score (after the sigmoid) to keep an anchor.
    pub score_threshold: f32,
    /// Anchors overlapping the best one by more than this IoU are merged into it.
    pub iou_threshold: f32,
    /// Run the detector on every N-th frame and carry the faces over the frames between (see
    /// [`Tracker`]); 1 detects on every frame.
    pub every_frames: u32,
}

impl Default for DetectOptions {
    /// MediaPipe's values for this model.
    fn default() -> Self {
        Self {
            score_threshold: 0.5,
            iou_threshold: 0.3,
            every_frames: 1,
        }
    }
}

/// The BlazeFace detector with its plan and anchors, built once.
pub struct Detector {
    plan: Arc<TypedRunnableModel>,
    anchors: Vec<[f32; 2]>,
    options: DetectOptions,
    /// The letterboxed input, reused for every frame: tract holds a reference only while it runs.
    input: Arc<Tensor>,
    /// Whether the network takes its input channels-first (its NHWC transpose folded away).
    planar: bool,
    /// The SIMD resizer and the shrunk frame's pixels, reused for every frame.
    resizer: Resizer,
    small: Vec<u8>,
}

/// Where the frame sits inside the square letterbox, to map boxes back.
#[derive(Clone, Copy, Debug)]
struct Letterbox {
    side: f32,
    pad_x: f32,
    pad_y: f32,
}

impl Detector {
    /// Loads the BlazeFace ONNX file.
    pub fn load(path: &Path, options: DetectOptions) -> Result<Self> {
        let bytes = crate::read_file(path, crate::MAX_MODEL_BYTES)
            .with_context(|| format!("reading the face detector {}", path.display()))?;
        Self::from_bytes(&bytes, options).with_context(|| format!("face detector {}", path.display()))
    }

    /// Loads the BlazeFace model from ONNX bytes and checks its signature.
    pub fn from_bytes(bytes: &[u8], options: DetectOptions) -> Result<Self> {
        let onnx = tract_onnx::onnx();
        let mut proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .context("loading the ONNX model")?;
        let planar = proto.graph.as_mut().is_some_and(fold_input_transpose);
        let shape = if planar { [1, 3, SIDE, SIDE] } else { [1, SIDE, SIDE, 3] };
        let model = onnx.model_for_proto_model(&proto).context("loading the ONNX model")?;
        // Checked before the input is pinned: another network fails deep in tract's analysis
        // with a message about unifying dimensions.
        let declared: Vec<Option<i64>> = model
            .input_fact(0)?
            .shape
            .dims()
            .map(|d| d.concretize().and_then(|d| d.as_i64()))
            .collect();
        let fits = |expected: [usize; 4]| {
            declared.len() == 4
                && declared
                    .iter()
                    .zip(expected)
                    .all(|(d, e)| d.is_none_or(|d| d == e as i64))
        };
        ensure!(
            fits([1, SIDE, SIDE, 3]) || fits([1, 3, SIDE, SIDE]),
            "not the BlazeFace short-range detector: its input is {}, BlazeFace's is 1x{SIDE}x{SIDE}x3 (RGB)",
            declared
                .iter()
                .map(|d| d.map_or("?".into(), |d| d.to_string()))
                .collect::<Vec<_>>()
                .join("x")
        );
        let model = model
            .with_input_fact(0, f32::fact(shape).into())?
            .into_optimized()
            .context("optimizing the face detector")?;
        let outputs: Vec<_> = model
            .output_outlets()?
            .iter()
            .map(|o| model.outlet_fact(*o).map(|f| f.shape.to_tvec()))
            .collect::<TractResult<_>>()?;
        ensure!(
            outputs.len() == 2
                && outputs[0]
                    .iter()
                    .map(tract_onnx::prelude::TDim::as_i64)
                    .collect::<Vec<_>>()
                    == [Some(1), Some(ANCHORS as i64), Some(REGRESSORS as i64)]
                && outputs[1]
                    .iter()
                    .map(tract_onnx::prelude::TDim::as_i64)
                    .collect::<Vec<_>>()
                    == [Some(1), Some(ANCHORS as i64), Some(1)],
            "not the BlazeFace short-range signature (outputs {outputs:?}, expected [1, 896, 16] and [1, 896, 1])"
        );
        Ok(Self {
            plan: model.into_runnable()?,
            anchors: anchors(),
            options,
            input: Arc::new(Tensor::zero::<f32>(&shape)?),
            planar,
            resizer: Resizer::new(),
            small: vec![0; SIDE * SIDE * 3],
        })
    }

    /// Faces in an RGB frame, best first, in frame pixels.
    pub fn detect(&mut self, frame: &RgbImage) -> Result<Vec<Face>> {
        let letterbox = self.letterbox(frame)?;
        let outputs = fer_runtime::run(&self.plan, tvec!(TValue::from_const(self.input.clone())))?;
        let regressors = outputs[0].try_as_plain_ram()?.as_slice::<f32>()?;
        let scores = outputs[1].try_as_plain_ram()?.as_slice::<f32>()?;
        Ok(self.decode(regressors, scores, letterbox))
    }

    /// Writes `frame`, letterboxed, into the network's input without running the network: the
    /// image work of [`Detector::detect`] alone, for benchmarks.
    pub fn prepare(&mut self, frame: &RgbImage) -> Result<()> {
        self.letterbox(frame).map(drop)
    }

    /// Where the detector's plan spends its time on `frame`, node by node, over `runs` runs.
    pub fn profile(&mut self, frame: &RgbImage, runs: usize) -> Result<Vec<fer_runtime::NodeTime>> {
        self.prepare(frame)?;
        fer_runtime::profile(&self.plan, tvec!(TValue::from_const(self.input.clone())), runs)
    }

    /// Pads the frame to a square, shrinks it to 128x128 and writes it into the input tensor.
    fn letterbox(&mut self, frame: &RgbImage) -> Result<Letterbox> {
        let (w, h) = frame.dimensions();
        ensure!(w > 0 && h > 0, "empty frame");
        let side = w.max(h) as f32;
        let scale = SIDE as f32 / side;
        let (sw, sh) = (
            ((w as f32 * scale).round() as u32).max(1),
            ((h as f32 * scale).round() as u32).max(1),
        );
        // One antialiased SIMD pass straight to the letterbox size: the triangle filter's support
        // grows with the shrink factor, so every frame pixel counts. Typed views, not
        // `Resizer::resize`: that one dispatches over all 13 pixel types, whose generic kernels
        // (times 60 fixed-point precisions each) would make most of this crate's compile time.
        let source = TypedImageRef::<U8x3>::from_buffer(w, h, frame.as_raw())?;
        let mut small = TypedImage::<U8x3>::from_buffer(sw, sh, &mut self.small)?;
        self.resizer.resize_typed(
            &source,
            &mut small,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )?;
        let (ox, oy) = ((SIDE - sw as usize) / 2, (SIDE - sh as usize) / 2);
        // The last run has returned, so the tensor is ours alone again (no copy).
        let mut view = Arc::make_mut(&mut self.input).try_as_plain_ram_mut()?;
        let input = view.as_slice_mut::<f32>()?;
        // Padding is black, which is -1 after scaling, as in MediaPipe's letterbox.
        input.fill(-1.0);
        let row = sw as usize * 3;
        let scaled = |p: u8| p as f32 / 127.5 - 1.0;
        for (y, pixels) in self.small[..row * sh as usize].chunks_exact(row).enumerate() {
            if self.planar {
                let at = (y + oy) * SIDE + ox;
                for (x, rgb) in pixels.chunks_exact(3).enumerate() {
                    for (c, &p) in rgb.iter().enumerate() {
                        input[c * SIDE * SIDE + at + x] = scaled(p);
                    }
                }
            } else {
                let at = ((y + oy) * SIDE + ox) * 3;
                for (value, &p) in input[at..at + row].iter_mut().zip(pixels) {
                    *value = scaled(p);
                }
            }
        }
        Ok(Letterbox {
            side,
            pad_x: ox as f32 / scale,
            pad_y: oy as f32 / scale,
        })
    }

    /// Turns raw outputs into faces: decode anchors above the threshold, then weighted NMS.
    fn decode(&self, regressors: &[f32], scores: &[f32], letterbox: Letterbox) -> Vec<Face> {
        let threshold = self.options.score_threshold;
        let to_frame = |x: f32, y: f32| {
            [
                x * letterbox.side - letterbox.pad_x,
                y * letterbox.side - letterbox.pad_y,
            ]
        };
        let mut candidates: Vec<Face> = self
            .anchors
            .iter()
            .enumerate()
            .filter_map(|(i, &[ax, ay])| {
                let score = sigmoid(scores[i].clamp(-80.0, 80.0));
                if score < threshold {
                    return None;
                }
                let r = &regressors[i * REGRESSORS..(i + 1) * REGRESSORS];
                let [cx, cy] = to_frame(ax + r[0] / SIDE as f32, ay + r[1] / SIDE as f32);
                let mut keypoints = [[0.0; 2]; 6];
                for (k, kp) in keypoints.iter_mut().enumerate() {
                    *kp = to_frame(ax + r[4 + 2 * k] / SIDE as f32, ay + r[5 + 2 * k] / SIDE as f32);
                }
                let scale = letterbox.side / SIDE as f32;
                Some(Face {
                    cx,
                    cy,
                    width: r[2] * scale,
                    height: r[3] * scale,
                    keypoints,
                    score,
                })
            })
            .filter(Face::is_plausible)
            .collect();
        weighted_nms(&mut candidates, self.options.iou_threshold)
    }
}

/// Carries faces over the frames between two detections: each face found by the detector moves on
/// at the velocity it had since the detection before (matched by nearest centre), so a face
/// walking across the view stays under its box. Detection is what costs; moving a box is free.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    every: u32,
    /// Frames since the last detection; `None` before the first one or after a reset.
    age: Option<u32>,
    /// The last detection's faces and their velocities in pixels per frame.
    faces: Vec<(Face, [f32; 2])>,
}

impl Tracker {
    /// A tracker that asks for a detection every `every` frames (at least 1).
    pub fn new(every: u32) -> Self {
        Self {
            every: every.max(1),
            ..Self::default()
        }
    }

    /// The faces carried onto this frame, or `None` when this frame needs a detection.
    pub fn predict(&mut self) -> Option<Vec<Face>> {
        let age = self.age.filter(|age| age + 1 < self.every)? + 1;
        self.age = Some(age);
        Some(
            self.faces
                .iter()
                .map(|(face, [vx, vy])| face.shifted([vx * age as f32, vy * age as f32]))
                .collect(),
        )
    }

    /// Takes the faces detected on this frame.
    pub fn detected(&mut self, faces: &[Face]) {
        let gap = self.age.map_or(0, |age| age + 1) as f32;
        let velocity = |face: &Face| {
            let near = self
                .faces
                .iter()
                .map(|(before, _)| (before, (face.cx - before.cx).hypot(face.cy - before.cy)))
                .filter(|(before, distance)| *distance < face.width.max(before.width))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            match near {
                Some((before, _)) if gap > 0.0 => [(face.cx - before.cx) / gap, (face.cy - before.cy) / gap],
                _ => [0.0, 0.0],
            }
        };
        self.faces = faces.iter().map(|face| (*face, velocity(face))).collect();
        self.age = Some(0);
    }

    /// Forgets every face: the next frame is detected and nothing moves on from before.
    pub fn reset(&mut self) {
        self.age = None;
        self.faces.clear();
    }
}

/// Removes the NHWC → NCHW `Transpose` that the TFLite conversion puts on the graph's input, so
/// that the letterbox writes channels-first itself: tract would otherwise copy the whole input
/// through a transpose on every frame. Returns whether it did (the graph is left alone unless the
/// input feeds that one transpose and nothing else).
fn fold_input_transpose(graph: &mut tract_onnx::pb::GraphProto) -> bool {
    let Some(input) = graph.input.first().map(|i| i.name.clone()) else {
        return false;
    };
    let mut readers = graph.node.iter().enumerate().filter(|(_, n)| n.input.contains(&input));
    let (Some((at, node)), None) = (readers.next(), readers.next()) else {
        return false;
    };
    let nhwc_to_nchw = node.op_type == "Transpose"
        && node.input.len() == 1
        && node.output.len() == 1
        && node
            .attribute
            .iter()
            .any(|a| a.name == "perm" && a.ints == [0, 3, 1, 2]);
    if !nhwc_to_nchw || graph.output.iter().any(|o| o.name == node.output[0]) {
        return false;
    }
    let transposed = graph.node.remove(at).output.remove(0);
    for name in graph.node.iter_mut().flat_map(|n| n.input.iter_mut()) {
        if *name == transposed {
            name.clone_from(&input);
        }
    }
    true
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// MediaPipe's short-range SSD anchors: a 16x16 grid with 2 anchors per cell, then an 8x8 grid
/// with 6 per cell (strides 8, 16, 16, 16 with the three stride-16 layers sharing one grid);
/// centres at cell middles in [0, 1].
pub fn anchors() -> Vec<[f32; 2]> {
    let mut anchors = Vec::with_capacity(ANCHORS);
    for (grid, per_cell) in [(16, 2), (8, 6)] {
        for y in 0..grid {
            for x in 0..grid {
                let centre = [(x as f32 + 0.5) / grid as f32, (y as f32 + 0.5) / grid as f32];
                anchors.extend(std::iter::repeat_n(centre, per_cell));
            }
        }
    }
    anchors
}

/// Weighted non-maximum suppression: the best remaining face absorbs every face overlapping it
/// by more than `iou_threshold`, and its box and key points become their score-weighted average.
/// Returns faces best first.
pub fn weighted_nms(candidates: &mut Vec<Face>, iou_threshold: f32) -> Vec<Face> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut faces = Vec::new();
    // The best face always leaves the candidates with its cluster, so every pass removes at
    // least one and the loop ends, even for a box that does not overlap itself (zero or NaN
    // size) or a threshold no overlap exceeds.
    while !candidates.is_empty() {
        let best = candidates.remove(0);
        let (mut cluster, rest): (Vec<Face>, Vec<Face>) =
            candidates.drain(..).partition(|f| f.iou(&best) > iou_threshold);
        cluster.insert(0, best);
        *candidates = rest;
        let total: f32 = cluster.iter().map(|f| f.score).sum();
        let mut merged = Face {
            score: best.score,
            cx: 0.0,
            cy: 0.0,
            width: 0.0,
            height: 0.0,
            keypoints: [[0.0; 2]; 6],
        };
        for f in &cluster {
            let w = f.score / total;
            merged.cx += w * f.cx;
            merged.cy += w * f.cy;
            merged.width += w * f.width;
            merged.height += w * f.height;
            for (m, k) in merged.keypoints.iter_mut().zip(&f.keypoints) {
                m[0] += w * k[0];
                m[1] += w * k[1];
            }
        }
        faces.push(merged);
    }
    faces
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto, ValueInfoProto};

    fn node(op: &str, inputs: &[&str], output: &str, perm: &[i64]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(std::string::ToString::to_string).collect(),
            output: vec![output.into()],
            attribute: vec![AttributeProto {
                name: "perm".into(),
                ints: perm.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn graph(nodes: Vec<NodeProto>) -> GraphProto {
        let value = |name: &str| ValueInfoProto {
            name: name.into(),
            ..Default::default()
        };
        GraphProto {
            node: nodes,
            input: vec![value("input")],
            output: vec![value("out")],
            ..Default::default()
        }
    }

    #[test]
    fn the_input_transpose_is_folded_only_where_it_alone_reads_the_input() {
        let nchw = [0, 3, 1, 2];
        let mut g = graph(vec![
            node("Transpose", &["input"], "t", &nchw),
            node("Conv", &["t", "w"], "out", &[]),
        ]);
        assert!(fold_input_transpose(&mut g));
        assert_eq!(g.node.len(), 1);
        assert_eq!(g.node[0].input, ["input", "w"]);

        let mut other_perm = graph(vec![
            node("Transpose", &["input"], "t", &[0, 2, 3, 1]),
            node("Conv", &["t"], "out", &[]),
        ]);
        let mut two_readers = graph(vec![
            node("Transpose", &["input"], "t", &nchw),
            node("Add", &["t", "input"], "out", &[]),
        ]);
        let mut not_a_transpose = graph(vec![node("Relu", &["input"], "out", &nchw)]);
        for g in [&mut other_perm, &mut two_readers, &mut not_a_transpose] {
            let before = g.clone();
            assert!(!fold_input_transpose(g));
            assert_eq!(*g, before);
        }
    }

    #[test]
    fn the_shipped_detector_takes_its_input_channels_first() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/blazeface/face_detection_short_range.onnx");
        assert!(Detector::load(&path, DetectOptions::default()).unwrap().planar);
    }

    fn face(cx: f32, cy: f32, side: f32, score: f32) -> Face {
        Face {
            cx,
            cy,
            width: side,
            height: side,
            keypoints: [[cx, cy]; 6],
            score,
        }
    }

    #[test]
    fn the_tracker_detects_every_nth_frame_and_moves_faces_at_their_speed_between() {
        let mut every = Tracker::new(1);
        assert!(every.predict().is_none());
        every.detected(&[face(100.0, 100.0, 50.0, 0.9)]);
        assert!(every.predict().is_none(), "every frame is detected");

        let mut tracker = Tracker::new(3);
        assert!(tracker.predict().is_none(), "the first frame is detected");
        let (walker, stranger) = (face(100.0, 100.0, 50.0, 0.9), face(400.0, 100.0, 50.0, 0.8));
        tracker.detected(&[walker, stranger]);
        // Nothing known about speed yet: the faces stay where they were found.
        assert_eq!(tracker.predict().unwrap(), [walker, stranger]);
        assert_eq!(tracker.predict().unwrap(), [walker, stranger]);
        assert!(tracker.predict().is_none(), "the third frame is detected");
        // 3 frames later the walker is 30 px right and 15 px down; the stranger left and a new
        // face far from both arrived: neither of those has a speed.
        let (walked, newcomer) = (walker.shifted([30.0, 15.0]), face(250.0, 300.0, 40.0, 0.7));
        tracker.detected(&[walked, newcomer]);
        let next = tracker.predict().unwrap();
        assert_eq!(next, [walked.shifted([10.0, 5.0]), newcomer]);
        assert_eq!(next[0].keypoints[0], [140.0, 120.0], "key points move with the box");
        assert_eq!(tracker.predict().unwrap()[0], walked.shifted([20.0, 10.0]));
        assert!(tracker.predict().is_none());

        tracker.reset();
        assert!(tracker.predict().is_none(), "after a reset the next frame is detected");
        tracker.detected(&[walked.shifted([90.0, 0.0])]);
        assert_eq!(
            tracker.predict().unwrap()[0],
            walked.shifted([90.0, 0.0]),
            "no speed across a reset"
        );
    }

    #[test]
    fn anchors_follow_the_short_range_layout() {
        let a = anchors();
        assert_eq!(a.len(), ANCHORS);
        assert_eq!(a[0], [0.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[1], a[0]);
        assert_eq!(a[512], [0.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[895], [7.5 / 8.0, 7.5 / 8.0]);
    }

    #[test]
    fn iou_of_identical_disjoint_and_half_overlapping_boxes() {
        let a = face(10.0, 10.0, 10.0, 1.0);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&face(100.0, 100.0, 10.0, 1.0)), 0.0);
        // Shifted by half a side: intersection 50, union 150.
        assert!((a.iou(&face(15.0, 10.0, 10.0, 1.0)) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn degenerate_boxes_are_not_faces() {
        assert!(face(10.0, 10.0, 4.0, 0.9).is_plausible());
        assert!(!face(10.0, 10.0, 0.0, 0.9).is_plausible());
        assert!(!face(10.0, 10.0, -3.0, 0.9).is_plausible());
        assert!(!face(f32::NAN, 10.0, 4.0, 0.9).is_plausible());
        let mut odd = face(10.0, 10.0, 4.0, 0.9);
        odd.keypoints[3][1] = f32::INFINITY;
        assert!(!odd.is_plausible());
    }

    #[test]
    fn weighted_nms_ends_whatever_the_boxes_and_threshold() {
        // A zero-size box overlaps nothing, not even itself; at a threshold of 1 no box overlaps
        // even itself "by more than" the threshold. Each face must still leave the candidates
        // once, so NMS returns one face per candidate instead of looping forever.
        let degenerate = face(10.0, 10.0, 0.0, 0.9);
        let mut candidates = vec![degenerate, face(10.0, 10.0, 10.0, 0.8), face(10.0, 10.0, 10.0, 0.7)];
        let faces = weighted_nms(&mut candidates, 0.3);
        assert_eq!(
            faces.len(),
            2,
            "the degenerate box alone, then the two identical boxes merged"
        );
        let mut candidates = vec![face(10.0, 10.0, 10.0, 0.8), face(10.0, 10.0, 10.0, 0.7)];
        assert_eq!(weighted_nms(&mut candidates, 1.0).len(), 2);
        let nan = Face {
            width: f32::NAN,
            ..face(5.0, 5.0, 10.0, 0.5)
        };
        let mut candidates = vec![nan, face(5.0, 5.0, 10.0, 0.4)];
        assert_eq!(weighted_nms(&mut candidates, 0.3).len(), 2);
    }

    #[test]
    fn weighted_nms_averages_overlapping_boxes_by_score_and_keeps_separate_faces() {
        let mut candidates = vec![
            face(10.0, 10.0, 10.0, 0.9),
            face(100.0, 50.0, 20.0, 0.6),
            face(11.0, 10.0, 10.0, 0.3),
        ];
        let faces = weighted_nms(&mut candidates, 0.3);
        assert_eq!(faces.len(), 2);
        assert_eq!(faces[0].score, 0.9);
        assert!((faces[0].cx - (0.9 * 10.0 + 0.3 * 11.0) / 1.2).abs() < 1e-5);
        assert!((faces[0].keypoints[0][0] - faces[0].cx).abs() < 1e-5);
        assert_eq!(faces[1].cx, 100.0);
    }
}
