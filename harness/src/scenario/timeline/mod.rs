//! A picture of one run (timeline.svg), drawn with plotters: one time axis in ms since
//! the first request, one band per queue (control: TMFs; event: events; request queues:
//! each request a bar from `request` to `complete`, packed into rows), markers for
//! suppressed and spurious signals, device resets as vertical lines, and the guest's own
//! side (which CPU ran each routine, HwTimer polls, resets) from its timeline line, moved
//! onto the trace's clock.

mod layout;
mod picture;
mod series;

use plotters::prelude::*;

use self::layout::Layout;
use self::picture::{gather, GuestSide, Queue};
use crate::scenario::metrics::{GuestTimeline, Trace, FIRST_REQUEST_QUEUE};

const WIDTH: u32 = 1280;
const ROW_PX: u32 = 16;
/// Rows a request queue's band may take; more overlapping requests share the last one.
const MAX_ROWS: usize = 40;
/// Smallest bar, in pixels, so that a 20 µs request stays visible in a 5 s run.
const MIN_BAR_PX: f64 = 1.5;
const FONT: &str = "sans-serif";

const OK: RGBColor = RGBColor(46, 139, 87);
const CHECK_CONDITION: RGBColor = RGBColor(255, 140, 0);
const BUSY: RGBColor = RGBColor(218, 165, 32);
const NOT_OK: RGBColor = RGBColor(220, 20, 60);
const NEVER: RGBColor = RGBColor(160, 160, 160);
const TMF: RGBColor = RGBColor(70, 130, 180);
const GUEST_RESET: RGBColor = RGBColor(148, 0, 211);
const EVENT: RGBColor = RGBColor(0, 139, 139);
const SUPPRESSED_FAULT: RGBColor = RGBColor(200, 0, 0);
const SUPPRESSED_EVENT_IDX: RGBColor = RGBColor(100, 149, 237);
const SPURIOUS: RGBColor = RGBColor(255, 0, 255);
const SEPARATOR: RGBColor = RGBColor(210, 210, 210);
/// The routines of `timeline_fields::CALL_ROUTINES`, in order.
const ROUTINE_COLORS: [RGBColor; 5] = [
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    GUEST_RESET,
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("could not draw the timeline: {0}")]
    CouldNotDraw(String),
    #[error("could not write the timeline {0}: {1}")]
    CouldNotWrite(String, std::io::Error),
}

fn draw_err(e: impl std::fmt::Display) -> TimelineError {
    TimelineError::CouldNotDraw(e.to_string())
}

/// Draws the timeline of a run as an SVG document. `guest` is the guest's timeline
/// line with its `first_request_us` (the same request as the trace's first `request`).
pub fn draw(
    title: &str,
    trace: &Trace,
    guest: Option<(&GuestTimeline, u64)>,
) -> Result<String, TimelineError> {
    let origin = trace.first_request_us().unwrap_or(0);
    let mut p = gather(trace, origin);
    let guest = guest.map(|(g, first)| GuestSide::new(g, first));
    if let Some(g) = &guest {
        p.end = p.end.max(g.end());
    }
    if p.queues.is_empty() {
        p.queues.insert(FIRST_REQUEST_QUEUE, Queue::new());
    }
    let layout = Layout::new(&p, guest.as_ref());

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, layout.height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(0)
            .build_cartesian_2d(layout.x_min..layout.x_max, 0.0..layout.total)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(12)
            .x_label_formatter(&|v| {
                if *v < 0.0 {
                    String::new()
                } else {
                    format!("{v:.0}")
                }
            })
            .x_desc("ms since the first request (backend trace clock)")
            .light_line_style(RGBColor(240, 240, 240))
            .draw()
            .map_err(draw_err)?;
        series::bands(&mut chart, &layout)?;
        series::requests(&mut chart, &layout, &p)?;
        series::tmfs(&mut chart, &layout, &p)?;
        series::events(&mut chart, &layout, &p)?;
        series::signals(&mut chart, &layout, &p)?;
        if let Some(g) = &guest {
            series::guest(&mut chart, &layout, g)?;
        }
        series::device_resets(&mut chart, &layout, &p)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// Draws and writes `path`.
pub fn write(
    path: &std::path::Path,
    title: &str,
    trace: &Trace,
    guest: Option<(&GuestTimeline, u64)>,
) -> Result<(), TimelineError> {
    let svg = draw(title, trace, guest)?;
    std::fs::write(path, svg)
        .map_err(|e| TimelineError::CouldNotWrite(path.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = r#"
{"t_us":100,"ev":"device-reset"}
{"t_us":1000,"ev":"request","queue":2,"id":1,"kind":"cmd","target":0,"lun":0,"op":"read-10","opcode":40,"lba":1,"blocks":1,"dir":"read"}
{"t_us":1010,"ev":"request","queue":2,"id":2,"kind":"cmd","target":0,"lun":0,"op":"read-10","opcode":40,"lba":2,"blocks":1,"dir":"read"}
{"t_us":1100,"ev":"complete","queue":2,"id":1,"response":"ok","status":0}
{"t_us":1101,"ev":"signal-suppressed","queue":2,"id":1,"reason":"fault"}
{"t_us":1200,"ev":"complete","queue":2,"id":2,"response":"ok","status":2}
{"t_us":1300,"ev":"tmf-start","queue":0,"id":9,"tmf":"lu-reset","target":0,"lun":0}
{"t_us":1400,"ev":"spurious-signal","queue":2,"fault":5,"count":5}
{"t_us":1500,"ev":"event","event":"transport-reset","target":0,"lun":0,"detail":"rescan"}
{"t_us":301300,"ev":"tmf-end","queue":0,"id":9,"response":"function-complete"}
{"t_us":302000,"ev":"device-reset"}
{"t_us":303000,"ev":"request","queue":2,"id":3,"kind":"cmd","target":0,"lun":0,"op":"write-10","opcode":42,"lba":3,"blocks":1,"dir":"write"}
"#;

    #[test]
    fn the_picture_shows_every_kind_of_record_and_the_guest_side() {
        let trace = Trace::parse(TRACE);
        let guest = GuestTimeline {
            polls: vec![(5000, 0), (15000, 1)],
            resets: vec![(6000, 306000)],
            calls: vec![(5100, 40, 0, 1), (15000, 30, 1, 0)],
            truncated: false,
        };
        let svg = draw("drop-all: test", &trace, Some((&guest, 5000))).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for text in [
            "drop-all: test",
            "queue 0 (control)",
            "queue 1 (event)",
            "queue 2 (requests)",
            "guest: HwTimer polls",
            "lu-reset → function-complete",
            "transport-reset (rescan)",
            "request: GOOD",
            "request: CHECK CONDITION",
            "request: never completed",
            "signal suppressed (fault)",
            "spurious signal",
            "device reset",
            "HwTimer poll (found completions)",
            "guest reset (HwResetBus to done)",
            "guest: CPU 0",
            "guest: CPU 1",
            "HwInterrupt",
            "HwTimer",
            "ms since the first request",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn without_the_guest_line_the_trace_is_drawn_alone() {
        let svg = draw("x", &Trace::parse(TRACE), None).unwrap();
        assert!(!svg.contains("guest: HwTimer polls"));
        assert!(svg.contains("queue 2 (requests)"));
        // An empty trace still gives a picture.
        let empty = draw("empty", &Trace::default(), None).unwrap();
        assert!(empty.contains("queue 2 (requests)"));
    }
}
