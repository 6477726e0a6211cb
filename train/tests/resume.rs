//! A `fer-train` process killed at any moment and resumed ends exactly where an uninterrupted run
//! ends: same metrics for every epoch, same weights.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::prelude::*;
use fer_train::dataset::write_synthetic;
use fer_train::run::Run;

const EPOCHS: &str = "8";

fn train(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fer-train"));
    command
        .arg("train")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

#[test]
fn resume_takes_no_other_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_fer-train"))
        .args(["train", "--resume", "runs/any", "--teacher", "runs/other"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--resume") && stderr.contains("cannot be used with"),
        "{stderr}"
    );
}

fn fresh_run(data: &Path, out: &Path, extra: &[&str]) -> Command {
    // Dropout on, so the test also covers the random draws that continue across epochs.
    let data = format!("folders:{}", data.display());
    let out = out.display().to_string();
    let mut args = vec![
        "--data",
        &data,
        "--smoke",
        "--dropout",
        "0.3",
        "--epochs",
        EPOCHS,
        "--out",
        &out,
    ];
    args.extend(extra);
    train(&args)
}

fn epochs_done(run: &Path) -> usize {
    Run::at(run).epochs_done().unwrap_or(0)
}

/// What a run computes on a fixed probe, and its per-epoch metrics without the timings.
fn outcome(run: &Path) -> (Vec<f32>, Vec<serde_json::Value>) {
    let device = Device::flex();
    device.seed(9);
    let probe = Tensor::<4>::random([3, 1, 48, 48], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let (model, _) = Run::at(run).load_model(&device).unwrap();
    let logits = model.forward(probe).logits.into_data().try_to_vec::<f32>().unwrap();
    let records = Run::at(run)
        .records()
        .unwrap()
        .into_iter()
        .map(|mut record| {
            // Timings differ between any two runs.
            (record.seconds, record.images_per_second) = (0.0, 0.0);
            serde_json::to_value(record).unwrap()
        })
        .collect();
    (logits, records)
}

#[test]
fn a_killed_and_resumed_run_equals_an_uninterrupted_one() {
    killed_and_resumed_equals_uninterrupted(&[], &[(0, 0), (1, 0), (3, 7), (5, 23)]);
}

#[test]
fn a_killed_and_resumed_run_with_a_weight_average_equals_an_uninterrupted_one() {
    // The average is the model the run reports: it too must continue exactly.
    killed_and_resumed_equals_uninterrupted(&["--ema", "0.9"], &[(1, 0), (4, 11)]);
}

/// Kills runs with `extra` flags after each (finished epochs, delay in ms) of `kills` and checks
/// that the resumed run ends where an uninterrupted one does.
fn killed_and_resumed_equals_uninterrupted(extra: &[&str], kills: &[(usize, u64)]) {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    write_synthetic(&data, 8).unwrap();
    let reference = root.path().join("reference");
    assert!(fresh_run(&data, &reference, extra).status().unwrap().success());
    let expected = outcome(&reference);
    assert_eq!(expected.1.len(), 8);

    // Kill as soon as config.json exists (before any checkpoint), then after 1, 3 and 5 finished
    // epochs plus a moment, so the kill lands mid-epoch, during evaluation or while a checkpoint
    // is written, wherever the timing puts it.
    for (i, &(after_epochs, delay_ms)) in kills.iter().enumerate() {
        let run = root.path().join(format!("killed{i}"));
        let mut child = fresh_run(&data, &run, extra).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let started = || Run::at(&run).exists();
        while (!started() || epochs_done(&run) < after_epochs) && Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL: no handler runs
        child.wait().unwrap();
        let resumed = train(&["--resume", &run.display().to_string()]).status().unwrap();
        assert!(
            resumed.success(),
            "resume after a kill past epoch {after_epochs} failed"
        );
        assert_eq!(epochs_done(&run), 8);
        let got = outcome(&run);
        assert_eq!(
            got.1, expected.1,
            "metrics differ after a kill past epoch {after_epochs}"
        );
        assert!(
            got.0 == expected.0,
            "weights differ after a kill past epoch {after_epochs}"
        );
    }
}
