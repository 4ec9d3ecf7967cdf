//! The series of the picture, each with its legend entry, in the order they are drawn:
//! band labels, requests by colour, TMFs, events, signals, the guest's side (routine
//! calls per CPU, polls, resets) and device resets.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::layout::Layout;
use super::picture::{Bar, GuestSide, Picture, Queue};
use super::{draw_err, TimelineError};
use super::{
    BUSY, CHECK_CONDITION, EVENT, FONT, GUEST_RESET, NEVER, NOT_OK, OK, ROUTINE_COLORS, SEPARATOR,
    SPURIOUS, SUPPRESSED_EVENT_IDX, SUPPRESSED_FAULT, TMF,
};
use guest_miniport::contract::timeline_fields::CALL_ROUTINES;

pub(super) type Chart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A legend entry's filled box of colour `c`.
fn legend_box(c: RGBColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled())
}

/// Band labels and the separators between bands.
pub(super) fn bands(chart: &mut Chart, l: &Layout) -> Result<(), TimelineError> {
    let font = (FONT, 12).into_font();
    chart
        .draw_series(l.bands.iter().zip(&l.band_top).map(|(b, &top)| {
            Text::new(
                b.0.clone(),
                (l.x_min + l.label_space * 0.03, l.row_mid(top) + 0.35),
                font.clone(),
            )
        }))
        .map_err(draw_err)?;
    chart
        .draw_series(l.band_top.iter().skip(1).chain([&l.band_rows]).map(|&top| {
            let y = l.total - top as f64;
            PathElement::new(vec![(l.x_min, y), (l.x_max, y)], SEPARATOR)
        }))
        .map_err(draw_err)?;
    Ok(())
}

/// Requests, by colour so that each colour is one legend entry.
pub(super) fn requests(chart: &mut Chart, l: &Layout, p: &Picture) -> Result<(), TimelineError> {
    for (color, name) in [
        (OK, "request: GOOD"),
        (CHECK_CONDITION, "request: CHECK CONDITION"),
        (BUSY, "request: BUSY / TASK SET FULL"),
        (NOT_OK, "request: reset, aborted or failed"),
        (NEVER, "request: never completed"),
    ] {
        let mut bars = Vec::new();
        for (q, queue) in &p.queues {
            let top = l.queue_band(*q);
            for (b, &r) in queue.bars.iter().zip(&l.queue_rows[q]) {
                if b.color == color {
                    bars.push(l.rect(b, top + r));
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
    Ok(())
}

/// TMFs with their subtype and answer.
pub(super) fn tmfs(chart: &mut Chart, l: &Layout, p: &Picture) -> Result<(), TimelineError> {
    let control = l.band("queue 0").expect("control band");
    if p.tmfs.is_empty() {
        return Ok(());
    }
    chart
        .draw_series(
            p.tmfs
                .iter()
                .zip(&l.tmf_rows)
                .map(|(b, &r)| l.rect(b, control + r)),
        )
        .map_err(draw_err)?
        .label("TMF (start to answer)")
        .legend(legend_box(TMF));
    chart
        .draw_series(p.tmfs.iter().zip(&l.tmf_rows).map(|(b, &r)| {
            Text::new(
                b.label.clone().unwrap_or_default(),
                (b.start, l.row_mid(control + r) + 0.35),
                (FONT, 11).into_font(),
            )
        }))
        .map_err(draw_err)?;
    Ok(())
}

/// Events posted on the event queue, with their names.
pub(super) fn events(chart: &mut Chart, l: &Layout, p: &Picture) -> Result<(), TimelineError> {
    let event_row = l.band("queue 1").expect("event band");
    if p.events.is_empty() {
        return Ok(());
    }
    chart
        .draw_series(
            p.events
                .iter()
                .map(|(at, _)| TriangleMarker::new((*at, l.row_mid(event_row)), 5, EVENT.filled())),
        )
        .map_err(draw_err)?
        .label("event posted")
        .legend(|(x, y)| TriangleMarker::new((x + 7, y), 5, EVENT.filled()));
    chart
        .draw_series(p.events.iter().map(|(at, name)| {
            Text::new(
                name.clone(),
                (*at + l.min_width * 4.0, l.row_mid(event_row) + 0.35),
                (FONT, 11).into_font(),
            )
        }))
        .map_err(draw_err)?;
    Ok(())
}

/// Signals: suppressed on the request's own row, spurious on the band's first.
pub(super) fn signals(chart: &mut Chart, l: &Layout, p: &Picture) -> Result<(), TimelineError> {
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
            let top = l.queue_band(*q);
            for &(at, i) in pick(queue) {
                marks.push(Circle::new(
                    (at, l.row_mid(top + l.queue_rows[q][i])),
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
        let top = l.queue_band(*q);
        for &at in &queue.spurious {
            spurious.push(Cross::new(
                (at, l.row_mid(top)),
                4,
                SPURIOUS.stroke_width(2),
            ));
        }
    }
    if !spurious.is_empty() {
        chart
            .draw_series(spurious)
            .map_err(draw_err)?
            .label("spurious signal")
            .legend(|(x, y)| Cross::new((x + 7, y), 4, SPURIOUS.stroke_width(2)));
    }
    Ok(())
}

/// Which CPU ran each routine: a bar per call on its CPU's band, by routine so that each
/// routine is one legend entry.
fn guest_cpus(chart: &mut Chart, l: &Layout, g: &GuestSide) -> Result<(), TimelineError> {
    for (name, color) in CALL_ROUTINES.iter().zip(ROUTINE_COLORS) {
        let bars: Vec<_> = g
            .calls
            .iter()
            .filter(|(b, _)| b.color == color)
            .filter_map(|(b, cpu)| Some(l.rect(b, l.band(&format!("guest: CPU {cpu}"))?)))
            .collect();
        if !bars.is_empty() {
            chart
                .draw_series(bars)
                .map_err(draw_err)?
                .label(*name)
                .legend(legend_box(color));
        }
    }
    Ok(())
}

/// The guest's side: which CPU ran each routine, its HwTimer polls and its resets.
pub(super) fn guest(chart: &mut Chart, l: &Layout, g: &GuestSide) -> Result<(), TimelineError> {
    guest_cpus(chart, l, g)?;
    let polls = l.band("guest: HwTimer").expect("guest band");
    let resets = l.band("guest: resets").expect("guest band");
    let (found, empty): (Vec<_>, Vec<_>) = g.polls.iter().partition(|p| p.1 > 0);
    if !empty.is_empty() {
        chart
            .draw_series(
                empty
                    .iter()
                    .map(|(at, _)| Circle::new((*at, l.row_mid(polls)), 2, NEVER.filled())),
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
                    .map(|(at, _)| Circle::new((*at, l.row_mid(polls)), 4, BLACK.filled())),
            )
            .map_err(draw_err)?
            .label("HwTimer poll (found completions)")
            .legend(|(x, y)| Circle::new((x + 7, y), 4, BLACK.filled()));
    }
    if !g.resets.is_empty() {
        chart
            .draw_series(g.resets.iter().map(|&(a, b)| {
                let bar = Bar {
                    start: a,
                    end: Some(b),
                    color: GUEST_RESET,
                    label: None,
                };
                l.rect(&bar, resets)
            }))
            .map_err(draw_err)?
            .label("guest reset (HwResetBus to done)")
            .legend(legend_box(GUEST_RESET));
    }
    Ok(())
}

/// Device resets across every band (those before the first request are the driver's
/// start-up and fall left of the axis).
pub(super) fn device_resets(
    chart: &mut Chart,
    l: &Layout,
    p: &Picture,
) -> Result<(), TimelineError> {
    let resets: Vec<f64> = p
        .device_resets
        .iter()
        .copied()
        .filter(|&t| t >= 0.0)
        .collect();
    if resets.is_empty() {
        return Ok(());
    }
    let top = l.total;
    let bottom = l.total - l.band_rows as f64;
    chart
        .draw_series(
            resets
                .iter()
                .map(|&at| PathElement::new(vec![(at, bottom), (at, top)], BLACK.stroke_width(2))),
        )
        .map_err(draw_err)?
        .label("device reset")
        .legend(|(x, y)| {
            PathElement::new(vec![(x + 7, y - 6), (x + 7, y + 6)], BLACK.stroke_width(2))
        });
    Ok(())
}
