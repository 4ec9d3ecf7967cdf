//! The clock's side of the engine: events queued from the control socket and the
//! time-driven faults (spurious interrupts, scheduled events).

use std::borrow::Cow;
use std::time::Duration;

use super::record::emit;
use super::{FaultEngine, TickAction};
use crate::faults::plan::{FaultAction, FaultKind};
use crate::faults::trace::TraceEvent;

impl FaultEngine {
    /// Earliest time `on_tick` has something to do, if any.
    pub fn next_due(&self) -> Option<Duration> {
        if !self.pending_events.is_empty() {
            return Some(Duration::ZERO);
        }
        self.rules
            .iter()
            .filter(|r| r.spec.enabled)
            .filter_map(|r| r.next_due)
            .min()
    }

    /// Run the time-driven faults due at `now`. A late tick counts as one opportunity per
    /// fault, not one per period missed.
    pub fn on_tick(&mut self, now: Duration) -> Vec<TickAction> {
        let mut actions = Vec::new();
        while let Some(event) = self.pending_events.pop_front() {
            actions.push(TickAction::PostEvent(event));
            self.stats.fired.event += 1;
            emit(
                &mut self.trace,
                &mut self.stats,
                now,
                TraceEvent::Fault {
                    queue: None,
                    id: None,
                    fault: 0,
                    name: Some("control".into()),
                    kind: FaultKind::Event.name().into(),
                    detail: Some(event.name().into()),
                    delay_us: None,
                    shadowed: false,
                },
            );
        }
        let mut new_state = None;
        for rule in &mut self.rules {
            let (Some(due), Some(schedule)) = (rule.next_due, rule.spec.action.schedule()) else {
                continue;
            };
            if !rule.spec.enabled || now < due {
                continue;
            }
            rule.next_due = schedule.interval.map(|iv| {
                let periods = (now - due).as_nanos() / iv.as_nanos().max(1) + 1;
                let step = iv.as_nanos().saturating_mul(periods);
                due.saturating_add(Duration::from_nanos(
                    u64::try_from(step).unwrap_or(u64::MAX),
                ))
            });
            if !rule.fires(self.state, self.seed, now) {
                continue;
            }
            if let Some(s) = rule.spec.trigger.set_state {
                new_state = Some(s);
            }
            let mut detail = None;
            match rule.spec.action {
                FaultAction::SpuriousInterrupt { queue, burst, .. } => {
                    actions.push(TickAction::SpuriousSignal {
                        queue,
                        count: burst,
                    });
                    self.stats.spurious_signals += u64::from(burst);
                    emit(
                        &mut self.trace,
                        &mut self.stats,
                        now,
                        TraceEvent::SpuriousSignal {
                            queue,
                            fault: rule.id,
                            count: burst,
                        },
                    );
                }
                FaultAction::Event { event, .. } => {
                    actions.push(TickAction::PostEvent(event));
                    detail = Some(event.name());
                }
                _ => continue,
            }
            *self.stats.fired.get_mut(rule.spec.action.kind()) += 1;
            emit(
                &mut self.trace,
                &mut self.stats,
                now,
                TraceEvent::Fault {
                    queue: None,
                    id: None,
                    fault: rule.id,
                    name: rule.spec.name.as_deref().map(Cow::Borrowed),
                    kind: rule.spec.action.kind().name().into(),
                    detail: detail.map(Cow::Borrowed),
                    delay_us: None,
                    shadowed: false,
                },
            );
        }
        if let Some(s) = new_state {
            self.state = s;
        }
        actions
    }
}
