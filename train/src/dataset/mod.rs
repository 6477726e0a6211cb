//! Face-expression data sets, each mapped onto the canonical seven labels of [`fer_protocol`].
//!
//! One trait ([`ExpressionSource`]) and four loaders: RAF-DB basic, FER+, the FER2013 CSV and
//! plain image folders. Every loader decodes its images once into [`Sample`]s (8-bit grayscale,
//! any size); [`crate::batch`] turns them into model inputs through `fer_protocol::preprocess`.

mod fer2013;
mod ferplus;
mod folders;
mod rafdb;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use fer_protocol::Expression;
use fer_protocol::preprocess::luma;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

pub use fer2013::Fer2013Csv;
pub use ferplus::FerPlus;
pub use folders::{ImageFolders, write_synthetic};
pub use rafdb::RafDb;

/// One labelled face: an 8-bit grayscale crop and its expression.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Row-major grayscale pixels, `width * height` bytes.
    pub pixels: Vec<u8>,
    /// Crop width in pixels.
    pub width: usize,
    /// Crop height in pixels.
    pub height: usize,
    /// The (hard) label.
    pub label: Expression,
    /// Annotator vote distribution over the 7 classes, where the data set has one (FER+).
    pub votes: Option<[f32; Expression::COUNT]>,
}

/// Which part of a data set to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training images.
    Train,
    /// Held-out images used for evaluation (RAF-DB's `test`, FER+'s `valid`).
    Valid,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Valid => "valid",
        })
    }
}

/// Errors while loading a data set; each names the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file or folder the layout requires is not there.
    #[error("{path}: not found ({what})")]
    Missing {
        /// The missing path.
        path: PathBuf,
        /// What was expected there.
        what: &'static str,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A row of a label file could not be parsed.
    #[error("{path}:{line}: {message}")]
    Row {
        /// The label file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// An image could not be decoded or has the wrong size.
    #[error("{path}: {message}")]
    Image {
        /// The image (or the file holding it).
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The split holds no usable image.
    #[error("{path}: the {split} split has no usable images")]
    EmptySplit {
        /// The data set root.
        path: PathBuf,
        /// The split.
        split: Split,
    },
    /// A data set spec could not be parsed.
    #[error("bad data set spec {spec:?}: {message}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
}

impl DatasetError {
    fn row(path: &Path, line: usize, message: impl Into<String>) -> Self {
        Self::Row {
            path: path.to_owned(),
            line,
            message: message.into(),
        }
    }

    fn image(path: &Path, message: impl fmt::Display) -> Self {
        Self::Image {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// How strict loading is.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Skip (and count) bad rows and images instead of failing on the first one.
    pub skip_bad: bool,
}

/// A loaded split: the samples and what was skipped on the way.
#[derive(Debug)]
pub struct LoadedSplit {
    /// The usable samples.
    pub samples: Vec<Sample>,
    /// Bad rows or images skipped under [`LoadOptions::skip_bad`], with their reasons.
    pub skipped: Vec<DatasetError>,
    /// Rows left out by the data set's own protocol (e.g. FER+ `unknown`/no-majority/contempt).
    pub excluded: usize,
}

impl LoadedSplit {
    /// Images per class, in class-index order.
    pub fn class_counts(&self) -> ClassCounts {
        ClassCounts::of(self.samples.iter().map(|s| s.label))
    }
}

/// A source of labelled face images.
pub trait ExpressionSource {
    /// A short human-readable name, e.g. `"FER+ (/data/ferplus)"`.
    fn describe(&self) -> String;

    /// Loads and decodes one split.
    fn load(&self, split: Split, options: LoadOptions) -> Result<LoadedSplit, DatasetError>;
}

/// Collects `result` into `samples`, or into `skipped` under `--skip-bad`.
struct Collector {
    options: LoadOptions,
    samples: Vec<Sample>,
    skipped: Vec<DatasetError>,
    excluded: usize,
}

impl Collector {
    fn new(options: LoadOptions) -> Self {
        Self {
            options,
            samples: Vec::new(),
            skipped: Vec::new(),
            excluded: 0,
        }
    }

    fn push(&mut self, result: Result<Sample, DatasetError>) -> Result<(), DatasetError> {
        match result {
            Ok(sample) => self.samples.push(sample),
            Err(error) if self.options.skip_bad => self.skipped.push(error),
            Err(error) => return Err(error),
        }
        Ok(())
    }

    fn finish(self, root: &Path, split: Split) -> Result<LoadedSplit, DatasetError> {
        if self.samples.is_empty() {
            return Err(DatasetError::EmptySplit {
                path: root.to_owned(),
                split,
            });
        }
        Ok(LoadedSplit {
            samples: self.samples,
            skipped: self.skipped,
            excluded: self.excluded,
        })
    }
}

/// Decodes an image file into 8-bit grayscale, optionally requiring a size. A colour image goes
/// through [`luma`], the conversion the device's crop uses.
fn decode_gray(path: &Path, expected: Option<(usize, usize)>) -> Result<(Vec<u8>, usize, usize), DatasetError> {
    let bytes = std::fs::read(path).map_err(|e| DatasetError::io(path, e))?;
    let image = match image::load_from_memory(&bytes).map_err(|e| DatasetError::image(path, e))? {
        image::DynamicImage::ImageLuma8(gray) => gray,
        other => {
            let rgb = other.into_rgb8();
            image::GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                image::Luma([luma(rgb.get_pixel(x, y).0.map(f32::from))])
            })
        }
    };
    let (w, h) = (image.width() as usize, image.height() as usize);
    if let Some((ew, eh)) = expected
        && (w, h) != (ew, eh)
    {
        return Err(DatasetError::image(
            path,
            format!("image is {w}x{h}, expected {ew}x{eh}"),
        ));
    }
    Ok((image.into_raw(), w, h))
}

/// One image to decode: its path, its label and its vote distribution.
type DecodeJob = (PathBuf, Expression, Option<[f32; Expression::COUNT]>);

impl Collector {
    /// Decodes the images on all cores, keeping their order, and collects them.
    fn decode(&mut self, jobs: Vec<DecodeJob>, expected: Option<(usize, usize)>) -> Result<(), DatasetError> {
        let decode = |(path, label, votes): DecodeJob| {
            let (pixels, width, height) = decode_gray(&path, expected)?;
            Ok(Sample {
                pixels,
                width,
                height,
                label,
                votes,
            })
        };
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let chunk = jobs.len().div_ceil(threads).max(1);
        let mut jobs = jobs.into_iter();
        let chunks: Vec<Vec<DecodeJob>> = std::iter::from_fn(|| {
            let c: Vec<DecodeJob> = jobs.by_ref().take(chunk).collect();
            (!c.is_empty()).then_some(c)
        })
        .collect();
        let decoded: Vec<Vec<Result<Sample, DatasetError>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| scope.spawn(move || chunk.into_iter().map(decode).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("decoder thread panicked"))
                .collect()
        });
        for result in decoded.into_iter().flatten() {
            self.push(result)?;
        }
        Ok(())
    }
}

/// Image counts per class, in class-index order.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClassCounts(pub [usize; Expression::COUNT]);

impl ClassCounts {
    /// Counts the given labels.
    pub fn of(labels: impl IntoIterator<Item = Expression>) -> Self {
        let mut counts = [0; Expression::COUNT];
        for label in labels {
            counts[label.index()] += 1;
        }
        Self(counts)
    }

    /// Total number of images.
    pub fn total(&self) -> usize {
        self.0.iter().sum()
    }
}

impl fmt::Display for ClassCounts {
    /// A table with one bar per class, so the imbalance is visible at a glance.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total().max(1);
        let max = self.0.iter().copied().max().unwrap_or(1).max(1);
        for expression in Expression::ALL {
            let n = self.0[expression.index()];
            let bar = "#".repeat((n * 40).div_ceil(max));
            writeln!(
                f,
                "  {:<10} {:>7} {:>5.1}%  {bar}",
                expression.name(),
                n,
                100.0 * n as f64 / total as f64
            )?;
        }
        write!(f, "  {:<10} {:>7}", "total", self.total())
    }
}

/// Makes a training split long-tailed (the harsher imbalance of the paper comparison). With the classes present
/// ordered from most to least frequent, the one at rank `r` of `K` keeps at most
/// `n_max · ratio^(-r / (K - 1))` faces, chosen at random with `seed` within its class, so that the
/// largest class has `ratio` times the smallest wherever every class has enough faces to give.
/// The kept faces stay in their order.
pub fn long_tail(samples: Vec<Sample>, ratio: f32, seed: u64) -> Vec<Sample> {
    let counts = ClassCounts::of(samples.iter().map(|s| s.label));
    let mut present: Vec<usize> = (0..Expression::COUNT).filter(|&k| counts.0[k] > 0).collect();
    present.sort_by_key(|&k| (std::cmp::Reverse(counts.0[k]), k));
    let Some(&largest) = present.first() else {
        return samples;
    };
    let n_max = counts.0[largest] as f32;
    let steps = present.len().saturating_sub(1).max(1) as f32;
    let mut quota = [0; Expression::COUNT];
    for (rank, &k) in present.iter().enumerate() {
        let target = (n_max * ratio.powf(-(rank as f32) / steps)).round() as usize;
        quota[k] = target.clamp(1, counts.0[k]);
    }
    let mut keep = vec![false; samples.len()];
    let mut rng = SmallRng::seed_from_u64(seed);
    for k in present {
        let mut members: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].label.index() == k).collect();
        members.shuffle(&mut rng);
        for &i in &members[..quota[k]] {
            keep[i] = true;
        }
    }
    samples
        .into_iter()
        .zip(keep)
        .filter_map(|(s, kept)| kept.then_some(s))
        .collect()
}

/// Which loader and where: `ferplus:PATH`, `rafdb:PATH`, `fer2013:FILE.csv` or `folders:PATH`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetSpec {
    /// The loader.
    pub kind: DatasetKind,
    /// Its root folder or file.
    pub path: PathBuf,
}

/// The four supported layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// FER+ (`FER2013Train/label.csv`, ...).
    FerPlus,
    /// RAF-DB basic emotions.
    RafDb,
    /// The FER2013 `emotion,pixels,Usage` CSV.
    Fer2013,
    /// `root/[train|valid/]<label>/*.png|jpg`.
    Folders,
}

impl DatasetSpec {
    /// The loader for this spec.
    pub fn source(&self) -> Box<dyn ExpressionSource> {
        let path = self.path.clone();
        match self.kind {
            DatasetKind::FerPlus => Box::new(FerPlus::new(path)),
            DatasetKind::RafDb => Box::new(RafDb::new(path)),
            DatasetKind::Fer2013 => Box::new(Fer2013Csv::new(path)),
            DatasetKind::Folders => Box::new(ImageFolders::new(path)),
        }
    }

    /// Loads a split, printing its class distribution and what was skipped.
    pub fn load_verbose(&self, split: Split, options: LoadOptions) -> Result<LoadedSplit, DatasetError> {
        let source = self.source();
        let started = std::time::Instant::now();
        let loaded = source.load(split, options)?;
        tracing::info!(
            "{} [{split}]: {} images in {:.1}s ({} left out by the label protocol, {} bad skipped)",
            source.describe(),
            loaded.samples.len(),
            started.elapsed().as_secs_f64(),
            loaded.excluded,
            loaded.skipped.len()
        );
        for error in loaded.skipped.iter().take(5) {
            tracing::warn!("skipped: {error}");
        }
        if loaded.skipped.len() > 5 {
            tracing::warn!("... and {} more skipped", loaded.skipped.len() - 5);
        }
        tracing::info!("class counts:\n{}", loaded.class_counts());
        Ok(loaded)
    }
}

impl FromStr for DatasetSpec {
    type Err = DatasetError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |message: &str| DatasetError::Spec {
            spec: spec.to_owned(),
            message: message.to_owned(),
        };
        let (kind, path) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected KIND:PATH, KIND one of ferplus, rafdb, fer2013, folders"))?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "ferplus" | "fer+" => DatasetKind::FerPlus,
            "rafdb" | "raf-db" => DatasetKind::RafDb,
            "fer2013" => DatasetKind::Fer2013,
            "folders" | "folder" => DatasetKind::Folders,
            _ => return Err(bad("unknown kind; use ferplus, rafdb, fer2013 or folders")),
        };
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        Ok(Self {
            kind,
            path: PathBuf::from(path),
        })
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            DatasetKind::FerPlus => "ferplus",
            DatasetKind::RafDb => "rafdb",
            DatasetKind::Fer2013 => "fer2013",
            DatasetKind::Folders => "folders",
        };
        write!(f, "{kind}:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let spec: DatasetSpec = "ferplus:../shared/data/ferplus".parse().unwrap();
        assert_eq!(spec.kind, DatasetKind::FerPlus);
        assert_eq!(spec.to_string(), "ferplus:../shared/data/ferplus");
        assert!("nope:/x".parse::<DatasetSpec>().is_err());
        assert!("ferplus".parse::<DatasetSpec>().is_err());
        assert!("rafdb:".parse::<DatasetSpec>().is_err());
    }

    #[test]
    fn colour_images_turn_gray_as_the_device_turns_them() {
        let dir = tempfile::tempdir().unwrap();
        let (rgb, gray) = (dir.path().join("rgb.png"), dir.path().join("gray.png"));
        let colours = [[0u8, 6, 183], [200, 30, 90], [12, 240, 7], [255, 255, 255]];
        image::RgbImage::from_fn(4, 1, |x, _| image::Rgb(colours[x as usize]))
            .save(&rgb)
            .unwrap();
        let (pixels, width, height) = decode_gray(&rgb, Some((4, 1))).unwrap();
        assert_eq!((width, height), (4, 1));
        let expected: Vec<u8> = colours.iter().map(|c| luma(c.map(f32::from))).collect();
        assert_eq!(pixels, expected);
        // A gray file is read as it is.
        image::GrayImage::from_fn(3, 1, |x, _| image::Luma([x as u8 * 100]))
            .save(&gray)
            .unwrap();
        assert_eq!(decode_gray(&gray, None).unwrap().0, vec![0, 100, 200]);
    }

    /// `counts[k]` faces of each class k, each 2x2 face's pixels its number in the list.
    fn faces(counts: [usize; Expression::COUNT]) -> Vec<Sample> {
        Expression::ALL
            .iter()
            .flat_map(|&label| std::iter::repeat_n(label, counts[label.index()]))
            .enumerate()
            .map(|(i, label)| Sample {
                pixels: (i as u32).to_le_bytes().to_vec(),
                width: 2,
                height: 2,
                label,
                votes: None,
            })
            .collect()
    }

    #[test]
    fn long_tail_keeps_a_geometric_profile_of_each_class() {
        let samples = faces([100, 50, 10, 400, 40, 30, 200]);
        let kept = long_tail(samples.clone(), 100.0, 7);
        // Ranks: happiness 400, neutral 200, surprise 100, fear 50, sadness 40, anger 30, disgust
        // 10; quotas 400 · 100^(-r/6): 400, 186, 86, 40, 19, 9, 4 (capped by what each class has).
        assert_eq!(
            ClassCounts::of(kept.iter().map(|s| s.label)).0,
            [86, 40, 4, 400, 19, 9, 186]
        );
        // Seeded: the same faces again, other faces with another seed; order is kept.
        let ids = |s: &[Sample]| s.iter().map(|s| s.pixels.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&kept), ids(&long_tail(samples.clone(), 100.0, 7)));
        assert_ne!(ids(&kept), ids(&long_tail(samples.clone(), 100.0, 8)));
        let position = |face: &Vec<u8>| ids(&samples).iter().position(|f| f == face).unwrap();
        assert!(ids(&kept).windows(2).all(|w| position(&w[0]) < position(&w[1])));
        // Ratio 1 keeps everything; a class that has fewer than its quota keeps all it has.
        assert_eq!(long_tail(samples.clone(), 1.0, 7).len(), samples.len());
        let few = long_tail(faces([0, 0, 1, 400, 0, 0, 0]), 100.0, 7);
        assert_eq!(ClassCounts::of(few.iter().map(|s| s.label)).0, [0, 0, 1, 400, 0, 0, 0]);
    }

    #[test]
    fn class_counts_display_every_class() {
        let counts = ClassCounts::of([Expression::Happiness, Expression::Happiness, Expression::Fear]);
        assert_eq!(counts.total(), 3);
        let text = counts.to_string();
        for e in Expression::ALL {
            assert!(text.contains(e.name()));
        }
    }
}
