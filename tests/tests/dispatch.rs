//! The dispatcher end to end: images that say what kernel they need (as
//! manifest annotations or config labels), a policy that distrusts
//! registries, `amphi explain` (text and JSON), `amphi run` going native or
//! into a microVM with the right guest kernel, and `amphi compare`.
//!
//! microVM runs go through QEMU in software emulation on our PVM machines
//! (a few seconds each); without amphi's guest kernel builds the tests that
//! boot skip loudly (fail in strict mode: `CI=true` or `AMPHI_TEST_STRICT=1`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::{derive_image, guest_kernel_build, test_image, Amphi};
use serde_json::Value;

const PLAIN: &str = "localhost/demo/busybox:latest";

/// A store with the busybox image as `name`, edited by `edit` and with
/// `annotations` on its manifest.
fn load(a: &Amphi, name: &str, edit: impl FnOnce(&mut Value), annotations: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    derive_image(&test_image("busybox"), dir.path(), edit, annotations);
    a.ok(&["load", "-q", "--tag", name, dir.path().to_str().unwrap()]);
}

fn label(key: &'static str, value: &'static str) -> impl FnOnce(&mut Value) {
    move |c: &mut Value| {
        c["config"]["Labels"][key] = value.into();
    }
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

fn explain_json(a: &Amphi, args: &[&str]) -> Value {
    let mut all = vec!["explain", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&a.ok(&all)).unwrap()
}

fn rules(plan: &Value) -> Vec<(String, String)> {
    plan["decision"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn plain_image_runs_natively() {
    let a = Amphi::new();
    load(&a, PLAIN, |_| {}, &[]);
    let plan = explain_json(&a, &[PLAIN]);
    assert_eq!(plan["decision"]["isolation"], "container", "{plan:#}");
    let r = rules(&plan);
    for rule in ["architecture", "os", "kernel.version", "kernel.config"] {
        assert!(r.contains(&(rule.into(), "ok".into())), "{rule}: {r:?}");
    }
    let out = a.ok(&["run", "--rm", "--verbose", PLAIN, "uname", "-r"]);
    assert_eq!(out.trim(), host_release());
    let text = a.ok(&["explain", PLAIN]);
    assert!(
        text.contains("native container") && text.contains("kernel.version"),
        "{text}"
    );
}

#[test]
fn image_needing_an_older_kernel_runs_in_a_vm_with_6_12() {
    let Some((_, v612)) = guest_kernel_build("6.12") else {
        return;
    };
    let a = Amphi::new();
    let img = "localhost/demo/old-kernel:1";
    // As a manifest annotation.
    load(&a, img, |_| {}, &[("io.amphi.kernel.version", "<6.13")]);
    let plan = explain_json(&a, &[img]);
    assert_eq!(plan["decision"]["isolation"], "vm", "{plan:#}");
    assert_eq!(
        plan["decision"]["kernel"]["release"],
        v612.as_str(),
        "{plan:#}"
    );
    assert!(rules(&plan).contains(&("kernel.version".into(), "needs-vm".into())));
    let out = a.run(&["run", "--rm", "--verbose", img, "uname", "-r"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), v612);
    assert!(
        stderr.contains("kernel.version") && stderr.contains("<6.13"),
        "-v logs the decision: {stderr}"
    );
}

#[test]
fn image_needing_6_1_gets_the_6_1_kernel() {
    let Some((_, v61)) = guest_kernel_build("6.1") else {
        return;
    };
    if guest_kernel_build("6.12").is_none() {
        return;
    }
    let a = Amphi::new();
    let img = "localhost/demo/needs-6.1:1";
    // As a label in the image config.
    load(
        &a,
        img,
        label("io.amphi.kernel.version", ">=6.1, <6.2"),
        &[],
    );
    let plan = explain_json(&a, &[img]);
    assert_eq!(
        plan["decision"]["kernel"]["release"],
        v61.as_str(),
        "{plan:#}"
    );
    let out = a.ok(&["run", "--rm", img, "uname", "-r"]);
    assert_eq!(out.trim(), v61);
    // A --kernel that does not meet the requirements is refused, saying why.
    let err = a.fail(&["explain", "--kernel", "6.12", img]);
    assert!(err.contains(">=6.1, <6.2") && err.contains("6.12"), "{err}");
}

#[test]
fn policy_sends_untrusted_images_to_a_vm() {
    let Some((_, v612)) = guest_kernel_build("6.12") else {
        return;
    };
    let a = Amphi::new();
    load(&a, PLAIN, |_| {}, &[]);
    load(&a, "registry.internal/team/tool:1", |_| {}, &[]);
    let policy = a.root().join("policy.toml");
    std::fs::write(
        &policy,
        "default_isolation = \"auto\"\n\n[[trust]]\nmatch = \"registry.internal/*\"\nisolation = \"container\"\n\n[[trust]]\nmatch = \"*\"\nisolation = \"vm\"\n",
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let plan = explain_json(&a, &["--policy", p, PLAIN]);
    assert_eq!(plan["decision"]["isolation"], "vm", "{plan:#}");
    assert!(
        rules(&plan).contains(&("policy.trust".into(), "forces-vm".into())),
        "{plan:#}"
    );
    let trusted = explain_json(&a, &["--policy", p, "registry.internal/team/tool:1"]);
    assert_eq!(trusted["decision"]["isolation"], "container", "{trusted:#}");
    let out = a.ok(&["run", "--rm", "--policy", p, PLAIN, "uname", "-r"]);
    assert_eq!(out.trim(), v612);
    // The command line may not lower the policy's vm: refused, and
    // nothing runs.
    let err = a.fail(&[
        "run",
        "--rm",
        "--policy",
        p,
        "--isolation",
        "container",
        PLAIN,
        "uname",
        "-r",
    ]);
    assert!(
        err.contains("--isolation container is not allowed") && err.contains("[[trust]] rule 2"),
        "{err}"
    );
    // Where the policy trusts the image, the command line may still ask
    // for a microVM.
    let out = a.ok(&[
        "run",
        "--rm",
        "--policy",
        p,
        "--isolation",
        "vm",
        "registry.internal/team/tool:1",
        "uname",
        "-r",
    ]);
    assert_eq!(out.trim(), v612);
    let out = a.ok(&[
        "run",
        "--rm",
        "--policy",
        p,
        "registry.internal/team/tool:1",
        "uname",
        "-r",
    ]);
    assert_eq!(out.trim(), host_release());
}

#[test]
fn bad_input_is_refused_clearly() {
    let a = Amphi::new();
    let arm = "localhost/demo/arm:1";
    load(&a, arm, |c| c["architecture"] = "arm64".into(), &[]);
    // The dispatcher refuses it whatever isolation is asked for: the
    // backends run its plan and have no check of their own.
    for cmd in [
        vec!["explain", arm],
        vec!["run", "--rm", arm, "true"],
        vec!["run", "--rm", "--isolation", "container", arm, "true"],
        vec!["run", "--rm", "--isolation", "vm", arm, "true"],
    ] {
        let err = a.fail(&cmd);
        assert!(
            err.contains("arm64")
                && err.contains("amd64")
                && err.contains("only runs guests of the host architecture"),
            "{cmd:?}: {err}"
        );
    }
    let windows = "localhost/demo/windows:1";
    load(&a, windows, |c| c["os"] = "windows".into(), &[]);
    for iso in ["container", "vm"] {
        let err = a.fail(&["run", "--rm", "--isolation", iso, windows, "true"]);
        assert!(
            err.contains("windows") && err.contains("Linux images only"),
            "{iso}: {err}"
        );
    }
    let bad = "localhost/demo/bad:1";
    load(&a, bad, |_| {}, &[("io.amphi.kernel.version", ">=six")]);
    let err = a.fail(&["explain", bad]);
    assert!(
        err.contains("io.amphi.kernel.version") && err.contains(">=six"),
        "{err}"
    );
    let bad_cfg = "localhost/demo/badcfg:1";
    load(&a, bad_cfg, label("io.amphi.isolation", "maybe"), &[]);
    let err = a.fail(&["run", "--rm", bad_cfg, "true"]);
    assert!(
        err.contains("io.amphi.isolation") && err.contains("maybe"),
        "{err}"
    );
    load(&a, PLAIN, |_| {}, &[]);
    let policy = a.root().join("bad.toml");
    std::fs::write(
        &policy,
        "default_isolation = \"auto\"\n[[trust]]\nmatch = \"*\"\nisolation = \"sometimes\"\n",
    )
    .unwrap();
    let err = a.fail(&["explain", "--policy", policy.to_str().unwrap(), PLAIN]);
    assert!(err.contains("bad.toml") && err.contains("line"), "{err}");
    let err = a.fail(&["explain", "--policy", "/nonexistent/policy.toml", PLAIN]);
    assert!(err.contains("/nonexistent/policy.toml"), "{err}");
}

/// An image config that names no architecture is taken as the host's by
/// the dispatcher, and the run does what `explain` said (the native
/// backend used to refuse it with a platform check of its own).
#[test]
fn image_without_architecture_runs_as_explained() {
    let a = Amphi::new();
    let noarch = "localhost/demo/noarch:1";
    load(
        &a,
        noarch,
        |c| {
            c.as_object_mut().unwrap().remove("architecture");
        },
        &[],
    );
    let plan = explain_json(&a, &[noarch]);
    assert_eq!(plan["decision"]["isolation"], "container", "{plan:#}");
    assert!(
        rules(&plan).contains(&("architecture".into(), "info".into())),
        "{plan:#}"
    );
    let out = a.ok(&["run", "--rm", noarch, "uname", "-r"]);
    assert_eq!(out.trim(), host_release());
}

#[test]
fn compare_shows_the_kernel_difference() {
    let Some((_, v612)) = guest_kernel_build("6.12") else {
        return;
    };
    let a = Amphi::new();
    load(&a, PLAIN, |_| {}, &[]);
    let out = a.run(&[
        "compare",
        PLAIN,
        "sh",
        "-c",
        "uname -r; cat /proc/cpuinfo | head",
    ]);
    assert_eq!(out.status.code(), Some(1), "differences: exit 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&host_release()) && text.contains(&v612),
        "{text}"
    );
    assert!(
        text.contains("stdout differs") && text.contains(&format!("+{v612}")),
        "{text}"
    );
    let out = a.run(&["compare", "--json", PLAIN, "uname", "-r"]);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["container"]["report"]["kernel"], host_release().as_str());
    assert_eq!(j["vm"]["report"]["kernel"], v612.as_str());
    assert_eq!(j["vm"]["exit_code"], 0);
    assert!(j["differences"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d == "kernel"));
    let same = a.run(&["compare", PLAIN, "echo", "same"]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
}

#[test]
fn compare_gives_both_runs_the_same_flags() {
    let err = Amphi::new().fail(&["compare", "--timeout", "soon", PLAIN, "true"]);
    assert!(err.contains("not a positive number of seconds"), "{err}");
    if guest_kernel_build("6.12").is_none() {
        return;
    }
    let a = Amphi::new();
    load(&a, PLAIN, |_| {}, &[]);
    // --timeout goes to the microVM run only: `run --isolation container`
    // refuses it, and compare would fail with 125.
    let out = a.run(&[
        "compare",
        "--json",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "--hostname",
        "box",
        "--read-only",
        "--cpus",
        "1",
        "--timeout",
        "120",
        PLAIN,
        "sh",
        "-c",
        "echo $GREETING; pwd; hostname; touch /x 2>/dev/null || echo read-only",
    ]);
    let j: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let want = "hi there\n/tmp\nbox\nread-only\n";
    assert_eq!(j["container"]["stdout"], want, "{j}");
    assert_eq!(j["vm"]["stdout"], want, "{j}");
    assert_eq!(out.status.code(), Some(0), "{j}");
}
