//! Escape class: policy bypass (see escapes.rs). The site's policy is the
//! authority over where an image runs; a hostile image (or a reference
//! chosen to look trusted) must not get itself out of the microVM.
//!
//! Nothing boots here: `amphi explain --json` shows what `amphi run` would
//! do, through the same code. A microVM decision picks a guest kernel, so
//! the machine's guest kernel builds (6.1 and 6.12) must be there; without
//! them these tests fail rather than skip.

use amphi_tests::{derive_image, test_image, Amphi};
use serde_json::Value;

/// Loads busybox as `name`, with `labels` in its config and `annotations`
/// on its manifest.
fn load(a: &Amphi, name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    derive_image(
        &test_image("busybox"),
        dir.path(),
        |c| {
            for (k, v) in labels {
                c["config"]["Labels"][k] = v.into();
            }
        },
        annotations,
    );
    a.ok(&["load", "-q", "--tag", name, dir.path().to_str().unwrap()]);
}

fn explain(a: &Amphi, args: &[&str]) -> Value {
    let mut all = vec!["explain", "--json"];
    all.extend_from_slice(args);
    let out = a.ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain --json: {e}: {out}"))
}

/// The reasons of a plan with this rule.
fn reasons<'a>(plan: &'a Value, rule: &str) -> Vec<&'a Value> {
    plan["decision"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rule"] == rule)
        .collect()
}

/// Keys and values (labels or annotations).
type Pairs = &'static [(&'static str, &'static str)];

fn write_policy(a: &Amphi, name: &str, text: &str) -> String {
    let p = a.root().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// Issue #11 point 3: an image saying `io.amphi.isolation=container` (as a
/// config label or a manifest annotation), possibly with a kernel range the
/// host meets and its own `io.amphi.kernel`, against every way a policy
/// says vm. It must get a microVM each time, with the policy's kernel where
/// the policy names one; a command line's `--isolation container` may not
/// lower it either (issue #21's precedence: the policy comes first).
#[test]
fn policy_bypass_image_label_cannot_lower_isolation() {
    let a = Amphi::new();
    let hostile: &[(&str, Pairs, Pairs)] = &[
        (
            "localhost/hostile/label:1",
            &[
                ("io.amphi.isolation", "container"),
                ("io.amphi.kernel", "6.1"),
            ],
            &[],
        ),
        (
            "localhost/hostile/annotation:1",
            &[],
            &[
                ("io.amphi.isolation", "container"),
                ("io.amphi.kernel", "6.1"),
            ],
        ),
        (
            "localhost/hostile/both:1",
            &[("io.amphi.isolation", "container")],
            &[
                // A range every host kernel meets: "I need nothing a VM gives".
                ("io.amphi.kernel.version", ">=3.0"),
                ("io.amphi.kernel", "6.1"),
            ],
        ),
    ];
    for (name, labels, annotations) in hostile {
        load(&a, name, labels, annotations);
    }
    let policies = [
        (
            "default-vm.toml",
            "default_isolation = \"vm\"\n",
            "policy.default",
        ),
        (
            "trust-vm.toml",
            "default_isolation = \"container\"\n[[trust]]\nmatch = \"localhost/hostile/*\"\nisolation = \"vm\"\n[[trust]]\nmatch = \"**\"\nisolation = \"container\"\n",
            "policy.trust",
        ),
        (
            "image-vm.toml",
            // The [[image]] rule has no tag: it covers every tag. It also
            // names the kernel, which beats the image's io.amphi.kernel.
            "default_isolation = \"container\"\n[[trust]]\nmatch = \"**\"\nisolation = \"container\"\n[[image]]\nmatch = \"localhost/hostile/label\"\nisolation = \"vm\"\nkernel = \"6.12\"\n[[image]]\nmatch = \"localhost/hostile/annotation\"\nisolation = \"vm\"\nkernel = \"6.12\"\n[[image]]\nmatch = \"localhost/hostile/both\"\nisolation = \"vm\"\nkernel = \"6.12\"\n",
            "policy.image",
        ),
    ];
    for (file, text, rule) in policies {
        let p = write_policy(&a, file, text);
        for (name, _, _) in hostile {
            let plan = explain(&a, &["--policy", &p, name]);
            let d = &plan["decision"];
            assert_eq!(d["isolation"], "vm", "{file} / {name}: {plan:#}");
            assert!(
                d["decided_by"].as_str().unwrap().contains(file),
                "{file} / {name}: decided by {}",
                d["decided_by"]
            );
            assert!(
                reasons(&plan, rule)
                    .iter()
                    .any(|r| r["outcome"] == "forces-vm"),
                "{file} / {name}: {plan:#}"
            );
            // The image's wish was read, and ignored.
            let ann = reasons(&plan, "annotation.isolation");
            assert!(
                ann.len() == 1
                    && ann[0]["wanted"] == "container"
                    && ann[0]["note"].as_str().unwrap().contains("ignored"),
                "{file} / {name}: {ann:?}"
            );
            let release = d["kernel"]["release"].as_str().unwrap();
            if rule == "policy.image" {
                assert!(release.starts_with("6.12."), "{file} / {name}: {release}");
            } else {
                // No kernel in the policy: the image's preference applies.
                assert!(release.starts_with("6.1."), "{file} / {name}: {release}");
            }
            let text = a.ok(&["explain", "--policy", &p, name]);
            assert!(text.contains(": microVM"), "{text}");
        }
        // The command line may not lower the policy's vm either: refused,
        // naming the policy, and nothing runs.
        let (name, _, _) = hostile[0];
        let err = a.fail(&["explain", "--policy", &p, "--isolation", "container", name]);
        assert!(
            err.contains("--isolation container is not allowed") && err.contains(&p),
            "{err}"
        );
        let err = a.fail(&[
            "run",
            "--rm",
            "--policy",
            &p,
            "--isolation",
            "container",
            name,
            "true",
        ]);
        assert!(
            err.contains("--isolation container is not allowed"),
            "{err}"
        );
        // Asking for a microVM is always allowed.
        let plan = explain(&a, &["--policy", &p, "--isolation", "vm", name]);
        assert_eq!(plan["decision"]["isolation"], "vm", "{plan:#}");
    }
    // Under a container policy the image may still ask for more.
    let p = write_policy(&a, "container.toml", "default_isolation = \"container\"\n");
    let raiser = "localhost/hostile/wants-vm:1";
    load(&a, raiser, &[("io.amphi.isolation", "vm")], &[]);
    let plan = explain(&a, &["--policy", &p, raiser]);
    assert_eq!(plan["decision"]["isolation"], "vm", "{plan:#}");
    let plan = explain(&a, &["--policy", &p, hostile[0].0]);
    assert_eq!(plan["decision"]["isolation"], "container", "{plan:#}");
}

/// Issue #11 point 4: `*` used to match `/`, so a rule written for
/// `*.internal` registries matched a path on any registry. Images named to
/// look internal, on another registry, must fall through to the vm default.
#[test]
fn policy_bypass_glob_crosses_registry() {
    let a = Amphi::new();
    let internal = "registry.internal/team/app:1";
    let attackers = [
        "ghcr.io/attacker/evil.internal/app:1",
        "docker.io/attacker/registry.internal/team/app:1",
        "registry.internal.attacker.example/team/app:1",
        "registry.internal:5000/team/app:1",
    ];
    load(&a, internal, &[], &[]);
    for name in attackers {
        load(&a, name, &[], &[]);
    }
    for pattern in ["*.internal/*", "*.internal/**", "registry.internal/*"] {
        let p = write_policy(
            &a,
            "globs.toml",
            &format!(
                "default_isolation = \"vm\"\n[[trust]]\nmatch = \"{pattern}\"\nisolation = \"container\"\n"
            ),
        );
        // The control: the rule does match what it was written for.
        let plan = explain(&a, &["--policy", &p, internal]);
        assert_eq!(
            plan["decision"]["isolation"], "container",
            "{pattern}: {plan:#}"
        );
        for name in attackers {
            let plan = explain(&a, &["--policy", &p, name]);
            assert_eq!(
                plan["decision"]["isolation"], "vm",
                "{pattern} / {name}: {plan:#}"
            );
            assert!(
                reasons(&plan, "policy.trust").is_empty(),
                "{pattern} / {name}: no trust rule may match: {plan:#}"
            );
        }
    }
    // A pattern that would reach across registries is refused outright.
    let p = write_policy(
        &a,
        "bad.toml",
        "default_isolation = \"vm\"\n[[trust]]\nmatch = \"**.internal/*\"\nisolation = \"container\"\n",
    );
    let err = a.fail(&["explain", "--policy", &p, internal]);
    assert!(
        err.contains("bad.toml") && err.contains("'**' in the registry host"),
        "{err}"
    );
}

/// An image named by its ID used to be matched as `docker.io/library/<ID>`,
/// so a rule trusting Docker Hub's official images let any image run
/// natively when named by ID. By ID, the policy sees the image's own names.
#[test]
fn policy_bypass_image_id_read_as_docker_hub_name() {
    let a = Amphi::new();
    let name = "ghcr.io/attacker/app:1";
    load(
        &a,
        name,
        &[("org.example.unique", "policy-bypass-by-id")],
        &[],
    );
    let p = write_policy(
        &a,
        "hub.toml",
        "default_isolation = \"vm\"\n[[trust]]\nmatch = \"docker.io/library/*\"\nisolation = \"container\"\n",
    );
    let ids = a.ok(&["images", "-q"]);
    let id = ids.lines().next().unwrap().trim().to_string();
    assert!(id.len() >= 4, "images -q: {ids:?}");
    let full = explain(&a, &["--policy", &p, name]);
    assert_eq!(full["decision"]["isolation"], "vm", "{full:#}");
    for arg in [id.clone(), id[..6].to_string(), format!("sha256:{id}")] {
        let plan = explain(&a, &["--policy", &p, &arg]);
        assert_eq!(plan["decision"]["isolation"], "vm", "{arg}: {plan:#}");
        assert_eq!(plan["image"], name, "{arg}: {plan:#}");
    }
}
