//! RAF-DB basic emotions (Li et al., 2017). Users bring their own licensed copy.
//!
//! Layout: `ROOT/EmoLabel/list_patition_label.txt` (sic) with lines `train_00001.jpg 5`, ids 1..=7
//! = surprise, fear, disgust, happiness, sadness, anger, neutral (the canonical order), and the
//! aligned 100x100 crops in `ROOT/Image/aligned/<stem>_aligned.jpg`. The split is the file name's
//! `train_` / `test_` prefix; `test` is used as the valid split.

use std::path::PathBuf;

use fer_protocol::Expression;

use super::{Collector, DatasetError, ExpressionSource, LoadOptions, LoadedSplit, Split};

/// The RAF-DB basic loader.
pub struct RafDb {
    root: PathBuf,
}

impl RafDb {
    /// A loader for the RAF-DB tree at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl ExpressionSource for RafDb {
    fn describe(&self) -> String {
        format!("RAF-DB ({})", self.root.display())
    }

    fn load(&self, split: Split, options: LoadOptions) -> Result<LoadedSplit, DatasetError> {
        let list = self.root.join("EmoLabel/list_patition_label.txt");
        let text = std::fs::read_to_string(&list).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DatasetError::Missing {
                path: list.clone(),
                what: "RAF-DB label list",
            },
            _ => DatasetError::io(&list, e),
        })?;
        let prefix = match split {
            Split::Train => "train_",
            Split::Valid => "test_",
        };
        let images = self.root.join("Image/aligned");
        let mut collector = Collector::new(options);
        let mut jobs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let parsed = (|| {
                let mut fields = line.split_whitespace();
                let (Some(file), Some(id), None) = (fields.next(), fields.next(), fields.next()) else {
                    return Err(DatasetError::row(
                        &list,
                        line_no,
                        format!("expected `FILE LABEL`, found {line:?}"),
                    ));
                };
                let label = id
                    .parse::<usize>()
                    .ok()
                    .and_then(|id| id.checked_sub(1))
                    .and_then(Expression::from_index)
                    .ok_or_else(|| {
                        DatasetError::row(&list, line_no, format!("unknown label {id:?}; expected 1..=7"))
                    })?;
                Ok((file.to_owned(), label))
            })();
            match parsed {
                Ok((file, label)) if file.starts_with(prefix) => {
                    let stem = file.rsplit_once('.').map_or(file.as_str(), |(stem, _)| stem);
                    jobs.push((images.join(format!("{stem}_aligned.jpg")), label, None));
                }
                Ok(_) => {}
                Err(error) => collector.push(Err(error))?,
            }
        }
        collector.decode(jobs, None)?;
        collector.finish(&self.root, split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("EmoLabel")).unwrap();
        std::fs::create_dir_all(root.join("Image/aligned")).unwrap();
        for stem in ["train_00001", "train_00002", "test_0001"] {
            image::GrayImage::from_pixel(100, 100, image::Luma([90]))
                .save(root.join(format!("Image/aligned/{stem}_aligned.jpg")))
                .unwrap();
        }
        std::fs::write(
            root.join("EmoLabel/list_patition_label.txt"),
            "train_00001.jpg 5\ntrain_00002.jpg 1\ntest_0001.jpg 7\ntrain_00003.jpg 4\n",
        )
        .unwrap();
        let source = RafDb::new(root);
        // train_00003's image is missing: an error naming it, or skipped and counted.
        let error = source
            .load(Split::Train, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("train_00003_aligned.jpg"), "{error}");
        let train = source.load(Split::Train, LoadOptions { skip_bad: true }).unwrap();
        let labels: Vec<_> = train.samples.iter().map(|s| s.label).collect();
        assert_eq!(labels, [Expression::Sadness, Expression::Surprise]);
        assert_eq!((train.samples[0].width, train.samples[0].height), (100, 100));
        assert_eq!(train.skipped.len(), 1);
        let test = source.load(Split::Valid, LoadOptions::default()).unwrap();
        assert_eq!(test.samples[0].label, Expression::Neutral);

        std::fs::write(root.join("EmoLabel/list_patition_label.txt"), "train_00001.jpg 8\n").unwrap();
        let error = source
            .load(Split::Train, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("list_patition_label.txt:1: unknown label \"8\""),
            "{error}"
        );
    }
}
