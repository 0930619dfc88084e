//! The dispatcher reads the image (issue 21): images that say nothing
//! about their kernel, and what `amphi explain` and `amphi run` infer from
//! their files. Real images: Debian 13 with systemd 257 (debootstrap),
//! Debian 12 minbase, busybox, a musl image; hostile layers on top of
//! busybox for the scanner's limits.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::{
    derive_image_with_layer, guest_kernel_build, host_cgroup_v2_only, raw_tar, test_image, Amphi,
    TarEntry,
};
use serde_json::Value;

const SYSTEMD: &str = "localhost/infer/debian-systemd:13";

fn explain_json(a: &Amphi, args: &[&str]) -> Value {
    let mut all = vec!["explain", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&a.ok(&all)).unwrap()
}

/// The host's cgroups are not pure v2 (hybrid or v1).
fn host_is_hybrid_or_v1() -> bool {
    !host_cgroup_v2_only()
}

fn facts(plan: &Value) -> Vec<Value> {
    plan["decision"]["facts"].as_array().unwrap().clone()
}

fn fact<'a>(facts: &'a [Value], kind: &str) -> Option<&'a Value> {
    facts.iter().find(|f| f["fact"] == kind)
}

/// The guest kernel the built-in catalog gets (a microVM decision needs one).
fn kernels_built() -> bool {
    guest_kernel_build("6.12").is_some()
}

#[test]
fn systemd_image_goes_to_a_microvm_on_a_hybrid_host_with_no_annotation() {
    if !kernels_built() {
        return;
    }
    let a = Amphi::new();
    a.load_test_image("systemd", SYSTEMD);
    let plan = explain_json(&a, &[SYSTEMD]);
    let f = facts(&plan);
    let sd = fact(&f, "systemd-init").unwrap_or_else(|| panic!("{plan:#}"));
    assert_eq!(sd["version"], 257, "{plan:#}");
    assert_eq!(sd["path"], "/usr/lib/systemd/systemd", "{plan:#}");
    assert!(fact(&f, "glibc-version").is_some(), "{plan:#}");
    assert_eq!(plan["scan"]["executable"], "/usr/lib/systemd/systemd");
    let text = a.ok(&["explain", SYSTEMD]);
    if host_is_hybrid_or_v1() {
        assert_eq!(plan["decision"]["isolation"], "vm", "{plan:#}");
        let inferred = plan["decision"]["inferred"].as_array().unwrap();
        assert!(
            inferred
                .iter()
                .any(|i| i["need"]["need"] == "cgroup-v2" && i["rule"] == "image.systemd"),
            "{plan:#}"
        );
        // One line that names the file, the version, the host and the outcome.
        let line = text
            .lines()
            .find(|l| l.contains("/usr/lib/systemd/systemd is systemd 257"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.contains("needs cgroup v2")
                && (line.contains("hybrid") || line.contains("cgroup v1"))
                && line.contains("microVM with kernel 6.12."),
            "{line}"
        );
        assert!(text.contains("Debian GNU/Linux 13 (trixie)"), "{text}");
        // No annotation and no policy decided it.
        assert!(!text.contains("annotation.isolation"), "{text}");
    } else {
        assert_eq!(plan["decision"]["isolation"], "container", "{plan:#}");
    }
}

#[test]
fn with_bash_as_the_command_the_systemd_image_stays_native() {
    let a = Amphi::new();
    a.load_test_image("systemd", SYSTEMD);
    let plan = explain_json(&a, &[SYSTEMD, "bash", "-c", "true"]);
    assert_eq!(plan["decision"]["isolation"], "container", "{plan:#}");
    let f = facts(&plan);
    assert!(fact(&f, "systemd-init").is_none(), "{plan:#}");
    // The image-wide facts still apply.
    assert!(fact(&f, "libc-min-kernel").is_some(), "{plan:#}");
    // And the command really runs natively.
    let out = a.ok(&["run", "--rm", SYSTEMD, "bash", "-c", "echo native:$((6*7))"]);
    assert_eq!(out.trim(), "native:42");
}

#[test]
fn forcing_native_on_an_inferred_vm_image_runs_it_with_one_warning() {
    if !host_is_hybrid_or_v1() {
        return; // the image needs nothing here: no warning to see
    }
    let a = Amphi::new();
    a.load_test_image("systemd", SYSTEMD);
    // systemd as the init, told to run `true` and exit (systemd.run=).
    let out = a.run(&[
        "run",
        "--rm",
        "--isolation",
        "container",
        SYSTEMD,
        "/sbin/init",
        "systemd.run=true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("systemd 257") && warnings[0].contains("cgroup v2"),
        "{}",
        warnings[0]
    );
}

#[test]
fn no_false_positives_busybox_minbase_and_musl_stay_native() {
    let a = Amphi::new();
    for (image, tag) in [
        ("busybox", "localhost/infer/busybox:1"),
        ("minbase", "localhost/infer/minbase:12"),
        ("musl", "localhost/infer/musl:1"),
    ] {
        a.load_test_image(image, tag);
        let plan = explain_json(&a, &[tag]);
        assert_eq!(
            plan["decision"]["isolation"], "container",
            "{image}: {plan:#}"
        );
        for i in plan["decision"]["inferred"].as_array().unwrap() {
            // Only kernel versions this host has.
            assert_eq!(i["need"]["need"], "kernel-at-least", "{image}: {i}");
        }
        let f = facts(&plan);
        match image {
            "musl" => assert!(fact(&f, "musl").is_some(), "{plan:#}"),
            "minbase" => assert!(fact(&f, "glibc-version").is_some(), "{plan:#}"),
            _ => assert!(fact(&f, "static-binary").is_some(), "{plan:#}"),
        }
    }
}

#[test]
fn the_scan_is_stored_once_and_redone_on_request() {
    let a = Amphi::new();
    a.load_test_image("busybox", "localhost/infer/busybox:1");
    explain_json(&a, &["localhost/infer/busybox:1"]);
    let scans: Vec<_> = std::fs::read_dir(a.root().join("scans/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(scans.len(), 1, "{scans:?}");
    let stored = std::fs::read(&scans[0]).unwrap();
    // Tamper with the stored scan: a run only reads it (no new scan).
    let mut v: Value = serde_json::from_slice(&stored).unwrap();
    v["os"] = "Tampered OS 1".into();
    std::fs::write(&scans[0], serde_json::to_vec(&v).unwrap()).unwrap();
    let text = a.ok(&["explain", "localhost/infer/busybox:1"]);
    assert!(text.contains("Tampered OS 1"), "{text}");
    // --rescan reads the image again.
    let text = a.ok(&["explain", "--rescan", "localhost/infer/busybox:1"]);
    assert!(!text.contains("Tampered OS 1"), "{text}");
    // Gone with its image.
    a.ok(&["rmi", "localhost/infer/busybox:1"]);
    a.ok(&["gc"]);
    assert!(!scans[0].exists(), "{scans:?}");
}

/// The host's glibc with its ABI tag rewritten to "Linux >= 99.0.0".
fn libc_needing_linux_99() -> Vec<u8> {
    let libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6")
        .or_else(|_| std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        .expect("the host's glibc");
    let mut note = Vec::new();
    for w in [4u32, 16, 1] {
        note.extend_from_slice(&w.to_le_bytes());
    }
    note.extend_from_slice(b"GNU\0");
    note.extend_from_slice(&0u32.to_le_bytes());
    let at = libc
        .windows(note.len())
        .position(|w| w == note.as_slice())
        .expect("the host's glibc has an NT_GNU_ABI_TAG note");
    let mut out = libc.clone();
    let v = at + note.len();
    out[v..v + 4].copy_from_slice(&99u32.to_le_bytes());
    out[v + 4..v + 12].copy_from_slice(&[0; 8]);
    out
}

#[test]
fn an_abi_tag_newer_than_every_kernel_is_refused_with_the_file_named() {
    let a = Amphi::new();
    let libc = libc_needing_linux_99();
    let tar = raw_tar(&[
        TarEntry::Dir { path: "lib" },
        TarEntry::Dir {
            path: "lib/x86_64-linux-gnu",
        },
        TarEntry::File {
            path: "lib/x86_64-linux-gnu/libc.so.6",
            data: &libc,
            mode: 0o755,
        },
    ]);
    let dir = tempfile::tempdir().unwrap();
    derive_image_with_layer(&test_image("busybox"), dir.path(), |_| {}, &[], Some(&tar));
    let name = "localhost/infer/too-new:1";
    a.ok(&["load", "-q", "--tag", name, dir.path().to_str().unwrap()]);
    let err = a.fail(&["explain", name]);
    assert!(
        err.contains("/lib/x86_64-linux-gnu/libc.so.6") && err.contains("99.0.0"),
        "{err}"
    );
    assert!(err.contains("no guest kernel"), "{err}");
    let err = a.fail(&["run", "--rm", name, "true"]);
    assert!(err.contains("99.0.0"), "{err}");
}

#[test]
fn hostile_links_and_files_never_reach_the_host_or_break_the_scan() {
    let a = Amphi::new();
    // /sbin/init climbs out to the host's init, the libc is a FIFO, and
    // /usr/lib/os-release is a link to the host's.
    let tar = raw_tar(&[
        TarEntry::Dir { path: "sbin" },
        TarEntry::Symlink {
            path: "sbin/init",
            target: "../../../../../../../../../lib/systemd/systemd",
        },
        TarEntry::Dir { path: "lib" },
        TarEntry::Dir {
            path: "lib/x86_64-linux-gnu",
        },
        TarEntry::File {
            path: "lib/x86_64-linux-gnu/libc.so.6",
            data: b"\x7fELF\x02\x01\x01 truncated",
            mode: 0o755,
        },
        TarEntry::Dir { path: "etc" },
        TarEntry::Symlink {
            path: "etc/os-release",
            target: "/proc/self/root/etc/os-release",
        },
    ]);
    let dir = tempfile::tempdir().unwrap();
    derive_image_with_layer(
        &test_image("busybox"),
        dir.path(),
        |c| c["config"]["Cmd"] = serde_json::json!(["/sbin/init"]),
        &[],
        Some(&tar),
    );
    let name = "localhost/infer/hostile:1";
    a.ok(&["load", "-q", "--tag", name, dir.path().to_str().unwrap()]);
    let plan = explain_json(&a, &[name]);
    let f = facts(&plan);
    assert!(fact(&f, "systemd-init").is_none(), "{plan:#}");
    let bad = fact(&f, "unreadable").unwrap_or_else(|| panic!("{plan:#}"));
    assert_eq!(bad["path"], "/lib/x86_64-linux-gnu/libc.so.6");
    assert!(
        bad["reason"].as_str().unwrap().contains("malformed ELF"),
        "{bad}"
    );
    // The host's os-release was not read.
    assert!(plan["scan"].get("os").is_none(), "{plan:#}");
    assert_eq!(plan["decision"]["isolation"], "container", "{plan:#}");
}
