//! An exponential moving average of the weights (Polyak averaging): after every step, each
//! weight and each BatchNorm running statistic of the average moves a little towards the trained
//! model's. The average is the model a run reports and ships; the trained model goes on learning.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::model::{ExpressionNet, NetworkConfig};

/// The averaged weights, as a model of their own on the plain (inference) device.
#[derive(Clone)]
pub struct Ema {
    decay: f64,
    steps: u64,
    model: ExpressionNet,
}

impl Ema {
    /// Starts the average at `model`'s weights, `steps` optimisation steps into the run (0 for
    /// a new run; a resumed run passes the steps done, so the warm-up continues where it was).
    pub fn start(model: &ExpressionNet, network: &NetworkConfig, decay: f64, steps: u64) -> Self {
        Self {
            decay,
            steps,
            model: detached_copy(model, network),
        }
    }

    /// Moves the average towards `model`'s weights by one step.
    pub fn update(&mut self, model: &ExpressionNet) {
        // Early on the weights change fast and the average would lag far behind them: the
        // usual warm-up lets the decay grow from 0.1 towards its setting.
        let decay = self.decay.min((1 + self.steps) as f64 / (10 + self.steps) as f64);
        self.steps += 1;
        let mut current = Collect::default();
        model.valid().visit(&mut current);
        let mut blend = Blend {
            current: current.0.into_iter(),
            keep: decay as f32,
        };
        self.model = self.model.clone().map(&mut blend);
        assert!(
            blend.current.next().is_none(),
            "the average has the model's architecture"
        );
    }

    /// The averaged model.
    pub fn model(&self) -> &ExpressionNet {
        &self.model
    }

    /// Replaces the averaged weights with `model`'s (read back from a checkpoint).
    pub fn with_weights(self, model: ExpressionNet) -> Self {
        Self { model, ..self }
    }
}

/// A copy of `model` on the plain device that shares nothing with it: the BatchNorm running
/// statistics of a clone are shared, and the average must not move the trained model's.
fn detached_copy(model: &ExpressionNet, network: &NetworkConfig) -> ExpressionNet {
    let plain = model.valid();
    let device = plain.devices().into_iter().next().unwrap_or_default();
    ExpressionNet::new(network, &device).load_record(plain.into_record())
}

/// Every float tensor of a module (weights and running statistics), flattened, in the order in
/// which a visit and a map both walk it. Matched by position, not by `ParamId`: a module rebuilt
/// from a record (the average's start, a resumed checkpoint) keeps its weights' ids but gives its
/// BatchNorm running statistics new ones, which left the average's statistics at their initial
/// values.
#[derive(Default)]
struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().detach().flatten(0, D - 1));
    }
}

/// `average = keep · average + (1 − keep) · current`, tensor by tensor in walk order.
struct Blend {
    current: std::vec::IntoIter<Tensor<1>>,
    keep: f32,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let current = self.current.next().expect("the average has the model's architecture");
        let keep = self.keep;
        param.map(|average| {
            let shape = average.shape();
            average * keep + current.reshape(shape) * (1.0 - keep)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_follows_the_model_by_its_decay_and_leaves_the_model_alone() {
        let device = Device::flex();
        let network = NetworkConfig::tiny();
        let a = ExpressionNet::new(&network, &device);
        let centers = |m: &ExpressionNet| m.centers.val().into_data().try_to_vec::<f32>().unwrap();
        let mut ema = Ema::start(&a, &network, 0.5, 1000);
        assert_eq!(centers(ema.model()), centers(&a));
        // A model whose centers moved by +1: the average moves half way (decay 0.5).
        let moved = a.clone().map(&mut Shift(1.0));
        ema.update(&moved);
        let (before, after) = (centers(&a), centers(ema.model()));
        for (x, y) in before.iter().zip(&after) {
            assert!((y - (x + 0.5)).abs() < 1e-5, "{x} → {y}");
        }
        assert_eq!(centers(&a), before, "the trained model is untouched");
    }

    /// Every float tensor of `m`, in walk order.
    fn snapshot(m: &ExpressionNet) -> Vec<Vec<f32>> {
        let mut all = Collect::default();
        m.visit(&mut all);
        all.0
            .into_iter()
            .map(|t| t.into_data().try_to_vec::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn every_tensor_of_the_average_follows_the_model_running_statistics_included() {
        let device = Device::flex();
        let network = NetworkConfig::tiny();
        let a = ExpressionNet::new(&network, &device);
        let before = snapshot(&a);
        let mut ema = Ema::start(&a, &network, 0.5, 1000);
        ema.update(&a.clone().map(&mut Shift(1.0)));
        let after = snapshot(ema.model());
        assert_eq!(before.len(), after.len());
        assert!(before.len() > 10, "weights and running statistics");
        for (x, y) in before.iter().flatten().zip(after.iter().flatten()) {
            assert!((y - (x + 0.5)).abs() < 1e-5, "{x} → {y}");
        }
    }

    #[test]
    fn the_average_shares_no_running_statistics_with_the_model() {
        let device = Device::flex();
        let network = NetworkConfig::tiny();
        let model = ExpressionNet::new(&network, &device);
        let ema = Ema::start(&model, &network, 0.9, 0);
        let before = snapshot(ema.model());
        // Mapping a clone writes the running statistics it shares with `model` in place.
        let _shifted = model.clone().map(&mut Shift(1.0));
        assert_ne!(snapshot(&model), before, "the model's running statistics moved");
        assert_eq!(snapshot(ema.model()), before, "the average's did not");
    }

    /// Adds a constant to every float tensor.
    struct Shift(f32);

    impl ModuleMapper for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let v = self.0;
            param.map(|t| t + v)
        }
    }
}
