//! The run report: metrics as text and JSON, training curves and a confusion-matrix image.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use fer_protocol::Expression;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::dataset::{ClassCounts, Sample};
use crate::loss::logit_adjustment;
use crate::metrics::Metrics;

/// One line of `metrics.jsonl`: what an epoch did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean total training loss.
    pub train_loss: f64,
    /// Mean cross-entropy part.
    pub train_ce: f64,
    /// Mean triplet-center part (before λ), 0 for the baseline.
    pub train_tcl: f64,
    /// Training accuracy on augmented images.
    pub train_accuracy: f64,
    /// Training throughput, images per second.
    pub images_per_second: f64,
    /// Wall time of the epoch (training and evaluation), seconds.
    pub seconds: f64,
    /// Evaluation on the valid split.
    pub valid: Metrics,
}

/// Fonts are looked up on the system once; without one the plots carry no text.
fn font_family() -> Option<&'static str> {
    static FONT: OnceLock<Option<&'static str>> = OnceLock::new();
    *FONT.get_or_init(|| {
        const CANDIDATES: [&str; 3] = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ];
        let bytes = CANDIDATES.iter().find_map(|p| std::fs::read(p).ok())?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice())).ok()?;
        Some("sans-serif")
    })
}

fn no_font() -> anyhow::Error {
    anyhow::anyhow!("no TrueType font found (install fonts-dejavu-core); plots skipped")
}

/// One line of a chart.
struct Line {
    /// Its legend.
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    /// Dashed marks a reference rather than a measured series.
    dashed: bool,
}

/// A markdown table of post-hoc logit adjustment: for τ = 0, 0.1, ..., 1, 1.5, 2, the metrics of
/// `argmax(logits − τ·log π)` (π from the training split's `counts`) with every class's recall.
pub fn logit_adjustment_table(logits: &[[f32; Expression::COUNT]], samples: &[Sample], counts: &ClassCounts) -> String {
    let mut out = String::from("| τ | accuracy | mean class acc. | macro-F1 |");
    for e in Expression::ALL {
        out.push_str(&format!(" {} |", e.name()));
    }
    out.push_str(&format!(
        "\n|---:|---:|---:|---:|{}\n",
        "---:|".repeat(Expression::COUNT)
    ));
    // Fine where the useful τ sit (imbalance-aware models want small ones), coarse beyond.
    let taus = (0..=10).map(|i| i as f32 / 10.0).chain([1.5, 2.0]);
    for tau in taus {
        let m = Metrics::of_logits(logits, logit_adjustment(-tau, counts), samples);
        out.push_str(&format!(
            "| {tau:.2} | {:.2} | {:.2} | {:.2} |",
            100.0 * m.accuracy,
            100.0 * m.mean_class_accuracy,
            100.0 * m.macro_f1
        ));
        for recall in m.per_class_recall {
            out.push_str(&recall.map_or(" – |".into(), |r| format!(" {:.1} |", 100.0 * r)));
        }
        out.push('\n');
    }
    out
}

/// Draws training loss and valid accuracy / mean class accuracy per epoch.
pub fn plot_curves(records: &[EpochRecord], path: &Path) -> Result<()> {
    let font = font_family().ok_or_else(no_font)?;
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let line = |name: &str, value: fn(&EpochRecord) -> f64, color: RGBColor| Line {
        name: name.to_owned(),
        points: records.iter().map(|r| (r.epoch as f64, value(r))).collect(),
        color,
        dashed: false,
    };
    let max_loss = records
        .iter()
        .flat_map(|r| [r.train_loss, r.train_tcl])
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.05;
    let losses = [
        line("total", |r| r.train_loss, BLUE),
        line("cross-entropy", |r| r.train_ce, GREEN),
        line("TCL", |r| r.train_tcl, RED),
    ];
    line_chart(
        &left,
        font,
        "training loss",
        0.0..max_loss,
        &losses,
        Some(SeriesLabelPosition::UpperRight),
    )?;
    let accuracies = [
        line("accuracy", |r| 100.0 * r.valid.accuracy, BLUE),
        line("mean class accuracy", |r| 100.0 * r.valid.mean_class_accuracy, RED),
        line("train accuracy", |r| 100.0 * r.train_accuracy, BLACK),
    ];
    line_chart(
        &right,
        font,
        "valid accuracy (%)",
        0.0..100.0,
        &accuracies,
        Some(SeriesLabelPosition::LowerRight),
    )?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A finished run drawn across [`plot_runs`]'s charts at its final valid figures, so short runs
/// can be read against where a full-length one ends.
pub struct Reference<'a> {
    /// Its legend.
    pub name: String,
    /// Its final evaluation.
    pub metrics: &'a Metrics,
}

/// Draws several runs' valid accuracy and mean class accuracy per epoch side by side, with an
/// optional reference as a dashed horizontal line.
pub fn plot_runs(runs: &[(String, Vec<EpochRecord>)], reference: Option<&Reference<'_>>, path: &Path) -> Result<()> {
    let font = font_family().ok_or_else(no_font)?;
    // Eight configurations and a reference would cover a chart's data: their legend goes below
    // both charts, two entries a row.
    let entries = runs.len() + usize::from(reference.is_some());
    let legend_height = 20 + 22 * entries.div_ceil(2) as u32;
    let root = BitMapBackend::new(path, (1000, 400 + legend_height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (charts, legend) = root.split_vertically(400);
    let (left, right) = charts.split_horizontally(500);
    let last_epoch = runs
        .iter()
        .flat_map(|(_, records)| records.iter().map(|r| r.epoch as f64))
        .fold(2.0, f64::max);
    let lines = |value: fn(&Metrics) -> f64| -> Vec<Line> {
        let measured = runs
            .iter()
            .zip(PALETTE.iter().cycle())
            .map(|((name, records), &color)| Line {
                name: name.clone(),
                points: records
                    .iter()
                    .map(|r| (r.epoch as f64, 100.0 * value(&r.valid)))
                    .collect(),
                color,
                dashed: false,
            });
        let reference = reference.map(|r| {
            let v = 100.0 * value(r.metrics);
            Line {
                name: r.name.clone(),
                points: vec![(1.0, v), (last_epoch, v)],
                color: BLACK,
                dashed: true,
            }
        });
        measured.chain(reference).collect()
    };
    // Runs of one budget differ by a few points: zoom onto the data.
    let zoomed = |lines: &[Line]| {
        let (lo, hi) = lines
            .iter()
            .flat_map(|line| line.points.iter().map(|p| p.1))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let pad = 0.05 * (hi - lo).max(1.0);
        (lo - pad).max(0.0)..(hi + pad).min(100.0)
    };
    for (area, title, value) in [
        (&left, "valid accuracy (%)", (|m| m.accuracy) as fn(&Metrics) -> f64),
        (&right, "valid mean class accuracy (%)", |m| m.mean_class_accuracy),
    ] {
        let lines = lines(value);
        line_chart(area, font, title, zoomed(&lines), &lines, None)?;
    }
    let mut names: Vec<(String, RGBColor, bool)> = runs
        .iter()
        .zip(PALETTE.iter().cycle())
        .map(|((name, _), &color)| (name.clone(), color, false))
        .collect();
    if let Some(r) = reference {
        let name = format!(
            "{} (final: {:.2} / {:.2})",
            r.name,
            100.0 * r.metrics.accuracy,
            100.0 * r.metrics.mean_class_accuracy
        );
        names.push((name, BLACK, true));
    }
    for (i, (name, color, dashed)) in names.iter().enumerate() {
        let (x, y) = (70 + 480 * (i as i32 % 2), 12 + 22 * (i as i32 / 2));
        let style = color.stroke_width(2);
        if *dashed {
            for dash in 0..3 {
                let x = x + 8 * dash;
                legend.draw(&PathElement::new([(x, y + 7), (x + 5, y + 7)], style))?;
            }
        } else {
            legend.draw(&PathElement::new([(x, y + 7), (x + 21, y + 7)], style))?;
        }
        legend.draw(&Text::new(name.as_str(), (x + 30, y), (font, 14)))?;
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Distinct colours (Okabe-Ito), one per expression in [`Expression`] order, and one per run in
/// [`plot_runs`], which has room for the comparison's eight configurations.
const PALETTE: [RGBColor; 8] = [
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(0, 114, 178),
    RGBColor(204, 121, 167),
    RGBColor(213, 94, 0),
    RGBColor(160, 160, 160),
    RGBColor(0, 0, 0),
];

fn line_chart(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    font: &str,
    title: &str,
    y: std::ops::Range<f64>,
    lines: &[Line],
    legend: Option<SeriesLabelPosition>,
) -> Result<()> {
    let epochs = lines
        .iter()
        .flat_map(|line| line.points.iter().map(|p| p.0))
        .fold(2.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (font, 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(1.0..epochs, y)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("epoch")
        // Epochs are whole: one tick each (at most 12), none at half an epoch.
        .x_labels((epochs as usize).min(12))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((font, 13))
        .draw()?;
    for line in lines {
        let style = line.color.stroke_width(2);
        let points = line.points.iter().copied();
        let series = if line.dashed {
            chart.draw_series(DashedLineSeries::new(points, 6, 4, style))?
        } else {
            chart.draw_series(LineSeries::new(points, style))?
        };
        series
            .label(line.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
    }
    if let Some(position) = legend {
        chart
            .configure_series_labels()
            .position(position)
            .label_font((font, 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// Draws a 2-D projection of embeddings, one colour per true class.
pub fn plot_embedding(points: &[[f64; 2]], labels: &[usize], title: &str, path: &Path) -> Result<()> {
    let font = font_family().ok_or_else(no_font)?;
    let root = BitMapBackend::new(path, (640, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let range = |axis: usize| {
        let (lo, hi) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p[axis]), hi.max(p[axis]))
        });
        let pad = (hi - lo).max(1e-6) * 0.05;
        lo - pad..hi + pad
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (font, 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(range(0), range(1))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("principal component 1")
        .y_desc("principal component 2")
        .label_style((font, 12))
        .draw()?;
    // The largest classes first, so the rare ones stay visible on top.
    let mut order: Vec<usize> = (0..Expression::COUNT).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(labels.iter().filter(|&&l| l == c).count()));
    for class in order {
        let color = PALETTE[class];
        let name = Expression::from_index(class).map_or("?", |e| e.name());
        chart
            .draw_series(
                points
                    .iter()
                    .zip(labels)
                    .filter(|&(_, &l)| l == class)
                    .map(|(p, _)| Circle::new((p[0], p[1]), 2, color.mix(0.6).filled())),
            )?
            .label(name)
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((font, 12))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Draws the row-normalised confusion matrix with counts.
pub fn plot_confusion(metrics: &Metrics, path: &Path) -> Result<()> {
    let font = font_family().ok_or_else(no_font)?;
    let root = BitMapBackend::new(path, (620, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let k = Expression::COUNT as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption("confusion (rows: true, columns: predicted)", (font, 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(85)
        .build_cartesian_2d((0..k - 1).into_segmented(), (0..k - 1).into_segmented())?;
    // Row 0 (surprise) at the top: the y axis counts upwards, so rows are drawn at k - 1 - t.
    let name = |v: &SegmentValue<i32>, flip: bool| match v {
        SegmentValue::CenterOf(i) => {
            let index = if flip { k - 1 - i } else { *i };
            Expression::from_index(index as usize).map_or(String::new(), |e| e.name().to_owned())
        }
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(Expression::COUNT)
        .y_labels(Expression::COUNT)
        .x_label_formatter(&|v| name(v, false))
        .y_label_formatter(&|v| name(v, true))
        .label_style((font, 12))
        .draw()?;
    for t in 0..Expression::COUNT {
        let total: usize = metrics.confusion[t].iter().sum::<usize>().max(1);
        for p in 0..Expression::COUNT {
            let n = metrics.confusion[t][p];
            let share = n as f64 / total as f64;
            let (x, y) = (p as i32, k - 1 - t as i32);
            let shade = (255.0 * (1.0 - share)) as u8;
            let cell = [
                (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
            ];
            chart.draw_series(std::iter::once(Rectangle::new(
                cell,
                RGBColor(shade, shade, 255).filled(),
            )))?;
            let color = if share > 0.5 { WHITE } else { BLACK };
            let style = (font, 14)
                .into_font()
                .color(&color)
                .pos(Pos::new(HPos::Center, VPos::Center));
            let center = (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y));
            chart.draw_series(std::iter::once(Text::new(format!("{n}"), center, style)))?;
        }
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_written_when_a_font_exists() {
        if font_family().is_none() {
            crate::skip_test_unless_ci("no system font (install fonts-dejavu-core)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let valid = Metrics::from_pairs([(0, 0), (3, 3), (6, 3)]);
        let records: Vec<EpochRecord> = (1..=3)
            .map(|epoch| EpochRecord {
                epoch,
                lr: 1e-3,
                train_loss: 2.0 / epoch as f64,
                train_ce: 1.5 / epoch as f64,
                train_tcl: 0.5 / epoch as f64,
                train_accuracy: 0.3 * epoch as f64,
                images_per_second: 100.0,
                seconds: 1.0,
                valid: valid.clone(),
            })
            .collect();
        plot_curves(&records, &dir.path().join("curves.png")).unwrap();
        plot_confusion(&valid, &dir.path().join("confusion.png")).unwrap();
        let reference = Reference {
            name: "converged".into(),
            metrics: &valid,
        };
        plot_runs(
            &[("a".into(), records.clone()), ("b".into(), records)],
            Some(&reference),
            &dir.path().join("runs.png"),
        )
        .unwrap();
        let points: Vec<[f64; 2]> = (0..70).map(|i| [i as f64, (i % 7) as f64]).collect();
        let labels: Vec<usize> = (0..70).map(|i| i % 7).collect();
        plot_embedding(&points, &labels, "embedding", &dir.path().join("embedding.png")).unwrap();
        for file in ["curves.png", "confusion.png", "runs.png", "embedding.png"] {
            let image = image::open(dir.path().join(file)).unwrap();
            assert!(image.width() > 500);
        }
    }
}
