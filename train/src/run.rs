//! A run folder: what one training run leaves on disk, and the one place that reads and writes it.
//!
//! It holds everything needed to use or continue a run: `config.json` (what made it),
//! `model.burnpack` (weights; `model_ema.burnpack` too in a run that averages them),
//! `optimizer.burnpack` and `state.json` (to resume), `metrics.jsonl` (one line per epoch), and
//! the final report (`report.txt`, `report.json`, `curves.png`, `confusion.png`). Every file is
//! written atomically, and a checkpoint is committed by its `state.json` ([`Run::save_checkpoint`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::prelude::*;
use tracing::warn;

use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::metrics::Metrics;
use crate::model::ExpressionNet;
use crate::report::{EpochRecord, plot_confusion, plot_curves};

/// Progress of a run, saved as `state.json` with every checkpoint, always at an epoch's end.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    /// Epochs fully trained.
    pub epochs_done: usize,
}

/// File names inside a run folder.
pub mod files {
    /// The training configuration.
    pub const CONFIG: &str = "config.json";
    /// Model weights.
    pub const MODEL: &str = "model.burnpack";
    /// Optimizer state.
    pub const OPTIMIZER: &str = "optimizer.burnpack";
    /// The moving average of the weights, in a run that keeps one: the model it reports.
    pub const EMA: &str = "model_ema.burnpack";
    /// Run progress.
    pub const STATE: &str = "state.json";
    /// What each teacher of a distilled run held when its targets were computed.
    pub const TEACHERS: &str = "teachers.json";
    /// Per-epoch metrics.
    pub const METRICS: &str = "metrics.jsonl";
    /// The final evaluation on the valid split.
    pub const REPORT: &str = "report.json";
    /// The same, as text.
    pub const REPORT_TEXT: &str = "report.txt";
    /// Accuracy and loss per epoch, drawn.
    pub const CURVES: &str = "curves.png";
    /// The final confusion matrix, drawn.
    pub const CONFUSION: &str = "confusion.png";
    /// A finished run's answers face by face ([`crate::predictions::Predictions`]).
    pub const PREDICTIONS: &str = "predictions.json";
}

/// A run folder (it need not exist yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    dir: PathBuf,
}

impl Run {
    /// The run folder at `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file of the folder, by its name in [`files`].
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether a run was started here (its config is written first).
    pub fn exists(&self) -> bool {
        self.file(files::CONFIG).exists()
    }

    /// Whether the run finished (its report is written last).
    pub fn finished(&self) -> bool {
        self.file(files::REPORT).is_file()
    }

    /// Creates the folder.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating run folder {}", self.dir.display()))
    }

    /// The run's `config.json`.
    pub fn config(&self) -> Result<TrainConfig> {
        read_json(&self.file(files::CONFIG))
            .with_context(|| format!("{}: not a run folder (no readable config.json)", self.dir.display()))
    }

    /// Writes `config.json`.
    pub fn write_config(&self, config: &TrainConfig) -> Result<()> {
        write_json(&self.file(files::CONFIG), config)
    }

    /// The committed progress: `None` before the first epoch ended (no `state.json`).
    pub fn state(&self) -> Result<Option<RunState>> {
        let path = self.file(files::STATE);
        if !path.is_file() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Epochs fully trained (0 before the first checkpoint).
    pub fn epochs_done(&self) -> Result<usize> {
        Ok(self.state()?.map_or(0, |s| s.epochs_done))
    }

    /// `metrics.jsonl`: one record per finished epoch. The file is only ever rewritten whole
    /// and atomically, so a line that does not parse is damage: an error naming the file and line.
    pub fn records(&self) -> Result<Vec<EpochRecord>> {
        read_records(&self.file(files::METRICS))
    }

    /// Rewrites `metrics.jsonl` whole.
    pub fn write_records(&self, records: &[EpochRecord]) -> Result<()> {
        let mut text = String::new();
        for record in records {
            text.push_str(&serde_json::to_string(record)?);
            text.push('\n');
        }
        write_atomically(&self.file(files::METRICS), |tmp| {
            std::fs::write(tmp, text).with_context(|| format!("writing {}", tmp.display()))
        })
    }

    /// Removes `metrics.jsonl` (a run starting over).
    pub fn remove_records(&self) -> Result<()> {
        match std::fs::remove_file(self.file(files::METRICS)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.file(files::METRICS).display()))
            }
            _ => Ok(()),
        }
    }

    /// Writes `state.json` alone (a copy of a run; a checkpoint writes it through
    /// [`Run::save_checkpoint`]).
    pub fn save_state(&self, state: &RunState) -> Result<()> {
        write_json(&self.file(files::STATE), state)
    }

    /// The final evaluation on the valid split (`report.json`).
    pub fn report(&self) -> Result<Metrics> {
        read_json(&self.file(files::REPORT)).with_context(|| format!("{}: is the run finished?", self.dir.display()))
    }

    /// Writes `report.txt`, `report.json` and the plots.
    pub fn write_report(&self, valid: &Metrics, records: &[EpochRecord]) -> Result<()> {
        std::fs::write(self.file(files::REPORT_TEXT), format!("{valid}\n"))
            .with_context(|| format!("writing report in {}", self.dir.display()))?;
        write_json(&self.file(files::REPORT), valid)?;
        for result in [
            plot_curves(records, &self.file(files::CURVES)),
            plot_confusion(valid, &self.file(files::CONFUSION)),
        ] {
            if let Err(error) = result {
                warn!("{error:#}");
            }
        }
        Ok(())
    }

    /// The model the run reports, with its config: the average of the weights in a run that keeps
    /// one, else the weights.
    pub fn load_model(&self, device: &Device) -> Result<(ExpressionNet, TrainConfig)> {
        let config = self.config()?;
        Ok((self.load_reported(&config, device)?, config))
    }

    /// The model the run reports ([`Run::load_model`]) as a network of `config`, the folder's
    /// `config.json` read before.
    pub fn load_reported(&self, config: &TrainConfig, device: &Device) -> Result<ExpressionNet> {
        let file = if config.ema.is_some() { files::EMA } else { files::MODEL };
        self.load_weights(file, config, device)
    }

    /// One weights file of the folder, as a model of `config`'s network.
    pub fn load_weights(&self, file: &str, config: &TrainConfig, device: &Device) -> Result<ExpressionNet> {
        let weights = self.file(file);
        if !weights.is_file() {
            bail!("{}: no checkpoint ({file}) in this run folder", self.dir.display());
        }
        ExpressionNet::new(&config.network, device)
            .try_load_file(&weights)
            .map_err(|e| anyhow::anyhow!("{}: {e:?} (does config.json match the weights?)", weights.display()))
    }

    /// The optimizer state of the last checkpoint.
    pub fn load_optimizer(&self, config: &TrainConfig) -> Result<burn::optim::ModuleOptimizer> {
        let path = self.file(files::OPTIMIZER);
        AdamWConfig::new()
            .with_weight_decay(config.weight_decay)
            .init()
            .load(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
    }

    /// Writes `model` as the folder's weights (a copy that is not trained further).
    pub fn save_model(&self, model: &ExpressionNet) -> Result<()> {
        save_model(&self.file(files::MODEL), model)
    }

    /// Writes a checkpoint: the weights, the optimizer, the average if the run keeps one, then
    /// the state that names the epoch. A kill can land between any two writes, so the new files
    /// go under `NAME.epoch-N` first, state.json moving on to epoch N commits them, and only then
    /// do they take their names ([`Run::settle`]); until then the folder holds the previous
    /// checkpoint whole.
    pub fn save_checkpoint(
        &self,
        model: &ExpressionNet,
        optimizer: &burn::optim::ModuleOptimizer,
        ema: Option<&Ema>,
        state: &RunState,
    ) -> Result<()> {
        let pending = |file: &str| self.file(&pending_name(file, state.epochs_done));
        save_model(&pending(files::MODEL), model)?;
        write_atomically(&pending(files::OPTIMIZER), |p| {
            optimizer
                .to_record()
                .save(p)
                .map_err(|e| anyhow::anyhow!("{}: {e:?}", p.display()))
        })?;
        if let Some(ema) = ema {
            save_model(&pending(files::EMA), ema.model())?;
        }
        write_json(&self.file(files::STATE), state)?;
        self.settle(state.epochs_done)
    }

    /// Finishes or discards what a kill left of a checkpoint: files of the committed epoch
    /// `epochs_done` take their names, those of any other epoch (never committed, or stale) go.
    pub fn settle(&self, epochs_done: usize) -> Result<()> {
        for file in [files::MODEL, files::OPTIMIZER, files::EMA] {
            let committed = self.file(&pending_name(file, epochs_done));
            if committed.is_file() {
                std::fs::rename(&committed, self.file(file))
                    .with_context(|| format!("moving {} into place", committed.display()))?;
            }
            let prefix = pending_name(file, 0);
            let prefix = &prefix[..prefix.len() - 1];
            let listing = std::fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))?;
            for entry in listing {
                let path = entry?.path();
                if path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
                {
                    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                }
            }
        }
        Ok(())
    }
}

/// The name a checkpoint file has until the state of epoch `epoch` commits it.
fn pending_name(file: &str, epoch: usize) -> String {
    format!("{file}.epoch-{epoch}")
}

fn read_records(path: &Path) -> Result<Vec<EpochRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1)))
        .collect()
}

fn save_model(path: &Path, model: &ExpressionNet) -> Result<()> {
    write_atomically(path, |p| {
        model
            .clone()
            .save_file(p)
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", p.display()))
    })
}

/// Writes `path` through a temporary file, an fsync and a rename: a crash or power cut at any
/// point leaves either the old file or the new one, never half of one. The temporary name is
/// unique to the process and the call, so two writers never share one.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|file| file.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself is durable only once the folder is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// Writes a JSON file of a run folder atomically (config, state, report, predictions).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    write_atomically(path, |tmp| {
        std::fs::write(tmp, text).with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Reads and parses a JSON file of a run folder (config, state, report).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_metrics_line_is_an_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let run = Run::at(dir.path());
        std::fs::write(run.file(files::METRICS), "{\"epoch\": 1}\n").unwrap();
        let error = format!("{:#}", run.records().unwrap_err());
        assert!(error.contains("metrics.jsonl:1"), "{error}");
        assert!(Run::at(dir.path().join("none")).records().is_err());
    }

    #[test]
    fn rewriting_the_records_keeps_every_float_to_its_last_digit() {
        // Each sitting of a resumed run reads metrics.jsonl and writes it back whole; a float that
        // does not survive that (this learning rate lost its last digit) would change the record
        // of epochs trained long ago.
        let dir = tempfile::tempdir().unwrap();
        let run = Run::at(dir.path());
        let line = r#"{"epoch":15,"lr":0.0019324967433435362,"train_loss":0.6041591925149099,"train_ce":0.5928979486150423,"train_tcl":1.12612446882118,"train_accuracy":0.8347124035989717,"images_per_second":3.413507961970754,"seconds":7303.611209874,"valid":{"count":3175,"accuracy":0.8544881889763779,"mean_class_accuracy":0.701900207044952,"macro_f1":0.7376528965203979,"per_class_recall":[0.8953771289537713,0.5,0.28,0.95707656612529,0.6149425287356322,0.7820069204152249,0.8838983050847458],"confusion":[[368,9,0,7,1,7,19],[16,30,0,2,2,1,9],[0,0,7,0,2,10,6],[8,0,0,825,4,3,22],[4,2,0,17,214,5,106],[16,3,1,12,5,226,26],[20,0,0,48,57,12,1043]]}}"#;
        std::fs::write(run.file(files::METRICS), format!("{line}\n")).unwrap();
        run.write_records(&run.records().unwrap()).unwrap();
        assert_eq!(
            std::fs::read_to_string(run.file(files::METRICS)).unwrap(),
            format!("{line}\n")
        );
    }

    #[test]
    fn a_checkpoint_cut_short_is_rolled_forward_once_committed_and_discarded_if_not() {
        let dir = tempfile::tempdir().unwrap();
        let run = Run::at(dir.path());
        let read = |f: &str| std::fs::read_to_string(run.file(f)).ok();
        let write =
            |f: &str, epoch: usize, text: &str| std::fs::write(run.file(&pending_name(f, epoch)), text).unwrap();
        std::fs::write(run.file(files::MODEL), "epoch 2").unwrap();
        write(files::MODEL, 3, "epoch 3");
        write(files::OPTIMIZER, 3, "epoch 3");
        write(files::MODEL, 1, "stale");
        // Killed before state.json said epoch 3: the files of epoch 2 stand, the rest go.
        run.settle(2).unwrap();
        assert_eq!(read(files::MODEL).as_deref(), Some("epoch 2"));
        assert_eq!(std::fs::read_dir(run.dir()).unwrap().count(), 1);
        // Killed after state.json said epoch 3, before the renames: they are finished.
        write(files::MODEL, 3, "epoch 3");
        write(files::OPTIMIZER, 3, "epoch 3");
        run.settle(3).unwrap();
        assert_eq!(read(files::MODEL).as_deref(), Some("epoch 3"));
        assert_eq!(read(files::OPTIMIZER).as_deref(), Some("epoch 3"));
        assert_eq!(std::fs::read_dir(run.dir()).unwrap().count(), 2);
    }
}
