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
        let loss = match &self.config.tcl {
            None => "CE".to_string(),
            Some(tcl) => match tcl.negatives {
                Negatives::FullySynthesized => "CE + TCL fully-synth.".into(),
                Negatives::SemiSynthesized { .. } => "CE + TCL semi-synth.".into(),
                Negatives::PredictionBased => "CE + TCL prediction".into(),
            },
        };
        let attention = if self.config.network.attention {
            "attention"
        } else {
            "no attention"
        };
        format!("{loss}, {attention}")
    }

    /// Everything but the seed, so runs of one configuration group together.
    fn budget_key(&self) -> String {
        let c = &self.config;
        format!(
            "{} epochs, batch {}, lr {}, limit {:?}",
            c.epochs, c.batch_size, c.lr, c.limit
        )
    }
}

/// "mean ± spread" in percent; spread is half the range over the seeds (0 for one seed).
fn cell(values: &[f64]) -> String {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    if values.len() > 1 {
        format!("{:.2} ± {:.2}", 100.0 * mean, 50.0 * (hi - lo))
    } else {
        format!("{:.2}", 100.0 * mean)
    }
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
    let mut groups: BTreeMap<String, Vec<&Run>> = BTreeMap::new();
    for run in &runs {
        groups.entry(run.label()).or_default().push(run);
    }
    let mut out = format!("Budget: {budget}. Values in % as mean ± half the range over the seeds.\n\n");
    out.push_str("| configuration | seeds | accuracy | mean class acc. | macro-F1 |");
    for e in Expression::ALL {
        write!(out, " {} |", e.name())?;
    }
    out.push_str(" train time |\n|---|---:|---:|---:|---:|");
    out.push_str(&"---:|".repeat(Expression::COUNT));
    out.push_str("---:|\n");
    for (label, runs) in &groups {
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
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| CE")).collect();
        assert_eq!(rows.len(), 2, "{table}");
        assert!(
            rows[0].starts_with("| CE + TCL semi-synth., attention | 1 | 90.00 |"),
            "{table}"
        );
        assert!(
            rows[1].starts_with("| CE, attention | 1, 2 | 70.00 ± 10.00 |"),
            "{table}"
        );
        // Surprise recall is shown, fear's is "–" (no fear face), time is per run.
        assert!(rows[1].ends_with("| 2 min |") && rows[1].contains("| – |"), "{table}");
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
