//! The image scan: what an image's own files say about the kernel it needs.
//!
//! No public image carries amphi's annotations, so the dispatcher reads a
//! bounded set of the image's files instead (ARCHITECTURE.md, "The image
//! scan"): the command's executable (the entrypoint or cmd, resolved
//! through `PATH` and symlinks inside the rootfs), the usual init paths,
//! the dynamic loader and the C library, systemd's version, `/lib/modules`
//! and `/etc/os-release`. It returns typed [`Fact`]s; the dispatcher's
//! rules (`dispatch::infer`) turn them into requirements.
//!
//! Everything here is hostile input:
//! - every open is `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS |
//!   RESOLVE_NO_XDEV)` below the rootfs, so a symlink (absolute or
//!   climbing) resolves inside it and never reaches the host;
//! - only regular files are read (a FIFO or device never blocks or is
//!   touched: `O_NONBLOCK`, then `fstat`), at most [`MAX_FILE_BYTES`] of
//!   each and at most [`MAX_FILES`] files per scan, and a directory
//!   listing at most [`MAX_DIR_ENTRIES`] entries;
//! - a malformed, truncated or oversized ELF becomes a
//!   [`Fact::Unreadable`], never a panic or an error of the scan.
//!
//! The scan runs once per image (at pull or load, or on first use) and is
//! stored with the image ([`Store::load_scan`], [`Store::save_scan`]),
//! versioned by [`SCAN_FORMAT`]: a run only reads the stored result.

use super::digest::Digest;
use super::store::{Store, StoreError};
use crate::kernel::KernelVersion;
use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::{Endian, Endianness};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Bumped whenever the scan learns something new or changes shape: a
/// stored scan of another format is redone on next use.
pub const SCAN_FORMAT: u32 = 1;

/// The most bytes read of one file (libsystemd-shared is about 4 MiB, a
/// glibc about 2 MiB): a bigger file is a [`Fact::Unreadable`].
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The most files opened by one scan.
pub const MAX_FILES: usize = 48;

/// The most entries read of one directory (`/lib/modules`).
pub const MAX_DIR_ENTRIES: usize = 256;

/// Init paths looked at whatever the command is: an override such as
/// `amphi run IMAGE /sbin/init` is then known without scanning again.
pub const INIT_PATHS: &[&str] = &[
    "/sbin/init",
    "/usr/sbin/init",
    "/usr/local/sbin/init",
    "/lib/systemd/systemd",
    "/usr/lib/systemd/systemd",
    "/bin/init",
    "/usr/bin/init",
];

/// Where glibc's `libc.so.6` lives, in the order looked at.
const LIBC_PATHS: &[&str] = &[
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/lib64/libc.so.6",
    "/usr/lib64/libc.so.6",
    "/lib/libc.so.6",
    "/usr/lib/libc.so.6",
    "/lib/aarch64-linux-gnu/libc.so.6",
    "/lib/i386-linux-gnu/libc.so.6",
];
/// musl's dynamic loader, which is its C library too (looked at when no
/// glibc is found).
const MUSL_LOADERS: &[&str] = &["/lib/ld-musl-x86_64.so.1", "/lib/ld-musl-aarch64.so.1"];

/// How every path of the image is resolved: symlinks (absolute or
/// climbing) inside the rootfs, no magic links, no crossing of mounts.
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// The PATH a command is looked up in when the image sets none (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One thing the image's files say. Paths are inside the image, absolute,
/// as resolved (symlinks followed inside the rootfs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "kebab-case")]
pub enum Fact {
    /// The command that runs is systemd (`version`: its major release,
    /// None when no version string was found).
    SystemdInit { version: Option<u32>, path: String },
    /// An ELF's `NT_GNU_ABI_TAG` note: the oldest Linux kernel the C
    /// library (or a static binary) supports.
    LibcMinKernel {
        version: KernelVersion,
        path: String,
    },
    /// The image's glibc release ("2.41").
    GlibcVersion { version: String, path: String },
    /// The image's C library is musl.
    Musl { path: String },
    /// The command is a static binary (no dynamic loader).
    StaticBinary { path: String },
    /// `/lib/modules/<release>` trees with modules in them.
    ShipsModules { releases: Vec<String>, path: String },
    /// The command loads kernel modules (`modprobe`, `insmod`).
    LoadsModules { path: String },
    /// A file the scan wanted but could not use (malformed ELF, too big,
    /// not a regular file, a symlink loop...).
    Unreadable { path: String, reason: String },
}

impl Fact {
    /// The image file the fact is about.
    pub fn path(&self) -> &str {
        match self {
            Fact::SystemdInit { path, .. }
            | Fact::LibcMinKernel { path, .. }
            | Fact::GlibcVersion { path, .. }
            | Fact::Musl { path }
            | Fact::StaticBinary { path }
            | Fact::ShipsModules { path, .. }
            | Fact::LoadsModules { path }
            | Fact::Unreadable { path, .. } => path,
        }
    }
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fact::SystemdInit {
                version: Some(v),
                path,
            } => write!(f, "{path} is systemd {v}"),
            Fact::SystemdInit {
                version: None,
                path,
            } => write!(f, "{path} is systemd (version unknown)"),
            Fact::LibcMinKernel { version, path } => {
                write!(f, "{path} says it needs Linux >= {version} (ELF ABI tag)")
            }
            Fact::GlibcVersion { version, path } => write!(f, "{path} is glibc {version}"),
            Fact::Musl { path } => write!(f, "{path} is musl libc"),
            Fact::StaticBinary { path } => write!(f, "{path} is a static binary"),
            Fact::ShipsModules { releases, path } => {
                write!(f, "{path} holds kernel modules for {}", releases.join(", "))
            }
            Fact::LoadsModules { path } => write!(f, "{path} loads kernel modules"),
            Fact::Unreadable { path, reason } => write!(f, "{path}: unreadable: {reason}"),
        }
    }
}

/// What one executable path of the image is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executable {
    /// The path as looked up (`/sbin/init`).
    pub path: String,
    /// Where it leads inside the image (`/usr/lib/systemd/systemd`).
    pub resolved: String,
    /// The facts that hold when this is the command that runs.
    pub facts: Vec<Fact>,
}

/// The stored result of scanning one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageScan {
    /// [`SCAN_FORMAT`] of the scan that made it.
    pub format: u32,
    /// Facts that hold whatever command runs (the C library, modules).
    pub facts: Vec<Fact>,
    /// The image's default command and the usual init paths, as found;
    /// paths that do not exist are left out.
    pub executables: Vec<Executable>,
    /// `/etc/os-release`'s PRETTY_NAME, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Files opened, and how long the scan took (for `scripts/bench`).
    pub files_read: usize,
    pub micros: u64,
    /// A file could not be opened for a passing reason (the kernel's
    /// EAGAIN, still there after retries): the result is used for this run
    /// but not stored, so the next run scans again.
    #[serde(skip)]
    pub transient: bool,
}

/// The facts for one command line, as [`ImageScan::facts_for`] finds them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandFacts {
    /// The image-wide facts plus the command's own.
    pub facts: Vec<Fact>,
    /// Where `argv[0]` led, when the scan knows it.
    pub executable: Option<String>,
    /// Why the command's own facts are unknown (a command the scan did not
    /// look at): said in explanations.
    pub unknown: Option<String>,
}

impl ImageScan {
    /// The facts that apply when `argv` is what runs, with `path_env` the
    /// container's PATH. Only the init counts: `amphi run IMAGE bash` on a
    /// systemd image has no [`Fact::SystemdInit`].
    pub fn facts_for(&self, argv: &[String], path_env: Option<&str>) -> CommandFacts {
        let mut out = CommandFacts {
            facts: self.facts.clone(),
            ..CommandFacts::default()
        };
        let Some(arg0) = argv.first() else {
            return out;
        };
        let candidates: Vec<String> = if arg0.contains('/') {
            vec![normalize(arg0)]
        } else {
            path_env
                .unwrap_or(DEFAULT_PATH)
                .split(':')
                .filter(|d| d.starts_with('/'))
                .map(|d| normalize(&format!("{d}/{arg0}")))
                .collect()
        };
        let found = candidates
            .iter()
            .find_map(|c| self.executables.iter().find(|e| &e.path == c));
        match found {
            Some(e) => {
                out.executable = Some(e.resolved.clone());
                out.facts.extend(e.facts.iter().cloned());
            }
            None => {
                out.unknown = Some(format!(
                    "{arg0}: not among the executables the image scan looked at (the image's own command and the usual init paths); only the image-wide facts apply"
                ));
                if is_module_loader(arg0) {
                    out.facts.push(Fact::LoadsModules { path: arg0.clone() });
                }
            }
        }
        out
    }

    /// `/etc/os-release` as "Debian GNU/Linux 13 (trixie)", or "".
    pub fn os_name(&self) -> &str {
        self.os.as_deref().unwrap_or("")
    }
}

/// `a//b/./c` as `/a/b/c` (no `..` handling: a path with `..` simply
/// matches nothing the scan recorded).
fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

fn is_module_loader(arg0: &str) -> bool {
    let base = arg0.rsplit('/').next().unwrap_or(arg0);
    matches!(base, "modprobe" | "insmod")
}

/// Scans the unpacked rootfs at `root`. `argv` is the image's default
/// command (entrypoint + cmd), `path_env` its PATH. Never fails: what it
/// cannot read becomes a [`Fact::Unreadable`]; only a missing root is an
/// error.
pub fn scan_rootfs(
    root: &Path,
    argv: &[String],
    path_env: Option<&str>,
) -> Result<ImageScan, ScanError> {
    let started = std::time::Instant::now();
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ScanError::Root {
        path: root.to_path_buf(),
        error: e.into(),
    })?;
    let mut s = Scanner {
        root: dir,
        root_path: root.to_path_buf(),
        files: 0,
        transient: false,
    };
    let mut facts = Vec::new();
    s.libc_facts(&mut facts);
    s.module_facts(&mut facts);
    let os = s.os_release();

    let mut executables: Vec<Executable> = Vec::new();
    let mut paths: Vec<String> = Vec::new();
    if let Some(arg0) = argv.first() {
        if arg0.contains('/') {
            paths.push(normalize(arg0));
        } else {
            for d in path_env.unwrap_or(DEFAULT_PATH).split(':') {
                if d.starts_with('/') {
                    paths.push(normalize(&format!("{d}/{arg0}")));
                }
            }
        }
    }
    paths.extend(INIT_PATHS.iter().map(|p| p.to_string()));
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        if !seen.insert(p.clone()) {
            continue;
        }
        if let Some(e) = s.executable(&p) {
            executables.push(e);
        }
    }
    Ok(ImageScan {
        format: SCAN_FORMAT,
        facts,
        executables,
        os,
        files_read: s.files,
        micros: started.elapsed().as_micros() as u64,
        transient: s.transient,
    })
}

/// A scan could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("image scan: opening the rootfs {}: {error}", path.display())]
    Root {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Why a file could not be opened or read.
enum OpenError {
    /// It does not exist (not a fact: most probed paths are absent).
    Missing,
    /// Anything else, with the reason.
    Bad(String),
}

struct Scanner {
    root: OwnedFd,
    root_path: PathBuf,
    files: usize,
    /// An open failed with EAGAIN (see [`ImageScan::transient`]).
    transient: bool,
}

/// What the ELF headers of a file say.
#[derive(Debug, Default)]
struct ElfInfo {
    interp: Option<String>,
    abi_tag: Option<KernelVersion>,
    needed: Vec<String>,
}

impl Scanner {
    /// Opens `path` (absolute, inside the rootfs) for reading: a regular
    /// file, found with every symlink resolved inside the rootfs. Returns
    /// the file and where it led.
    fn open(&mut self, path: &str) -> Result<(File, String), OpenError> {
        if self.files >= MAX_FILES {
            return Err(OpenError::Bad(format!(
                "the scan's limit of {MAX_FILES} files was reached"
            )));
        }
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        let fd = crate::sys::io::openat2(
            &self.root,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
            IN_ROOT,
        );
        let fd = match fd {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => {
                return Err(OpenError::Missing)
            }
            Err(rustix::io::Errno::LOOP) => {
                return Err(OpenError::Bad("too many levels of symbolic links".into()))
            }
            Err(rustix::io::Errno::AGAIN) => {
                self.transient = true;
                return Err(OpenError::Bad(
                    "the kernel kept answering EAGAIN (a race with renames or mounts)".into(),
                ));
            }
            Err(e) => return Err(OpenError::Bad(std::io::Error::from(e).to_string())),
        };
        self.files += 1;
        let st = rustix::fs::fstat(&fd).map_err(|e| OpenError::Bad(e.to_string()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(OpenError::Bad("not a regular file".into()));
        }
        let resolved = self.inside_path(&fd).unwrap_or_else(|| normalize(path));
        Ok((File::from(fd), resolved))
    }

    /// The path of an open file inside the rootfs (from /proc/self/fd).
    fn inside_path(&self, fd: &OwnedFd) -> Option<String> {
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())).ok()?;
        let rel = link.strip_prefix(&self.root_path).ok()?;
        Some(format!("/{}", rel.to_str()?))
    }

    /// Reads a whole file, capped at [`MAX_FILE_BYTES`].
    fn read(&mut self, path: &str) -> Result<(Vec<u8>, String), OpenError> {
        let (f, resolved) = self.open(path)?;
        let mut data = Vec::new();
        f.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| OpenError::Bad(e.to_string()))?;
        if data.len() as u64 > MAX_FILE_BYTES {
            return Err(OpenError::Bad(format!(
                "larger than the scan's limit of {} MiB",
                MAX_FILE_BYTES >> 20
            )));
        }
        Ok((data, resolved))
    }

    /// The first of `paths` that exists, through `get` (`open` or
    /// `read`): what `get` gave, or the path and why it could not be used;
    /// None when none exists.
    fn first_present<T>(
        &mut self,
        paths: &[&str],
        mut get: impl FnMut(&mut Self, &str) -> Result<T, OpenError>,
    ) -> Option<Result<T, (String, String)>> {
        for p in paths {
            match get(self, p) {
                Ok(t) => return Some(Ok(t)),
                Err(OpenError::Missing) => {}
                Err(OpenError::Bad(reason)) => return Some(Err((p.to_string(), reason))),
            }
        }
        None
    }

    /// The facts of the C library: glibc's version and ABI tag, or musl.
    fn libc_facts(&mut self, facts: &mut Vec<Fact>) {
        match self.first_present(LIBC_PATHS, |s, p| s.read(p)) {
            Some(Ok((data, resolved))) => {
                match elf_info(&data) {
                    Ok(info) => {
                        if let Some(v) = info.abi_tag {
                            facts.push(Fact::LibcMinKernel {
                                version: v,
                                path: resolved.clone(),
                            });
                        }
                    }
                    Err(why) => {
                        facts.push(Fact::Unreadable {
                            path: resolved,
                            reason: why,
                        });
                        return;
                    }
                }
                if let Some(v) = glibc_version(&data) {
                    facts.push(Fact::GlibcVersion {
                        version: v,
                        path: resolved,
                    });
                }
                return;
            }
            Some(Err((path, reason))) => {
                facts.push(Fact::Unreadable { path, reason });
                return;
            }
            None => {}
        }
        // No glibc: a musl loader (which is musl's libc too)?
        match self.first_present(MUSL_LOADERS, |s, p| s.open(p)) {
            Some(Ok((_, resolved))) => facts.push(Fact::Musl { path: resolved }),
            Some(Err((path, reason))) => facts.push(Fact::Unreadable { path, reason }),
            None => {}
        }
    }

    /// `/lib/modules/<release>` directories that hold modules.
    fn module_facts(&mut self, facts: &mut Vec<Fact>) {
        for base in ["/lib/modules", "/usr/lib/modules"] {
            let Ok(dir) = crate::sys::io::openat2(
                &self.root,
                base.trim_start_matches('/'),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                IN_ROOT,
            ) else {
                continue;
            };
            let resolved = self.inside_path(&dir).unwrap_or_else(|| base.to_string());
            let Ok(mut entries) = rustix::fs::Dir::read_from(&dir) else {
                continue;
            };
            let mut releases = Vec::new();
            let mut n = 0;
            while let Some(Ok(e)) = entries.next() {
                n += 1;
                if n > MAX_DIR_ENTRIES {
                    break;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if name == "." || name == ".." || e.file_type() != rustix::fs::FileType::Directory {
                    continue;
                }
                // A release directory with modules: modules.dep or kernel/.
                let has = |leaf: &str| {
                    crate::sys::io::openat2(
                        &dir,
                        format!("{name}/{leaf}").as_str(),
                        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                        Mode::empty(),
                        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                    )
                    .is_ok()
                };
                if has("modules.dep") || has("kernel") {
                    releases.push(name);
                }
            }
            if !releases.is_empty() {
                releases.sort();
                facts.push(Fact::ShipsModules {
                    releases,
                    path: resolved,
                });
                return;
            }
        }
    }

    /// `/etc/os-release` (or `/usr/lib/os-release`): PRETTY_NAME.
    fn os_release(&mut self) -> Option<String> {
        for p in ["/etc/os-release", "/usr/lib/os-release"] {
            if let Ok((data, _)) = self.read(p) {
                let text = String::from_utf8_lossy(&data[..data.len().min(64 << 10)]).into_owned();
                return text.lines().find_map(|l| {
                    let v = l.strip_prefix("PRETTY_NAME=")?.trim();
                    let v = v.trim_matches('"').trim_matches('\'');
                    Some(v.chars().filter(|c| !c.is_control()).take(120).collect())
                });
            }
        }
        None
    }

    /// What the executable at `path` is, or None when it does not exist.
    fn executable(&mut self, path: &str) -> Option<Executable> {
        let mut facts = Vec::new();
        let resolved = match self.read(path) {
            Err(OpenError::Missing) => return None,
            Err(OpenError::Bad(reason)) => {
                facts.push(Fact::Unreadable {
                    path: path.to_string(),
                    reason,
                });
                path.to_string()
            }
            Ok((data, resolved)) => {
                if is_module_loader(path) || is_module_loader(&resolved) {
                    facts.push(Fact::LoadsModules {
                        path: resolved.clone(),
                    });
                }
                if data.starts_with(b"\x7fELF") {
                    match elf_info(&data) {
                        Ok(info) => {
                            let systemd = resolved.rsplit('/').next() == Some("systemd")
                                || info
                                    .needed
                                    .iter()
                                    .any(|n| n.starts_with("libsystemd-shared-"));
                            if systemd {
                                facts.push(Fact::SystemdInit {
                                    version: systemd_version(&info, &data),
                                    path: resolved.clone(),
                                });
                            }
                            if info.interp.is_none() {
                                facts.push(Fact::StaticBinary {
                                    path: resolved.clone(),
                                });
                            }
                            if let Some(v) = info.abi_tag {
                                facts.push(Fact::LibcMinKernel {
                                    version: v,
                                    path: resolved.clone(),
                                });
                            }
                        }
                        Err(reason) => facts.push(Fact::Unreadable {
                            path: resolved.clone(),
                            reason,
                        }),
                    }
                }
                resolved
            }
        };
        Some(Executable {
            path: normalize(path),
            resolved,
            facts,
        })
    }
}

/// Parses the ELF headers: interpreter, ABI tag, needed libraries.
fn elf_info(data: &[u8]) -> Result<ElfInfo, String> {
    if data.len() < 5 || !data.starts_with(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    match data[4] {
        elf::ELFCLASS64 => elf_info_of::<elf::FileHeader64<Endianness>>(data),
        elf::ELFCLASS32 => elf_info_of::<elf::FileHeader32<Endianness>>(data),
        c => Err(format!("malformed ELF: unknown class {c}")),
    }
}

fn elf_info_of<H: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<ElfInfo, String> {
    let bad = |e: object::read::Error| format!("malformed ELF: {e}");
    let h = H::parse(data).map_err(bad)?;
    let endian = h.endian().map_err(bad)?;
    let mut info = ElfInfo::default();
    for ph in h.program_headers(endian, data).map_err(bad)? {
        if let Some(interp) = ph.interpreter(endian, data).map_err(bad)? {
            info.interp = Some(String::from_utf8_lossy(interp).into_owned());
        }
        if let Some(mut notes) = ph.notes(endian, data).map_err(bad)? {
            while let Some(note) = notes.next().map_err(bad)? {
                if note.name() != elf::ELF_NOTE_GNU || note.n_type(endian) != elf::NT_GNU_ABI_TAG {
                    continue;
                }
                let d = note.desc();
                if d.len() < 16 {
                    return Err("malformed ELF: short NT_GNU_ABI_TAG note".into());
                }
                let word = |i: usize| {
                    let b = [d[i * 4], d[i * 4 + 1], d[i * 4 + 2], d[i * 4 + 3]];
                    if endian.is_little_endian() {
                        u32::from_le_bytes(b)
                    } else {
                        u32::from_be_bytes(b)
                    }
                };
                // Word 0 is the OS: 0 is Linux (others are GNU/Hurd,
                // Solaris, FreeBSD: not a Linux version).
                if word(0) == elf::ELF_NOTE_OS_LINUX {
                    info.abi_tag = Some(KernelVersion::new(word(1), word(2), word(3)));
                }
            }
        }
    }
    // DT_NEEDED, through the section table (absent in some stripped
    // files: then nothing is learnt from it).
    if let Ok(sections) = h.sections(endian, data) {
        if let Ok(Some((dyns, link))) = sections.dynamic(endian, data) {
            if let Ok(strings) = sections.strings(endian, data, link) {
                for d in dyns {
                    if d.tag32(endian) == Some(elf::DT_NEEDED) {
                        if let Ok(name) = d.string(endian, strings) {
                            info.needed.push(String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
            }
        }
    }
    Ok(info)
}

/// systemd's major version: from its `libsystemd-shared-NNN.so` (231 and
/// later), else from the "systemd NNN" banner in the binary.
fn systemd_version(info: &ElfInfo, data: &[u8]) -> Option<u32> {
    let from_needed = info.needed.iter().find_map(|n| {
        let rest = n.strip_prefix("libsystemd-shared-")?;
        leading_number(rest.as_bytes())
    });
    from_needed
        .or_else(|| find_number_after(data, b"libsystemd-shared-"))
        .or_else(|| find_number_after(data, b"systemd "))
        .filter(|v| (100..10000).contains(v))
}

fn leading_number(b: &[u8]) -> Option<u32> {
    let digits: Vec<u8> = b
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .copied()
        .collect();
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// The first number of 3 or more digits right after `needle` in `data`.
fn find_number_after(data: &[u8], needle: &[u8]) -> Option<u32> {
    let mut start = 0;
    while let Some(i) = find(&data[start..], needle) {
        let at = start + i + needle.len();
        if let Some(n) = leading_number(&data[at..]) {
            if n >= 100 {
                return Some(n);
            }
        }
        start = at;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// glibc's release from its banner: "release version 2.41".
fn glibc_version(data: &[u8]) -> Option<String> {
    let needle = b"release version ";
    let i = find(data, needle)? + needle.len();
    let v: String = data[i..]
        .iter()
        .take(16)
        .take_while(|c| c.is_ascii_digit() || **c == b'.')
        .map(|c| *c as char)
        .collect();
    let v = v.trim_end_matches('.');
    (v.contains('.') && v.split('.').all(|p| !p.is_empty())).then(|| v.to_string())
}

/// Compares "2.12" and "2.14": glibc releases as numbers.
pub fn glibc_older_than(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let a = parts.next().unwrap_or(0);
    let b = parts.next().unwrap_or(0);
    (a, b) < (major, minor)
}

impl Store {
    fn scan_path(&self, manifest: &Digest) -> PathBuf {
        self.root()
            .join("scans/sha256")
            .join(format!("{}.json", manifest.hex()))
    }

    /// The stored scan of the image with this manifest, when there is one
    /// of the current [`SCAN_FORMAT`].
    pub fn load_scan(&self, manifest: &Digest) -> Option<ImageScan> {
        let data = std::fs::read(self.scan_path(manifest)).ok()?;
        let scan: ImageScan = serde_json::from_slice(&data).ok()?;
        (scan.format == SCAN_FORMAT).then_some(scan)
    }

    /// Stores a scan (atomically: a reader sees the old one or the new one).
    pub fn save_scan(&self, manifest: &Digest, scan: &ImageScan) -> Result<(), StoreError> {
        let path = self.scan_path(manifest);
        if let Some(dir) = path.parent() {
            super::store::create_private_dir(dir).map_err(|error| StoreError::Io {
                path: dir.to_path_buf(),
                error,
            })?;
        }
        let data = serde_json::to_vec_pretty(scan).map_err(|e| StoreError::Io {
            path: path.clone(),
            error: std::io::Error::other(e),
        })?;
        self.write_atomic(&path, &data)
    }

    /// Removes the stored scans of manifests not in `keep` (store gc).
    pub fn prune_scans(&self, keep: &[Digest]) -> usize {
        let dir = self.root().join("scans").join("sha256");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return 0;
        };
        let keep: std::collections::HashSet<String> =
            keep.iter().map(|d| format!("{}.json", d.hex())).collect();
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests;
