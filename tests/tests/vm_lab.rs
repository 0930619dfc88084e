//! amphi's VMM with real Linux guests, and `amphi vmm` itself.
//!
//! The lab tests run `scripts/vm-lab` (QEMU in software emulation with an
//! emulated AMD CPU that has SVM; Debian's cloud kernel loads kvm_amd and
//! runs `amphi vmm`, which boots a level-2 Debian kernel, or amphi's
//! microVM kernel for the virtio checks). They need root and no KVM on the
//! host; each takes 10 to 15 s, one at a time. The virtio checks skip
//! loudly without the microVM kernel (`AMPHI_LAB_L2_KERNEL`, or a build in
//! /var/cache/amphi/kernels/6.12-*/), and so does the product path in the
//! lab (`scripts/vm-lab run`: `amphi load` and `amphi run --isolation vm
//! --vm-backend builtin` inside level 1, level 2 being amphi's microVM),
//! and the OCI runtime path there (`scripts/vm-lab run --oci`: `amphi
//! create/start/state/delete` of a bundle annotated for a microVM).
//!
//! The quick tests run `amphi vmm` on this host: argument and kernel checks
//! (no KVM needed), the refusal of a stock kernel on a PVM host, and tiny
//! hand-made guests for each way a run ends (need /dev/kvm); and the
//! bench's arithmetic on a known console log (`scripts/vm-lab
//! bench-summary`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use amphi_tests::tiny_guest::{guest_file, kvm_usable, tiny_guest, HANG, RESET, UD2};
use amphi_tests::{amphi_bin, run_cmd, script, skip, test_image};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn vmm(args: &[&str]) -> Output {
    run_cmd(Command::new(amphi_bin()).arg("vmm").args(args))
}

// --- the nested lab ----------------------------------------------------------

/// One lab run at a time: two TCG machines on a small host would each run
/// at half speed and distort the timings.
static LAB: Mutex<()> = Mutex::new(());

/// The `key: value` lines a `scripts/vm-lab` command printed.
fn lab_report(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `scripts/vm-lab boot ARGS --vcpus N --amphi ...` and checks that
/// level 2 booted on `vcpus` vCPUs and that amphi reported a clean reset.
/// Returns the `key: value` report.
fn lab_boot(what: &str, args: &[&str], vcpus: u32) -> BTreeMap<String, String> {
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let vcpus_arg = vcpus.to_string();
    let started = Instant::now();
    let out = run_cmd(
        Command::new(script("vm-lab"))
            .arg("boot")
            .args(args)
            .args(["--vcpus", &vcpus_arg])
            .args(["--amphi", amphi_bin().to_str().unwrap()]),
    );
    let took = started.elapsed();
    let report = lab_report(&out);
    let get = |key: &str| report.get(key).map(String::as_str);
    eprintln!(
        "vm-lab {what} x{vcpus}: {} s in QEMU, {took:.1?} in all",
        get("seconds").unwrap_or("?")
    );
    assert!(
        out.status.success(),
        "vm-lab failed: {}\n{}",
        get("result").unwrap_or("no result line"),
        show(&out)
    );
    assert_eq!(
        get("l2-marker"),
        Some(format!("AMPHI-L2-OK cpus={vcpus}").as_str()),
        "{}",
        show(&out)
    );
    assert_eq!(get("amphi-exit"), Some("guest reset"), "{}", show(&out));
    assert_eq!(get("amphi-rc"), Some("0"), "{}", show(&out));
    assert_eq!(get("l2-kernel-warnings"), Some("0"), "{}", show(&out));
    assert_eq!(get("result"), Some("PASS"), "{}", show(&out));
    assert_jailed(get("jail").unwrap_or(""), &show(&out));
    report
}

/// The `jail:` line of a lab report (level 1's look at the running VMM's
/// /proc entries): an unprivileged user, no capabilities, seccomp, no new
/// privileges, an empty root, its own mount and net namespaces, its own
/// cgroup (level 1 has cgroup2 only: the VMM is born in it).
fn assert_jailed(jail: &str, context: &str) {
    let fields: BTreeMap<&str, &str> = jail.split(' ').filter_map(|f| f.split_once('=')).collect();
    let field = |k: &str| fields.get(k).copied().unwrap_or("missing");
    let uid: u64 = field("uid").parse().unwrap_or(0);
    let gid: u64 = field("gid").parse().unwrap_or(0);
    assert!(
        uid >= 2_000_000_000 && gid >= 2_000_000_000,
        "jail: {jail}\n{context}"
    );
    for caps in ["capeff", "capprm", "capbnd"] {
        assert_eq!(field(caps), "0000000000000000", "jail: {jail}\n{context}");
    }
    assert_eq!(field("seccomp"), "2", "jail: {jail}\n{context}");
    assert_eq!(field("nonewprivs"), "1", "jail: {jail}\n{context}");
    assert_eq!(field("root-entries"), "0", "jail: {jail}\n{context}");
    assert_eq!(field("mnt"), "own", "jail: {jail}\n{context}");
    assert_eq!(field("net"), "own", "jail: {jail}\n{context}");
    assert!(
        field("cgroup").starts_with("/amphi-vmm/"),
        "jail: {jail}\n{context}"
    );
}

/// A lab boot of Debian's stock level-2 kernel in `kernel` format.
fn lab(kernel: &str, vcpus: u32) {
    if !is_root() {
        skip("the nested lab needs root (apt-get, mknod): vm-lab tests not run");
        return;
    }
    lab_boot(kernel, &["--kernel", kernel], vcpus);
}

/// amphi's microVM kernel (guest-kernel/) as `name` (vmlinux or bzImage):
/// `$AMPHI_LAB_L2_KERNEL` (that file if it is called `name`, else `name`
/// next to it; or a directory holding it), else the newest build in
/// `$AMPHI_KERNEL_CACHE/6.12-*/` (default /var/cache/amphi/kernels, where
/// `amphi kernel build` puts it).
fn microvm_kernel(name: &str) -> Option<PathBuf> {
    if let Some(given) = std::env::var_os("AMPHI_LAB_L2_KERNEL") {
        let given = PathBuf::from(given);
        let path = if given.is_dir() {
            given.join(name)
        } else if given.file_name().is_some_and(|f| f == name) {
            given
        } else {
            given.with_file_name(name)
        };
        return path.is_file().then_some(path);
    }
    let mut builds: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(
        std::env::var_os("AMPHI_KERNEL_CACHE").unwrap_or_else(|| "/var/cache/amphi/kernels".into()),
    )
    .ok()?
    .flatten()
    .filter(|e| {
        let dir = e.file_name().to_string_lossy().into_owned();
        dir.starts_with("6.12-") && !dir.ends_with(".build")
    })
    .map(|e| e.path().join(name))
    .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
    .collect();
    builds.sort();
    builds.pop().map(|(_, p)| p)
}

/// The lab's virtio check with the microVM kernel: level 2 reads a
/// read-only virtio-blk disk, writes a read-write one, and talks to level 1
/// both ways through virtio-console (see `scripts/vm-lab --help`).
fn lab_virtio(name: &str, vcpus: u32) {
    if !is_root() {
        skip("the nested lab needs root (apt-get, mknod): vm-lab virtio tests not run");
        return;
    }
    let Some(kernel) = microvm_kernel(name) else {
        skip(&format!(
            "vm-lab virtio check ({name}, {vcpus} vCPUs) NOT run: no microVM kernel \
             (set AMPHI_LAB_L2_KERNEL or build /var/cache/amphi/kernels/6.12-*/{name} \
             with amphi kernel build)"
        ));
        return;
    };
    let kernel = kernel.to_str().unwrap();
    let report = lab_boot(
        &format!("virtio check {kernel}"),
        &["--l2-kernel", kernel, "--virtio-check"],
        vcpus,
    );
    let checks: Vec<(&String, &String)> = report
        .iter()
        .filter(|(k, _)| k.starts_with("check-"))
        .collect();
    let names: Vec<&str> = checks.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "check-guest-to-host",
            "check-host-to-guest",
            "check-ro-disk-read",
            "check-ro-disk-write-refused",
            "check-rw-disk-write",
        ],
        "{report:#?}"
    );
    for (check, verdict) in checks {
        assert_eq!(verdict, "ok", "{check}: {report:#?}");
    }
}

/// The microVM kernel for a `vm-lab run` (`what` names the run in the
/// skip notices); None, with the skip said, without root or a kernel.
fn lab_run_kernel(what: &str) -> Option<PathBuf> {
    if !is_root() {
        skip(&format!(
            "the nested lab needs root (apt-get, mknod): {what} not run"
        ));
        return None;
    }
    let kernel = microvm_kernel("vmlinux");
    if kernel.is_none() {
        skip(&format!(
            "{what} NOT run: no microVM kernel \
             (set AMPHI_LAB_L2_KERNEL or build /var/cache/amphi/kernels/6.12-*/vmlinux \
             with amphi kernel build)"
        ));
    }
    kernel
}

/// The release `amphi kernel build` wrote next to the kernel.
fn kernel_release(kernel: &Path) -> Option<String> {
    std::fs::read_to_string(kernel.with_file_name("version"))
        .ok()
        .map(|v| v.trim().to_string())
}

/// `scripts/vm-lab run` of the busybox image on `kernel` with this
/// build's amphi and `extra` options, alone in the lab: its output, its
/// report, and how long it took.
fn vm_lab_run(kernel: &Path, extra: &[&str]) -> (Output, BTreeMap<String, String>, Duration) {
    let image = test_image("busybox");
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let out = run_cmd(
        Command::new(script("vm-lab"))
            .arg("run")
            .args(extra)
            .args(["--l2-kernel", kernel.to_str().unwrap()])
            .args(["--image", image.to_str().unwrap()])
            .args(["--amphi", amphi_bin().to_str().unwrap()]),
    );
    let took = started.elapsed();
    let report = lab_report(&out);
    (out, report, took)
}

/// The product path through the built-in VMM, in the lab: level 1 runs
/// `amphi load` of the busybox OCI layout, then `amphi run --rm --isolation
/// vm --vm-backend builtin --kernel <microVM vmlinux> ... sh -c 'uname -r;
/// echo out; echo err >&2; exit 3'` (`scripts/vm-lab run`); amphi builds
/// the guest rootfs, starts `amphi vmm` and talks to its guest init over
/// the guest channel, all inside level 1.
///
/// With [`LabRun::Virtiofs`], level 1 also shares a directory holding a
/// token with `-v` (`scripts/vm-lab run --virtiofs`): virtiofsd serves it
/// to the built-in VMM (`amphi vmm --fs fd=N,tag=amphi-vol`, the connection
/// handed down), the workload prints the token and writes a file back.
///
/// With [`LabRun::Network`] (`scripts/vm-lab run --network`), level 1 has
/// an interface with a default route and a second address where busybox
/// httpd serves a token and 256 KiB of random bytes; `amphi run --network
/// private` starts passt in level 1 for the built-in VMM's virtio-net, and
/// the workload fetches the token from that address and the bytes through
/// the gateway (passt maps it to level 1's loopback): the token and the
/// bytes' sha256 must arrive, and no passt may be left in level 1.
fn lab_amphi_run(vcpus: u32, extra: LabRun) {
    let virtiofs = extra == LabRun::Virtiofs;
    let network = extra == LabRun::Network;
    let Some(kernel) = lab_run_kernel("vm-lab run (amphi run through the built-in VMM)") else {
        return;
    };
    if virtiofs {
        if let Some(why) = no_virtiofs(&kernel) {
            skip(&format!("vm-lab run --virtiofs NOT run: {why}"));
            return;
        }
    }
    if network && !amphi_tests::have("passt") {
        skip("vm-lab run --network NOT run: passt is not installed (apt-get install passt, or scripts/setup)");
        return;
    }
    let release = kernel_release(&kernel);
    let vcpus_arg = vcpus.to_string();
    let mut extra_args = vec!["--vcpus", vcpus_arg.as_str()];
    extra_args.extend(virtiofs.then_some("--virtiofs"));
    extra_args.extend(network.then_some("--network"));
    let (out, report, took) = vm_lab_run(&kernel, &extra_args);
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    eprintln!(
        "vm-lab run x{vcpus}: {} s in QEMU ({} s in amphi run), {took:.1?} in all\n\
         amphi: vm timing: {}",
        get("seconds"),
        get("run-seconds"),
        get("vm-timing")
    );
    assert!(
        out.status.success(),
        "vm-lab run failed: {}\n{}",
        get("result"),
        show(&out)
    );
    // The script shows line ends as \n.
    let lines = |key: &str| -> Vec<String> { get(key).split("\\n").map(str::to_string).collect() };
    let stdout = lines("run-stdout");
    let stderr = lines("run-stderr");
    assert_eq!(get("run-exit"), "3", "{}", show(&out));
    assert!(stdout.iter().any(|l| l == "out"), "{}", show(&out));
    assert!(stderr.iter().any(|l| l == "err"), "{}", show(&out));
    let guest = get("guest-kernel");
    assert!(!guest.is_empty() && guest != "none", "{}", show(&out));
    if let Some(release) = &release {
        assert_eq!(guest, release, "{}", show(&out));
    }
    if virtiofs {
        // uname -r, "out", then the token read from the shared directory;
        // and the file the workload wrote is in it.
        let token = get("volume-token");
        assert!(token.starts_with("AMPHI-VOL-"), "{}", show(&out));
        assert_eq!(stdout, [guest, "out", token], "{}", show(&out));
        assert_eq!(get("volume-back"), "ok", "{}", show(&out));
    } else if network {
        // uname -r, "out", the token from level 1's address, then the
        // sha256 of the bytes fetched through the gateway, which level 1
        // computed of the file it served.
        let token = get("net-token");
        let blob = get("net-blob-sha256");
        assert!(token.starts_with("AMPHI-NET-"), "{}", show(&out));
        assert_eq!(blob.len(), 64, "{}", show(&out));
        assert_eq!(stdout, [guest, "out", token, blob], "{}", show(&out));
        assert_eq!(get("passt-left"), "0", "{}", show(&out));
    } else {
        // uname -r in the workload, then "out"; nothing else.
        assert_eq!(stdout, [guest, "out"], "{}", show(&out));
    }
    let timing = get("vm-timing");
    assert!(
        timing.contains("backend=\"amphi's VMM (KVM)\""),
        "{}",
        show(&out)
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("amphi: vm timing: rootfs=")),
        "{}",
        show(&out)
    );
    assert_eq!(get("result"), "PASS", "{}", show(&out));
    assert_jailed(get("jail"), &show(&out));
}

/// Why the lab cannot share a directory over virtio-fs with `kernel` as
/// level 2, if it cannot: the kernel's config (next to it) must have
/// `CONFIG_VIRTIO_FS=y`, and this host's virtiofsd must be installed (the
/// lab carries it into level 1).
fn no_virtiofs(kernel: &Path) -> Option<String> {
    let config = std::fs::read_to_string(kernel.with_file_name("config")).unwrap_or_default();
    if !config.lines().any(|l| l == "CONFIG_VIRTIO_FS=y") {
        return Some(format!(
            "the microVM kernel {} has no config next to it with CONFIG_VIRTIO_FS=y \
             (rebuild it with amphi kernel build)",
            kernel.display()
        ));
    }
    if !amphi_tests::have("virtiofsd") && !Path::new("/usr/libexec/virtiofsd").exists() {
        return Some("virtiofsd is not installed (scripts/setup)".into());
    }
    None
}

/// What `scripts/vm-lab run` adds to the plain run.
#[derive(PartialEq, Eq)]
enum LabRun {
    Plain,
    /// `--virtiofs`: a `-v` volume over virtio-fs.
    Virtiofs,
    /// `--network`: a private network through passt in level 1.
    Network,
}

#[test]
fn lab_amphi_run_builtin_vmm() {
    lab_amphi_run(1, LabRun::Plain);
}

/// `amphi run -v` through the built-in VMM: a host directory over
/// virtio-fs, read and written by a real Linux guest.
#[test]
fn lab_amphi_run_builtin_vmm_virtiofs_volume() {
    lab_amphi_run(1, LabRun::Virtiofs);
}

/// `amphi run --network private` through the built-in VMM: a real Linux
/// guest reaches a server in level 1 through virtio-net and passt, which
/// runs inside level 1 (the "outbound in the nested lab").
#[test]
fn lab_amphi_run_builtin_vmm_private_network() {
    lab_amphi_run(1, LabRun::Network);
}

/// A virtiofsd killed while a real Linux guest uses its share, through the
/// built-in VMM (`scripts/vm-lab run --virtiofs-kill`): once the workload
/// has read the volume's token and said it is ready, level 1 kills every
/// virtiofsd with SIGKILL. The VMM takes the rings over and answers the
/// guest's FUSE requests with EIO (Linux's driver uses indirect descriptor
/// tables for them), so the workload's next `read </vol/token` fails with
/// "Input/output error" instead of waiting forever; amphi warns, the
/// workload exits 3 by itself within the grace, and `amphi run` ends with
/// its own error (125) naming virtiofsd and the workload's status. No
/// virtiofsd is left in level 1.
#[test]
fn lab_builtin_vmm_dead_virtiofsd_gives_the_workload_eio() {
    let Some(kernel) =
        lab_run_kernel("vm-lab run --virtiofs-kill (a dead virtiofsd under the built-in VMM)")
    else {
        return;
    };
    if let Some(why) = no_virtiofs(&kernel) {
        skip(&format!("vm-lab run --virtiofs-kill NOT run: {why}"));
        return;
    }
    let (out, report, took) = vm_lab_run(&kernel, &["--virtiofs-kill"]);
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    eprintln!(
        "vm-lab run --virtiofs-kill: {} s in QEMU, {took:.1?} in all; {}",
        get("seconds"),
        get("virtiofsd-killed")
    );
    assert!(
        out.status.success(),
        "vm-lab run --virtiofs-kill failed: {}\n{}",
        get("result"),
        show(&out)
    );
    assert_eq!(get("result"), "PASS", "{}", show(&out));
    assert_eq!(get("run-exit"), "125", "{}", show(&out));
    assert_eq!(get("virtiofsd-left"), "0", "{}", show(&out));
    let stderr = get("run-stderr");
    assert!(
        stderr.contains("can't open /vol/token: Input/output error"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "the workload's file operations on it failed from then on, and it exited with status 3"
        ),
        "{stderr}"
    );
    // Every request got its EIO: none came back unanswered as a bad chain.
    let log = std::fs::read(get("log")).unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("AMPHI-L1-RUN rc=125"),
        "not the run's log: {log}"
    );
    assert!(!log.contains("bad descriptor chain"), "{log}");
}

/// The OCI runtime path through the built-in VMM, in the lab
/// (`scripts/vm-lab run --oci`): level 1 makes a bundle of the busybox
/// image's rootfs with `amphi spec`'s config.json annotated
/// `io.amphi.isolation=vm` (the process `sh -c 'uname -r; echo out; echo
/// err >&2; exit 3'`), adds the microVM kernel to amphi's catalog, and with
/// `AMPHI_VM_BACKEND=builtin` runs `amphi create` (the monitor boots the VM,
/// the rootfs shared over virtio-fs by virtiofsd), `state`, `start`,
/// `state` until stopped, and `delete`. The container's stdio is `create`'s;
/// the monitor logs (`AMPHI_LOG=info`) the backend it starts and the guest
/// kernel its init reports.
#[test]
fn lab_oci_bundle_builtin_vmm() {
    let Some(kernel) = lab_run_kernel("vm-lab run --oci (an OCI bundle through the built-in VMM)")
    else {
        return;
    };
    if let Some(why) = no_virtiofs(&kernel) {
        skip(&format!("vm-lab run --oci NOT run: {why}"));
        return;
    }
    if !amphi_tests::have("umoci") {
        skip("vm-lab run --oci NOT run: umoci is not installed (it unpacks the bundle's rootfs)");
        return;
    }
    let release = kernel_release(&kernel);
    let (out, report, took) = vm_lab_run(&kernel, &["--oci"]);
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    eprintln!(
        "vm-lab run --oci: {} s in QEMU, {took:.1?} in all; create {}, start {}, stopped after {}",
        get("seconds"),
        get("oci-create"),
        get("oci-start"),
        get("oci-stopped")
    );
    let ctx = show(&out);
    assert!(
        out.status.success(),
        "vm-lab run --oci failed: {}\n{ctx}",
        get("result")
    );
    // "KEY=VALUE ..." fields of a report line.
    let fields = |key: &str| -> BTreeMap<String, String> {
        get(key)
            .split(' ')
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let field = |key: &str, f: &str| fields(key).get(f).cloned().unwrap_or_default();
    assert_eq!(field("oci-create", "rc"), "0", "{ctx}");
    // After create: "created", and the pid (the monitor's) runs.
    assert_eq!(field("oci-created", "status"), "created", "{ctx}");
    assert!(field("oci-created", "pid").parse::<u32>().is_ok(), "{ctx}");
    assert_eq!(field("oci-created", "alive"), "yes", "{ctx}");
    assert_eq!(field("oci-start", "rc"), "0", "{ctx}");
    let statuses: Vec<&str> = get("oci-statuses").split(' ').collect();
    assert_eq!(statuses.first(), Some(&"created"), "{ctx}");
    assert_eq!(statuses.last(), Some(&"stopped"), "{ctx}");
    assert_eq!(field("oci-delete", "rc"), "0", "{ctx}");
    // The guest's kernel: what its init reported and what the workload's
    // uname -r printed, the release next to the kernel file.
    let guest = get("guest-kernel");
    assert!(!guest.is_empty() && guest != "none", "{ctx}");
    if let Some(release) = &release {
        assert_eq!(guest, release, "{ctx}");
    }
    let lines = |key: &str| -> Vec<String> { get(key).split("\\n").map(str::to_string).collect() };
    assert_eq!(lines("run-stdout"), [guest, "out"], "{ctx}");
    assert!(lines("run-stderr").iter().any(|l| l == "err"), "{ctx}");
    // amphi's VMM, by the monitor's log, the state it keeps, and the
    // jailed `amphi vmm` level 1 saw running (with virtiofsd) while the
    // container was created.
    let vmm = "amphi's VMM (KVM)";
    assert_eq!(get("oci-backend"), vmm, "{ctx}");
    assert!(get("oci-microvm").contains(vmm), "{ctx}");
    assert!(get("oci-microvm").contains(guest), "{ctx}");
    let running = |f: &str| field("oci-procs-created", f).parse::<u32>().unwrap_or(0);
    assert!(running("vmm") >= 1 && running("virtiofsd") >= 1, "{ctx}");
    assert_jailed(get("jail"), &ctx);
    // Nothing left after delete: no monitor, amphi vmm, virtiofsd or other
    // process naming the state root, no run directory, no state.
    assert_eq!(get("oci-monitor"), "gone", "{ctx}");
    assert_eq!(
        get("oci-left"),
        "vmm=0 virtiofsd=0 under-root=0 vm-entries=0 state-dir=gone",
        "{ctx}"
    );
    assert_eq!(get("result"), "PASS", "{ctx}");
}

#[test]
fn lab_bzimage_one_vcpu() {
    lab("bzimage", 1);
}

#[test]
fn lab_bzimage_two_vcpus() {
    lab("bzimage", 2);
}

/// Debian's vmlinux, entered at its 64-bit entry (amphi vmm --boot auto
/// for a Linux vmlinux).
#[test]
fn lab_vmlinux_one_vcpu() {
    lab("vmlinux", 1);
}

/// The same vmlinux through its PVH entry (--boot pvh), with an AP.
#[test]
fn lab_pvh_vmlinux_two_vcpus() {
    if !is_root() {
        skip("the nested lab needs root (apt-get, mknod): vm-lab tests not run");
        return;
    }
    lab_boot(
        "vmlinux (PVH)",
        &["--kernel", "vmlinux", "--l2-boot", "pvh"],
        2,
    );
}

#[test]
fn lab_virtio_disk_and_console_vmlinux() {
    lab_virtio("vmlinux", 1);
}

/// How many of the hypervisor CPUID leaves 0x40000100 to 0x4000ff00 level
/// 2 read (Linux entered through PVH reads them all, looking for Xen), from
/// level 1's `kvm:kvm_cpuid` trace in the lab's console `log`; and how many
/// reads of KVM's own leaf 0x40000000 it made (any boot makes some: the
/// trace worked).
fn hypervisor_leaf_reads(log: &str) -> (usize, usize) {
    let leaf = |line: &str| {
        let func = line.split("kvm_cpuid: func ").nth(1)?.split(' ').next()?;
        u32::from_str_radix(func, 16).ok()
    };
    let leaves: Vec<u32> = log
        .lines()
        .filter(|l| l.starts_with("AMPHI-L1-TRACE "))
        .filter_map(leaf)
        .collect();
    let xen = leaves
        .iter()
        .filter(|&&f| (0x4000_0100..=0x4000_ff00).contains(&f) && f & 0xff == 0)
        .count();
    (xen, leaves.iter().filter(|&&f| f == 0x4000_0000).count())
}

/// amphi's microVM vmlinux is entered at its 64-bit entry and never looks
/// for Xen (255 VM exits fewer a boot); through its PVH entry (--boot pvh)
/// it reads every one of the 255 leaves. Read back from the guest's own
/// CPUID exits, traced in level 1.
#[test]
fn lab_microvm_vmlinux_skips_the_xen_search_unless_entered_through_pvh() {
    if !is_root() {
        skip("the nested lab needs root (apt-get, mknod): vm-lab tests not run");
        return;
    }
    let Some(kernel) = microvm_kernel("vmlinux") else {
        skip(
            "vm-lab boot-protocol check NOT run: no microVM kernel (set AMPHI_LAB_L2_KERNEL \
             or build /var/cache/amphi/kernels/6.12-*/vmlinux with amphi kernel build)",
        );
        return;
    };
    let kernel = kernel.to_str().unwrap();
    // Through PVH every leaf is read once (a kernel that searched twice
    // would still show the search); at the 64-bit entry none is.
    for (boot, searched) in [("auto", false), ("pvh", true)] {
        let report = lab_boot(
            &format!("{kernel} --boot {boot}"),
            &[
                "--l2-kernel",
                kernel,
                "--l2-boot",
                boot,
                "--l1-append",
                "amphi.trace=kvm:kvm_cpuid",
            ],
            1,
        );
        let log = report.get("log").expect("the report names its log");
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap()).into_owned();
        let (xen, kvm) = hypervisor_leaf_reads(&text);
        assert!(kvm > 0, "--boot {boot}: no CPUID trace in {log}");
        if searched {
            assert!(
                xen >= 255 && xen % 255 == 0,
                "--boot {boot}: {xen} Xen leaves read (log {log})"
            );
        } else {
            assert_eq!(xen, 0, "--boot {boot}: Xen leaves read (log {log})");
        }
    }
}

#[test]
fn lab_virtio_disk_and_console_bzimage_two_vcpus() {
    lab_virtio("bzImage", 2);
}

// --- amphi vmm: checks before any VM exists ----------------------------------

/// Asserts a clean failure (exit status, no panic) and returns stderr.
fn refused(out: &Output) -> String {
    let err = stderr(out);
    assert!(
        out.status.code().is_some_and(|c| c != 0) && !err.contains("panicked"),
        "should have failed cleanly:\n{}",
        show(out)
    );
    err
}

#[test]
fn vmm_missing_kernel_is_a_clear_error() {
    let out = vmm(&["--kernel", "/nonexistent/vmlinux"]);
    let err = refused(&out);
    assert!(
        err.contains("amphi vmm: error: kernel /nonexistent/vmlinux: No such file"),
        "{err}"
    );
}

#[test]
fn vmm_non_kernel_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("vmlinux");
    std::fs::write(&fake, "#!/bin/sh\necho not a kernel\n".repeat(100)).unwrap();
    let out = vmm(&["--kernel", fake.to_str().unwrap()]);
    let err = refused(&out);
    assert!(err.contains("not a kernel image"), "{err}");
    assert!(
        err.contains("neither an ELF vmlinux nor a bzImage"),
        "{err}"
    );
    // A directory is not a kernel either.
    let err = refused(&vmm(&["--kernel", dir.path().to_str().unwrap()]));
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn vmm_missing_initrd_and_bad_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("k.elf");
    std::fs::write(&kernel, tiny_guest(&[0xf4])).unwrap();
    let kernel = kernel.to_str().unwrap();
    let err = refused(&vmm(&[
        "--kernel",
        kernel,
        "--initrd",
        "/nonexistent/initrd",
    ]));
    assert!(
        err.contains("initrd /nonexistent/initrd: No such file"),
        "{err}"
    );
    let err = refused(&vmm(&["--kernel", kernel, "--disk", "/x.img,rw"]));
    assert!(err.contains("unknown disk option \"rw\""), "{err}");
    let err = refused(&vmm(&["--kernel", kernel, "--timeout", "soon"]));
    assert!(err.contains("not a number of seconds"), "{err}");
    let err = refused(&vmm(&["--kernel", kernel, "--serial", "file"]));
    assert!(err.contains("possible values: stdout, none"), "{err}");
}

// --- amphi vmm on this host's KVM ----------------------------------------------

fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The stock Debian kernels that `scripts/vm-lab fetch` keeps in its cache.
fn stock_kernels() -> BTreeMap<String, PathBuf> {
    let out = run_cmd(Command::new(script("vm-lab")).arg("fetch"));
    assert!(out.status.success(), "vm-lab fetch failed:\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .collect()
}

/// `scripts/vm-lab extract-vmlinux` (amphi-lab's decompression) gives what
/// the reference decompressors give, on the stock kernels: the generic
/// kernel's payload is xz (with the x86 BCJ filter), the cloud kernel's lz4
/// in its legacy frame.
#[test]
fn lab_extract_vmlinux_matches_the_reference_decompressors() {
    if !is_root() {
        skip("fetching the stock kernels needs root: extract-vmlinux is not checked");
        return;
    }
    for tool in ["xz", "lz4"] {
        if !amphi_tests::have(tool) {
            skip(&format!(
                "{tool} is missing: extract-vmlinux is not checked against it"
            ));
            return;
        }
    }
    // Decompressing two kernels twice keeps a core busy for seconds: not
    // beside a lab boot, whose level 2 (two vCPUs on TCG) is timed by its
    // own kernel's watchdogs.
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let kernels = stock_kernels();
    let dir = tempfile::tempdir().unwrap();
    for key in ["l1-kernel", "l2-bzimage"] {
        let bzimage = &kernels[key];
        let data = std::fs::read(bzimage).unwrap();
        // The boot header: setup sectors, payload_offset, payload_length.
        let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let setup = match data[0x1f1] {
            0 => 4,
            n => usize::from(n),
        };
        let start = (setup + 1) * 512 + u32_at(0x248);
        let payload = &data[start..start + u32_at(0x24c)];
        let (tool, args): (&str, &[&str]) = match payload[..4] {
            [0xfd, b'7', b'z', b'X'] => ("xz", &["-dc", "--single-stream"]),
            [0x02, 0x21, 0x4c, 0x18] => ("lz4", &["-dc"]),
            ref other => {
                panic!("{key}: a payload starting {other:02x?}: not xz or lz4, update this test")
            }
        };
        // Without the 4-byte size the kernel's build appends.
        let compressed = dir.path().join(format!("{key}.payload"));
        std::fs::write(&compressed, &payload[..payload.len() - 4]).unwrap();
        let reference = Command::new(tool)
            .args(args)
            .stdin(std::fs::File::open(&compressed).unwrap())
            .output()
            .unwrap();
        assert!(
            reference.status.success(),
            "{tool} {key}:\n{}",
            show(&reference)
        );
        let out = dir.path().join(format!("{key}.vmlinux"));
        let ran = run_cmd(
            Command::new(script("vm-lab"))
                .arg("extract-vmlinux")
                .args([bzimage, &out]),
        );
        assert!(
            ran.status.success(),
            "extract-vmlinux {key}:\n{}",
            show(&ran)
        );
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == reference.stdout,
            "{key} ({tool}): extract-vmlinux wrote {} bytes, {tool} -dc {} bytes, not the same",
            got.len(),
            reference.stdout.len()
        );
    }
}

#[test]
fn vmm_refuses_a_stock_kernel_on_a_pvm_host() {
    if !host_is_pvm() {
        // Not a missing tool: on hardware KVM there is nothing to refuse.
        amphi_tests::not_applicable(
            "this host's KVM is not PVM: the stock-kernel refusal is not tested",
        );
        return;
    }
    if !kvm_usable("stock kernel refusal") {
        return;
    }
    if !is_root() {
        skip("fetching the stock kernel needs root: the stock-kernel refusal is not tested");
        return;
    }
    let kernels = stock_kernels();
    for key in ["l1-kernel", "l1-vmlinux"] {
        let kernel = kernels[key].to_str().unwrap();
        let started = Instant::now();
        let out = vmm(&["--kernel", kernel, "--serial", "stdout"]);
        let err = refused(&out);
        assert!(err.contains("PVM"), "{err}");
        assert!(err.contains("--force"), "{err}");
        assert!(err.contains(kernel), "{err}");
        assert_eq!(out.status.code(), Some(125), "{}", show(&out));
        assert!(
            out.stdout.is_empty(),
            "no guest output expected:\n{}",
            show(&out)
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "refusing took {:?}",
            started.elapsed()
        );
    }
}

/// The single line `amphi vmm: ...` on stderr (plus what follows it).
fn exit_report(err: &str) -> &str {
    let at = err
        .find("amphi vmm: ")
        .unwrap_or_else(|| panic!("no exit report in:\n{err}"));
    &err[at..]
}

#[test]
fn vmm_guest_reset_exits_zero() {
    if !kvm_usable("guest reset") {
        return;
    }
    let guest = guest_file(RESET);
    let out = vmm(&[
        "--kernel",
        guest.path().to_str().unwrap(),
        "--force",
        "--timeout",
        "30",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        exit_report(&stderr(&out)).trim_end(),
        "amphi vmm: guest reset"
    );
}

#[test]
fn vmm_triple_fault_is_reported_with_registers() {
    if !kvm_usable("triple fault") {
        return;
    }
    let guest = guest_file(UD2);
    let out = vmm(&[
        "--kernel",
        guest.path().to_str().unwrap(),
        "--force",
        "--timeout",
        "30",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    let report = exit_report(&err);
    assert!(
        report.starts_with("amphi vmm: triple fault on vCPU 0\n"),
        "{err}"
    );
    assert!(report.contains("rip 0000000000100000"), "{err}");
    assert!(report.contains(" cs 0010"), "{err}");
}

#[test]
fn vmm_timeout_stops_a_hanging_guest() {
    if !kvm_usable("timeout") {
        return;
    }
    let guest = guest_file(HANG);
    let started = Instant::now();
    let out = vmm(&[
        "--kernel",
        guest.path().to_str().unwrap(),
        "--force",
        "--timeout",
        "1.5",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        exit_report(&err).starts_with("amphi vmm: stopped by host (timeout after 1.5s)"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "stopped after {took:?}"
    );
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
}

#[test]
fn vmm_sigterm_and_sigint_stop_the_guest() {
    if !kvm_usable("signals") {
        return;
    }
    let guest = guest_file(HANG);
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let err_file = tempfile::tempfile().unwrap();
        let mut child = Command::new(amphi_bin())
            .args(["vmm", "--kernel", guest.path().to_str().unwrap(), "--force"])
            .args(["--timeout", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file.try_clone().unwrap())
            .spawn()
            .unwrap();
        // Long enough for amphi to block the signals and start the guest.
        std::thread::sleep(Duration::from_secs(1));
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: signalling our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("amphi vmm did not stop on {name}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        let mut err_file = err_file;
        err_file.rewind().unwrap();
        err_file.read_to_string(&mut err).unwrap();
        assert_eq!(status.code(), Some(128 + signal), "{name}: {status}\n{err}");
        assert_eq!(
            exit_report(&err).trim_end(),
            format!("amphi vmm: stopped by host ({name})")
        );
    }
}

#[test]
fn vmm_passes_disks_and_console_through() {
    if !kvm_usable("disks and console") {
        return;
    }
    let guest = guest_file(RESET);
    let guest = guest.path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk = disk.to_str().unwrap();
    let sock = dir.path().join("console.sock");
    // A socket nobody listens on is refused up front.
    let err = refused(&vmm(&[
        "--kernel",
        guest,
        "--force",
        "--console",
        sock.to_str().unwrap(),
    ]));
    assert!(err.contains("console socket"), "{err}");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let ro = format!("{disk},ro");
    let out = vmm(&[
        "--kernel",
        guest,
        "--force",
        "--timeout",
        "30",
        "--disk",
        &ro,
        "--disk",
        disk,
        "--console",
        sock.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        exit_report(&stderr(&out)).trim_end(),
        "amphi vmm: guest reset"
    );
    let err = refused(&vmm(&[
        "--kernel",
        guest,
        "--force",
        "--disk",
        "/nonexistent.img",
    ]));
    assert!(err.contains("/nonexistent.img"), "{err}");
}

#[test]
fn vmm_timing_says_when_the_guest_started() {
    if !kvm_usable("startup timing") {
        return;
    }
    let guest = guest_file(RESET);
    let launch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let out = run_cmd(
        Command::new(amphi_bin())
            .args(["vmm", "--kernel", guest.path().to_str().unwrap()])
            .args(["--force", "--timeout", "30"])
            .env("AMPHI_VMM_TIMING", format!("{launch:.6}")),
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("amphi vmm: timing: "))
        .unwrap_or_else(|| panic!("no timing line:\n{err}"));
    // Measured, not judged: the numbers are reported by scripts/bench.
    eprintln!("TIMING: {line}");
    for milestone in [
        "launch to amphi vmm ",
        ", to VM created ",
        ", to kernel loaded ",
        ", to guest started ",
        ", to first guest exit ",
        ", to end ",
    ] {
        let at = line
            .find(milestone)
            .unwrap_or_else(|| panic!("{milestone:?} missing: {line}"));
        let value = line[at + milestone.len()..].split(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{milestone:?}: {line}");
    }
    // Without the variable, no timing line.
    let out = vmm(&[
        "--kernel",
        guest.path().to_str().unwrap(),
        "--force",
        "--timeout",
        "30",
    ]);
    assert!(!stderr(&out).contains("timing"), "{}", show(&out));
}

/// A level-1 console log of a bench with two rounds, as level 1 and the
/// three VMMs print it: level 2's marker, its clock line, amphi-lab
/// watch's report; in round 2 Firecracker never reached the marker.
const BENCH_LOG: &str = "\
AMPHI-L1-READY uptime=3.63\r
AMPHI-L2-INIT\r
AMPHI-L2-CLOCK at=0.600000\r
AMPHI-L1-BENCH amphi boot=1 run=1 init-ms=1000.0 rss-kb=40000 pss-kb=1 private-dirty-kb=1 anon-kb=33000 guest-maps=1 guest-rss-kb=30000 guest-private-dirty-kb=1 guest-anon-kb=30000 exit=143
AMPHI-L2-INIT
AMPHI-L2-CLOCK at=0.700000
AMPHI-L1-BENCH qemu boot=1 run=1 init-ms=2000.0 rss-kb=80000 pss-kb=1 private-dirty-kb=1 anon-kb=43000 guest-maps=1 guest-rss-kb=30000 guest-private-dirty-kb=1 guest-anon-kb=30000 exit=0
AMPHI-L2-INIT
AMPHI-L2-CLOCK at=0.900000
AMPHI-L1-BENCH firecracker boot=1 run=1 init-ms=1250.0 rss-kb=33000 pss-kb=1 private-dirty-kb=1 anon-kb=30250 guest-maps=1 guest-rss-kb=30000 guest-private-dirty-kb=1 guest-anon-kb=30000 signal=15
AMPHI-L2-INIT
AMPHI-L2-CLOCK at=0.750000
AMPHI-L1-BENCH qemu boot=1 run=2 init-ms=1500.0 rss-kb=80000 pss-kb=1 private-dirty-kb=1 anon-kb=43000 guest-maps=1 guest-rss-kb=30000 guest-private-dirty-kb=1 guest-anon-kb=30000 exit=0
AMPHI-L1-BENCH firecracker boot=1 run=2 init-ms=none exit=1
AMPHI-L2-INIT
AMPHI-L2-CLOCK at=0.500000
AMPHI-L1-BENCH amphi boot=1 run=2 init-ms=1600.0 rss-kb=40000 pss-kb=1 private-dirty-kb=1 anon-kb=33000 guest-maps=1 guest-rss-kb=30000 guest-private-dirty-kb=1 guest-anon-kb=30000 exit=143
";

/// `scripts/vm-lab bench-summary` of a level-1 console log holding `text`.
fn bench_summary(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bench.log");
    std::fs::write(&log, text).unwrap();
    run_cmd(
        Command::new(script("vm-lab"))
            .arg("bench-summary")
            .arg(&log),
    )
}

/// `scripts/vm-lab bench-summary`: the bench's arithmetic on a known log
/// (no lab run, no root): each run gets the clock its level 2 printed
/// before it, medians and ranges per VMM, the paired per-round ratio over
/// the rounds both VMMs finished, and the rounds won.
#[test]
fn bench_summary_pairs_rounds_and_reads_the_guest_clock() {
    let out = bench_summary(BENCH_LOG);
    assert!(out.status.success(), "{}", show(&out));
    let report = lab_report(&out);
    let get = |k: &str| {
        report
            .get(k)
            .unwrap_or_else(|| panic!("no {k}:\n{}", show(&out)))
            .as_str()
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let runs = stdout
        .lines()
        .filter(|l| l.starts_with("bench-run: "))
        .count();
    assert_eq!(runs, 6, "{stdout}");
    assert!(
        stdout.contains(
            "bench-run: amphi boot=1 run=1 init-ms=1000.0 guest-clock-ms=600 before-clock-ms=400.0 "
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "bench-run: firecracker boot=1 run=2 init-ms=none guest-clock-ms=none before-clock-ms=none exit=1"
        ),
        "a run without the marker takes no clock: {stdout}"
    );
    assert_eq!(get("bench-amphi-init-ms"), "1300");
    assert_eq!(get("bench-amphi-init-ms-range"), "1000.0-1600.0");
    assert_eq!(get("bench-amphi-guest-clock-ms"), "550");
    assert_eq!(get("bench-amphi-before-clock-ms"), "750");
    assert_eq!(get("bench-amphi-overhead-rss-kb"), "10000");
    assert_eq!(get("bench-amphi-overhead-anon-kb"), "3000");
    assert_eq!(get("bench-firecracker-init-ms"), "1250.0");
    assert_eq!(get("bench-firecracker-overhead-anon-kb"), "250");
    // Round 1: 1000/2000 and 1000/1250; round 2: 1600/1500, Firecracker
    // did not finish.
    assert_eq!(get("bench-amphi-vs-qemu-ratio"), "0.78335 (0.5000-1.0667)");
    assert_eq!(get("bench-amphi-vs-qemu-won"), "1 of 2 rounds");
    assert_eq!(
        get("bench-amphi-vs-firecracker-ratio"),
        "0.8000 (0.8000-0.8000)"
    );
    assert_eq!(get("bench-amphi-vs-firecracker-won"), "1 of 1 rounds");
    assert!(
        stdout.contains("| Firecracker | 1250.0 ms (1250.0-1250.0) | 900 ms | 350.0 ms |"),
        "{stdout}"
    );
    // Times of different widths are compared as numbers: 950 ms beats
    // 1100 ms (compared as text, "950.0" is the larger).
    let round = |vmm: &str, ms: &str| {
        format!(
            "AMPHI-L2-INIT\nAMPHI-L2-CLOCK at=0.500000\nAMPHI-L1-BENCH {vmm} boot=1 run=1 \
             init-ms={ms} rss-kb=40000 pss-kb=1 private-dirty-kb=1 anon-kb=33000 guest-maps=1 \
             guest-rss-kb=30000 guest-private-dirty-kb=1 guest-anon-kb=30000 exit=0\n"
        )
    };
    let out = bench_summary(&format!(
        "{}{}",
        round("amphi", "950.0"),
        round("qemu", "1100.0")
    ));
    assert_eq!(
        lab_report(&out)
            .get("bench-amphi-vs-qemu-won")
            .map(String::as_str),
        Some("1 of 1 rounds"),
        "{}",
        show(&out)
    );
    // Without a log: a usage error.
    let out = run_cmd(Command::new(script("vm-lab")).arg("bench-summary"));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    // No --first-entry, no split at the first guest instruction.
    assert!(!stdout.contains("entry-ms") && !stdout.contains("first guest instruction"));
}

/// vm-lab's option checks that need no lab: --l2-boot takes auto, linux
/// or pvh and belongs to boot and bench; --first-entry refuses
/// amphi.trace (its trigger would clear the trace).
#[test]
fn vm_lab_refuses_options_that_do_not_go_together() {
    let lab = |args: &[&str]| run_cmd(Command::new(script("vm-lab")).args(args));
    for (args, says) in [
        (
            &["boot", "--l2-boot", "efi"][..],
            "--l2-boot must be auto, linux or pvh, not efi",
        ),
        (
            &["run", "--l2-boot", "pvh"],
            "--l2-boot is an option of boot and bench",
        ),
        (
            &[
                "bench",
                "--first-entry",
                "--l1-append",
                "quiet amphi.trace=kvm:kvm_exit",
            ],
            "--first-entry cannot be combined with --l1-append amphi.trace=",
        ),
    ] {
        let out = lab(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", show(&out));
    }
}

/// `bench --first-entry`: each run's launch → first guest instruction
/// (amphi-lab watch's entry-ms) and the guest's part (init-ms minus it),
/// their medians, and the second table; a run whose entry did not show
/// keeps "entry-ms=none" and no guest part.
#[test]
fn bench_summary_splits_runs_at_the_first_guest_instruction() {
    let run = |vmm: &str, r: u32, init: &str, entry: &str| {
        format!(
            "AMPHI-L2-INIT\nAMPHI-L2-CLOCK at=0.500000\nAMPHI-L1-BENCH {vmm} boot=1 run={r} \
             init-ms={init} entry-ms={entry} rss-kb=40000 pss-kb=1 private-dirty-kb=1 anon-kb=33000 \
             guest-maps=1 guest-rss-kb=30000 guest-private-dirty-kb=1 guest-anon-kb=30000 exit=0\n"
        )
    };
    let text = [
        run("amphi", 1, "1000.0", "180.0"),
        run("qemu", 1, "1400.0", "500.0"),
        run("amphi", 2, "1100.0", "200.0"),
        run("qemu", 2, "1500.0", "none"),
    ]
    .concat();
    let out = bench_summary(&text);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = lab_report(&out);
    let get = |k: &str| report.get(k).map(String::as_str).unwrap_or("missing");
    assert!(
        stdout.contains("bench-run: amphi boot=1 run=1 init-ms=1000.0 guest-clock-ms=500 before-clock-ms=500.0 entry-ms=180.0 guest-ms=820.0 "),
        "{stdout}"
    );
    assert!(
        stdout.contains("bench-run: qemu boot=1 run=2 init-ms=1500.0 guest-clock-ms=500 before-clock-ms=1000.0 entry-ms=none rss-kb="),
        "{stdout}"
    );
    assert_eq!(get("bench-amphi-entry-ms"), "190", "{stdout}");
    assert_eq!(get("bench-amphi-guest-ms"), "860", "{stdout}");
    assert_eq!(get("bench-qemu-entry-ms"), "500.0", "{stdout}");
    assert_eq!(get("bench-qemu-guest-ms"), "900.0", "{stdout}");
    assert!(
        stdout.contains("| amphi vmm | 190 ms (180.0-200.0) | 860 ms (820.0-900.0) |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| QEMU microvm | 500.0 ms (500.0-500.0) | 900.0 ms (900.0-900.0) |"),
        "{stdout}"
    );
}
