//! The command line, turned into a validated [`Config`] (pure), and the start-up checks
//! of the paths it names ([`paths`], which look at the file system).

use std::path::PathBuf;

use clap::Parser;

use crate::scsi::{LunSpec, LunSpecError, MAX_LUNS};
use crate::vhu_scsi::MAX_REQUEST_QUEUES;

pub mod paths;

/// Exit status of the backend when it refuses its command line: a bad flag or value, a
/// path it will not use, an image another user holds, an invalid fault plan (file,
/// shorthand or preset); the same as clap's errors.
pub const USAGE_EXIT_CODE: i32 = 2;

#[derive(Parser, Debug)]
#[command(name = "vhost-user-flakyhba", version, about)]
pub struct Args {
    /// vhost-user socket to listen on; a stale socket there is replaced, anything else
    /// (a file, a socket a server answers on) is refused.
    #[arg(long)]
    pub socket_path: PathBuf,
    /// A LUN: `[T:L=]PATH[,ro][,block-size=512|4096][,sense=fixed|descriptor]`. PATH is a
    /// file or block device, or `mem:SIZE` (K/M/G suffixes) for a RAM disk. Without `T:L=`
    /// it is the next free LUN of target 0. `sense=descriptor` sets D_SENSE in the control
    /// mode page, so sense data comes in descriptor format.
    #[arg(long = "lun", value_name = "[T:L=]PATH[,ro][,block-size=N][,sense=F]")]
    pub luns: Vec<String>,
    /// Number of request queues (the device adds a control and an event queue).
    #[arg(long, default_value_t = 1)]
    pub num_queues: u16,
    /// Log at debug level unless RUST_LOG says otherwise.
    #[arg(short, long)]
    pub verbose: bool,
    #[command(flatten)]
    pub faults: crate::faults::cli::FaultArgs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub socket_path: PathBuf,
    /// What `Lun::open_spec` opens, in the order given.
    pub luns: Vec<LunSpec>,
    pub num_queues: u16,
    pub verbose: bool,
    pub faults: crate::faults::cli::FaultArgs,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--num-queues must be between 1 and {MAX_REQUEST_QUEUES}, got {0}")]
    InvalidQueueCount(u16),
    #[error("at least one --lun is needed")]
    NoLuns,
    #[error("too many LUNs: {0} (at most {MAX_LUNS})")]
    TooManyLuns(usize),
    #[error(transparent)]
    InvalidLun(#[from] LunSpecError),
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        if args.num_queues == 0 || args.num_queues > MAX_REQUEST_QUEUES {
            return Err(ConfigError::InvalidQueueCount(args.num_queues));
        }
        if args.luns.is_empty() {
            return Err(ConfigError::NoLuns);
        }
        if args.luns.len() > MAX_LUNS {
            return Err(ConfigError::TooManyLuns(args.luns.len()));
        }
        let luns = args
            .luns
            .iter()
            .map(|s| s.parse::<LunSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            socket_path: args.socket_path,
            luns,
            num_queues: args.num_queues,
            verbose: args.verbose,
            faults: args.faults,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Config, ConfigError> {
        let args = Args::try_parse_from(
            std::iter::once("vhost-user-flakyhba").chain(argv.iter().copied()),
        )
        .expect("clap accepts the flags");
        Config::try_from(args)
    }

    #[test]
    fn luns_in_order_with_read_only() {
        let c = parse(&[
            "--socket-path",
            "/tmp/s",
            "--lun",
            "a.img",
            "--lun",
            "b.img,ro",
        ])
        .unwrap();
        assert_eq!(c.num_queues, 1);
        assert_eq!(
            c.luns,
            vec![LunSpec::file("a.img", false), LunSpec::file("b.img", true)]
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(
            parse(&["--socket-path", "s", "--lun", "a", "--num-queues", "0"]),
            Err(ConfigError::InvalidQueueCount(0))
        );
        assert_eq!(parse(&["--socket-path", "s"]), Err(ConfigError::NoLuns));
        assert_eq!(
            parse(&["--socket-path", "s", "--lun", "a,rox"]),
            Err(ConfigError::InvalidLun(LunSpecError::UnknownOption(
                "a,rox".into()
            )))
        );
        assert_eq!(
            parse(&["--socket-path", "s", "--lun", ",ro"]),
            Err(ConfigError::InvalidLun(LunSpecError::EmptyPath(
                ",ro".into()
            )))
        );
    }

    #[test]
    fn socket_path_is_required() {
        assert!(Args::try_parse_from(["x", "--lun", "a"]).is_err());
    }
}
