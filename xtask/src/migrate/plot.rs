//! The timeline plot on a time axis: stream bytes sent and pages dirty over the migration, the
//! policy's switch, the stop and the downtime marked, as SVG and PNG (`plotters`). Labels need a TrueType font, read at run time from the usual system places.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::Outcome;

/// TrueType fonts tried, in order (Debian's `fonts-dejavu-core` and `fonts-liberation` paths).
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Register the first font found as `sans-serif`, once.
fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = FONTS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or("no TrueType font found for the labels (install fonts-dejavu-core)")?;
        // plotters keeps registered fonts for the program's life.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the font file is not a usable TrueType font".to_string())
    })
    .clone()
}

/// Write `svg` and the PNG beside it; returns the paths written, for the report.
pub(super) fn write(svg: &str, o: &Outcome) -> Result<String, String> {
    if o.rounds.is_empty() {
        return Err("no rounds".into());
    }
    register_font()?;
    let svg = PathBuf::from(svg);
    if let Some(dir) = svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let png = svg.with_extension("png");
    {
        let root = SVGBackend::new(&svg, (900, 600)).into_drawing_area();
        draw(&root, o)?;
        root.present().map_err(|e| format!("{e:?}"))?;
    }
    {
        let root = BitMapBackend::new(Path::new(&png), (900, 600)).into_drawing_area();
        draw(&root, o)?;
        root.present().map_err(|e| format!("{e:?}"))?;
    }
    Ok(format!("{} and {}", svg.display(), png.display()))
}

/// Tick labels with as many decimals as the axis's range needs (a 0-1.5 axis would otherwise
/// read "0 0 0 1 1 1").
fn tick(v: f64, max: f64) -> String {
    let decimals = if max >= 20.0 {
        0
    } else if max >= 2.0 {
        1
    } else {
        2
    };
    format!("{v:.decimals$}")
}

/// The unit that shows `max` bytes as a number of at least 1: (divisor, name).
fn byte_unit(max: f64) -> (f64, &'static str) {
    [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        .into_iter()
        .map(|(d, n)| (d as f64, n))
        .find(|(d, _)| max >= *d)
        .unwrap_or((1.0, "B"))
}

/// The timeline on a time axis (ms since the migration started): stream bytes sent and pages dirty
/// at each round's end, the policy's switch and the stop marked, the downtime shaded.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, o: &Outcome) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| format!("{e:?}");
    root.fill(&WHITE).map_err(e)?;
    let title = format!(
        "{} workload, {} MiB vGPU, link {}: downtime {:.1} ms, total {:.0} ms",
        o.workload,
        o.gm_mib,
        o.link_bytes_per_s
            .map_or("unlimited".to_string(), |r| format!(
                "{:.2} GB/s",
                r as f64 / 1e9
            )),
        o.downtime_ms,
        o.total_ms
    );
    let root = root.titled(&title, ("sans-serif", 20)).map_err(e)?;
    // The switch (policy decision), the stop (guest paused) and the resume as the source saw it.
    let switch = o.precopy_ms;
    let stop = o.precopy_ms + o.catch_up_ms;
    let resumed = stop + o.downtime_ms;
    let end = o.rounds.iter().map(|r| r.end_ms).fold(resumed, f64::max);
    let xmax = (end * 1.05).max(1.0);
    let mut sent = 0u64;
    let bytes: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(o.rounds.iter().map(|r| {
            sent += r.bytes;
            (r.end_ms, sent as f64)
        }))
        .collect();
    let (div, unit) = byte_unit(sent as f64);
    let bytes: Vec<(f64, f64)> = bytes.into_iter().map(|(t, b)| (t, b / div)).collect();
    let dirty: Vec<(f64, f64)> = o
        .rounds
        .iter()
        .map(|r| (r.end_ms, r.dirty_left as f64))
        .collect();
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    let panels = [
        (
            &top,
            format!("stream sent, {unit}"),
            bytes,
            RGBColor(40, 90, 170),
        ),
        (
            &bottom,
            "pages dirty at the round's end".to_string(),
            dirty,
            RGBColor(200, 90, 40),
        ),
    ];
    for (area, desc, points, color) in panels {
        let ymax = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.15;
        let mut c = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(e)?;
        c.configure_mesh()
            .light_line_style(WHITE)
            .x_label_formatter(&|v| tick(*v, xmax))
            .y_label_formatter(&|v| tick(*v, ymax))
            .x_desc("ms since the migration started")
            .y_desc(desc.as_str())
            .draw()
            .map_err(e)?;
        let red = RGBColor(200, 30, 30);
        c.draw_series(std::iter::once(Rectangle::new(
            [(stop, 0.0), (resumed, ymax)],
            red.mix(0.15).filled(),
        )))
        .map_err(e)?
        .label("downtime")
        .legend(move |(x, y)| {
            Rectangle::new([(x, y - 5), (x + 20, y + 5)], red.mix(0.15).filled())
        });
        if o.catch_up_ms > 0.0 {
            c.draw_series(std::iter::once(PathElement::new(
                vec![(switch, 0.0), (switch, ymax)],
                BLACK.mix(0.5).stroke_width(1),
            )))
            .map_err(e)?
            .label("policy switched")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        }
        c.draw_series(std::iter::once(PathElement::new(
            vec![(stop, 0.0), (stop, ymax)],
            red.stroke_width(2),
        )))
        .map_err(e)?
        .label("guest stopped")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
        c.draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(3))
            .map_err(e)?;
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(e)?;
    }
    Ok(())
}
