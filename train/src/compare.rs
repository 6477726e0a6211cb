//! The comparison table: run folders grouped by configuration (loss, negatives, attention),
//! each metric as mean ± spread over the seeds, so a reader sees which differences exceed the
//! seed-to-seed variation.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use fer_protocol::Expression;

use crate::loss::Negatives;
use crate::metrics::Metrics;
use crate::report::EpochRecord;
use crate::training::{TrainConfig, files, load_config, read_json};

/// One finished run.
#[derive(Clone, Debug)]
pub struct Run {
    /// Its folder.
    pub path: PathBuf,
    /// Its configuration.
    pub config: TrainConfig,
    /// Its final evaluation.
    pub report: Metrics,
    /// Its epochs, in order.
    pub records: Vec<EpochRecord>,
}

impl Run {
    /// Reads a run folder written by `fer-train train`.
    pub fn load(path: &Path) -> Result<Self> {
        let config = load_config(path)?;
        let report: Metrics = read_json(&path.join(files::REPORT)).context("is the run finished?")?;
        let metrics = path.join(files::METRICS);
        let text = std::fs::read_to_string(&metrics).with_context(|| format!("reading {}", metrics.display()))?;
        let records = text
            .lines()
            .enumerate()
            .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("{}:{}", metrics.display(), i + 1)))
            .collect::<Result<_>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            config,
            report,
            records,
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

    /// What every compared run must share: budget, backbone and the cross-entropy's targets.
    fn budget_key(&self) -> String {
        let c = &self.config;
        format!(
            "{} epochs, batch {}, lr {}, limit {:?}, {:?} backbone, vote labels {}, smoothing {}, logit adjustment {}, class weight power {}",
            c.epochs,
            c.batch_size,
            c.lr,
            c.limit,
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

/// The markdown table of the runs; every run must share one training budget.
pub fn table(paths: &[PathBuf]) -> Result<String> {
    ensure!(!paths.is_empty(), "no run folders given");
    let runs = paths
        .iter()
        .map(|p| Run::load(p).with_context(|| format!("run {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let budget = runs[0].budget_key();
    for run in &runs {
        ensure!(
            run.budget_key() == budget,
            "{} has another budget ({}) than {} ({budget})",
            run.path.display(),
            run.budget_key(),
            runs[0].path.display()
        );
    }
    let mut groups: BTreeMap<(String, bool), Vec<&Run>> = BTreeMap::new();
    for run in &runs {
        groups
            .entry((loss(&run.config), run.config.network.attention))
            .or_default()
            .push(run);
    }
    let mut out = format!("Budget: {budget}. Values in % as mean ± half the range over the seeds.\n\n");
    out.push_str("| configuration | seeds | accuracy | mean class acc. | macro-F1 |");
    for e in Expression::ALL {
        write!(out, " {} |", e.name())?;
    }
    out.push_str(" train time |\n|---|---:|---:|---:|---:|");
    out.push_str(&"---:|".repeat(Expression::COUNT));
    out.push_str("---:|\n");
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
        writeln!(out, " {minutes:.0} min |")?;
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
        out.push_str(
            "\nDifferences in points; beyond the spread when the two configurations' ranges over the seeds do not overlap.\n\n",
        );
        out.push_str(
            "| configuration | against | Δ accuracy | Δ mean class acc. | Δ macro-F1 |\n|---|---|---:|---:|---:|\n",
        );
        for (a, b, runs_a, runs_b) in pairs {
            let delta = |f: fn(&Metrics) -> f64| {
                let values = |runs: &[&Run]| runs.iter().map(|r| f(&r.report)).collect::<Vec<_>>();
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
    }
    Ok(out)
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
        std::fs::write(run.join(files::CONFIG), serde_json::to_string(&config).unwrap()).unwrap();
        std::fs::write(run.join(files::REPORT), serde_json::to_string(&report).unwrap()).unwrap();
        std::fs::write(run.join(files::METRICS), serde_json::to_string(&record).unwrap() + "\n").unwrap();
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

    #[test]
    fn runs_of_different_budgets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = fake_run(dir.path(), "a", 1, false, 5);
        let b = fake_run(dir.path(), "b", 1, true, 5);
        let mut config = load_config(&b).unwrap();
        config.epochs += 1;
        std::fs::write(b.join(files::CONFIG), serde_json::to_string(&config).unwrap()).unwrap();
        assert!(table(&[a, b]).unwrap_err().to_string().contains("another budget"));
        assert!(table(&[dir.path().join("missing")]).is_err());
    }
}
