//! The timeline plot: stream bytes per round and pages dirty after each round, as SVG and PNG
//! (`plotters`). Labels need a TrueType font, read at run time from the usual system places.

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

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, o: &Outcome) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| format!("{e:?}");
    root.fill(&WHITE).map_err(e)?;
    let n = o.rounds.len() as u32;
    let last = n - 1;
    let label = move |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) if *i == last => "stop".to_string(),
        SegmentValue::CenterOf(i) => i.to_string(),
        _ => String::new(),
    };
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
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    let panels = [
        (
            &top,
            "stream MiB per round",
            o.rounds
                .iter()
                .map(|r| r.bytes as f64 / (1u64 << 20) as f64)
                .collect::<Vec<f64>>(),
            RGBColor(40, 90, 170),
        ),
        (
            &bottom,
            "pages dirty after the round",
            o.rounds.iter().map(|r| r.dirty_left as f64).collect(),
            RGBColor(200, 90, 40),
        ),
    ];
    for (area, desc, values, color) in panels {
        let ymax = values.iter().copied().fold(1.0f64, f64::max) * 1.1;
        let mut c = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d((0..last).into_segmented(), 0f64..ymax)
            .map_err(e)?;
        c.configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_label_formatter(&label)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("round")
            .y_desc(desc)
            .draw()
            .map_err(e)?;
        c.draw_series(
            Histogram::vertical(&c)
                .style(color.filled())
                .margin(12)
                .data(values.iter().enumerate().map(|(i, v)| (i as u32, *v))),
        )
        .map_err(e)?;
    }
    Ok(())
}
