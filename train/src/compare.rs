//! The comparison table: run folders grouped by configuration (loss, negatives, attention),
//! each metric as mean ± spread over the seeds, so a reader sees which differences exceed the
//! seed-to-seed variation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use fer_protocol::Expression;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::TrainConfig;
use crate::loss::Negatives;
use crate::metrics::Metrics;
use crate::predictions::Predictions;
use crate::report::EpochRecord;
use crate::run::Run;

/// One finished run, read whole.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Its folder.
    pub path: PathBuf,
    /// Its configuration.
    pub config: TrainConfig,
    /// Its final evaluation.
    pub report: Metrics,
    /// Its epochs, in order.
    pub records: Vec<EpochRecord>,
    /// Its answers face by face (`fer-train predictions`), if written.
    pub predictions: Option<Predictions>,
}

impl Finished {
    /// Reads a run folder written by `fer-train train`.
    pub fn load(path: &Path) -> Result<Self> {
        let run = Run::at(path);
        Ok(Self {
            path: path.to_path_buf(),
            config: run.config()?,
            report: run.report()?,
            records: run.records()?,
            predictions: Predictions::read(&run)?,
        })
    }

    /// Training wall time, seconds (sum over epochs).
    pub fn seconds(&self) -> f64 {
        self.records.iter().map(|r| r.seconds).sum()
    }

    /// The configuration's name in the table, without the seed.
    pub fn label(&self) -> String {
        configuration(&self.config)
    }

    /// The configuration without what the comparison varies (seed, loss, attention): every
    /// compared run must share it.
    fn shared_settings(&self) -> TrainConfig {
        let mut config = self.config.clone();
        config.seed = 0;
        config.tcl = None;
        config.network.attention = false;
        config
    }

    /// The budget as the table's first line states it.
    fn budget_key(&self) -> String {
        let c = &self.config;
        format!(
            "{} epochs, batch {}, lr {}, limit {:?}, imbalance {:?}, {:?} backbone, vote labels {}, \
            smoothing {}, logit adjustment {}, class weight power {}",
            c.epochs,
            c.batch_size,
            c.lr,
            c.limit,
            c.imbalance,
            c.network.backbone,
            c.vote_labels,
            c.label_smoothing,
            c.logit_adjustment,
            c.class_weight_power
        )
    }
}

/// The cross-entropy baseline's name.
const BASELINE: &str = "CE";

/// A run's configuration as the tables name it (loss, negatives, attention), without the seed.
pub fn configuration(config: &TrainConfig) -> String {
    label(&loss(config), config.network.attention)
}

/// The loss part of a configuration's name.
fn loss(config: &TrainConfig) -> String {
    match &config.tcl {
        None => BASELINE.to_string(),
        Some(tcl) => match tcl.negatives {
            Negatives::FullySynthesized => "CE + TCL fully-synth.".into(),
            Negatives::SemiSynthesized { .. } => "CE + TCL semi-synth.".into(),
            Negatives::PredictionBased => "CE + TCL prediction".into(),
        },
    }
}

fn label(loss: &str, attention: bool) -> String {
    format!("{loss}, {}", if attention { "attention" } else { "no attention" })
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn range(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    })
}

/// "mean ± spread" in percent; spread is half the range over the seeds (0 for one seed).
fn cell(values: &[f64]) -> String {
    let (lo, hi) = range(values);
    if values.len() > 1 {
        format!("{:.2} ± {:.2}", 100.0 * mean(values), 50.0 * (hi - lo))
    } else {
        format!("{:.2}", 100.0 * mean(values))
    }
}

/// The difference of two configurations' means in points, and whether it exceeds the
/// seed-to-seed spread: it does when the two ranges over seeds do not overlap.
fn difference(a: &[f64], b: &[f64]) -> String {
    let delta = 100.0 * (mean(a) - mean(b));
    if a.len() < 2 || b.len() < 2 {
        return format!("{delta:+.2} (one seed: spread unknown)");
    }
    let ((a_lo, a_hi), (b_lo, b_hi)) = (range(a), range(b));
    let beyond = a_lo > b_hi || b_lo > a_hi;
    format!(
        "{delta:+.2} ({})",
        if beyond {
            "**beyond the spread**"
        } else {
            "within the spread"
        }
    )
}

/// Refuses runs that differ in anything but seed, loss and attention: the data, budget, network
/// and augmentation must be one, TCL runs must share λ and the margin, and semi-synthesized
/// ones α.
fn check_comparable(runs: &[Finished]) -> Result<()> {
    let first = &runs[0];
    let shared = serde_json::to_value(first.shared_settings())?;
    let first_tcl = runs.iter().find_map(|r| r.config.tcl.as_ref().map(|t| (r, t)));
    let alpha = |r: &Finished| match r.config.tcl.as_ref()?.negatives {
        Negatives::SemiSynthesized { alpha } => Some(alpha),
        _ => None,
    };
    let first_alpha = runs.iter().find_map(|r| alpha(r).map(|a| (r, a)));
    for run in runs {
        let settings = serde_json::to_value(run.shared_settings())?;
        if settings != shared {
            let fields: BTreeSet<&str> = match (&settings, &shared) {
                (serde_json::Value::Object(a), serde_json::Value::Object(b)) => a
                    .keys()
                    .chain(b.keys())
                    .filter(|k| a.get(*k) != b.get(*k))
                    .map(String::as_str)
                    .collect(),
                _ => Default::default(),
            };
            bail!(
                "{} has another budget than {}: they differ in more than seed, loss and attention (in {})",
                run.path.display(),
                first.path.display(),
                fields.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        if let (Some(tcl), Some((other, theirs))) = (&run.config.tcl, first_tcl) {
            ensure!(
                tcl.lambda == theirs.lambda && tcl.margin == theirs.margin,
                "{} and {} train the triplet-center loss with other settings (λ or margin)",
                run.path.display(),
                other.path.display()
            );
        }
        if let (Some(a), Some((other, theirs))) = (alpha(run), first_alpha) {
            ensure!(
                a == theirs,
                "{} and {} mix semi-synthesized negatives of α {a} and {theirs}",
                run.path.display(),
                other.path.display()
            );
        }
    }
    Ok(())
}

/// The markdown table of the runs; every run must share one training budget.
pub fn table(paths: &[PathBuf]) -> Result<String> {
    ensure!(!paths.is_empty(), "no run folders given");
    let runs = paths
        .iter()
        .map(|p| Finished::load(p).with_context(|| format!("run {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    check_comparable(&runs)?;
    let budget = runs[0].budget_key();
    let mut groups: BTreeMap<(String, bool), Vec<&Finished>> = BTreeMap::new();
    for run in &runs {
        groups
            .entry((loss(&run.config), run.config.network.attention))
            .or_default()
            .push(run);
    }
    let predicted = runs.iter().all(|r| r.predictions.is_some());
    let mut out = format!("Budget: {budget}. Values in % as mean ± half the range over the seeds.\n\n");
    out.push_str("| configuration | seeds | accuracy | mean class acc. | macro-F1 |");
    for e in Expression::ALL {
        write!(out, " {} |", e.name())?;
    }
    out.push_str(" train time |");
    if predicted {
        out.push_str(" error AUROC: distance | error AUROC: distance ratio | error AUROC: top prob. |");
    }
    out.push_str("\n|---|---:|---:|---:|---:|");
    out.push_str(&"---:|".repeat(Expression::COUNT + 1 + 3 * usize::from(predicted)));
    out.push('\n');
    for ((loss, attention), runs) in &groups {
        let label = label(loss, *attention);
        let metric = |f: &dyn Fn(&Metrics) -> f64| cell(&runs.iter().map(|r| f(&r.report)).collect::<Vec<_>>());
        let seeds: Vec<String> = runs.iter().map(|r| r.config.seed.to_string()).collect();
        write!(
            out,
            "| {label} | {} | {} | {} | {} |",
            seeds.join(", "),
            metric(&|m| m.accuracy),
            metric(&|m| m.mean_class_accuracy),
            metric(&|m| m.macro_f1)
        )?;
        for i in 0..Expression::COUNT {
            // A class absent from the valid split has no recall.
            let recalls: Option<Vec<f64>> = runs.iter().map(|r| r.report.per_class_recall[i]).collect();
            write!(out, " {} |", recalls.map_or_else(|| "–".to_string(), |r| cell(&r)))?;
        }
        let minutes = runs.iter().map(|r| r.seconds()).sum::<f64>() / 60.0 / runs.len() as f64;
        write!(out, " {minutes:.0} min |")?;
        if predicted {
            // The distance to the nearest center against "wrong", the same relative to the
            // second-nearest, and the sensor's other flag, a low top probability, as their
            // yardstick: 50 is chance (in %, like the rest).
            for flag in [
                Predictions::error_auroc,
                Predictions::ratio_error_auroc,
                Predictions::confidence_error_auroc,
            ] {
                let aurocs: Option<Vec<f64>> = runs.iter().map(|r| r.predictions.as_ref().and_then(flag)).collect();
                write!(out, " {} |", aurocs.map_or_else(|| "–".to_string(), |a| cell(&a)))?;
            }
        }
        out.push('\n');
    }

    // Each TCL configuration against the baseline, and attention against none, per loss.
    let mut pairs = Vec::new();
    for (loss, attention) in groups.keys() {
        if loss != BASELINE {
            pairs.push(((loss.clone(), *attention), (BASELINE.to_string(), *attention)));
        }
        if *attention {
            pairs.push(((loss.clone(), true), (loss.clone(), false)));
        }
    }
    let pairs: Vec<_> = pairs
        .into_iter()
        .filter_map(|(a, b)| Some((a.clone(), b.clone(), groups.get(&a)?, groups.get(&b)?)))
        .collect();
    if !pairs.is_empty() {
        let (_, _, runs_a, runs_b) = &pairs[0];
        let (a, b) = (runs_a.len(), runs_b.len());
        out.push_str(
            "\nDifferences in points; beyond the spread when the two configurations' ranges over the \
            seeds do not overlap.",
        );
        if a.min(b) > 1 {
            write!(
                out,
                " With {a} and {b} seeds and no real difference that happens {:.0} % of the time, so one \
                 such cell is a hint, a pattern across cells more.",
                100.0 * chance_beyond_spread(a, b)
            )?;
        }
        out.push_str("\n\n");
        out.push_str(
            "| configuration | against | Δ accuracy | Δ mean class acc. | Δ macro-F1 |\n|---|---|---:|---:|---:|\n",
        );
        for (a, b, runs_a, runs_b) in &pairs {
            let delta = |f: fn(&Metrics) -> f64| {
                let values = |runs: &[&Finished]| runs.iter().map(|r| f(&r.report)).collect::<Vec<_>>();
                difference(&values(runs_a), &values(runs_b))
            };
            writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                label(&a.0, a.1),
                label(&b.0, b.1),
                delta(|m| m.accuracy),
                delta(|m| m.mean_class_accuracy),
                delta(|m| m.macro_f1)
            )?;
        }
        if predicted {
            paired_table(&mut out, &pairs)?;
        }
    }
    Ok(out)
}

/// Two configurations (loss name, attention) compared, with their runs.
type Pair<'a> = (
    (String, bool),
    (String, bool),
    &'a Vec<&'a Finished>,
    &'a Vec<&'a Finished>,
);

/// Resamples of the valid faces behind each paired interval.
const BOOTSTRAP_RESAMPLES: usize = 2000;

/// One configuration against another, seed by seed.
#[derive(Debug, PartialEq)]
struct Paired {
    /// The seeds both ran.
    seeds: Vec<u64>,
    /// Per seed, `[Δ accuracy, Δ mean class accuracy]` (fractions).
    per_seed: Vec<[f64; 2]>,
    /// 95 % bootstrap interval of the mean over seeds of each difference, resampling the valid
    /// faces: how much another valid set could move it, these trained models held fixed.
    interval: [(f64, f64); 2],
    /// 95 % paired t interval of each mean difference over the seeds: how much another seed
    /// could move it (`None` with one seed).
    seed_interval: [Option<(f64, f64)>; 2],
}

/// The 97.5 % quantile of Student's t for 1..=10 degrees of freedom (two-sided 95 %). Beyond
/// 10 the value for 10 is used, which errs wide. A table, not a statistics crate: statrs would
/// bring nalgebra into the build for ten numbers.
const T_975: [f64; 10] = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228];

/// The 95 % t interval of the mean of `values` (paired differences, one per seed).
fn t_interval(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let m = mean(values);
    let variance = values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = T_975[(n - 2).min(T_975.len() - 1)] * (variance / n as f64).sqrt();
    Some((m - half, m + half))
}

/// The chance that two configurations with no real difference land "beyond the spread" (their
/// ranges over `a` and `b` seeds do not overlap): 2 of the C(a + b, a) equally likely orders.
fn chance_beyond_spread(a: usize, b: usize) -> f64 {
    let orders = (1..=b).fold(1.0, |c, k| c * (a + k) as f64 / k as f64);
    2.0 / orders
}

/// Pairs the runs of `a` and `b` by seed and resamples the valid faces (the same resample on
/// both sides and for every seed, so the interval is of a paired difference). `None` when no
/// seed ran on both sides.
fn paired(a: &[&Finished], b: &[&Finished]) -> Result<Option<Paired>> {
    let mut matched = Vec::new();
    for run_a in a {
        if let Some(run_b) = b.iter().find(|r| r.config.seed == run_a.config.seed) {
            let (Some(pa), Some(pb)) = (&run_a.predictions, &run_b.predictions) else {
                continue;
            };
            ensure!(
                pa.labels == pb.labels,
                "{} and {} were evaluated on different faces",
                run_a.path.display(),
                run_b.path.display()
            );
            matched.push((run_a.config.seed, pa, pb));
        }
    }
    if matched.is_empty() {
        return Ok(None);
    }
    let both = |m: &Metrics| [m.accuracy, m.mean_class_accuracy];
    let difference = |faces: &[usize], pa: &Predictions, pb: &Predictions| {
        let (ma, mb) = (
            both(&pa.metrics(faces.iter().copied())),
            both(&pb.metrics(faces.iter().copied())),
        );
        [ma[0] - mb[0], ma[1] - mb[1]]
    };
    for (seed, pa, _) in &matched[1..] {
        ensure!(
            pa.labels == matched[0].1.labels,
            "seeds {seed} and {} were evaluated on different faces",
            matched[0].0
        );
    }
    let n = matched[0].1.labels.len();
    let all: Vec<usize> = (0..n).collect();
    let per_seed: Vec<[f64; 2]> = matched.iter().map(|(_, pa, pb)| difference(&all, pa, pb)).collect();
    let mut rng = SmallRng::seed_from_u64(16);
    let mut means = [
        Vec::with_capacity(BOOTSTRAP_RESAMPLES),
        Vec::with_capacity(BOOTSTRAP_RESAMPLES),
    ];
    let mut faces = vec![0; n];
    for _ in 0..BOOTSTRAP_RESAMPLES {
        faces.iter_mut().for_each(|f| *f = rng.random_range(0..n));
        let mut sum = [0.0; 2];
        for (_, pa, pb) in &matched {
            let d = difference(&faces, pa, pb);
            sum[0] += d[0];
            sum[1] += d[1];
        }
        for (m, s) in means.iter_mut().zip(sum) {
            m.push(s / matched.len() as f64);
        }
    }
    let interval = means.map(|mut m| {
        m.sort_by(f64::total_cmp);
        let at = |q: f64| m[((m.len() - 1) as f64 * q).round() as usize];
        (at(0.025), at(0.975))
    });
    let seed_interval = [0, 1].map(|i| t_interval(&per_seed.iter().map(|d| d[i]).collect::<Vec<_>>()));
    Ok(Some(Paired {
        seeds: matched.iter().map(|(seed, ..)| *seed).collect(),
        per_seed,
        interval,
        seed_interval,
    }))
}

/// "+0.35 (+0.20, +0.50) faces [+0.10, +0.61] seeds [-0.40, +1.10]": the mean difference in
/// points, each seed's, the interval over faces and the interval over seeds; in bold, "real",
/// when both intervals exclude 0 (so neither another valid set nor another seed is likely to
/// undo it).
fn paired_cell(per_seed: &[f64], faces: (f64, f64), seeds: Option<(f64, f64)>) -> String {
    let mean = mean(per_seed);
    let each: Vec<String> = per_seed.iter().map(|d| format!("{:+.2}", 100.0 * d)).collect();
    let excludes_zero = |(lo, hi): (f64, f64)| lo > 0.0 || hi < 0.0;
    let real = excludes_zero(faces) && seeds.is_some_and(excludes_zero);
    let seeds = seeds.map_or_else(
        || "one seed".to_string(),
        |(lo, hi)| format!("[{:+.2}, {:+.2}]", 100.0 * lo, 100.0 * hi),
    );
    format!(
        "{}{:+.2}{} ({}) faces [{:+.2}, {:+.2}] seeds {seeds}",
        if real { "**" } else { "" },
        100.0 * mean,
        if real { " real**" } else { "" },
        each.join(", "),
        100.0 * faces.0,
        100.0 * faces.1
    )
}

/// The paired-statistics table of the comparison's pairs.
fn paired_table(out: &mut String, pairs: &[Pair<'_>]) -> Result<()> {
    let faces = pairs
        .first()
        .and_then(|(_, _, runs, _)| runs.first())
        .and_then(|r| r.predictions.as_ref())
        .map_or(0, |p| p.labels.len());
    write!(
        out,
        "\nPaired over seeds and faces: the mean difference in points, each seed's (seeds matched on \
         both sides), the 95 % interval of the mean from {BOOTSTRAP_RESAMPLES} bootstrap \
         resamples of the {faces} valid faces (the same faces on both sides: another valid set, \
         these models fixed) and the 95 % paired t interval over the seeds (another seed). \
         **real**: both intervals exclude 0. Each cell is a 95 % statement: among {cells} cells, \
         about {chance:.1} could be bold by chance alone.\n\n",
        cells = 2 * pairs.len(),
        chance = 0.05 * 2.0 * pairs.len() as f64
    )?;
    out.push_str("| configuration | against | seeds | Δ accuracy | Δ mean class acc. |\n|---|---|---|---|---|\n");
    for (a, b, runs_a, runs_b) in pairs {
        let Some(p) = paired(runs_a, runs_b)? else {
            continue;
        };
        let metric = |i: usize| {
            paired_cell(
                &p.per_seed.iter().map(|d| d[i]).collect::<Vec<_>>(),
                p.interval[i],
                p.seed_interval[i],
            )
        };
        let seeds: Vec<String> = p.seeds.iter().map(u64::to_string).collect();
        writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            label(&a.0, a.1),
            label(&b.0, b.1),
            seeds.join(", "),
            metric(0),
            metric(1)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_mean_and_half_range() {
        assert_eq!(cell(&[0.80, 0.84]), "82.00 ± 2.00");
        assert_eq!(cell(&[0.5]), "50.00");
    }

    #[test]
    fn differences_say_whether_they_exceed_the_seed_spread() {
        assert_eq!(
            difference(&[0.80, 0.82], &[0.70, 0.72]),
            "+10.00 (**beyond the spread**)"
        );
        assert_eq!(difference(&[0.80, 0.84], &[0.81, 0.83]), "+0.00 (within the spread)");
        assert_eq!(
            difference(&[0.70, 0.71], &[0.72, 0.80]),
            "-5.50 (**beyond the spread**)"
        );
        assert_eq!(difference(&[0.8], &[0.7, 0.72]), "+9.00 (one seed: spread unknown)");
    }

    /// Writes a finished-looking run folder: config, final report, one epoch of metrics.
    fn fake_run(root: &Path, name: &str, seed: u64, tcl: bool, correct: usize) -> PathBuf {
        let run = root.join(name);
        std::fs::create_dir_all(&run).unwrap();
        let mut config = TrainConfig::smoke("ferplus:unused".parse().unwrap());
        config.seed = seed;
        if !tcl {
            config.tcl = None;
        }
        // `correct` of 10 surprise faces right, the rest called fear; no other class present.
        let report = Metrics::from_pairs((0..10).map(|i| (0, usize::from(i >= correct))));
        let record = EpochRecord {
            epoch: 1,
            lr: 0.0,
            train_loss: 0.0,
            train_ce: 0.0,
            train_tcl: 0.0,
            train_accuracy: 0.0,
            images_per_second: 1.0,
            seconds: 120.0,
            valid: report.clone(),
        };
        let folder = Run::at(&run);
        folder.write_config(&config).unwrap();
        folder.write_records(&[record]).unwrap();
        crate::run::write_json(&folder.file(crate::run::files::REPORT), &report).unwrap();
        run
    }

    #[test]
    fn runs_group_by_configuration_across_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let runs = [
            fake_run(dir.path(), "ce-1", 1, false, 6),
            fake_run(dir.path(), "ce-2", 2, false, 8),
            fake_run(dir.path(), "tcl-1", 1, true, 9),
        ];
        let table = table(&runs).unwrap();
        let (results, differences) = table.split_once("Differences").unwrap();
        let rows: Vec<&str> = results.lines().filter(|l| l.starts_with("| CE")).collect();
        assert_eq!(rows.len(), 2, "{table}");
        assert!(
            rows[0].starts_with("| CE, attention | 1, 2 | 70.00 ± 10.00 |"),
            "{table}"
        );
        assert!(
            rows[1].starts_with("| CE + TCL semi-synth., attention | 1 | 90.00 |"),
            "{table}"
        );
        // Surprise recall is shown, fear's is "–" (no fear face), time is per run.
        assert!(rows[0].ends_with("| 2 min |") && rows[0].contains("| – |"), "{table}");
        let rows: Vec<&str> = differences.lines().filter(|l| l.starts_with("| CE")).collect();
        assert_eq!(
            rows,
            [
                "| CE + TCL semi-synth., attention | CE, attention | +20.00 (one seed: spread unknown) \
              | +20.00 (one seed: spread unknown) | +12.79 (one seed: spread unknown) |"
            ],
            "{table}"
        );
    }

    /// A fake run with predictions for 200 faces of one class, the first `correct` right; the
    /// nearest-center distance grows with the face's number, so it flags every error.
    fn predicted_run(root: &Path, name: &str, seed: u64, tcl: bool, correct: usize) -> PathBuf {
        let run = fake_run(root, name, seed, tcl, 5);
        let predictions = Predictions {
            labels: vec![0; 200],
            predicted: (0..200).map(|i| usize::from(i >= correct)).collect(),
            nearest_center: (0..200).map(|i| i as f32).collect(),
            second_center: vec![1000.0; 200],
            confidence: vec![0.5; 200],
            trained_centers: tcl,
        };
        std::fs::write(
            run.join(crate::run::files::PREDICTIONS),
            serde_json::to_string(&predictions).unwrap(),
        )
        .unwrap();
        run
    }

    #[test]
    fn paired_statistics_match_seeds_and_resample_faces() {
        let dir = tempfile::tempdir().unwrap();
        let ce = [
            predicted_run(dir.path(), "ce-1", 1, false, 100),
            predicted_run(dir.path(), "ce-2", 2, false, 104),
            predicted_run(dir.path(), "ce-3", 3, false, 102),
        ];
        let paired_row =
            |tcl: [PathBuf; 3]| {
                let runs: Vec<PathBuf> = ce.iter().cloned().chain(tcl).collect();
                let table = table(&runs).unwrap();
                assert!(
                    table.contains(" error AUROC: distance | error AUROC: distance ratio | error AUROC: top prob. |"),
                    "{table}"
                );
                let (results, _) = table.split_once("Differences").unwrap();
                // The distance ranks every error last; one confidence for every face ranks nothing.
                assert!(
                    results.lines().all(|l| !l.starts_with("| CE")
                        || l.ends_with("min | 100.00 ± 0.00 | 100.00 ± 0.00 | 50.00 ± 0.00 |")),
                    "{table}"
                );
                let (_, paired) = table.split_once("Paired over seeds").expect("a paired table");
                paired
                    .lines()
                    .find(|l| l.starts_with("| CE + TCL"))
                    .expect("a paired row")
                    .to_string()
            };
        // +60, +46 and +54 of 200 faces: +30, +23 and +27 points, far outside both resampling
        // and the seeds' t interval (26.67 ± 4.303 · 3.51 / √3).
        let row = paired_row([
            predicted_run(dir.path(), "tcl-1", 1, true, 160),
            predicted_run(dir.path(), "tcl-2", 2, true, 150),
            predicted_run(dir.path(), "tcl-3", 3, true, 156),
        ]);
        assert!(
            row.starts_with(
                "| CE + TCL semi-synth., attention | CE, attention | 1, 2, 3 | **+26.67 real** (+30.00, \
                +23.00, +27.00) faces ["
            ),
            "{row}"
        );
        assert!(row.contains("seeds [+17.94, +35.39] |"), "{row}");
        // +1, -1 and +1 face: the seeds disagree, so nothing is claimed.
        let row = paired_row([
            predicted_run(dir.path(), "tcl-4", 1, true, 101),
            predicted_run(dir.path(), "tcl-5", 2, true, 103),
            predicted_run(dir.path(), "tcl-6", 3, true, 103),
        ]);
        assert!(row.contains("| 1, 2, 3 | +0.17 (+0.50, -0.50, +0.50) faces ["), "{row}");
        assert!(!row.contains("real"), "{row}");
    }

    #[test]
    fn seed_intervals_and_chance_rates() {
        let (lo, hi) = t_interval(&[1.0, 2.0, 3.0]).unwrap();
        assert!((lo - (2.0 - 4.303 / 3f64.sqrt())).abs() < 1e-9 && (hi - (2.0 + 4.303 / 3f64.sqrt())).abs() < 1e-9);
        assert_eq!(t_interval(&[1.0]), None);
        // 2 of the 20 orders of 3 + 3 seeds, 2 of the 6 of 2 + 2.
        assert!((chance_beyond_spread(3, 3) - 0.1).abs() < 1e-12);
        assert!((chance_beyond_spread(2, 2) - 1.0 / 3.0).abs() < 1e-12);
        // Both intervals must exclude 0.
        assert!(paired_cell(&[0.1, 0.2], (0.05, 0.25), Some((0.01, 0.3))).contains("real"));
        assert!(!paired_cell(&[0.1, 0.2], (0.05, 0.25), Some((-0.01, 0.3))).contains("real"));
        assert!(!paired_cell(&[0.1], (0.05, 0.25), None).contains("real"));
    }

    #[test]
    fn runs_of_different_budgets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = fake_run(dir.path(), "a", 1, false, 5);
        let b = fake_run(dir.path(), "b", 1, true, 5);
        let mut config = Run::at(&b).config().unwrap();
        config.epochs += 1;
        Run::at(&b).write_config(&config).unwrap();
        assert!(
            table(&[a.clone(), b.clone()])
                .unwrap_err()
                .to_string()
                .contains("another budget")
        );
        assert!(table(&[dir.path().join("missing")]).is_err());
        // Settings the budget line does not show are checked too, and named.
        config.epochs -= 1;
        config.weight_decay *= 2.0;
        Run::at(&b).write_config(&config).unwrap();
        let error = table(&[a.clone(), b.clone()]).unwrap_err().to_string();
        assert!(error.contains("(in weight_decay)"), "{error}");
        // TCL runs must share λ and the margin.
        let c = fake_run(dir.path(), "c", 2, true, 5);
        let mut other = Run::at(&c).config().unwrap();
        other.tcl.as_mut().unwrap().lambda *= 2.0;
        Run::at(&c).write_config(&other).unwrap();
        let d = fake_run(dir.path(), "d", 1, true, 5);
        let error = table(&[a, c, d.clone()]).unwrap_err().to_string();
        assert!(error.contains("other settings"), "{error}");
        // Semi-synthesized runs must share α.
        let e = fake_run(dir.path(), "e", 2, true, 5);
        let mut other = Run::at(&e).config().unwrap();
        other.tcl.as_mut().unwrap().negatives = Negatives::SemiSynthesized { alpha: 0.7 };
        Run::at(&e).write_config(&other).unwrap();
        let error = table(&[d, e]).unwrap_err().to_string();
        assert!(error.contains("α 0.7 and 0.5"), "{error}");
    }
}
