//! Image files: one file, a directory (sorted by name), or a glob pattern.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tracing::warn;

use super::{Frame, FrameSource, Skips};

/// Extensions read from a directory.
const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "ppm"];

/// Image files, read in order, optionally several times over; each may be held for several
/// frames, like a camera looking at a still scene.
pub struct Files {
    hold: u32,
    held: Option<(Frame, u32)>,
    paths: Vec<PathBuf>,
    next: usize,
    passes_left: Option<u32>,
    skipped: Skips,
    /// Files already reported as unreadable: each is named once, repeats only counted.
    reported: std::collections::HashSet<PathBuf>,
    read_this_pass: usize,
    pattern: String,
}

/// The image files of `pattern` (a file, a directory read by name order, or a glob), sorted; an
/// error when there are none.
pub fn list(pattern: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(pattern);
    let paths = if path.is_dir() {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("listing {pattern}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        paths.sort();
        // A folder or a FIFO with an image's name is no image (and a FIFO would block a read).
        let (files, others): (Vec<PathBuf>, Vec<PathBuf>) = paths.into_iter().partition(|p| p.is_file());
        if !others.is_empty() {
            let names: Vec<String> = others.iter().map(|p| p.display().to_string()).collect();
            warn!(
                "ignoring {} entries that are not regular files: {}",
                others.len(),
                names.join(", ")
            );
        }
        files
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        let mut paths: Vec<PathBuf> = glob::glob(pattern)
            .with_context(|| format!("source {pattern:?} is neither a file, a directory nor a valid glob"))?
            .filter_map(std::result::Result::ok)
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        paths
    };
    if paths.is_empty() {
        bail!(
            "source {pattern:?}: no such file, or no images in it (looked for {})",
            EXTENSIONS.join(", ")
        );
    }
    Ok(paths)
}

impl Files {
    /// Lists the images of `pattern` (see [`list`]); `repeat` passes (0 = forever), each image
    /// given as `hold` consecutive frames.
    pub fn open(pattern: &str, repeat: u32, hold: u32) -> Result<Self> {
        let paths = list(pattern)?;
        Ok(Self {
            hold: hold.max(1),
            held: None,
            paths,
            next: 0,
            passes_left: (repeat > 0).then_some(repeat),
            skipped: Skips::default(),
            reported: std::collections::HashSet::new(),
            read_this_pass: 0,
            pattern: pattern.to_string(),
        })
    }

    /// The listed files.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

impl FrameSource for Files {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if let Some((frame, left)) = &mut self.held
            && *left > 0
        {
            *left -= 1;
            return Ok(Some(Frame {
                image: frame.image.clone(),
                name: frame.name.clone(),
            }));
        }
        loop {
            if self.next == self.paths.len() {
                if self.read_this_pass == 0 {
                    bail!(
                        "none of the {} files of {:?} could be read",
                        self.paths.len(),
                        self.pattern
                    );
                }
                self.read_this_pass = 0;
                match &mut self.passes_left {
                    Some(1) => return Ok(None),
                    Some(n) => *n -= 1,
                    None => {}
                }
                self.next = 0;
            }
            let path = &self.paths[self.next];
            self.next += 1;
            match super::read_image(path) {
                Ok(image) => {
                    self.read_this_pass += 1;
                    let name = path
                        .file_name()
                        .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
                    let frame = Frame { image, name };
                    if self.hold > 1 {
                        self.held = Some((
                            Frame {
                                image: frame.image.clone(),
                                name: frame.name.clone(),
                            },
                            self.hold - 1,
                        ));
                    }
                    return Ok(Some(frame));
                }
                Err(e) if self.reported.insert(path.clone()) => {
                    self.skipped.count_one();
                    warn!("skipping {}: {e:#}", path.display());
                }
                Err(e) => self
                    .skipped
                    .skip(format_args!("skipping {} again: {e:#}", path.display())),
            }
        }
    }

    fn skipped(&self) -> usize {
        self.skipped.count()
    }

    fn skip_counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        self.skipped.counter()
    }

    fn describe(&self) -> String {
        format!("{} image file(s) from {}", self.paths.len(), self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_pixels_too_large_or_not_regular_are_skipped_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a-empty.ppm"), b"P6\n0 0\n255\n").unwrap();
        // A header that claims 20000x20000 (1.2 GB decoded) in a few bytes.
        std::fs::write(d.join("b-huge.ppm"), b"P6\n20000 20000\n255\n").unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.join("c-device.jpg")).unwrap();
        std::fs::create_dir(d.join("c-folder.jpg")).unwrap();
        image::RgbImage::from_pixel(8, 6, image::Rgb([1, 2, 3]))
            .save(d.join("d-good.png"))
            .unwrap();
        let mut files = Files::open(d.to_str().unwrap(), 1, 1).unwrap();
        let frame = files.next_frame().unwrap().expect("the good file");
        // The device and the folder are not listed; the other two are skipped saying why.
        assert_eq!(files.paths().len(), 3);
        assert_eq!((frame.name.as_str(), files.skipped()), ("d-good.png", 2));
        assert!(files.next_frame().unwrap().is_none());
        let why = |name: &str| format!("{:#}", super::super::read_image(&d.join(name)).unwrap_err());
        assert!(why("a-empty.ppm").contains("no pixels"), "{}", why("a-empty.ppm"));
        assert!(why("b-huge.ppm").contains("at most 8192x8192"), "{}", why("b-huge.ppm"));
        assert!(
            why("c-device.jpg").contains("not a regular file"),
            "{}",
            why("c-device.jpg")
        );
    }

    #[test]
    fn every_listed_extension_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let image = image::RgbImage::from_pixel(8, 6, image::Rgb([200, 100, 50]));
        for ext in EXTENSIONS {
            image.save(dir.path().join(format!("frame.{ext}"))).unwrap();
        }
        let mut files = Files::open(dir.path().to_str().unwrap(), 1, 1).unwrap();
        assert_eq!(files.paths().len(), EXTENSIONS.len());
        let mut read = 0;
        while let Some(frame) = files.next_frame().unwrap() {
            assert_eq!(frame.image.dimensions(), (8, 6), "{}", frame.name);
            read += 1;
        }
        assert_eq!((read, files.skipped()), (EXTENSIONS.len(), 0));
    }
}
