//! The scanner on crafted rootfs trees: symlinks, hostile files, ELF
//! notes built by hand, and real ELF files of the host.

use super::*;
use std::fs;
use std::os::unix::fs::symlink;

/// A minimal ELF64 little-endian executable: an optional PT_INTERP and an
/// optional NT_GNU_ABI_TAG note, then `tail` (e.g. a version string).
fn elf(interp: Option<&str>, abi: Option<(u32, u32, u32, u32)>, tail: &[u8]) -> Vec<u8> {
    let mut segs: Vec<(u32, Vec<u8>)> = Vec::new();
    if let Some(i) = interp {
        let mut b = i.as_bytes().to_vec();
        b.push(0);
        segs.push((elf::PT_INTERP, b));
    }
    if let Some((os, a, b, c)) = abi {
        let mut n = Vec::new();
        for w in [4u32, 16, elf::NT_GNU_ABI_TAG] {
            n.extend_from_slice(&w.to_le_bytes());
        }
        n.extend_from_slice(b"GNU\0");
        for w in [os, a, b, c] {
            n.extend_from_slice(&w.to_le_bytes());
        }
        segs.push((elf::PT_NOTE, n));
    }
    let phoff = 64u64;
    let data_off = phoff + 56 * segs.len() as u64;
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = elf::ELFCLASS64;
    out[5] = elf::ELFDATA2LSB;
    out[6] = elf::EV_CURRENT;
    out[16..18].copy_from_slice(&elf::ET_EXEC.to_le_bytes());
    out[18..20].copy_from_slice(&elf::EM_X86_64.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[32..40].copy_from_slice(&phoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
    let mut off = data_off;
    let mut body = Vec::new();
    for (ty, data) in &segs {
        let mut ph = Vec::new();
        ph.extend_from_slice(&ty.to_le_bytes());
        ph.extend_from_slice(&4u32.to_le_bytes()); // flags: R
        ph.extend_from_slice(&off.to_le_bytes()); // offset
        ph.extend_from_slice(&off.to_le_bytes()); // vaddr
        ph.extend_from_slice(&off.to_le_bytes()); // paddr
        ph.extend_from_slice(&(data.len() as u64).to_le_bytes()); // filesz
        ph.extend_from_slice(&(data.len() as u64).to_le_bytes()); // memsz
        ph.extend_from_slice(&4u64.to_le_bytes()); // align
        out.extend_from_slice(&ph);
        body.extend_from_slice(data);
        while body.len() % 4 != 0 {
            body.push(0);
        }
        off = data_off + body.len() as u64;
    }
    out.extend_from_slice(&body);
    out.extend_from_slice(tail);
    out
}

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// Next to the rootfs, outside it: what an escape would read.
    outside: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    let outside = dir.path().join("host");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    Tree {
        root,
        outside,
        _dir: dir,
    }
}

impl Tree {
    fn file(&self, path: &str, data: &[u8]) {
        let p = self.root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    fn link(&self, path: &str, target: &str) {
        let p = self.root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
    }
    fn scan(&self, argv: &[&str]) -> ImageScan {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        scan_rootfs(&self.root, &argv, None).unwrap()
    }
}

fn systemd_elf(version: u32) -> Vec<u8> {
    elf(
        Some("/lib64/ld-linux-x86-64.so.2"),
        Some((0, 3, 2, 0)),
        format!("\0libsystemd-shared-{version}.so\0").as_bytes(),
    )
}

fn exe<'a>(s: &'a ImageScan, path: &str) -> &'a Executable {
    s.executables
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} not in {:#?}", s.executables))
}

#[test]
fn a_symlinked_init_resolves_inside_the_rootfs() {
    let t = tree();
    t.file("/usr/lib/systemd/systemd", &systemd_elf(257));
    t.link("/sbin/init", "../lib/systemd/systemd");
    t.link("/lib", "usr/lib");
    let s = t.scan(&["/sbin/init"]);
    let e = exe(&s, "/sbin/init");
    assert_eq!(e.resolved, "/usr/lib/systemd/systemd");
    assert!(
        e.facts.contains(&Fact::SystemdInit {
            version: Some(257),
            path: "/usr/lib/systemd/systemd".into()
        }),
        "{:?}",
        e.facts
    );
    let cf = s.facts_for(&["/sbin/init".into()], None);
    assert!(cf.facts.iter().any(|f| matches!(
        f,
        Fact::SystemdInit {
            version: Some(257),
            ..
        }
    )));
    // Found through PATH too, and an absolute symlink resolves in the root.
    t.link("/usr/sbin/init", "/usr/lib/systemd/systemd");
    let s = t.scan(&["init"]);
    assert_eq!(
        exe(&s, "/usr/sbin/init").resolved,
        "/usr/lib/systemd/systemd"
    );
    let cf = s.facts_for(&["init".into()], Some("/usr/sbin:/sbin"));
    assert_eq!(cf.executable.as_deref(), Some("/usr/lib/systemd/systemd"));
}

#[test]
fn only_the_init_counts() {
    let t = tree();
    t.file("/usr/lib/systemd/systemd", &systemd_elf(257));
    t.link("/sbin/init", "/usr/lib/systemd/systemd");
    t.file(
        "/bin/bash",
        &elf(Some("/lib64/ld-linux-x86-64.so.2"), None, b""),
    );
    let s = t.scan(&["/sbin/init"]);
    let cf = s.facts_for(&["bash".into()], Some("/usr/bin:/bin"));
    assert!(
        !cf.facts
            .iter()
            .any(|f| matches!(f, Fact::SystemdInit { .. })),
        "{cf:?}"
    );
    // bash was not the image's command: it is not among the executables
    // scanned, and the explanation says so.
    assert!(cf.unknown.is_some(), "{cf:?}");
}

#[test]
fn symlinks_that_climb_out_never_reach_the_host() {
    let t = tree();
    // A systemd binary outside the rootfs, where climbing links point.
    fs::create_dir_all(t.outside.join("usr/lib/systemd")).unwrap();
    fs::write(t.outside.join("usr/lib/systemd/systemd"), systemd_elf(257)).unwrap();
    let climb = format!(
        "../../../../../../../../{}/usr/lib/systemd/systemd",
        t.outside.display()
    );
    t.link("/sbin/init", &climb);
    t.link(
        "/usr/sbin/init",
        &format!("{}/usr/lib/systemd/systemd", t.outside.display()),
    );
    t.link("/bin/init", "../../host/usr/lib/systemd/systemd");
    let s = t.scan(&["/sbin/init"]);
    for e in &s.executables {
        assert!(
            !e.facts
                .iter()
                .any(|f| matches!(f, Fact::SystemdInit { .. })),
            "{} read something outside the rootfs: {:?}",
            e.path,
            e.facts
        );
    }
    // A link to itself: a loop is a fact, not a hang.
    let t = tree();
    t.link("/sbin/init", "/sbin/init");
    let s = t.scan(&["/sbin/init"]);
    assert!(
        matches!(&exe(&s, "/sbin/init").facts[..], [Fact::Unreadable { reason, .. }] if reason.contains("symbolic links")),
        "{:?}",
        s.executables
    );
}

#[test]
fn a_truncated_or_huge_elf_is_a_fact_not_a_panic() {
    let t = tree();
    let full = systemd_elf(257);
    t.file("/sbin/init", &full[..70]);
    let s = t.scan(&["/sbin/init"]);
    let e = exe(&s, "/sbin/init");
    assert!(
        matches!(&e.facts[..], [Fact::Unreadable { reason, .. }] if reason.contains("malformed ELF")),
        "{:?}",
        e.facts
    );
    // Every prefix of a valid ELF: never a panic.
    for n in 0..full.len() {
        let _ = elf_info(&full[..n]);
    }
    // A file bigger than the cap (sparse: no disk used).
    let t = tree();
    t.file("/sbin/init", b"\x7fELF");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(t.root.join("sbin/init"))
        .unwrap();
    f.set_len(MAX_FILE_BYTES + 1).unwrap();
    let s = t.scan(&["/sbin/init"]);
    assert!(
        matches!(&exe(&s, "/sbin/init").facts[..], [Fact::Unreadable { reason, .. }] if reason.contains("limit")),
        "{:?}",
        s.executables
    );
    // A FIFO where the init should be: not opened for long, not a hang.
    let t = tree();
    fs::create_dir_all(t.root.join("sbin")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        t.root.join("sbin/init"),
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let s = t.scan(&["/sbin/init"]);
    assert!(
        matches!(&exe(&s, "/sbin/init").facts[..], [Fact::Unreadable { reason, .. }] if reason.contains("not a regular file")),
        "{:?}",
        s.executables
    );
}

#[test]
fn abi_tags_of_libc_and_static_binaries() {
    let t = tree();
    t.file(
        "/lib/x86_64-linux-gnu/libc.so.6",
        &elf(
            None,
            Some((0, 99, 0, 0)),
            b"\0GNU C Library (test) stable release version 2.99.\0",
        ),
    );
    let s = t.scan(&["/bin/true"]);
    assert!(s.facts.contains(&Fact::LibcMinKernel {
        version: KernelVersion::new(99, 0, 0),
        path: "/lib/x86_64-linux-gnu/libc.so.6".into()
    }));
    assert!(s.facts.contains(&Fact::GlibcVersion {
        version: "2.99".into(),
        path: "/lib/x86_64-linux-gnu/libc.so.6".into()
    }));
    // A Hurd ABI tag is not a Linux version.
    let t = tree();
    t.file("/app", &elf(None, Some((1, 0, 5, 0)), b""));
    let s = t.scan(&["/app"]);
    assert_eq!(
        exe(&s, "/app").facts,
        vec![Fact::StaticBinary {
            path: "/app".into()
        }]
    );
}

#[test]
fn no_libc_at_all_as_in_a_static_go_image() {
    let t = tree();
    // Go binaries carry no ABI tag and no interpreter.
    t.file("/app", &elf(None, None, b"Go build ID"));
    let s = t.scan(&["/app"]);
    assert!(s.facts.is_empty(), "{:?}", s.facts);
    assert_eq!(
        exe(&s, "/app").facts,
        vec![Fact::StaticBinary {
            path: "/app".into()
        }]
    );
    let cf = s.facts_for(&["/app".into()], None);
    assert_eq!(cf.facts.len(), 1, "{cf:?}");
}

#[test]
fn modules_and_module_loaders() {
    let t = tree();
    t.file("/lib/modules/6.1.0-9-amd64/modules.dep", b"");
    t.link("/lib/modules/6.2.0/build", "/usr/src/linux-headers-6.2.0");
    let s = t.scan(&["/bin/sh"]);
    assert!(
        s.facts.contains(&Fact::ShipsModules {
            releases: vec!["6.1.0-9-amd64".into()],
            path: "/lib/modules".into()
        }),
        "{:?}",
        s.facts
    );
    // Headers only (a build link): no modules.
    let t = tree();
    t.link("/lib/modules/6.2.0/build", "/usr/src/linux-headers-6.2.0");
    assert!(t.scan(&["/bin/sh"]).facts.is_empty());
    // modprobe as the command, even as a link to kmod.
    let t = tree();
    t.file(
        "/bin/kmod",
        &elf(Some("/lib64/ld-linux-x86-64.so.2"), None, b""),
    );
    t.link("/sbin/modprobe", "/bin/kmod");
    let s = t.scan(&["modprobe", "nf_tables"]);
    let cf = s.facts_for(&["modprobe".into()], None);
    assert!(
        cf.facts
            .iter()
            .any(|f| matches!(f, Fact::LoadsModules { .. })),
        "{cf:?}"
    );
}

#[test]
fn real_host_binaries_and_the_musl_loader() {
    // The host's own glibc: an ABI tag and a version.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    let libc = libc.expect("the host's glibc (a Debian-style x86-64 host)");
    let t = tree();
    t.file("/lib/x86_64-linux-gnu/libc.so.6", &fs::read(libc).unwrap());
    let s = t.scan(&["/bin/true"]);
    assert!(
        s.facts
            .iter()
            .any(|f| matches!(f, Fact::LibcMinKernel { version, .. } if version.major >= 2)),
        "{:?}",
        s.facts
    );
    assert!(
        s.facts
            .iter()
            .any(|f| matches!(f, Fact::GlibcVersion { .. })),
        "{:?}",
        s.facts
    );
    // No glibc, a musl loader: musl.
    let t = tree();
    t.file("/lib/ld-musl-x86_64.so.1", &elf(None, None, b""));
    let s = t.scan(&["/bin/true"]);
    assert_eq!(
        s.facts,
        vec![Fact::Musl {
            path: "/lib/ld-musl-x86_64.so.1".into()
        }]
    );
}

#[test]
fn old_systemd_version_from_its_banner() {
    let t = tree();
    t.file(
        "/usr/lib/systemd/systemd",
        &elf(
            Some("/lib64/ld-linux-x86-64.so.2"),
            None,
            b"\0systemd 219\n+PAM +AUDIT\0",
        ),
    );
    let s = t.scan(&["/usr/lib/systemd/systemd"]);
    assert!(exe(&s, "/usr/lib/systemd/systemd")
        .facts
        .contains(&Fact::SystemdInit {
            version: Some(219),
            path: "/usr/lib/systemd/systemd".into()
        }));
}

#[test]
fn stored_scans_round_trip_and_are_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), crate::image::Access::Write).unwrap();
    let d = Digest::of(b"manifest");
    assert!(store.load_scan(&d).is_none());
    let t = tree();
    t.file("/usr/lib/systemd/systemd", &systemd_elf(257));
    let s = t.scan(&["/usr/lib/systemd/systemd"]);
    store.save_scan(&d, &s).unwrap();
    assert_eq!(store.load_scan(&d), Some(s.clone()));
    // Another format is not used.
    let old = ImageScan {
        format: SCAN_FORMAT + 1,
        ..s
    };
    store.save_scan(&d, &old).unwrap();
    assert!(store.load_scan(&d).is_none());
    assert_eq!(store.prune_scans(&[]), 1);
}
