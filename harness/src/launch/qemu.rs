//! The QEMU command line: q35 with memfd guest memory shared with the vhost-user
//! backend, the vhost-user-scsi-pci device, isa-debug-exit for the verdict, and the
//! guest: booted by `-kernel` (the flakyhba image (PVH) or a stock Linux kernel), or a
//! firmware booting the device's disk (SeaBIOS, OVMF).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use guest_miniport::contract::{GuestArgs, DEBUG_EXIT_PORT};

use super::accel::Accel;

/// Guest RAM of the flakyhba image; `-m` and the memfd backend size must be the same.
pub const GUEST_MEMORY_MIB: u32 = 256;
/// qboot skips SeaBIOS's device scan; a PVH boot through it takes milliseconds.
pub const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";

#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub socket: PathBuf,
    pub guest: Guest,
    pub accel: Accel,
    pub bios: Option<PathBuf>,
}

/// What `-kernel` boots.
#[derive(Clone, Debug)]
pub enum Guest {
    /// The flakyhba guest image and its arguments, with one request queue and the CPUs
    /// its `cpus` asks for.
    Image { image: PathBuf, args: GuestArgs },
    /// A stock Linux kernel with its initramfs (linux-guest/).
    Linux(LinuxBoot),
    /// A firmware that boots the device's disk (`bootindex=0`) on one request queue:
    /// QEMU's default BIOS (SeaBIOS) when `pflash` is empty, else OVMF from its images.
    Firmware(FirmwareBoot),
}

#[derive(Clone, Debug)]
pub struct FirmwareBoot {
    /// `-drive if=pflash` images in unit order: (path, read-only).
    pub pflash: Vec<(PathBuf, bool)>,
    /// The firmware's debug console (isa-debugcon on port 0x402) is written here.
    pub debug_log: PathBuf,
}

#[derive(Clone, Debug)]
pub struct LinuxBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
    pub memory_mib: u32,
    /// `-smp`: blk-mq maps CPUs to hardware queues, and virtio_scsi uses at most one
    /// request queue per CPU.
    pub cpus: u16,
    /// The device's `num_queues`; the backend must serve as many.
    pub num_queues: u16,
}

impl Guest {
    fn memory_mib(&self) -> u32 {
        match self {
            Guest::Image { .. } => GUEST_MEMORY_MIB,
            Guest::Linux(boot) => boot.memory_mib,
            Guest::Firmware(_) => GUEST_MEMORY_MIB,
        }
    }

    fn num_queues(&self) -> u16 {
        match self {
            Guest::Image { .. } | Guest::Firmware(_) => 1,
            Guest::Linux(boot) => boot.num_queues,
        }
    }
}

/// [`QBOOT_ROM`] when it is installed.
pub fn default_bios() -> Option<PathBuf> {
    let rom = Path::new(QBOOT_ROM);
    rom.is_file().then(|| rom.to_owned())
}

/// QEMU's option parser splits on ','; a literal comma in a value is written ",,".
pub fn option_value(path: &Path) -> OsString {
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
    /// `guest` on `accel`, its device served at `socket`, booted by qboot when it is
    /// installed (a firmware guest brings its own).
    pub fn new(qemu: PathBuf, socket: PathBuf, guest: Guest, accel: Accel) -> QemuConfig {
        let bios = match guest {
            Guest::Firmware(_) => None,
            _ => default_bios(),
        };
        QemuConfig {
            qemu,
            socket,
            guest,
            accel,
            bios,
        }
    }

    /// The arguments after the program name. Never `-cpu host`/`max`: they abort under
    /// nested KVM; the default CPU model boots PVH fine.
    pub fn args(&self) -> Vec<OsString> {
        let mem = format!("{}M", self.guest.memory_mib());
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
            format!(
                "vhost-user-scsi-pci,chardev=vus,num_queues={}{}",
                self.guest.num_queues(),
                match self.guest {
                    Guest::Firmware(_) => ",bootindex=0",
                    _ => "",
                }
            )
            .into(),
            "-device".into(),
            format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04").into(),
        ];
        match &self.guest {
            Guest::Image { image, args: guest } => {
                // One CPU is QEMU's default: the command line stays as it always was.
                if guest.cpus > 1 {
                    args.extend(["-smp".into(), guest.cpus.to_string().into()]);
                }
                args.extend([
                    "-kernel".into(),
                    image.clone().into(),
                    "-append".into(),
                    guest.to_string().into(),
                ])
            }
            Guest::Linux(boot) => args.extend([
                "-smp".into(),
                boot.cpus.to_string().into(),
                "-kernel".into(),
                boot.kernel.clone().into(),
                "-initrd".into(),
                boot.initrd.clone().into(),
                "-append".into(),
                boot.append.clone().into(),
            ]),
            Guest::Firmware(fw) => {
                for (unit, (image, readonly)) in fw.pflash.iter().enumerate() {
                    let ro = if *readonly { ",readonly=on" } else { "" };
                    args.push("-drive".into());
                    args.push(with_value(
                        &format!("if=pflash,format=raw,unit={unit}{ro},file="),
                        image,
                    ));
                }
                args.extend([
                    "-chardev".into(),
                    with_value("file,id=fwdebug,path=", &fw.debug_log),
                    "-device".into(),
                    "isa-debugcon,iobase=0x402,chardev=fwdebug".into(),
                ]);
            }
        }
        args.extend([
            "-display".into(),
            "none".into(),
            "-nodefaults".into(),
            "-no-reboot".into(),
            "-serial".into(),
            "stdio".into(),
            "-accel".into(),
            self.accel.qemu_name().into(),
        ]);
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
        command_line(&self.command())
    }
}

/// `command`'s program and arguments, quoted so that they can be pasted into a shell.
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
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
            guest: Guest::Image {
                image: "/img/flakyhba-guest".into(),
                args: GuestArgs {
                    irq: false,
                    seed: 9,
                    ..GuestArgs::default()
                },
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
        let Guest::Image { args: asked, .. } = config().guest else {
            unreachable!("config() boots the image")
        };
        assert_eq!(
            GuestArgs::parse(append[0]).unwrap(),
            asked,
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
    fn the_image_gets_the_cpus_its_arguments_ask_for() {
        assert!(
            value_of(&strings(&config()), "-smp").is_empty(),
            "one CPU: no -smp"
        );
        let mut c = config();
        let Guest::Image { args, .. } = &mut c.guest else {
            unreachable!("config() boots the image")
        };
        args.cpus = 2;
        let args = strings(&c);
        assert_eq!(value_of(&args, "-smp"), ["2"]);
        assert!(value_of(&args, "-append")[0].contains("cpus=2"));
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
            line.contains(&format!(
                " -append '{}' ",
                GuestArgs {
                    irq: false,
                    seed: 9,
                    ..GuestArgs::default()
                }
            )),
            "{line}"
        );
        assert!(
            line.ends_with(" -accel tcg -bios /usr/share/qemu/qboot.rom"),
            "{line}"
        );
    }

    #[test]
    fn linux_boot_sets_memory_cpus_queues_initrd_and_command_line() {
        let mut c = config();
        c.guest = Guest::Linux(LinuxBoot {
            kernel: "/lg/vmlinux".into(),
            initrd: "/lg/initrd.cpio".into(),
            append: "console=ttyS0 flakyhba.queues=4".into(),
            memory_mib: 512,
            cpus: 4,
            num_queues: 4,
        });
        let args = strings(&c);
        assert_eq!(value_of(&args, "-m"), ["512M"]);
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert_eq!(
            value_of(&args, "-device")[0],
            "vhost-user-scsi-pci,chardev=vus,num_queues=4"
        );
        assert_eq!(value_of(&args, "-smp"), ["4"]);
        assert_eq!(value_of(&args, "-kernel"), ["/lg/vmlinux"]);
        assert_eq!(value_of(&args, "-initrd"), ["/lg/initrd.cpio"]);
        assert_eq!(
            value_of(&args, "-append"),
            ["console=ttyS0 flakyhba.queues=4"]
        );
        assert!(!args.iter().any(|a| a == "-cpu"), "never pick a CPU model");
    }

    #[test]
    fn firmware_boot_uses_its_own_bios_boots_the_disk_and_keeps_its_debug_log() {
        let guest = Guest::Firmware(FirmwareBoot {
            pflash: vec![
                ("/fw/OVMF_CODE.fd".into(), true),
                ("/run,1/vars.fd".into(), false),
            ],
            debug_log: "/run/firmware.log".into(),
        });
        let c = QemuConfig::new("qemu".into(), "/run/vhost.sock".into(), guest, Accel::Tcg);
        let args = strings(&c);
        assert!(value_of(&args, "-bios").is_empty(), "QEMU's default BIOS");
        assert!(value_of(&args, "-kernel").is_empty());
        assert_eq!(value_of(&args, "-m"), ["256M"]);
        assert_eq!(
            value_of(&args, "-device"),
            [
                "vhost-user-scsi-pci,chardev=vus,num_queues=1,bootindex=0",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "isa-debugcon,iobase=0x402,chardev=fwdebug"
            ]
        );
        assert_eq!(
            value_of(&args, "-drive"),
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE.fd",
                "if=pflash,format=raw,unit=1,file=/run,,1/vars.fd"
            ]
        );
        assert_eq!(
            value_of(&args, "-chardev")[1],
            "file,id=fwdebug,path=/run/firmware.log"
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
