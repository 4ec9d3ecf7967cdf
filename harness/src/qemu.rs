//! The QEMU command line: q35 with memfd guest memory shared with the vhost-user
//! backend, the vhost-user-scsi-pci device, isa-debug-exit for the verdict, and the
//! guest image booted by `-kernel` (PVH).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use guest_miniport::contract::{GuestArgs, DEBUG_EXIT_PORT};

use crate::accel::Accel;

/// Guest RAM; `-m` and the memfd backend size must be the same.
pub const GUEST_MEMORY_MIB: u32 = 256;
/// qboot skips SeaBIOS's device scan; a PVH boot through it takes milliseconds.
pub const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";

#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub socket: PathBuf,
    pub image: PathBuf,
    pub guest_args: GuestArgs,
    pub accel: Accel,
    pub bios: Option<PathBuf>,
}

/// [`QBOOT_ROM`] when it is installed.
pub fn default_bios() -> Option<PathBuf> {
    let rom = Path::new(QBOOT_ROM);
    rom.is_file().then(|| rom.to_owned())
}

/// QEMU's option parser splits on ','; a literal comma in a value is written ",,".
fn option_value(path: &Path) -> OsString {
    let bytes = path.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from(std::ffi::OsStr::from_bytes(&out))
}

fn with_value(prefix: &str, path: &Path) -> OsString {
    let mut arg = OsString::from(prefix);
    arg.push(option_value(path));
    arg
}

impl QemuConfig {
    /// The arguments after the program name. Never `-cpu host`/`max`: they abort under
    /// nested KVM; the default CPU model boots PVH fine.
    pub fn args(&self) -> Vec<OsString> {
        let mem = format!("{GUEST_MEMORY_MIB}M");
        let mut args: Vec<OsString> = vec![
            "-M".into(),
            "q35".into(),
            "-m".into(),
            mem.clone().into(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem},share=on").into(),
            "-numa".into(),
            "node,memdev=mem".into(),
            "-chardev".into(),
            with_value("socket,id=vus,path=", &self.socket),
            "-device".into(),
            "vhost-user-scsi-pci,chardev=vus,num_queues=1".into(),
            "-device".into(),
            format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04").into(),
            "-kernel".into(),
            self.image.clone().into(),
            "-append".into(),
            self.guest_args.to_string().into(),
            "-display".into(),
            "none".into(),
            "-nodefaults".into(),
            "-no-reboot".into(),
            "-serial".into(),
            "stdio".into(),
            "-accel".into(),
            self.accel.qemu_name().into(),
        ];
        if let Some(bios) = &self.bios {
            args.push("-bios".into());
            args.push(bios.clone().into());
        }
        args
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.qemu);
        command.args(self.args());
        command
    }

    /// The exact command, quoted so that it can be pasted into a shell.
    pub fn command_line(&self) -> String {
        std::iter::once(self.qemu.as_os_str().to_owned())
            .chain(self.args())
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// POSIX shell quoting: plain words stay as they are, the rest go in single quotes.
pub fn shell_quote(word: &OsStr) -> String {
    let text = word.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,@%+".contains(&b));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            socket: "/tmp/run,1/vhost.sock".into(),
            image: "/img/flakyhba-guest".into(),
            guest_args: GuestArgs {
                irq: false,
                seed: 9,
                ..GuestArgs::default()
            },
            accel: Accel::Tcg,
            bios: Some(QBOOT_ROM.into()),
        }
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    fn strings(config: &QemuConfig) -> Vec<String> {
        config
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn memory_size_and_memfd_size_agree_and_memory_is_shared() {
        let args = strings(&config());
        assert_eq!(value_of(&args, "-m"), ["256M"]);
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(value_of(&args, "-numa"), ["node,memdev=mem"]);
    }

    #[test]
    fn devices_kernel_and_guest_arguments_are_wired() {
        let args = strings(&config());
        // The comma in the socket path is doubled for QEMU's option parser.
        assert_eq!(
            value_of(&args, "-chardev"),
            ["socket,id=vus,path=/tmp/run,,1/vhost.sock"]
        );
        assert_eq!(
            value_of(&args, "-device"),
            [
                "vhost-user-scsi-pci,chardev=vus,num_queues=1",
                "isa-debug-exit,iobase=0xf4,iosize=0x04"
            ]
        );
        assert_eq!(value_of(&args, "-kernel"), ["/img/flakyhba-guest"]);
        let append = value_of(&args, "-append");
        assert_eq!(append.len(), 1);
        assert_eq!(
            GuestArgs::parse(append[0]).unwrap(),
            config().guest_args,
            "the guest must parse back exactly what was asked"
        );
        assert_eq!(value_of(&args, "-serial"), ["stdio"]);
        assert_eq!(value_of(&args, "-accel"), ["tcg"]);
        assert_eq!(value_of(&args, "-bios"), [QBOOT_ROM]);
        for flag in ["-nodefaults", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing");
        }
        assert!(!args.iter().any(|a| a == "-cpu"), "never pick a CPU model");
    }

    #[test]
    fn bios_is_left_out_when_absent() {
        let mut c = config();
        c.bios = None;
        assert!(value_of(&strings(&c), "-bios").is_empty());
    }

    #[test]
    fn command_line_is_shell_quoted() {
        let line = config().command_line();
        assert!(
            line.starts_with("qemu-system-x86_64 -M q35 -m 256M "),
            "{line}"
        );
        assert!(
            line.contains(" -append 'scenario=smoke irq=off seed=9 blocks=64 qd=8 tick_us=10000' "),
            "{line}"
        );
        assert!(
            line.ends_with(" -accel tcg -bios /usr/share/qemu/qboot.rom"),
            "{line}"
        );
    }

    #[test]
    fn shell_quote_handles_quotes_and_empties() {
        assert_eq!(shell_quote(OsStr::new("plain-word")), "plain-word");
        assert_eq!(shell_quote(OsStr::new("")), "''");
        assert_eq!(shell_quote(OsStr::new("a b")), "'a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(OsStr::new("$HOME")), "'$HOME'");
    }
}
