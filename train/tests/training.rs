//! End-to-end checks of the training crate: gradients, determinism, resume, bad input, FER+.

use std::path::Path;

use burn::module::list_param_ids;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use fer_protocol::Expression;
use fer_train::augment::{Mix, MixKind};
use fer_train::config::{Distill, TrainConfig};
use fer_train::dataset::{DatasetSpec, LoadOptions, Split, write_synthetic};
use fer_train::distill::teacher_marks;
use fer_train::loss::{Negatives, triplet_center_loss};
use fer_train::model::{ExpressionNet, NetworkConfig};
use fer_train::predictions::Predictions;
use fer_train::run::{Run, files};
use fer_train::training;

/// Burn's random generator is global to the process and every test here draws from it
/// (initialisation, random inputs): they take turns, or one test's draws land in another's run.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fixture(root: &Path, per_class: usize) {
    write_synthetic(root, per_class).unwrap();
}

fn smoke_config(root: &Path) -> TrainConfig {
    let data: DatasetSpec = format!("folders:{}", root.display()).parse().unwrap();
    TrainConfig {
        limit: None,
        imbalance: None,
        ..TrainConfig::smoke(data)
    }
}

#[test]
fn centers_and_backbone_receive_gradients() {
    let _turn = one_at_a_time();
    let device = Device::flex().autodiff();
    device.seed(1);
    let model = ExpressionNet::new(&NetworkConfig::tiny(), &device);
    let inputs = Tensor::<4>::random([6, 1, 48, 48], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let labels = Tensor::<1, Int>::from_ints([0, 1, 2, 3, 4, 5], &device);
    for negatives in [
        Negatives::FullySynthesized,
        Negatives::SemiSynthesized { alpha: 0.5 },
        Negatives::PredictionBased,
    ] {
        let out = model.forward(inputs.clone());
        // A large margin keeps every hinge active, so every center gets a gradient.
        let tcl = triplet_center_loss(
            out.embedding,
            labels.clone(),
            model.centers.val(),
            out.logits.clone(),
            negatives,
            1e3,
        )
        .loss;
        let ce = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(out.logits, labels.clone());
        let grads = (ce + tcl).backward();
        let center_grad = model.centers.val().grad(&grads).expect("centers have a gradient");
        assert!(
            center_grad.abs().sum().into_scalar::<f32>() > 0.0,
            "{negatives:?}: zero center gradient"
        );
        let params = GradientsParams::from_grads(grads, &model);
        let total = list_param_ids(&model).len();
        // Every parameter tensor but the frozen BatchNorm running statistics gets a gradient.
        assert!(
            params.len() >= total - 2 * 8,
            "{negatives:?}: {} of {total} parameters got gradients",
            params.len()
        );
    }
}

#[test]
fn training_is_deterministic_and_resumable() {
    let _turn = one_at_a_time();
    let data = tempfile::tempdir().unwrap();
    fixture(data.path(), 6);
    let config = smoke_config(data.path());
    let runs = tempfile::tempdir().unwrap();
    let a = training::train(&config, &Run::at(runs.path().join("a")), false).unwrap();
    let b = training::train(&config, &Run::at(runs.path().join("b")), false).unwrap();
    assert_eq!(a.epochs_done, 2);
    assert_eq!(a.valid, b.valid, "same seed, same result");
    // Same weights: the files differ in their random parameter ids, so compare what they compute.
    let probe = Tensor::<4>::random(
        [4, 1, 48, 48],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &Device::flex(),
    );
    let logits = |run: &str| {
        let (model, _) = Run::at(runs.path().join(run)).load_model(&Device::flex()).unwrap();
        model
            .forward(probe.clone())
            .logits
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert!(logits("a") == logits("b"), "same seed must give the same weights");
    for file in [
        files::CONFIG,
        files::OPTIMIZER,
        files::STATE,
        files::METRICS,
        "report.txt",
        "report.json",
    ] {
        assert!(runs.path().join("a").join(file).is_file(), "{file} missing");
    }

    // Resume a 2-epoch run to 3 epochs with the same config: it continues, not restarts.
    let mut longer = config.clone();
    longer.epochs = 3;
    std::fs::write(
        runs.path().join("a").join(files::CONFIG),
        serde_json::to_string(&longer).unwrap(),
    )
    .unwrap();
    let resumed = training::train(&longer, &Run::at(runs.path().join("a")), true).unwrap();
    assert_eq!(resumed.epochs_done, 3);
    let lines = std::fs::read_to_string(runs.path().join("a").join(files::METRICS)).unwrap();
    assert_eq!(lines.lines().count(), 3);

    // Weights without state.json are not retrained over: which epoch they hold is unknown.
    let state = runs.path().join("a").join(files::STATE);
    let saved = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    let weights = std::fs::read(runs.path().join("a").join(files::MODEL)).unwrap();
    let error = training::train(&longer, &Run::at(runs.path().join("a")), true)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("which epoch the weights hold is unknown"), "{error}");
    assert!(
        std::fs::read(runs.path().join("a").join(files::MODEL)).unwrap() == weights,
        "the checkpoint was overwritten"
    );
    std::fs::write(&state, saved).unwrap();

    // A changed config does not silently resume.
    let other = TrainConfig { seed: 7, ..longer };
    let error = training::train(&other, &Run::at(runs.path().join("a")), true)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("config.json differs"), "{error}");

    // The checkpoint loads and evaluates.
    let (model, _) = Run::at(runs.path().join("a")).load_model(&Device::flex()).unwrap();
    let valid = config.data.load_verbose(Split::Valid, LoadOptions::default()).unwrap();
    assert_eq!(training::evaluate(&model, &valid.samples, &Device::flex()).count, 7 * 6);
}

#[test]
fn learns_a_separable_fixture() {
    let _turn = one_at_a_time();
    // The test that fails if the loop does not actually learn: 7 easy classes, a few seconds.
    let data = tempfile::tempdir().unwrap();
    fixture(data.path(), 8);
    let mut config = smoke_config(data.path());
    config.epochs = 12;
    config.batch_size = 8;
    config.lr = 1e-2;
    config.augment = None;
    let runs = tempfile::tempdir().unwrap();
    let summary = training::train(&config, &Run::at(runs.path()), false).unwrap();
    assert!(
        summary.valid.accuracy > 0.5,
        "accuracy {} after 12 epochs",
        summary.valid.accuracy
    );
}

#[test]
fn fine_tuning_starts_from_a_runs_weights() {
    let _turn = one_at_a_time();
    let data = tempfile::tempdir().unwrap();
    fixture(data.path(), 4);
    let runs = tempfile::tempdir().unwrap();
    let (first, second) = (runs.path().join("first"), runs.path().join("second"));
    let config = smoke_config(data.path());
    training::train(&config, &Run::at(&first), false).unwrap();
    // At learning rate 0 nothing moves, so the second run must hold the first run's trained centers.
    let tuned = TrainConfig {
        init: Some(first.clone()),
        lr: 0.0,
        ..config.clone()
    };
    training::train(&tuned, &Run::at(&second), false).unwrap();
    let centers = |run: &Path| {
        let (model, _) = Run::at(run).load_model(&Device::flex()).unwrap();
        model.centers.val().into_data().try_to_vec::<f32>().unwrap()
    };
    assert_eq!(centers(&first), centers(&second));
    let device = Device::flex();
    device.seed(config.seed);
    let fresh = ExpressionNet::new(&config.network, &device).centers.val().into_data();
    assert_ne!(
        fresh.try_to_vec::<f32>().unwrap(),
        centers(&first),
        "training moved no center"
    );

    let mut other = tuned.clone();
    other.network.attention = !other.network.attention;
    let error = training::train(&other, &Run::at(runs.path().join("third")), false)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("differs"), "{error}");
}

#[test]
fn posthoc_logit_adjustment_shifts_logits_by_the_log_prior() {
    let _turn = one_at_a_time();
    let data = tempfile::tempdir().unwrap();
    // An imbalanced fixture: 6 images per class, then 4 extra neutral ones.
    fixture(data.path(), 6);
    let neutral = data.path().join("train").join("neutral");
    let first = std::fs::read_dir(&neutral).unwrap().next().unwrap().unwrap().path();
    for i in 0..4 {
        std::fs::copy(&first, neutral.join(format!("extra{i}.png"))).unwrap();
    }
    let runs = tempfile::tempdir().unwrap();
    let (run, adjusted) = (runs.path().join("run"), runs.path().join("adjusted"));
    let config = smoke_config(data.path());
    training::train(&config, &Run::at(&run), false).unwrap();
    training::adjust(&Run::at(&run), 1.0, &Run::at(&adjusted)).unwrap();

    let device = Device::flex();
    let samples = config
        .data
        .load_verbose(Split::Valid, LoadOptions::default())
        .unwrap()
        .samples;
    let logits = |run: &Path| training::logits(&Run::at(run).load_model(&device).unwrap().0, &samples, &device);
    let (before, after) = (logits(&run), logits(&adjusted));
    let counts = training::train_class_counts(&config).unwrap();
    let total = counts.total() as f32;
    for (b, a) in before.iter().zip(&after) {
        for k in 0..Expression::COUNT {
            let expected = b[k] - (counts.0[k] as f32 / total).ln();
            assert!((a[k] - expected).abs() < 1e-4, "class {k}: {} vs {expected}", a[k]);
        }
    }
    let saved = Run::at(&adjusted).config().unwrap();
    assert_eq!(saved.posthoc_logit_adjustment, Some(1.0));
    let error = training::train(&saved, &Run::at(&adjusted), true)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("cannot be trained further"), "{error}");
    let error = training::adjust(&Run::at(&adjusted), 1.0, &Run::at(runs.path().join("twice")))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("already adjusted"), "{error}");

    // A run that averages its weights adjusts its average, and the copy loads as one model.
    let (averaged, adjusted) = (runs.path().join("averaged"), runs.path().join("averaged-adjusted"));
    let config = TrainConfig {
        ema: Some(0.9),
        ..config
    };
    training::train(&config, &Run::at(&averaged), false).unwrap();
    training::adjust(&Run::at(&averaged), 1.0, &Run::at(&adjusted)).unwrap();
    let (before, after) = (logits(&averaged), logits(&adjusted));
    let k = Expression::Neutral.index();
    let expected = before[0][k] - (counts.0[k] as f32 / total).ln();
    assert!((after[0][k] - expected).abs() < 1e-4, "{} vs {expected}", after[0][k]);
}

#[test]
fn a_student_learns_from_its_teachers_distribution_with_mixed_faces() {
    let _turn = one_at_a_time();
    let data = tempfile::tempdir().unwrap();
    fixture(data.path(), 4);
    let runs = tempfile::tempdir().unwrap();
    let teacher = runs.path().join("teacher");
    let config = smoke_config(data.path());
    // Trained long enough to tell faces apart: a smoke run's two epochs leave the network's
    // answer nearly the same for every face, which would let a mirror that does nothing pass.
    let taught = TrainConfig {
        epochs: 20,
        lr: 1e-2,
        ..config.clone()
    };
    training::train(&taught, &Run::at(&teacher), false).unwrap();

    // At weight 1 a face's target is the teacher's softmax; at 0.5, halfway from its label.
    let samples = |w, flip| {
        let mut samples = training::load_split(&config, &config.data, Split::Train).unwrap();
        // The first face: diagonal stripes, which the mirror image turns the other way. The
        // fixture's ramps, like any face whose mirror image is a shift of it, read alike both
        // ways to a network that pools over the whole face.
        let face = &mut samples[0];
        let width = face.width;
        face.pixels = (0..face.pixels.len())
            .map(|i| if (i % width + 2 * (i / width)) % 12 < 6 { 255 } else { 0 })
            .collect();
        let distill = Distill {
            teachers: vec![teacher.clone()],
            weight: w,
            temperature: 1.0,
            flip,
        };
        let marks = teacher_marks(&distill).unwrap();
        training::distil_targets(&distill, &marks, &mut samples, &Device::flex()).unwrap();
        samples
    };
    let (taught, halfway, flipped) = (samples(1.0, false), samples(0.5, false), samples(1.0, true));
    let (model, _) = Run::at(&teacher).load_model(&Device::flex()).unwrap();
    let softmax = |rows: Vec<[f32; 7]>| {
        let exp = rows[0].map(f32::exp);
        exp.map(|e| e / exp.iter().sum::<f32>())
    };
    let plain = softmax(training::logits(&model, &taught[..1], &Device::flex()));
    let votes = taught[0].votes.unwrap();
    assert!(
        votes.iter().zip(plain).all(|(v, p)| (v - p).abs() < 1e-5),
        "{votes:?} vs {plain:?}"
    );
    // With flip, the target is the mean of the teacher's softmax on the face and on its mirror
    // image, whose pixels are the face's rows reversed.
    let mut mirror = taught[0].clone();
    for row in mirror.pixels.chunks_exact_mut(mirror.width) {
        row.reverse();
    }
    let mirrored = softmax(training::logits(&model, &[mirror], &Device::flex()));
    assert!(
        (0..7).any(|k| (plain[k] - mirrored[k]).abs() > 1e-3),
        "the teacher reads the face and its mirror alike, so flip would go untested: {plain:?}"
    );
    let both = flipped[0].votes.unwrap();
    assert!(
        (0..7).all(|k| (both[k] - (plain[k] + mirrored[k]) / 2.0).abs() < 1e-5),
        "{both:?} vs {plain:?} and {mirrored:?}"
    );
    let label = halfway[0].label.index();
    let half = halfway[0].votes.unwrap()[label];
    assert!((half - (0.5 + 0.5 * votes[label])).abs() < 1e-5, "{half}");

    // A student with a teacher and mixed faces trains and records both, so a resume repeats them.
    let mut student = config.clone();
    student.distill = Some(Distill {
        teachers: vec![teacher.clone()],
        weight: 0.5,
        temperature: 2.0,
        flip: true,
    });
    for kind in [MixKind::Mixup, MixKind::CutMix] {
        let augment = student.augment.as_mut().unwrap();
        augment.mix = Some(Mix {
            kind,
            alpha: 1.0,
            prob: 1.0,
        });
        let run = runs.path().join(format!("{kind:?}"));
        training::train(&student, &Run::at(&run), false).unwrap();
        assert_eq!(Run::at(&run).config().unwrap(), student);
    }

    // A teacher that has moved on since the student started is refused on resume, naming what
    // changed; the same teacher is not.
    let student_run = Run::at(runs.path().join("CutMix"));
    student.epochs += 1;
    student_run.write_config(&student).unwrap();
    let state = Run::at(&teacher).file(files::STATE);
    let kept = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, r#"{"epochs_done": 7}"#).unwrap();
    let error = format!("{:#}", training::train(&student, &student_run, true).err().unwrap());
    assert!(
        error.contains("teacher") && error.contains("holds epoch 7 now"),
        "{error}"
    );
    std::fs::write(&state, kept).unwrap();
    training::train(&student, &student_run, true).unwrap();
    assert_eq!(student_run.epochs_done().unwrap(), student.epochs);
    let missing = TrainConfig {
        distill: Some(Distill {
            teachers: vec![runs.path().join("nobody")],
            weight: 0.5,
            temperature: 1.0,
            flip: false,
        }),
        ..config.clone()
    };
    let error = format!(
        "{:#}",
        training::train(&missing, &Run::at(runs.path().join("x")), false)
            .err()
            .unwrap()
    );
    assert!(error.contains("teacher") && error.contains("nobody"), "{error}");
}

#[test]
fn settings_that_cannot_train_and_folders_that_hold_a_run_are_refused() {
    let _turn = one_at_a_time();
    let data = tempfile::tempdir().unwrap();
    fixture(data.path(), 4);
    let config = smoke_config(data.path());
    let refused = |c: TrainConfig| c.validate().unwrap_err().to_string();
    assert!(
        refused(TrainConfig {
            lr: f64::NAN,
            ..config.clone()
        })
        .contains("--lr NaN")
    );
    assert!(
        refused(TrainConfig {
            epochs: 0,
            ..config.clone()
        })
        .contains("--epochs")
    );
    assert!(
        refused(TrainConfig {
            label_smoothing: 1.5,
            ..config.clone()
        })
        .contains("--label-smoothing 1.5")
    );
    let mut dropout = config.clone();
    dropout.network.dropout = 2.0;
    assert!(refused(dropout).contains("--dropout 2"));
    let mut mix = config.clone();
    mix.augment.as_mut().unwrap().mix = Some(Mix {
        kind: MixKind::Mixup,
        alpha: 0.0,
        prob: 0.5,
    });
    assert!(refused(mix).contains("--mixup/--cutmix 0"));
    let hard_labels = TrainConfig {
        vote_labels: false,
        distill: Some(Distill {
            teachers: vec!["teacher".into()],
            weight: 0.5,
            temperature: 1.0,
            flip: false,
        }),
        ..config.clone()
    };
    assert!(refused(hard_labels).contains("--votes on"));
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("run");
    training::train(&config, &Run::at(&run), false).unwrap();
    let error = training::train(&config, &Run::at(&run), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("already holds a run") && error.contains("--resume"),
        "{error}"
    );
    let error = training::adjust(&Run::at(&run), f32::NAN, &Run::at(runs.path().join("x")))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("must be a number"), "{error}");
    let error = training::adjust(&Run::at(&run), 0.5, &Run::at(&run))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("another folder"), "{error}");
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let _turn = one_at_a_time();
    let runs = tempfile::tempdir().unwrap();
    let error = Run::at(runs.path())
        .load_model(&Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("config.json"), "{error}");
    let config = smoke_config(Path::new("/nonexistent"));
    std::fs::write(runs.path().join(files::CONFIG), serde_json::to_string(&config).unwrap()).unwrap();
    let error = Run::at(runs.path())
        .load_model(&Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("no checkpoint"), "{error}");
    std::fs::write(runs.path().join(files::MODEL), b"garbage").unwrap();
    assert!(Run::at(runs.path()).load_model(&Device::flex()).is_err());
    let error = training::train(&config, &Run::at(runs.path().join("new")), false)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("/nonexistent") && error.contains("not found"), "{error}");
}

#[test]
fn ferplus_smoke_run_on_the_shared_data() {
    let _turn = one_at_a_time();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ferplus");
    if !root.join("FER2013Train/label.csv").is_file() {
        fer_train::skip_test_unless_ci(&format!(
            "{} is not present (see README: getting the data)",
            root.display()
        ));
        return;
    }
    let data: DatasetSpec = format!("ferplus:{}", root.display()).parse().unwrap();
    let valid = data.load_verbose(Split::Valid, LoadOptions::default()).unwrap();
    // The FER+ README's counts under the majority protocol, without contempt.
    assert_eq!(valid.samples.len(), 3191 - 16);
    assert_eq!(valid.class_counts().0[Expression::Neutral.index()], 1180);
    assert_eq!(valid.class_counts().0[Expression::Disgust.index()], 25);
    let runs = tempfile::tempdir().unwrap();
    let summary = training::train(&TrainConfig::smoke(data.clone()), &Run::at(runs.path()), false).unwrap();
    assert_eq!(summary.valid.count, 64);

    // A cross-entropy smoke run's 64 training faces hold no disgust: its predictions measure the
    // distance to the classes that have a mean, rather than failing (scripts/compare.sh --smoke).
    let config = TrainConfig {
        tcl: None,
        ..TrainConfig::smoke(data)
    };
    let train = training::load_split(&config, &config.data, Split::Train).unwrap();
    assert!(train.iter().all(|s| s.label != Expression::Disgust));
    let ce = runs.path().join("ce");
    training::train(&config, &Run::at(&ce), false).unwrap();
    let predictions = Predictions::of_run(&Run::at(&ce), &Device::flex()).unwrap();
    assert!(!predictions.trained_centers);
    assert!(predictions.nearest_center.iter().all(|d| d.is_finite()));

    // A record keeps no checkpoint and no labels, yet reads back as the run (labels from the data).
    let record = runs.path().join("record");
    fer_train::predictions::write_record(&Run::at(&ce), &Run::at(&record), &Device::flex()).unwrap();
    assert!(!record.join(files::MODEL).exists());
    let text = std::fs::read_to_string(record.join(files::PREDICTIONS)).unwrap();
    assert!(!text.contains("labels"), "{text}");
    let recorded = fer_train::compare::Finished::load(&record).unwrap();
    let predictions = Predictions::load_or_write(&Run::at(&ce), &Device::flex()).unwrap();
    assert_eq!(recorded.predictions.as_ref(), Some(&predictions));
    assert_eq!(recorded.report.count, predictions.labels.len());
    // Labels that do not give the report's confusion matrix are not this run's faces.
    let report = std::fs::read_to_string(record.join(files::REPORT)).unwrap();
    let mut report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let angry_as_angry = &mut report["confusion"][0][0];
    *angry_as_angry = (angry_as_angry.as_u64().unwrap() + 1).into();
    std::fs::write(record.join(files::REPORT), report.to_string()).unwrap();
    let error = format!("{:#}", fer_train::compare::Finished::load(&record).unwrap_err());
    assert!(error.contains("not the faces it was evaluated on"), "{error}");

    // An unfinished run's checkpoint is not its final model.
    std::fs::remove_file(ce.join(files::REPORT)).unwrap();
    let error = Predictions::of_run(&Run::at(&ce), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(error.contains("not finished"), "{error}");
}
