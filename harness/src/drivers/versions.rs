//! What the card ran: our commit, QEMU, the firmwares' Debian packages, the Linux guest's
//! kernel package (and, once a Linux cell ran, its release as `uname -r` says).

use std::path::Path;
use std::process::Command;

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Versions {
    /// `git rev-parse --short=12 HEAD`, with `-dirty` for uncommitted changes.
    pub commit: String,
    /// QEMU's `--version`, first line.
    pub qemu: String,
    /// `dpkg-query` of the `seabios` and `ovmf` packages.
    pub seabios: String,
    pub ovmf: String,
    /// The kernel package linux-guest/build.sh took (its versions.txt).
    pub linux_package: String,
    /// `uname -r` in the guest, from a Linux cell's result line.
    pub kernel: Option<String>,
}

/// A command's first line of output, or what went wrong.
fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        Ok(out) => format!(
            "unknown ({program} {}: {})",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("unknown ({program}: {e})"),
    }
}

/// A Debian package's version.
pub fn package(name: &str) -> String {
    first_line("dpkg-query", &["-W", "-f=${Version}\\n", name])
}

impl Versions {
    pub fn gather(root: &Path, qemu: &Path, linux_guest: &Path) -> Versions {
        let git = root.to_string_lossy();
        let mut commit = first_line("git", &["-C", &git, "rev-parse", "--short=12", "HEAD"]);
        let dirty = first_line(
            "git",
            &["-C", &git, "status", "--porcelain", "--untracked-files=no"],
        );
        if !dirty.is_empty() && !dirty.starts_with("unknown") {
            commit.push_str("-dirty");
        }
        let linux_package = std::fs::read_to_string(linux_guest.join("versions.txt"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("linux-image-"))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "unknown (no versions.txt in the Linux guest)".into());
        Versions {
            commit,
            qemu: first_line(&qemu.to_string_lossy(), &["--version"]),
            seabios: package("seabios"),
            ovmf: package("ovmf"),
            linux_package,
            kernel: None,
        }
    }

    /// One line per driver and tool, for the report.
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "our miniport and backend",
                format!("commit {}", self.commit),
            ),
            (
                "Linux virtio_scsi",
                format!(
                    "{}{}",
                    self.linux_package,
                    self.kernel
                        .as_ref()
                        .map_or_else(String::new, |k| format!(" (uname -r {k})"))
                ),
            ),
            ("SeaBIOS", format!("Debian seabios {}", self.seabios)),
            ("OVMF", format!("Debian ovmf {}", self.ovmf)),
            ("QEMU", self.qemu.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_or_package_says_unknown() {
        assert!(first_line("no-such-program-flakyhba", &[]).starts_with("unknown"));
        assert_eq!(first_line("echo", &["a", "b"]), "a b");
        assert!(package("no-such-package-flakyhba").starts_with("unknown"));
    }

    #[test]
    fn the_linux_package_comes_from_versions_txt() {
        let dir = std::env::temp_dir().join(format!("fh-versions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("versions.txt"),
            "busybox 1\nlinux-image-6.1.0-57-amd64 6.1.192-3\n",
        )
        .unwrap();
        let v = Versions::gather(Path::new("/nonexistent"), Path::new("true"), &dir);
        assert_eq!(v.linux_package, "linux-image-6.1.0-57-amd64 6.1.192-3");
        assert!(v.commit.starts_with("unknown"), "{}", v.commit);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
