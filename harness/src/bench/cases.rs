//! The fixed cases of `make bench`: which load runs against which server.

use std::time::Duration;

use serde::Serialize;

use super::frontend::load::{Pattern, DEFAULT_STALL};
use super::socket::LoadOptions;

/// A fault that arms the engine in the request path but matches no request of the bench
/// (which addresses LUN 0 only): the cost of an armed, idle plan.
pub const IDLE_FAULT: &str = "status:lun=7,status=busy";

/// Which server a case runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    Ours,
    OursArmedIdle,
    Peer,
    /// The host reading the image file itself.
    Host,
}

impl Server {
    pub(super) fn label(self) -> &'static str {
        match self {
            Server::Ours => "ours",
            Server::OursArmedIdle => "ours+idle plan",
            Server::Peer => "peer",
            Server::Host => "host",
        }
    }
}

/// One case: a load against a server.
pub(super) struct CaseDef {
    pub(super) name: &'static str,
    pub(super) server: Server,
    pub(super) load: LoadOptions,
}

pub(super) const RANDREAD: &str = "4k randread qd32 1q";
pub(super) const RANDWRITE: &str = "4k randwrite qd32 1q";
pub(super) const SEQREAD: &str = "1M seqread qd8 1q";
pub(super) const RANDREAD_4Q: &str = "4k randread qd32 4q";
pub(super) const HOST_READ: &str = "host pread 1M seq";

pub(super) fn load(
    queues: u16,
    qd: u16,
    block: u32,
    pattern: Pattern,
    read: u8,
    d: Duration,
) -> LoadOptions {
    LoadOptions {
        queues,
        queue_depth: qd,
        block_bytes: block,
        read_percent: read,
        pattern,
        duration: d,
        event_idx: true,
        seed: 1,
        stall: DEFAULT_STALL,
    }
}

pub(super) fn cases(peer: bool, d: Duration) -> Vec<CaseDef> {
    use Pattern::{Random, Sequential};
    let mut v = Vec::new();
    let servers: &[Server] = if peer {
        &[Server::Ours, Server::Peer]
    } else {
        &[Server::Ours]
    };
    for &server in servers {
        v.push(CaseDef {
            name: RANDREAD,
            server,
            load: load(1, 32, 4096, Random, 100, d),
        });
        if server == Server::Ours {
            // Right after the same load without a plan (and before it in odd rounds, see
            // `run_suite`): the 2 % question needs the two runs as close as they can be.
            v.push(CaseDef {
                name: RANDREAD,
                server: Server::OursArmedIdle,
                load: load(1, 32, 4096, Random, 100, d),
            });
        }
        v.push(CaseDef {
            name: RANDWRITE,
            server,
            load: load(1, 32, 4096, Random, 0, d),
        });
        v.push(CaseDef {
            name: SEQREAD,
            server,
            load: load(1, 8, 1 << 20, Sequential, 100, d),
        });
    }
    v.push(CaseDef {
        name: RANDREAD_4Q,
        server: Server::Ours,
        load: load(4, 32, 4096, Random, 100, d),
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_plan_run_is_the_plain_runs_neighbour() {
        // `run_suite` swaps the first two cases in odd rounds (ABBA).
        for peer in [false, true] {
            let c = cases(peer, Duration::from_secs(1));
            assert_eq!((c[0].name, c[0].server), (RANDREAD, Server::Ours));
            assert_eq!((c[1].name, c[1].server), (RANDREAD, Server::OursArmedIdle));
            assert_eq!(c.len(), if peer { 8 } else { 5 });
        }
    }
}
