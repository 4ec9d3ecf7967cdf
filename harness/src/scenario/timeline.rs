//! A picture of one run (timeline.svg), drawn with plotters: one time axis in ms since
//! the first request, one band per queue (control: TMFs; event: events; request queues:
//! each request a bar from `request` to `complete`, packed into rows), markers for
//! suppressed and spurious signals, device resets as vertical lines, and the guest's own
//! side (HwTimer polls, resets) from its timeline line, moved onto the trace's clock.

use std::collections::{BTreeMap, HashMap};

use flakyhba_backend::faults::trace::TraceEvent;
use plotters::prelude::*;

use super::metrics::{GuestTimeline, Trace, FIRST_REQUEST_QUEUE};

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

/// A bar on the time axis, in ms.
#[derive(Clone, Debug)]
struct Bar {
    start: f64,
    end: Option<f64>,
    color: RGBColor,
    label: Option<String>,
}

/// Greedy interval packing: each bar goes to the first row free at its start.
fn pack(bars: &[Bar], end_of_time: f64, min_width: f64) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..bars.len()).collect();
    order.sort_by(|&a, &b| bars[a].start.total_cmp(&bars[b].start));
    let mut row_end: Vec<f64> = Vec::new();
    let mut rows = vec![0; bars.len()];
    for i in order {
        let b = &bars[i];
        let end = b.end.unwrap_or(end_of_time).max(b.start + min_width);
        let row = match row_end.iter().position(|&e| e <= b.start) {
            Some(r) => r,
            None if row_end.len() < MAX_ROWS => {
                row_end.push(f64::NEG_INFINITY);
                row_end.len() - 1
            }
            None => MAX_ROWS - 1,
        };
        row_end[row] = row_end[row].max(end);
        rows[i] = row;
    }
    (rows, row_end.len().max(1))
}

fn request_color(response: &str, status: Option<u8>) -> RGBColor {
    match (response, status) {
        ("ok", Some(0) | None) => OK,
        ("ok", Some(2)) => CHECK_CONDITION,
        // BUSY, TASK SET FULL
        ("ok", Some(0x08 | 0x28)) => BUSY,
        _ => NOT_OK,
    }
}

struct Queue {
    bars: Vec<Bar>,
    /// (time, bar index) of suppressed signals.
    suppressed_fault: Vec<(f64, usize)>,
    suppressed_event_idx: Vec<(f64, usize)>,
    spurious: Vec<f64>,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            bars: Vec::new(),
            suppressed_fault: Vec::new(),
            suppressed_event_idx: Vec::new(),
            spurious: Vec::new(),
        }
    }
}

/// What the picture shows, gathered from the trace.
struct Picture {
    queues: BTreeMap<u16, Queue>,
    tmfs: Vec<Bar>,
    events: Vec<(f64, String)>,
    device_resets: Vec<f64>,
    end: f64,
}

fn gather(trace: &Trace, origin_us: u64) -> Picture {
    let t = |us: u64| (us as f64 - origin_us as f64) / 1000.0;
    let mut p = Picture {
        queues: BTreeMap::new(),
        tmfs: Vec::new(),
        events: Vec::new(),
        device_resets: Vec::new(),
        end: 0.0,
    };
    let mut open: HashMap<(u16, u64), usize> = HashMap::new();
    let mut latest: HashMap<(u16, u64), usize> = HashMap::new();
    let mut open_tmfs: HashMap<(u16, u64), usize> = HashMap::new();
    for r in &trace.records {
        let now = t(r.t_us);
        p.end = p.end.max(now);
        match &r.event {
            TraceEvent::Request { queue, id, .. } if *queue >= FIRST_REQUEST_QUEUE => {
                let q = p.queues.entry(*queue).or_insert_with(Queue::new);
                q.bars.push(Bar {
                    start: now,
                    end: None,
                    color: NEVER,
                    label: None,
                });
                open.insert((*queue, *id), q.bars.len() - 1);
                latest.insert((*queue, *id), q.bars.len() - 1);
            }
            TraceEvent::Complete {
                queue,
                id,
                response,
                status,
                ..
            } => {
                if let Some(i) = open.remove(&(*queue, *id)) {
                    let q = p.queues.get_mut(queue).expect("opened above");
                    q.bars[i].end = Some(now);
                    q.bars[i].color = request_color(response, *status);
                }
            }
            TraceEvent::SignalSuppressed { queue, id, reason } => {
                let Some(&i) = id.and_then(|id| latest.get(&(*queue, id))) else {
                    continue;
                };
                let q = p.queues.get_mut(queue).expect("a request was seen");
                if reason == "fault" {
                    q.suppressed_fault.push((now, i));
                } else {
                    q.suppressed_event_idx.push((now, i));
                }
            }
            // Time-driven records before the first request fall left of the axis.
            TraceEvent::SpuriousSignal { .. } | TraceEvent::Event { .. } if now < 0.0 => {}
            TraceEvent::SpuriousSignal { queue, .. } => p
                .queues
                .entry((*queue).max(FIRST_REQUEST_QUEUE))
                .or_insert_with(Queue::new)
                .spurious
                .push(now),
            TraceEvent::TmfStart { queue, id, tmf, .. } => {
                p.tmfs.push(Bar {
                    start: now,
                    end: None,
                    color: NEVER,
                    label: Some(tmf.to_string()),
                });
                open_tmfs.insert((*queue, *id), p.tmfs.len() - 1);
            }
            TraceEvent::TmfEnd {
                queue,
                id,
                response,
            } => {
                if let Some(i) = open_tmfs.remove(&(*queue, *id)) {
                    p.tmfs[i].end = Some(now);
                    p.tmfs[i].color = TMF;
                    if let Some(l) = &mut p.tmfs[i].label {
                        l.push_str(&format!(" → {response}"));
                    }
                }
            }
            TraceEvent::DeviceReset {} => p.device_resets.push(now),
            TraceEvent::Event { event, detail, .. } => p.events.push((
                now,
                match detail {
                    Some(d) => format!("{event} ({d})"),
                    None => event.to_string(),
                },
            )),
            _ => {}
        }
    }
    for b in &mut p.tmfs {
        if b.end.is_none() {
            if let Some(l) = &mut b.label {
                l.push_str(" (never answered)");
            }
        }
    }
    p
}

/// The guest's timeline on the trace's clock, in ms since the trace's first request.
struct GuestSide {
    polls: Vec<(f64, u64)>,
    resets: Vec<(f64, f64)>,
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
    let guest = guest.map(|(g, first)| {
        let t = |us: u64| (us as f64 - first as f64) / 1000.0;
        GuestSide {
            polls: g.polls.iter().map(|&(at, found)| (t(at), found)).collect(),
            resets: g.resets.iter().map(|&(a, b)| (t(a), t(b))).collect(),
        }
    });
    if let Some(g) = &guest {
        for &(at, _) in &g.polls {
            p.end = p.end.max(at);
        }
        for &(_, b) in &g.resets {
            p.end = p.end.max(b);
        }
    }
    let span = p.end.max(1.0) * 1.02;
    let label_space = span * 0.13;
    let (x_min, x_max) = (-label_space, span);
    let plot_px = f64::from(WIDTH - 60);
    let min_width = (x_max - x_min) / plot_px * MIN_BAR_PX;

    // Bands from the top: (label, rows).
    let mut bands: Vec<(String, usize)> = Vec::new();
    if guest.is_some() {
        bands.push(("guest: HwTimer polls".into(), 1));
        bands.push(("guest: resets".into(), 1));
    }
    let (tmf_rows, tmf_count) = pack(&p.tmfs, x_max, min_width);
    bands.push(("queue 0 (control)".into(), tmf_count));
    bands.push(("queue 1 (event)".into(), 1));
    let mut queue_rows = BTreeMap::new();
    if p.queues.is_empty() {
        p.queues.insert(FIRST_REQUEST_QUEUE, Queue::new());
    }
    for (&q, queue) in &p.queues {
        let (rows, count) = pack(&queue.bars, x_max, min_width);
        bands.push((format!("queue {q} (requests)"), count));
        queue_rows.insert(q, rows);
    }
    let legend_entries = {
        let all_bars = || p.queues.values().flat_map(|q| &q.bars);
        let colors = [OK, CHECK_CONDITION, BUSY, NOT_OK, NEVER]
            .iter()
            .filter(|&&c| all_bars().any(|b| b.color == c))
            .count();
        let marks = [
            p.queues.values().any(|q| !q.suppressed_fault.is_empty()),
            p.queues
                .values()
                .any(|q| !q.suppressed_event_idx.is_empty()),
            p.queues.values().any(|q| !q.spurious.is_empty()),
            !p.tmfs.is_empty(),
            !p.events.is_empty(),
            p.device_resets.iter().any(|&t| t >= 0.0),
        ];
        let guest_marks = guest.as_ref().map_or(0, |g| {
            usize::from(g.polls.iter().any(|p| p.1 > 0))
                + usize::from(g.polls.iter().any(|p| p.1 == 0))
                + usize::from(!g.resets.is_empty())
        });
        colors + marks.iter().filter(|&&m| m).count() + guest_marks
    };
    let legend_rows = (legend_entries * 16 + 24).div_ceil(ROW_PX as usize);
    let band_rows: usize = bands.iter().map(|b| b.1).sum();
    let total = band_rows + legend_rows;
    let height = 90 + total as u32 * ROW_PX;
    // Top of each band, as a row index from the top.
    let mut band_top = Vec::new();
    let mut row = 0;
    for b in &bands {
        band_top.push(row);
        row += b.1;
    }
    let total_f = total as f64;
    // y range of row `r` (from the top): [y0, y1].
    let row_y = |r: usize| (total_f - r as f64 - 0.85, total_f - r as f64 - 0.15);
    let row_mid = |r: usize| total_f - r as f64 - 0.5;
    let band = |name_starts: &str| {
        bands
            .iter()
            .position(|b| b.0.starts_with(name_starts))
            .map(|i| band_top[i])
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(0)
            .build_cartesian_2d(x_min..x_max, 0.0..total_f)
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

        // Band labels and separators.
        let font = (FONT, 12).into_font();
        chart
            .draw_series(bands.iter().zip(&band_top).map(|(b, &top)| {
                Text::new(
                    b.0.clone(),
                    (x_min + label_space * 0.03, row_mid(top) + 0.35),
                    font.clone(),
                )
            }))
            .map_err(draw_err)?;
        chart
            .draw_series(band_top.iter().skip(1).chain([&band_rows]).map(|&top| {
                let y = total_f - top as f64;
                PathElement::new(vec![(x_min, y), (x_max, y)], SEPARATOR)
            }))
            .map_err(draw_err)?;

        let rect = |b: &Bar, r: usize| {
            let (y0, y1) = row_y(r);
            let end = b.end.unwrap_or(x_max).max(b.start + min_width);
            Rectangle::new([(b.start, y0), (end, y1)], b.color.filled())
        };
        let legend_box = |c: RGBColor| {
            move |(x, y): (i32, i32)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled())
        };

        // Requests, by colour so that each colour is one legend entry.
        for (color, name) in [
            (OK, "request: GOOD"),
            (CHECK_CONDITION, "request: CHECK CONDITION"),
            (BUSY, "request: BUSY / TASK SET FULL"),
            (NOT_OK, "request: reset, aborted or failed"),
            (NEVER, "request: never completed"),
        ] {
            let mut bars = Vec::new();
            for (q, queue) in &p.queues {
                let top = band(&format!("queue {q} ")).expect("every queue has a band");
                for (b, &r) in queue.bars.iter().zip(&queue_rows[q]) {
                    if b.color == color {
                        bars.push(rect(b, top + r));
                    }
                }
            }
            if !bars.is_empty() {
                chart
                    .draw_series(bars)
                    .map_err(draw_err)?
                    .label(name)
                    .legend(legend_box(color));
            }
        }

        // TMFs with their subtype and answer.
        let control = band("queue 0").expect("control band");
        if !p.tmfs.is_empty() {
            chart
                .draw_series(
                    p.tmfs
                        .iter()
                        .zip(&tmf_rows)
                        .map(|(b, &r)| rect(b, control + r)),
                )
                .map_err(draw_err)?
                .label("TMF (start to answer)")
                .legend(legend_box(TMF));
            chart
                .draw_series(p.tmfs.iter().zip(&tmf_rows).map(|(b, &r)| {
                    Text::new(
                        b.label.clone().unwrap_or_default(),
                        (b.start, row_mid(control + r) + 0.35),
                        (FONT, 11).into_font(),
                    )
                }))
                .map_err(draw_err)?;
        }

        // Events.
        let event_row = band("queue 1").expect("event band");
        if !p.events.is_empty() {
            chart
                .draw_series(p.events.iter().map(|(at, _)| {
                    TriangleMarker::new((*at, row_mid(event_row)), 5, EVENT.filled())
                }))
                .map_err(draw_err)?
                .label("event posted")
                .legend(|(x, y)| TriangleMarker::new((x + 7, y), 5, EVENT.filled()));
            chart
                .draw_series(p.events.iter().map(|(at, name)| {
                    Text::new(
                        name.clone(),
                        (*at + min_width * 4.0, row_mid(event_row) + 0.35),
                        (FONT, 11).into_font(),
                    )
                }))
                .map_err(draw_err)?;
        }

        // Signals: suppressed on the request's own row, spurious on the band's first.
        type Pick = fn(&Queue) -> &Vec<(f64, usize)>;
        let kinds: [(Pick, RGBColor, &str); 2] = [
            (
                |q| &q.suppressed_fault,
                SUPPRESSED_FAULT,
                "signal suppressed (fault)",
            ),
            (
                |q| &q.suppressed_event_idx,
                SUPPRESSED_EVENT_IDX,
                "signal suppressed (EVENT_IDX)",
            ),
        ];
        for (pick, color, name) in kinds {
            let mut marks = Vec::new();
            for (q, queue) in &p.queues {
                let top = band(&format!("queue {q} ")).expect("every queue has a band");
                for &(at, i) in pick(queue) {
                    marks.push(Circle::new(
                        (at, row_mid(top + queue_rows[q][i])),
                        3,
                        color.filled(),
                    ));
                }
            }
            if !marks.is_empty() {
                chart
                    .draw_series(marks)
                    .map_err(draw_err)?
                    .label(name)
                    .legend(move |(x, y)| Circle::new((x + 7, y), 3, color.filled()));
            }
        }
        let mut spurious = Vec::new();
        for (q, queue) in &p.queues {
            let top = band(&format!("queue {q} ")).expect("every queue has a band");
            for &at in &queue.spurious {
                spurious.push(Cross::new((at, row_mid(top)), 4, SPURIOUS.stroke_width(2)));
            }
        }
        if !spurious.is_empty() {
            chart
                .draw_series(spurious)
                .map_err(draw_err)?
                .label("spurious signal")
                .legend(|(x, y)| Cross::new((x + 7, y), 4, SPURIOUS.stroke_width(2)));
        }

        // The guest's side.
        if let Some(g) = &guest {
            let polls = band("guest: HwTimer").expect("guest band");
            let resets = band("guest: resets").expect("guest band");
            let (found, empty): (Vec<_>, Vec<_>) = g.polls.iter().partition(|p| p.1 > 0);
            if !empty.is_empty() {
                chart
                    .draw_series(
                        empty
                            .iter()
                            .map(|(at, _)| Circle::new((*at, row_mid(polls)), 2, NEVER.filled())),
                    )
                    .map_err(draw_err)?
                    .label("HwTimer poll (found nothing)")
                    .legend(|(x, y)| Circle::new((x + 7, y), 2, NEVER.filled()));
            }
            if !found.is_empty() {
                chart
                    .draw_series(
                        found
                            .iter()
                            .map(|(at, _)| Circle::new((*at, row_mid(polls)), 4, BLACK.filled())),
                    )
                    .map_err(draw_err)?
                    .label("HwTimer poll (found completions)")
                    .legend(|(x, y)| Circle::new((x + 7, y), 4, BLACK.filled()));
            }
            if !g.resets.is_empty() {
                chart
                    .draw_series(g.resets.iter().map(|&(a, b)| {
                        rect(
                            &Bar {
                                start: a,
                                end: Some(b),
                                color: GUEST_RESET,
                                label: None,
                            },
                            resets,
                        )
                    }))
                    .map_err(draw_err)?
                    .label("guest reset (HwResetBus to done)")
                    .legend(legend_box(GUEST_RESET));
            }
        }

        // Device resets across every band (those before the first request are the
        // driver's start-up and fall left of the axis).
        let resets: Vec<f64> = p
            .device_resets
            .iter()
            .copied()
            .filter(|&t| t >= 0.0)
            .collect();
        if !resets.is_empty() {
            let top = total_f;
            let bottom = total_f - band_rows as f64;
            chart
                .draw_series(resets.iter().map(|&at| {
                    PathElement::new(vec![(at, bottom), (at, top)], BLACK.stroke_width(2))
                }))
                .map_err(draw_err)?
                .label("device reset")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x + 7, y - 6), (x + 7, y + 6)], BLACK.stroke_width(2))
                });
        }

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
    fn overlapping_bars_get_their_own_rows() {
        let bar = |start, end| Bar {
            start,
            end: Some(end),
            color: OK,
            label: None,
        };
        let bars = [
            bar(0.0, 10.0),
            bar(1.0, 2.0),
            bar(3.0, 4.0),
            bar(11.0, 12.0),
        ];
        let (rows, count) = pack(&bars, 20.0, 0.1);
        assert_eq!(rows, [0, 1, 1, 0]);
        assert_eq!(count, 2);
        // A never-ending bar occupies its row to the end.
        let open = [
            Bar {
                end: None,
                ..bar(0.0, 0.0)
            },
            bar(5.0, 6.0),
        ];
        assert_eq!(pack(&open, 20.0, 0.1).0, [0, 1]);
    }

    #[test]
    fn the_picture_shows_every_kind_of_record_and_the_guest_side() {
        let trace = Trace::parse(TRACE);
        let guest = GuestTimeline {
            polls: vec![(5000, 0), (15000, 1)],
            resets: vec![(6000, 306000)],
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
