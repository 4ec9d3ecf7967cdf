//! COM1: the one output channel. Report lines from the runner, log lines and crash
//! reports all go here, one line each, so the harness can read them in order.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{BaudRate, Config, Uart16550};

const COM1: u16 = 0x3f8;

static PORT: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);

/// Initialises COM1 (115200 8N1, FIFO on). Without a working port nothing can be reported,
/// so a missing one leaves output disabled rather than failing.
pub fn init() {
    // SAFETY: 0x3f8..0x3ff is COM1 on every PC-compatible machine QEMU emulates, and this
    // module is the only user of those ports.
    let Ok(mut uart) = (unsafe { Uart16550::new_port(COM1) }) else {
        return;
    };
    let config = Config {
        baud_rate: BaudRate::Baud115200,
        ..Config::DEFAULT
    };
    if uart.init(config).is_ok() {
        *PORT.lock() = Some(uart);
    }
}

/// Whether the last byte sent ended a line, so a crash report can start on a new one.
static AT_LINE_START: AtomicBool = AtomicBool::new(true);

fn send(uart: &mut Option<Uart16550<PioBackend>>, s: &str) {
    if let Some(uart) = uart {
        uart.send_bytes_exact(s.as_bytes());
        if let Some(&last) = s.as_bytes().last() {
            AT_LINE_START.store(last == b'\n', Ordering::Relaxed);
        }
    }
}

/// A handle to COM1 for `core::fmt`. Lines end in a bare `\n`, which is what the harness
/// splits on. Each `write_str` takes the lock, so interrupt handlers must never print.
#[derive(Debug, Default)]
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        send(&mut PORT.lock(), s);
        Ok(())
    }
}

/// Output for the crash paths (panic, CPU exception), made by [`CrashSerial::new`] once
/// the other CPUs were asked to stop. The crash may have interrupted a write that holds
/// the lock; when every other CPU is parked, that writer never resumes, so the lock is
/// taken over instead of waited for. Otherwise a CPU still running may be writing, and
/// the lock is waited for.
pub struct CrashSerial {
    others_parked: bool,
}

impl Write for CrashSerial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.others_parked && PORT.is_locked() {
            // SAFETY: every other CPU is parked for good, and the holder on this CPU was
            // interrupted by this crash path and never runs again, so no one else uses the
            // port while we write.
            unsafe { PORT.force_unlock() };
        }
        send(&mut PORT.lock(), s);
        Ok(())
    }
}

impl CrashSerial {
    /// The crash output; `others_parked` is what [`crate::smp::halt_others`] returned
    /// (true on one CPU).
    pub fn new(others_parked: bool) -> Self {
        Self { others_parked }
    }

    /// Ends a line that the crash cut short, so the report is a line of its own.
    pub fn fresh_line(&mut self) {
        if !AT_LINE_START.load(Ordering::Relaxed) {
            let _ = self.write_str("\n");
        }
    }
}

/// `log` over COM1. Lines start with `[LEVEL`, never `{`, so the harness cannot mistake
/// them for report objects.
struct SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = crate::time::now_us();
        let mut port = PORT.lock();
        let mut line = LineWriter(&mut port);
        // Formatting into the locked port keeps a log line whole.
        let _ = writeln!(
            line,
            "[{:<5} {:>6}.{:03}ms {}] {}",
            record.level(),
            now / 1000,
            now % 1000,
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

struct LineWriter<'a>(&'a mut Option<Uart16550<PioBackend>>);

impl Write for LineWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        send(self.0, s);
        Ok(())
    }
}

static LOGGER: SerialLogger = SerialLogger;

/// Installs the serial logger at `level`.
pub fn init_logger(level: log::LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
