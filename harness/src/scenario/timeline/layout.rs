//! Where things go: the time axis with room for the band labels on its left, the bands
//! from the top (guest: a band per CPU, polls, resets; control queue, event queue,
//! request queues) with their rows, and the legend's room below them.

use std::collections::BTreeMap;

use plotters::prelude::*;

use super::picture::{pack, Bar, GuestSide, Picture};
use super::{BUSY, CHECK_CONDITION, MIN_BAR_PX, NEVER, NOT_OK, OK, ROUTINE_COLORS, ROW_PX, WIDTH};

pub(super) struct Layout {
    pub(super) x_min: f64,
    pub(super) x_max: f64,
    pub(super) label_space: f64,
    /// The narrowest bar, in ms.
    pub(super) min_width: f64,
    /// Bands from the top: (label, rows).
    pub(super) bands: Vec<(String, usize)>,
    /// Top of each band, as a row index from the top.
    pub(super) band_top: Vec<usize>,
    pub(super) band_rows: usize,
    /// Rows of bands and legend: the y axis runs from 0 to this.
    pub(super) total: f64,
    pub(super) height: u32,
    /// Row of each TMF in the control band.
    pub(super) tmf_rows: Vec<usize>,
    /// Row of each request in its queue's band.
    pub(super) queue_rows: BTreeMap<u16, Vec<usize>>,
}

impl Layout {
    pub(super) fn new(p: &Picture, guest: Option<&GuestSide>) -> Layout {
        let span = p.end.max(1.0) * 1.02;
        let label_space = span * 0.13;
        let (x_min, x_max) = (-label_space, span);
        let plot_px = f64::from(WIDTH - 60);
        let min_width = (x_max - x_min) / plot_px * MIN_BAR_PX;

        let mut bands: Vec<(String, usize)> = Vec::new();
        if let Some(g) = guest {
            for cpu in 0..g.cpus {
                bands.push((format!("guest: CPU {cpu}"), 1));
            }
            bands.push(("guest: HwTimer polls".into(), 1));
            bands.push(("guest: resets".into(), 1));
        }
        let (tmf_rows, tmf_count) = pack(&p.tmfs, x_max, min_width);
        bands.push(("queue 0 (control)".into(), tmf_count));
        bands.push(("queue 1 (event)".into(), 1));
        let mut queue_rows = BTreeMap::new();
        for (&q, queue) in &p.queues {
            let (rows, count) = pack(&queue.bars, x_max, min_width);
            bands.push((format!("queue {q} (requests)"), count));
            queue_rows.insert(q, rows);
        }
        let legend_rows = (legend_entries(p, guest) * 16 + 24).div_ceil(ROW_PX as usize);
        let band_rows: usize = bands.iter().map(|b| b.1).sum();
        let total = band_rows + legend_rows;
        let mut band_top = Vec::new();
        let mut row = 0;
        for b in &bands {
            band_top.push(row);
            row += b.1;
        }
        Layout {
            x_min,
            x_max,
            label_space,
            min_width,
            bands,
            band_top,
            band_rows,
            total: total as f64,
            height: 90 + total as u32 * ROW_PX,
            tmf_rows,
            queue_rows,
        }
    }

    /// y range of row `r` (from the top): [y0, y1].
    pub(super) fn row_y(&self, r: usize) -> (f64, f64) {
        (self.total - r as f64 - 0.85, self.total - r as f64 - 0.15)
    }

    pub(super) fn row_mid(&self, r: usize) -> f64 {
        self.total - r as f64 - 0.5
    }

    /// The top row of the first band whose label starts with `name_starts`.
    pub(super) fn band(&self, name_starts: &str) -> Option<usize> {
        self.bands
            .iter()
            .position(|b| b.0.starts_with(name_starts))
            .map(|i| self.band_top[i])
    }

    /// The band of request queue `q`.
    pub(super) fn queue_band(&self, q: u16) -> usize {
        self.band(&format!("queue {q} "))
            .expect("every queue has a band")
    }

    /// `b` on row `r`, at least `min_width` wide; one without an end runs to the edge.
    pub(super) fn rect(&self, b: &Bar, r: usize) -> Rectangle<(f64, f64)> {
        let (y0, y1) = self.row_y(r);
        let end = b.end.unwrap_or(self.x_max).max(b.start + self.min_width);
        Rectangle::new([(b.start, y0), (end, y1)], b.color.filled())
    }
}

/// How many entries the legend will have: one per colour and kind of mark shown.
fn legend_entries(p: &Picture, guest: Option<&GuestSide>) -> usize {
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
    let guest_marks = guest.map_or(0, |g| {
        let routines = ROUTINE_COLORS
            .iter()
            .filter(|&&c| g.calls.iter().any(|(b, _)| b.color == c))
            .count();
        usize::from(g.polls.iter().any(|p| p.1 > 0))
            + usize::from(g.polls.iter().any(|p| p.1 == 0))
            + usize::from(!g.resets.is_empty())
            + routines
    });
    colors + marks.iter().filter(|&&m| m).count() + guest_marks
}
