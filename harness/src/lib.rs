//! flakyhba-harness: starts the backend and QEMU with the guest image, runs scenarios,
//! judges them and reports.
//!
//! Rooms, each importing only from `launch`: [`launch`] (a boot's processes and their
//! supervision), [`scenario`] (scenario files, expectations, metrics, judging, the smoke
//! run, the matrix and its reports), [`bench`](mod@bench) (the host-side vhost-user frontend and
//! `make bench`), [`linux`] (the stock Linux guest and bench-linux) and [`explore`]
//! (random fault plans judged by the generic oracle, and shrinking; it also runs through
//! `scenario`'s runner). [`drivers`] (the driver card: stock drivers and ours against the
//! faults) sits above `scenario` and `linux`, whose expectations, metrics, timeline and
//! guest files it reuses. [`soak`] (the data-integrity soak) imports `launch` and bench's
//! frontend, and nothing imports it. [`cli`] sits on top: the command line and the
//! options it gives each room.

pub mod bench;
pub mod cli;
pub mod drivers;
pub mod explore;
pub mod launch;
pub mod linux;
pub mod scenario;
pub mod soak;
