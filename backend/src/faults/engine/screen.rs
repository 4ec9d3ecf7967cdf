//! The per-queue [`CommandScreen`]: which commands the plan cannot touch, known without
//! the engine's lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{FaultEngine, RequestInfo, RequestKind};
use crate::faults::plan::{DataDirection, RequestClass};

/// What one request queue's worker knows about the plan without taking the engine's lock:
/// whether [`FaultEngine::on_request`] could do anything for a command on that queue but
/// count it. Built under the lock ([`CommandScreen::refresh`]) and good for as long as the
/// engine's generation is the one it was built at ([`CommandScreen::is_current`], one
/// atomic load); the engine moves the generation on every change that matters here.
///
/// A command passes when there is no trace (which records every request), no slow TMF
/// quiesces an LU (which the engine checks before any rule), and no enabled request-driven
/// rule's matcher accepts it. Matching comes before every trigger (`state` and `window_ms`
/// included) in [`FaultEngine::on_request`], and a trigger only counts matches, so for such
/// a command the engine would decide nothing, advance no counter but `commands`, change no
/// state and read no time.
#[derive(Debug)]
pub struct CommandScreen {
    queue: u16,
    /// The generation of the engine it was last built from, shared with that engine.
    generation: Arc<AtomicU64>,
    built_at: u64,
    idle: bool,
    tracing: bool,
    /// A trace or a quiesce: every command goes to the engine.
    engine_needed: bool,
    /// The enabled request-driven rules that can match a command on `queue`.
    matchers: Vec<CommandMatcher>,
}

/// A command as a [`CommandScreen`] looks at it. What costs more to find out is asked for
/// only when a rule looks at it: its data direction and its blocks (first block and
/// count, for reads and writes).
pub trait CommandShape {
    fn target(&self) -> u8;
    fn lun(&self) -> u16;
    fn opcode(&self) -> u8;
    fn direction(&self) -> DataDirection;
    fn blocks(&self) -> Option<(u64, u64)>;
}

impl CommandShape for RequestInfo {
    fn target(&self) -> u8 {
        self.target
    }
    fn lun(&self) -> u16 {
        self.lun
    }
    fn opcode(&self) -> u8 {
        self.opcode.unwrap_or_default()
    }
    fn direction(&self) -> DataDirection {
        self.direction
    }
    fn blocks(&self) -> Option<(u64, u64)> {
        self.lba
    }
}

/// What is left of a [`Matcher`] for the commands of one queue, once its request class
/// and queue are known to accept them: [`Matcher::matches`] on such a command.
#[derive(Debug, Clone, Copy)]
struct CommandMatcher {
    target: Option<u8>,
    lun: Option<u16>,
    opcode: Option<u8>,
    direction: Option<DataDirection>,
    lba: Option<(u64, u64)>,
}

impl CommandMatcher {
    #[inline]
    fn matches(&self, c: &impl CommandShape) -> bool {
        if self.target.is_some_and(|t| t != c.target())
            || self.lun.is_some_and(|l| l != c.lun())
            || self.opcode.is_some_and(|o| o != c.opcode())
            || self.direction.is_some_and(|d| d != c.direction())
        {
            return false;
        }
        // As in `Matcher::matches`.
        let Some((lo, hi)) = self.lba else {
            return true;
        };
        match c.blocks() {
            None => false,
            Some((start, n)) => {
                let last = start.saturating_add(n.max(1) - 1);
                start <= hi && last >= lo
            }
        }
    }
}

impl CommandScreen {
    /// A screen of `engine` for the commands of `queue`.
    pub fn new(engine: &FaultEngine, queue: u16) -> CommandScreen {
        let mut screen = CommandScreen {
            queue,
            generation: engine.generation.clone(),
            built_at: 0,
            idle: false,
            tracing: false,
            engine_needed: true,
            matchers: Vec::new(),
        };
        screen.refresh(engine);
        screen
    }

    /// Whether the engine is unchanged since the screen was built. Acquire, and meant to
    /// be read after the command is marked executing (whose SeqCst fence orders the two):
    /// either this load sees the generation a slow TMF moved before acting, or that TMF's
    /// wait sees the command executing and waits for it.
    #[inline]
    pub fn is_current(&self) -> bool {
        self.generation.load(Ordering::Acquire) == self.built_at
    }

    /// Rebuilds the screen from `engine` (under its lock). Allocates only when the plan has
    /// more command rules than ever before.
    pub fn refresh(&mut self, engine: &FaultEngine) {
        if !Arc::ptr_eq(&self.generation, &engine.generation) {
            self.generation = engine.generation.clone();
        }
        // Under the lock: no change is between this load and what is read below.
        self.built_at = engine.generation.load(Ordering::Acquire);
        self.idle = engine.is_idle();
        self.tracing = engine.tracing();
        self.engine_needed = self.tracing || !engine.quiesce.is_empty();
        self.matchers.clear();
        let queue = self.queue;
        self.matchers.extend(
            engine
                .rules
                .iter()
                .filter(|r| r.spec.enabled && !r.time_driven)
                .map(|r| r.spec.matcher)
                .filter(|m| {
                    matches!(m.class, RequestClass::Any | RequestClass::Command)
                        && m.queue.matches(queue)
                })
                .map(|m| CommandMatcher {
                    target: m.target,
                    lun: m.lun,
                    opcode: m.opcode,
                    direction: m.direction,
                    lba: m.lba,
                }),
        );
    }

    /// [`FaultEngine::is_idle`] when the screen was built.
    pub fn idle(&self) -> bool {
        self.idle
    }

    /// [`FaultEngine::tracing`] when the screen was built.
    pub fn tracing(&self) -> bool {
        self.tracing
    }

    /// Whether [`FaultEngine::on_request`] would only count the command `c` on this
    /// screen's queue; then [`FaultEngine::count_commands`] stands in for it.
    #[inline]
    pub fn passes(&self, c: &impl CommandShape) -> bool {
        !self.engine_needed && !self.matchers.iter().any(|m| m.matches(c))
    }

    /// [`CommandScreen::passes`] for a request as the engine gets it (any request on any
    /// queue: only commands on this screen's queue can pass).
    pub fn passes_request(&self, req: &RequestInfo) -> bool {
        req.kind == RequestKind::Command
            && req.opcode.is_some()
            && req.queue == self.queue
            && self.passes(req)
    }
}
