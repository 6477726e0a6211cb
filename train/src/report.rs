//! The run report: metrics as text and JSON, training curves and a confusion-matrix image.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use fer_protocol::Expression;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// One line of a chart: its legend, its value per epoch, its colour.
type Series = (&'static str, fn(&EpochRecord) -> f64, RGBColor);

/// Draws training loss and valid accuracy / mean class accuracy per epoch.
pub fn plot_curves(records: &[EpochRecord], path: &Path) -> Result<()> {
    let font = font_family().ok_or_else(no_font)?;
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let max_loss = records
        .iter()
        .flat_map(|r| [r.train_loss, r.train_tcl])
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.05;
    let losses: [Series; 3] = [
        ("total", |r| r.train_loss, BLUE),
        ("cross-entropy", |r| r.train_ce, GREEN),
        ("TCL", |r| r.train_tcl, RED),
    ];
    line_chart(
        &left,
        font,
        "training loss",
        max_loss,
        records,
        &losses,
        SeriesLabelPosition::UpperRight,
    )?;
    let accuracies: [Series; 3] = [
        ("accuracy", |r| 100.0 * r.valid.accuracy, BLUE),
        ("mean class accuracy", |r| 100.0 * r.valid.mean_class_accuracy, RED),
        ("train accuracy", |r| 100.0 * r.train_accuracy, BLACK),
    ];
    line_chart(
        &right,
        font,
        "valid accuracy (%)",
        100.0,
        records,
        &accuracies,
        SeriesLabelPosition::LowerRight,
    )?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn line_chart(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    font: &str,
    title: &str,
    y_max: f64,
    records: &[EpochRecord],
    series: &[Series],
    legend: SeriesLabelPosition,
) -> Result<()> {
    let epochs = records.len().max(2) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (font, 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(1.0..epochs, 0.0..y_max)?;
    chart.configure_mesh().x_desc("epoch").label_style((font, 13)).draw()?;
    for &(name, value, color) in series {
        chart
            .draw_series(LineSeries::new(
                records.iter().map(|r| (r.epoch as f64, value(r))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font((font, 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
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
            eprintln!("skipped: no system font (install fonts-dejavu-core)");
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
        for file in ["curves.png", "confusion.png"] {
            let image = image::open(dir.path().join(file)).unwrap();
            assert!(image.width() > 500);
        }
    }
}
