//! The original FER2013 CSV: `emotion,pixels,Usage`, 48x48 faces as space-separated pixels.
//!
//! Labels 0..=6 are angry, disgust, fear, happy, sad, surprise, neutral. `Usage` `Training` is the
//! train split; `PublicTest` is the valid split (`PrivateTest` is left for final testing).

use std::path::PathBuf;

use fer_protocol::Expression;

use super::{Collector, DatasetError, ExpressionSource, LoadOptions, LoadedSplit, Sample, Split};

const LABELS: [Expression; 7] = [
    Expression::Anger,
    Expression::Disgust,
    Expression::Fear,
    Expression::Happiness,
    Expression::Sadness,
    Expression::Surprise,
    Expression::Neutral,
];

/// The FER2013 CSV loader.
pub struct Fer2013Csv {
    file: PathBuf,
}

impl Fer2013Csv {
    /// A loader for the CSV at `file`.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self { file: file.into() }
    }
}

impl ExpressionSource for Fer2013Csv {
    fn describe(&self) -> String {
        format!("FER2013 CSV ({})", self.file.display())
    }

    fn load(&self, split: Split, options: LoadOptions) -> Result<LoadedSplit, DatasetError> {
        let path = &self.file;
        if !path.is_file() {
            return Err(DatasetError::Missing {
                path: path.clone(),
                what: "FER2013 CSV file",
            });
        }
        let usage = match split {
            Split::Train => "Training",
            Split::Valid => "PublicTest",
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_path(path)
            .map_err(|e| DatasetError::image(path, e))?;
        let mut collector = Collector::new(options);
        for (i, record) in reader.records().enumerate() {
            let line = i + 2; // 1-based, after the header
            let row = record
                .map_err(|e| DatasetError::row(path, line, e.to_string()))
                .and_then(|r| {
                    if r.len() != 3 {
                        return Err(DatasetError::row(
                            path,
                            line,
                            format!("expected 3 fields (emotion,pixels,Usage), found {}", r.len()),
                        ));
                    }
                    Ok((r[0].trim().to_owned(), r[1].to_owned(), r[2].trim().to_owned()))
                });
            let (emotion, pixels, row_usage) = match row {
                Ok(row) => row,
                Err(error) => {
                    collector.push(Err(error))?;
                    continue;
                }
            };
            if row_usage != usage {
                continue;
            }
            let sample = (|| {
                let label = emotion
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| LABELS.get(i).copied())
                    .ok_or_else(|| {
                        DatasetError::row(path, line, format!("unknown emotion {emotion:?}; expected 0..=6"))
                    })?;
                let pixels: Vec<u8> = pixels
                    .split_ascii_whitespace()
                    .map(str::parse::<u8>)
                    .collect::<Result<_, _>>()
                    .map_err(|e| DatasetError::row(path, line, format!("bad pixel value: {e}")))?;
                if pixels.len() != 48 * 48 {
                    return Err(DatasetError::row(
                        path,
                        line,
                        format!("{} pixels, expected 48x48 = 2304", pixels.len()),
                    ));
                }
                Ok(Sample {
                    pixels,
                    width: 48,
                    height: 48,
                    label,
                    votes: None,
                })
            })();
            collector.push(sample)?;
        }
        collector.finish(path, split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_rows_by_usage_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fer2013.csv");
        let face = vec!["128"; 2304].join(" ");
        std::fs::write(
            &file,
            format!(
                "emotion,pixels,Usage\n3,{face},Training\n0,{face},PublicTest\n9,{face},Training\n5,1 2 3,Training\n"
            ),
        )
        .unwrap();
        let source = Fer2013Csv::new(&file);
        let error = source
            .load(Split::Train, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("fer2013.csv:4") && error.contains("unknown emotion"),
            "{error}"
        );
        let train = source.load(Split::Train, LoadOptions { skip_bad: true }).unwrap();
        assert_eq!(train.samples.len(), 1);
        assert_eq!(train.samples[0].label, Expression::Happiness);
        assert!(train.skipped[1].to_string().contains("fer2013.csv:5: 3 pixels"));
        let valid = source.load(Split::Valid, LoadOptions::default()).unwrap();
        assert_eq!(valid.samples[0].label, Expression::Anger);
    }
}
