//! The one tract wrapper, shared by `fer-export`, `fer-sensor` and the golden tests: load an ONNX
//! classifier, read what it says about itself (its metadata, checked against the fer contract on
//! request), check what its graph computes (the contract's three outputs, by name and shape),
//! build the optimized plan for one face and run it. No Burn, no camera, no GPIO: it builds for
//! every device target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fer_protocol::contract::{self, ModelInfo};
use fer_protocol::golden::ModelOutputs;
use fer_protocol::{Expression, INPUT};
use tract_onnx::prelude::*;

/// What tract's ONNX loader calls a model's `metadata_props` entries.
const METADATA_PREFIX: &str = "onnx.metadata_props.";

/// The model input's shape: one face.
const SHAPE: [usize; 4] = [1, INPUT.channels, INPUT.height, INPUT.width];

/// A classifier's optimized tract plan for one face at a time (batch 1, fixed shape), with its
/// metadata; the input tensor is reused for every face so the hot path does not allocate it.
pub struct Plan {
    plan: Arc<TypedRunnableModel>,
    input: Tensor,
    metadata: BTreeMap<String, String>,
}

impl Plan {
    /// Loads an ONNX model, fixes its input to one face, optimizes it and checks that its outputs
    /// are the contract's (see [`Plan::contract`] for its metadata).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::load(bytes, false).map(|(plan, _)| plan)
    }

    /// Like [`Plan::from_bytes`], but checks the metadata against the fer contract first, before
    /// the optimization: a model that is no fer classifier at all is refused as such.
    pub fn with_contract(bytes: &[u8]) -> Result<(Self, ModelInfo)> {
        Self::load(bytes, true).map(|(plan, info)| (plan, info.expect("checked")))
    }

    fn load(bytes: &[u8], check_contract: bool) -> Result<(Self, Option<ModelInfo>)> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .context("loading the ONNX model")?;
        let mut metadata = BTreeMap::new();
        for (key, value) in &model.properties {
            if let Some(key) = key.strip_prefix(METADATA_PREFIX) {
                metadata.insert(
                    key.to_string(),
                    value.try_as_plain_ram()?.to_scalar::<String>()?.clone(),
                );
            }
        }
        let info = match check_contract {
            true => Some(contract::check(&metadata).context("the model breaks the fer contract")?),
            false => None,
        };
        let model = model
            .with_input_fact(0, f32::fact(SHAPE).into())?
            .into_optimized()
            .context("optimizing the model")?;
        check_outputs(&model).context("the model breaks the fer contract")?;
        let plan = Self {
            plan: model.into_runnable()?,
            input: Tensor::zero::<f32>(&SHAPE)?,
            metadata,
        };
        Ok((plan, info))
    }

    /// The model's `metadata_props`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// What the model says about itself, checked against the fer contract.
    pub fn contract(&self) -> Result<ModelInfo> {
        contract::check(&self.metadata).context("the model breaks the fer contract")
    }

    /// Runs the plan on one preprocessed face ([`INPUT`]`.len()` values); the outputs in contract
    /// order (logits, embedding, center distances).
    pub fn run(&mut self, input: &[f32]) -> Result<TVec<TValue>> {
        ensure!(
            input.len() == INPUT.len(),
            "input has {} values, expected {}",
            input.len(),
            INPUT.len()
        );
        self.input
            .try_as_plain_ram_mut()?
            .as_slice_mut::<f32>()?
            .copy_from_slice(input);
        run(&self.plan, tvec!(self.input.clone().into()))
    }

    /// The three outputs for one preprocessed face, copied out.
    pub fn outputs(&mut self, input: &[f32]) -> Result<ModelOutputs> {
        let outputs = self.run(input)?;
        let values = |i: usize| -> Result<Vec<f32>> { Ok(outputs[i].try_as_plain_ram()?.as_slice::<f32>()?.to_vec()) };
        Ok(ModelOutputs {
            logits: values(0)?,
            embedding: values(1)?,
            center_distances: values(2)?,
        })
    }

    /// The ops of the optimized plan, each with the kernel details tract gives (e.g. which
    /// matrix-multiply kernels it chose).
    pub fn plan_ops(&self) -> Vec<String> {
        self.plan
            .model()
            .nodes()
            .iter()
            .map(|n| format!("{} {}", n.op().name(), n.op().info().unwrap_or_default().join(" ")))
            .collect()
    }

    /// The matrix-multiply kernel of every op that names one, in plan order, as tract prints it
    /// (`... with [arm64simd_mmm_f32_16x4_gen]`): which SIMD code this CPU runs.
    pub fn kernels(&self) -> Vec<String> {
        self.plan_ops()
            .iter()
            .filter_map(|op| op.split(" with [").nth(1)?.split(']').next().map(str::to_string))
            .collect()
    }

    /// Each node's share of `runs` runs on one face: where the plan spends its time.
    pub fn profile(&mut self, input: &[f32], runs: usize) -> Result<Vec<NodeTime>> {
        self.run(input)?;
        profile(&self.plan, tvec!(self.input.clone().into()), runs)
    }

    /// How often each op occurs in the optimized plan (e.g. whether the int8 convs stayed integer).
    pub fn op_census(&self) -> Vec<(String, usize)> {
        let mut counts = BTreeMap::new();
        for node in self.plan.model().nodes() {
            *counts.entry(node.op().name().to_string()).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }
}

/// One node of an optimized plan and the time spent evaluating it.
#[derive(Clone, Debug)]
pub struct NodeTime {
    /// The node's name in the graph.
    pub name: String,
    /// The op and what tract says about it (e.g. the matrix-multiply kernel it chose).
    pub op: String,
    /// Mean time per run.
    pub time: Duration,
}

/// Runs `plan` `runs` times (after one warm-up run) on `inputs` and times every node's
/// evaluation; the nodes come back slowest first. Any tract plan works: the classifier's and the
/// face detector's.
pub fn profile(plan: &Arc<TypedRunnableModel>, inputs: TVec<TValue>, runs: usize) -> Result<Vec<NodeTime>> {
    let model = plan.model();
    let mut totals = vec![Duration::ZERO; model.nodes().len()];
    let mut state = TypedSimpleState::new(plan)?;
    state.run(inputs.clone())?;
    for _ in 0..runs.max(1) {
        state.run_plan_with_eval(inputs.clone(), |ctx, op_state, node, node_inputs| {
            let start = Instant::now();
            let outputs = tract_onnx::tract_core::plan::eval(ctx, op_state, node, node_inputs);
            totals[node.id] += start.elapsed();
            outputs
        })?;
    }
    let mut nodes: Vec<NodeTime> = model
        .nodes()
        .iter()
        .zip(totals)
        .map(|(node, total)| NodeTime {
            name: node.name.clone(),
            op: format!(
                "{} {}",
                node.op().name(),
                node.op().info().unwrap_or_default().join(" ")
            ),
            time: total / runs.max(1) as u32,
        })
        .collect();
    nodes.sort_by_key(|n| std::cmp::Reverse(n.time));
    Ok(nodes)
}

/// Runs a tract plan, then clears the upper halves of the vector registers (`vzeroupper`) on x86.
///
/// tract's AVX2 and AVX-512 kernels return with those halves in use. The scalar code that follows
/// a network on the frame path (ours is built for baseline x86-64, in the legacy SSE encoding)
/// then ran about twice as slow: cutting the face crop took 1.87 ms right after a network and
/// 0.95 ms after `vzeroupper` (docs/sensor.md, "After every network: `vzeroupper`"). Every tract
/// run in the project goes
/// through here.
pub fn run(plan: &Arc<TypedRunnableModel>, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
    let outputs = plan.run(inputs);
    clear_upper_vector_state();
    outputs
}

/// `vzeroupper` on an x86-64 CPU with AVX; nothing anywhere else.
pub fn clear_upper_vector_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked just above.
        unsafe { zero_upper() }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn zero_upper() {
    std::arch::x86_64::_mm256_zeroupper();
}

/// An ONNX model as a typed, unoptimized tract graph with the input fixed to one face: for
/// callers that change its outputs first (calibration exposes inner tensors).
pub fn typed_model(bytes: &[u8]) -> Result<TypedModel> {
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .context("tract cannot load the ONNX model")?
        .with_input_fact(0, f32::fact(SHAPE).into())?
        .into_typed()
        .context("tract cannot type the ONNX model")
}

/// One preprocessed face ([`INPUT`]`.len()` values) as the model's `[1, C, H, W]` input tensor.
pub fn input_tensor(input: &[f32]) -> Result<Tensor> {
    ensure!(
        input.len() == INPUT.len(),
        "input has {} values, expected {}",
        input.len(),
        INPUT.len()
    );
    Ok(tract_ndarray::Array4::from_shape_vec(SHAPE, input.to_vec())?.into())
}

/// The graph's outputs as the contract names them: logits `[1, 7]`, an embedding `[1, D]` and
/// center distances `[1, 7]`. The metadata alone does not say what the graph computes.
fn check_outputs(model: &TypedModel) -> Result<()> {
    let outlets = model.output_outlets()?;
    let names: Vec<&str> = outlets
        .iter()
        .map(|&o| model.outlet_label(o).unwrap_or(&model.node(o.node).name))
        .collect();
    ensure!(
        names == contract::OUTPUTS,
        "its outputs are {names:?}, the contract names {:?}",
        contract::OUTPUTS
    );
    for (&outlet, (name, classes)) in
        outlets.iter().zip(
            contract::OUTPUTS
                .iter()
                .zip([Some(Expression::COUNT), None, Some(Expression::COUNT)]),
        )
    {
        let shape = model.outlet_fact(outlet)?.shape.as_concrete().map(<[usize]>::to_vec);
        let fits = match &shape {
            Some(dims) => dims.len() == 2 && dims[0] == 1 && classes.is_none_or(|k| dims[1] == k),
            None => false,
        };
        ensure!(
            fits,
            "output `{name}` has shape {shape:?}, expected [1, {}]",
            classes.map_or("D".to_string(), |k| k.to_string())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_whose_outputs_break_the_contract_is_refused_at_load() {
        use prost::Message;
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fer.f32.onnx")).unwrap();
        let plan = Plan::from_bytes(&bytes).unwrap();
        assert!(plan.contract().is_ok());
        assert!(Plan::with_contract(&bytes).is_ok());
        let refused = |change: &dyn Fn(&mut tract_onnx::pb::GraphProto)| {
            let mut model = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
            change(model.graph.as_mut().unwrap());
            let error = Plan::from_bytes(&model.encode_to_vec()).err().expect("refused");
            format!("{error:#}")
        };
        // Two outputs, not three: classifying would read past the end.
        let error = refused(&|g| {
            g.output.pop();
        });
        assert!(error.contains("its outputs are"), "{error}");
        // The right outputs in the wrong order: distances would be read as the embedding.
        let error = refused(&|g| g.output.swap(1, 2));
        assert!(error.contains("its outputs are"), "{error}");
    }
}
