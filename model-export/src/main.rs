//! `fer-export`: turn a fer-train checkpoint into the ONNX models the sensor runs.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use fer_export::{ExportOptions, export};

/// Export a fer-train checkpoint to ONNX: f32, int8 (static post-training quantization through
/// tract), golden vectors and a report.
///
/// Writes OUT.f32.onnx, OUT.int8.onnx, OUT.golden.json, OUT.report.json and OUT.report.md, and only
/// once every check has passed: Burn-vs-tract parity of the f32 model, int8-vs-f32 agreement and
/// accuracy on the evaluation images. Both models carry the contract (labels, input spec, output
/// names, version, weight checksum, training and evaluation summary) in their ONNX metadata.
///
/// Data sets are KIND:PATH as in fer-train (ferplus:DIR, rafdb:DIR, fer2013:FILE, folders:DIR).
///
/// Example (how the shipped models are made; the stem and depthwise convs stay f32, without
/// which the int8 file misses the agreement gate):
///   fer-export --run runs/ferplus --calibration ferplus:../shared/data/ferplus \
///       --f32-convs 0,1,3,5,7,9,11 --out models/fer
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    options: ExportOptions,
}

fn run(cli: Cli) -> Result<()> {
    let options = cli.options;
    let report = export(&options)?;
    print!("{}", fer_export::report::markdown(&report, &options));
    for file in &report.files {
        println!("wrote {}", file.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
