//! Image folders: `ROOT/<label>/*.png|jpg`, or `ROOT/train/<label>/...` and `ROOT/valid/<label>/...`
//! (`val` and `test` also name the valid split). A flat tree has no valid split. Folder names are
//! parsed as expressions, so
//! `angry/`, `Happy/` and `surprise/` all work; an unknown folder name is an error.

use std::path::{Path, PathBuf};

use fer_protocol::Expression;

use super::{Collector, DatasetError, ExpressionSource, LoadOptions, LoadedSplit, Split};

/// The image-folder loader.
pub struct ImageFolders {
    root: PathBuf,
}

impl ImageFolders {
    /// A loader for the folder tree at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder holding the label folders of `split`.
    fn split_root(&self, split: Split) -> Result<PathBuf, DatasetError> {
        let names: &[&str] = match split {
            Split::Train => &["train"],
            Split::Valid => &["valid", "val", "test"],
        };
        if let Some(dir) = names.iter().map(|n| self.root.join(n)).find(|d| d.is_dir()) {
            return Ok(dir);
        }
        let has_splits = ["train", "valid", "val", "test"]
            .iter()
            .any(|n| self.root.join(n).is_dir());
        if has_splits {
            return Err(DatasetError::Missing {
                path: self.root.join(names[0]),
                what: "split folder",
            });
        }
        // A flat ROOT/<label>/ tree is all training images: validating on them would report
        // training accuracy as if it were held out.
        if split == Split::Valid {
            return Err(DatasetError::Missing {
                path: self.root.join(names[0]),
                what: "a validation folder; a flat DIR/<label>/ tree holds training images only: add \
                DIR/valid/<label>/ or name a validation set with --valid",
            });
        }
        Ok(self.root.clone())
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| DatasetError::io(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| DatasetError::io(dir, e)))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    Ok(entries)
}

impl ExpressionSource for ImageFolders {
    fn describe(&self) -> String {
        format!("image folders ({})", self.root.display())
    }

    fn load(&self, split: Split, options: LoadOptions) -> Result<LoadedSplit, DatasetError> {
        if !self.root.is_dir() {
            return Err(DatasetError::Missing {
                path: self.root.clone(),
                what: "image folder root",
            });
        }
        let root = self.split_root(split)?;
        let mut collector = Collector::new(options);
        let mut jobs = Vec::new();
        for dir in read_dir_sorted(&root)?.into_iter().filter(|p| p.is_dir()) {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let label = match Expression::parse(name) {
                Ok(label) => label,
                Err(unknown) => {
                    collector.push(Err(DatasetError::image(
                        &dir,
                        format!("folder name {name:?} is {unknown}"),
                    )))?;
                    continue;
                }
            };
            for path in read_dir_sorted(&dir)?.into_iter().filter(|p| is_image(p)) {
                // A folder or a FIFO with an image's name: reading a FIFO would block for ever.
                if path.is_file() {
                    jobs.push((path, label, None));
                } else {
                    collector.push(Err(DatasetError::image(&path, "not a regular file")))?;
                }
            }
        }
        collector.decode(jobs, None)?;
        collector.finish(&root, split)
    }
}

/// Writes a small learnable data set in the image-folder layout (`train/` and `valid/`, each
/// class a distinct stripe pattern), for tests and demos that must not depend on real faces.
pub fn write_synthetic(root: &Path, per_class: usize) -> std::io::Result<()> {
    for split in ["train", "valid"] {
        for expression in Expression::ALL {
            let dir = root.join(split).join(expression.name());
            std::fs::create_dir_all(&dir)?;
            for i in 0..per_class {
                let k = expression.index() as u32;
                let image = image::GrayImage::from_fn(48, 48, |x, y| {
                    image::Luma([((x * (k + 1) + y * 3 + i as u32 * 5) % 256) as u8])
                });
                image
                    .save(dir.join(format!("{i}.png")))
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_label_folders_with_synonyms() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (folder, n) in [("train/angry", 2), ("train/Happy", 1), ("valid/sad", 1)] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
            for i in 0..n {
                image::GrayImage::from_pixel(64, 64, image::Luma([10]))
                    .save(root.join(folder).join(format!("{i}.png")))
                    .unwrap();
            }
        }
        std::fs::write(root.join("train/angry/notes.txt"), "not an image").unwrap();
        let source = ImageFolders::new(root);
        let train = source.load(Split::Train, LoadOptions::default()).unwrap();
        assert_eq!(train.class_counts().0[Expression::Anger.index()], 2);
        assert_eq!(train.class_counts().0[Expression::Happiness.index()], 1);
        let valid = source.load(Split::Valid, LoadOptions::default()).unwrap();
        assert_eq!(valid.samples[0].label, Expression::Sadness);

        std::fs::create_dir_all(root.join("train/contempt")).unwrap();
        std::fs::write(root.join("train/angry/broken.png"), b"not a png").unwrap();
        let error = source
            .load(Split::Train, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("contempt"), "{error}");
        let skipped = source.load(Split::Train, LoadOptions { skip_bad: true }).unwrap();
        assert_eq!(skipped.samples.len(), 3);
        assert_eq!(skipped.skipped.len(), 2);
    }

    #[test]
    fn a_flat_tree_is_training_images_only_never_validation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("happy")).unwrap();
        image::GrayImage::new(48, 48)
            .save(dir.path().join("happy/a.png"))
            .unwrap();
        let source = ImageFolders::new(dir.path());
        assert_eq!(
            source.load(Split::Train, LoadOptions::default()).unwrap().samples.len(),
            1
        );
        let error = source
            .load(Split::Valid, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("holds training images only") && error.contains("--valid"),
            "{error}"
        );
    }

    #[test]
    fn entries_that_are_not_regular_files_are_bad_images_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let happy = dir.path().join("train/happy");
        std::fs::create_dir_all(happy.join("folder.png")).unwrap();
        let fifo = std::ffi::CString::new(happy.join("fifo.png").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        image::GrayImage::new(48, 48).save(happy.join("good.png")).unwrap();
        let source = ImageFolders::new(dir.path());
        let error = source
            .load(Split::Train, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a regular file"), "{error}");
        let loaded = source.load(Split::Train, LoadOptions { skip_bad: true }).unwrap();
        assert_eq!((loaded.samples.len(), loaded.skipped.len()), (1, 2));
    }

    #[test]
    fn empty_split_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("train/happy")).unwrap();
        let error = ImageFolders::new(dir.path())
            .load(Split::Train, LoadOptions::default())
            .unwrap_err();
        assert!(matches!(error, DatasetError::EmptySplit { .. }), "{error}");
    }
}
