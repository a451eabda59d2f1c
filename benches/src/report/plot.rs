//! `latency.png`: one panel per scenario, latency percentiles (log scale) per
//! system. Text is drawn with DejaVu Sans (Debian `fonts-dejavu-core`).

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::figures::{Report, Status};
use crate::systems::SystemKind;

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn color(system: SystemKind) -> RGBColor {
    match system {
        SystemKind::Direct => RGBColor(90, 90, 90),
        SystemKind::Weft => RGBColor(214, 39, 40),
        SystemKind::WeftPolicy => RGBColor(148, 103, 189),
        SystemKind::WeftTrace100 => RGBColor(140, 86, 75),
        SystemKind::WeftTrace1 => RGBColor(227, 119, 194),
        SystemKind::HaproxyHttp => RGBColor(31, 119, 180),
        SystemKind::HaproxyTcp => RGBColor(44, 160, 44),
        SystemKind::Nginx => RGBColor(255, 127, 14),
    }
}

fn load_font() -> anyhow::Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| anyhow!("no DejaVu Sans font found; install Debian's fonts-dejavu-core"))?;
    let bytes = std::fs::read(path).with_context(|| format!("read {path}"))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{path} is not a usable font"))
}

pub(super) fn draw(report: &Report, png: &Path) -> anyhow::Result<()> {
    load_font()?;
    let mut ids: Vec<(String, String)> = Vec::new();
    for s in &report.systems {
        for sc in &s.scenarios {
            if !ids.iter().any(|(id, _)| *id == sc.id) {
                ids.push((sc.id.clone(), sc.title.clone()));
            }
        }
    }
    let cols = 3usize;
    let rows = ids.len().div_ceil(cols).max(1);
    let (w, h) = (1500u32, 100 + 380 * rows as u32);
    let root = BitMapBackend::new(png, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("draw: {e}"))?;
    let (head, body) = root.split_vertically(100);
    let title = if report.quick {
        "weft benchmark: latency percentiles per system (quick mode)"
    } else {
        "weft benchmark: latency percentiles per system"
    };
    head.titled(title, ("sans-serif", 26))
        .map_err(|e| anyhow!("draw: {e}"))?
        .draw_text(
            &format!(
                "{} CPUs, {} repeat(s) of {:.0} s; µs, log scale; started {}",
                report.host.cpus, report.repeats, report.duration_s, report.started_at
            ),
            &("sans-serif", 16).into_text_style(&head),
            (10, 60),
        )
        .map_err(|e| anyhow!("draw: {e}"))?;
    let panels = body.split_evenly((rows, cols));
    for (panel, (id, title)) in panels.iter().zip(&ids) {
        let series: Vec<(SystemKind, Vec<(f64, f64)>)> = report
            .systems
            .iter()
            .filter(|s| matches!(s.status, Status::Ran))
            .filter_map(|s| {
                let sc = s.scenario(id)?;
                let points = sc
                    .latency_us
                    .points()
                    .iter()
                    .enumerate()
                    .map(|(i, (_, v))| (i as f64, v.max(1.0)))
                    .collect();
                Some((s.system, points))
            })
            .collect();
        let ymax = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
            .fold(10.0f64, f64::max);
        let ymin = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
            .fold(ymax, f64::min)
            .max(1.0);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 17))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.2f64..4.2f64, (ymin * 0.8..ymax * 1.3).log_scale())
            .map_err(|e| anyhow!("draw: {e}"))?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x| {
                let labels = ["p50", "p90", "p99", "p99.9", "max"];
                let i = x.round();
                if (x - i).abs() < 0.01 && (0.0..5.0).contains(&i) {
                    labels[i as usize].to_string()
                } else {
                    String::new()
                }
            })
            .y_desc("µs")
            .y_labels(8)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| anyhow!("draw: {e}"))?;
        for (system, points) in series {
            let c = color(system);
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                .map_err(|e| anyhow!("draw: {e}"))?
                .label(system.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                .map_err(|e| anyhow!("draw: {e}"))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| anyhow!("draw: {e}"))?;
    }
    root.present()
        .map_err(|e| anyhow!("write {}: {e}", png.display()))?;
    Ok(())
}
