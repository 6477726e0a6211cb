//! FER+ : FER2013 images relabelled by 10 annotators (Barsoum et al., 2016).
//!
//! Layout: `ROOT/FER2013Train/` and `ROOT/FER2013Valid/`, each with 48x48 PNGs and a headerless
//! `label.csv`: `file,"(x, y, w, h)",neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF`.
//! Labels follow the FER+ majority protocol: single votes count as noise (set to 0); the label is
//! the column holding more than half of the remaining votes, if any; `unknown` and `NF` (not a
//! face) are left out, and so is `contempt`, which is not one of the 7 basic expressions.

use std::path::{Path, PathBuf};

use fer_protocol::Expression;

use super::{Collector, DatasetError, ExpressionSource, LoadOptions, LoadedSplit, Split};

/// Vote columns in `label.csv` order; `None` for the columns that are not a basic expression.
const COLUMNS: [Option<Expression>; 10] = [
    Some(Expression::Neutral),
    Some(Expression::Happiness),
    Some(Expression::Surprise),
    Some(Expression::Sadness),
    Some(Expression::Anger),
    Some(Expression::Disgust),
    Some(Expression::Fear),
    None, // contempt
    None, // unknown
    None, // NF
];

/// The FER+ loader.
pub struct FerPlus {
    root: PathBuf,
}

impl FerPlus {
    /// A loader for the FER+ tree at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn split_dir(&self, split: Split) -> PathBuf {
        self.root.join(match split {
            Split::Train => "FER2013Train",
            Split::Valid => "FER2013Valid",
        })
    }
}

/// The label the FER+ majority protocol gives these ten vote counts, and the 7-class vote
/// distribution; `None` when the image has no majority or its majority is not a basic expression.
pub fn majority_label(votes: [u32; 10]) -> Option<(Expression, [f32; Expression::COUNT])> {
    let votes = votes.map(|v| if v == 1 { 0 } else { v });
    // In u64: ten u32 counts cannot overflow it, whatever a label file holds.
    let sum: u64 = votes.iter().map(|&v| u64::from(v)).sum();
    let (column, &max) = votes
        .iter()
        .enumerate()
        .max_by_key(|&(i, v)| (*v, std::cmp::Reverse(i)))?;
    if sum == 0 || 2 * u64::from(max) <= sum {
        return None;
    }
    let label = COLUMNS[column]?;
    let mut distribution = [0.0; Expression::COUNT];
    let mut basic = 0.0;
    for (v, column) in votes.iter().zip(COLUMNS) {
        if let Some(e) = column {
            distribution[e.index()] = *v as f32;
            basic += *v as f32;
        }
    }
    distribution.iter_mut().for_each(|d| *d /= basic);
    Some((label, distribution))
}

fn parse_row(path: &Path, line: usize, record: &csv::StringRecord) -> Result<(String, [u32; 10]), DatasetError> {
    if record.len() != 12 {
        return Err(DatasetError::row(
            path,
            line,
            format!("expected 12 fields (file, box, 10 votes), found {}", record.len()),
        ));
    }
    let mut votes = [0u32; 10];
    for (i, vote) in votes.iter_mut().enumerate() {
        let field = record[i + 2].trim();
        *vote = field
            .parse()
            .map_err(|_| DatasetError::row(path, line, format!("vote column {} is {field:?}, not a count", i + 1)))?;
    }
    Ok((record[0].trim().to_owned(), votes))
}

impl ExpressionSource for FerPlus {
    fn describe(&self) -> String {
        format!("FER+ ({})", self.root.display())
    }

    fn load(&self, split: Split, options: LoadOptions) -> Result<LoadedSplit, DatasetError> {
        let dir = self.split_dir(split);
        let labels = dir.join("label.csv");
        if !labels.is_file() {
            return Err(DatasetError::Missing {
                path: labels,
                what: "FER+ label file",
            });
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(&labels)
            .map_err(|e| DatasetError::image(&labels, e))?;
        let mut collector = Collector::new(options);
        let mut jobs = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let line = i + 1;
            let row = record
                .map_err(|e| DatasetError::row(&labels, line, e.to_string()))
                .and_then(|record| parse_row(&labels, line, &record));
            match row {
                Ok((file, votes)) => match majority_label(votes) {
                    Some((label, distribution)) => jobs.push((dir.join(file), label, Some(distribution))),
                    None => collector.excluded += 1,
                },
                Err(error) => collector.push(Err(error))?,
            }
        }
        collector.decode(jobs, Some((48, 48)))?;
        collector.finish(&dir, split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_protocol() {
        // 6 neutral, 3 sadness, 1 fear: the single fear vote is noise; 6 > 9/2.
        let (label, dist) = majority_label([6, 0, 0, 3, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(label, Expression::Neutral);
        assert!((dist[Expression::Neutral.index()] - 6.0 / 9.0).abs() < 1e-6);
        assert_eq!(dist[Expression::Fear.index()], 0.0);
        // 5 happiness vs 5 surprise: no strict majority.
        assert_eq!(majority_label([0, 5, 5, 0, 0, 0, 0, 0, 0, 0]), None);
        // Majority contempt, unknown or NF: left out of the 7-class task.
        assert_eq!(majority_label([2, 0, 0, 0, 0, 0, 0, 8, 0, 0]), None);
        assert_eq!(majority_label([0, 0, 0, 0, 0, 0, 0, 0, 10, 0]), None);
        assert_eq!(majority_label([0, 0, 0, 0, 0, 0, 0, 0, 0, 10]), None);
        // All single votes are noise: unlabelled.
        assert_eq!(majority_label([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]), None);
        // Absurd counts from a damaged file neither overflow nor panic.
        let tie = majority_label([u32::MAX, u32::MAX, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(
            tie.map(|(label, _)| label),
            None,
            "a tie of two huge counts has no majority"
        );
        assert_eq!(
            majority_label([u32::MAX, 3, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap().0,
            Expression::Neutral
        );
    }

    #[test]
    fn loads_a_fixture_tree_and_names_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("FER2013Train");
        std::fs::create_dir(&train).unwrap();
        image::GrayImage::from_pixel(48, 48, image::Luma([7]))
            .save(train.join("a.png"))
            .unwrap();
        image::GrayImage::from_pixel(40, 40, image::Luma([7]))
            .save(train.join("small.png"))
            .unwrap();
        std::fs::write(
            train.join("label.csv"),
            "a.png,\"(0, 0, 48, 48)\",0,9,0,0,0,0,0,0,0,1\n\
             b.png,\"(0, 0, 48, 48)\",0,0,0,0,0,0,0,0,10,0\n\
             small.png,\"(0, 0, 48, 48)\",10,0,0,0,0,0,0,0,0,0\n\
             c.png,\"(0, 0, 48, 48)\",x,0,0,0,0,0,0,0,0,0\n",
        )
        .unwrap();
        let source = FerPlus::new(dir.path());
        let error = source
            .load(Split::Train, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("label.csv:4") && error.contains("\"x\""), "{error}");
        let loaded = source.load(Split::Train, LoadOptions { skip_bad: true }).unwrap();
        assert_eq!(loaded.samples.len(), 1);
        assert_eq!(loaded.samples[0].label, Expression::Happiness);
        assert_eq!(loaded.excluded, 1);
        assert_eq!(loaded.skipped.len(), 2);
        assert!(
            loaded
                .skipped
                .iter()
                .any(|e| e.to_string().contains("40x40, expected 48x48"))
        );
        let missing = source
            .load(Split::Valid, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("FER2013Valid") && missing.contains("not found"),
            "{missing}"
        );
    }
}
