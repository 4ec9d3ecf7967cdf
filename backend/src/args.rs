//! The command line, turned into a validated [`Config`].

use std::path::PathBuf;

use clap::Parser;

use crate::scsi::sense::SenseFormat;
use crate::scsi::{Backing, LunAddress, LunSpec, MAX_LUNS};
use crate::vhu_scsi::MAX_REQUEST_QUEUES;

#[derive(Parser, Debug)]
#[command(name = "vhost-user-flakyhba", version, about)]
pub struct Args {
    /// vhost-user socket to listen on; a stale file there is removed.
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
    #[error("--lun {0:?}: unknown option after ',' (ro, rw, block-size=512|4096, sense=fixed|descriptor)")]
    UnknownLunOption(String),
    #[error("--lun {0:?}: empty path")]
    EmptyLunPath(String),
    #[error("--lun {0:?}: bad T:L= address (target 0-255, LUN 0-16383)")]
    BadLunAddress(String),
    #[error("--lun {0:?}: bad mem:SIZE (a byte count with an optional K, M, G or T suffix)")]
    BadMemorySize(String),
    #[error("--lun {0:?}: block-size must be 512 or 4096")]
    BadBlockSize(String),
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
            faults: args.faults,
        })
    }
}

pub(crate) fn parse_lun(text: &str) -> Result<LunSpec, ConfigError> {
    let err = |f: fn(String) -> ConfigError| f(text.to_owned());
    let mut parts = text.split(',');
    let first = parts.next().unwrap_or_default();
    // `T:L=` only when the part before '=' is two numbers, so paths with '=' still work.
    let (address, path) = match first.split_once('=') {
        Some((addr, path)) if is_address(addr) => {
            let (t, l) = addr
                .split_once(':')
                .ok_or_else(|| err(ConfigError::BadLunAddress))?;
            let target = t
                .parse::<u8>()
                .map_err(|_| err(ConfigError::BadLunAddress))?;
            let lun = l
                .parse::<u16>()
                .map_err(|_| err(ConfigError::BadLunAddress))?;
            if usize::from(lun) >= MAX_LUNS {
                return Err(err(ConfigError::BadLunAddress));
            }
            (Some(LunAddress { target, lun }), path)
        }
        _ => (None, first),
    };
    if path.is_empty() {
        return Err(err(ConfigError::EmptyLunPath));
    }
    let mut read_only = false;
    let mut block_size = crate::scsi::BLOCK_SIZE as u32;
    let mut sense_format = SenseFormat::Fixed;
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => read_only = true,
            None if opt == "rw" => read_only = false,
            Some(("block-size", v)) => {
                block_size = match v {
                    "512" => 512,
                    "4096" => 4096,
                    _ => return Err(err(ConfigError::BadBlockSize)),
                }
            }
            Some(("sense", "fixed")) => sense_format = SenseFormat::Fixed,
            Some(("sense", "descriptor")) => sense_format = SenseFormat::Descriptor,
            _ => return Err(err(ConfigError::UnknownLunOption)),
        }
    }
    let backing = match path.strip_prefix("mem:") {
        Some(size) => {
            Backing::Memory(parse_size(size).ok_or_else(|| err(ConfigError::BadMemorySize))?)
        }
        None => Backing::File(PathBuf::from(path)),
    };
    Ok(LunSpec {
        backing,
        read_only,
        block_size,
        address,
        sense_format,
    })
}

fn is_address(s: &str) -> bool {
    s.split_once(':').is_some_and(|(t, l)| {
        !t.is_empty() && !l.is_empty() && (t.bytes().chain(l.bytes())).all(|b| b.is_ascii_digit())
    })
}

/// `64M`, `1G`, `4096`: binary multiples.
fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        b'T' | b't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|&b| b > 0)
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
            Err(ConfigError::UnknownLunOption("a,rox".into()))
        );
        assert_eq!(
            parse(&["--socket-path", "s", "--lun", ",ro"]),
            Err(ConfigError::EmptyLunPath(",ro".into()))
        );
    }

    #[test]
    fn lun_address_memory_block_size_and_sense() {
        let c = parse(&[
            "--socket-path",
            "s",
            "--lun",
            "1:3=mem:64M,block-size=4096,sense=descriptor",
            "--lun",
            "dir/x=y.img,ro",
        ])
        .unwrap();
        assert_eq!(
            c.luns[0],
            LunSpec {
                backing: Backing::Memory(64 << 20),
                read_only: false,
                block_size: 4096,
                address: Some(LunAddress { target: 1, lun: 3 }),
                sense_format: SenseFormat::Descriptor,
            }
        );
        // '=' in a path that is not T:L stays part of the path.
        assert_eq!(c.luns[1], LunSpec::file("dir/x=y.img", true));
        for (bad, e) in [
            (
                "a,block-size=1024",
                ConfigError::BadBlockSize as fn(String) -> ConfigError,
            ),
            ("mem:12Q", ConfigError::BadMemorySize),
            ("mem:0", ConfigError::BadMemorySize),
            ("0:16384=a", ConfigError::BadLunAddress),
            ("256:0=a", ConfigError::BadLunAddress),
            ("a,sense=weird", ConfigError::UnknownLunOption),
            ("0:1=", ConfigError::EmptyLunPath),
        ] {
            assert_eq!(
                parse(&["--socket-path", "s", "--lun", bad]),
                Err(e(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
    }

    #[test]
    fn socket_path_is_required() {
        assert!(Args::try_parse_from(["x", "--lun", "a"]).is_err());
    }
}
