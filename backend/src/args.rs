//! The command line, turned into a validated [`Config`].

use std::path::PathBuf;

use clap::Parser;

use crate::scsi::MAX_LUNS;
use crate::vhu_scsi::MAX_REQUEST_QUEUES;

#[derive(Parser, Debug)]
#[command(name = "vhost-user-flakyhba", version, about)]
pub struct Args {
    /// vhost-user socket to listen on; a stale file there is removed.
    #[arg(long)]
    pub socket_path: PathBuf,
    /// Backing file of the next LUN of target 0 (LUN 0 first). `PATH,ro` makes it read-only.
    #[arg(long = "lun", value_name = "PATH[,ro]")]
    pub luns: Vec<String>,
    /// Number of request queues (the device adds a control and an event queue).
    #[arg(long, default_value_t = 1)]
    pub num_queues: u16,
    /// Log at debug level unless RUST_LOG says otherwise.
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub socket_path: PathBuf,
    pub luns: Vec<LunConfig>,
    pub num_queues: u16,
    pub verbose: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--num-queues must be between 1 and {MAX_REQUEST_QUEUES}, got {0}")]
    InvalidQueueCount(u16),
    #[error("at least one --lun is needed")]
    NoLuns,
    #[error("too many LUNs: {0} (at most {MAX_LUNS})")]
    TooManyLuns(usize),
    #[error("--lun {0:?}: unknown option after ',' (only \"ro\" and \"rw\" are known)")]
    UnknownLunOption(String),
    #[error("--lun {0:?}: empty path")]
    EmptyLunPath(String),
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
            .map(|s| parse_lun(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            socket_path: args.socket_path,
            luns,
            num_queues: args.num_queues,
            verbose: args.verbose,
        })
    }
}

fn parse_lun(spec: &str) -> Result<LunConfig, ConfigError> {
    let (path, read_only) = match spec.rsplit_once(',') {
        Some((path, "ro")) => (path, true),
        Some((path, "rw")) => (path, false),
        Some(_) => return Err(ConfigError::UnknownLunOption(spec.to_owned())),
        None => (spec, false),
    };
    if path.is_empty() {
        return Err(ConfigError::EmptyLunPath(spec.to_owned()));
    }
    Ok(LunConfig {
        path: PathBuf::from(path),
        read_only,
    })
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
            vec![
                LunConfig {
                    path: "a.img".into(),
                    read_only: false
                },
                LunConfig {
                    path: "b.img".into(),
                    read_only: true
                },
            ]
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
            Err(ConfigError::UnknownLunOption("a,rox".into()))
        );
        assert_eq!(
            parse(&["--socket-path", "s", "--lun", ",ro"]),
            Err(ConfigError::EmptyLunPath(",ro".into()))
        );
    }

    #[test]
    fn socket_path_is_required() {
        assert!(Args::try_parse_from(["x", "--lun", "a"]).is_err());
    }
}
