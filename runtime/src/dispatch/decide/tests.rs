//! Table-driven tests of [`decide`]: fake hosts, no probing.

use super::*;
use crate::dispatch::{KEY_KERNEL_CONFIG, KEY_KERNEL_VERSION};
use crate::host::{CgroupMode, UserNs, CACHE_FORMAT};
use crate::image::manifest::ImageConfig;
use std::collections::BTreeMap;
use std::path::Path;

fn cfg(pairs: &[(&str, &str)]) -> KernelConfig {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn host() -> HostInfo {
    HostInfo {
        format: CACHE_FORMAT,
        boot_id: "b".into(),
        arch: "amd64".into(),
        machine: "x86_64".into(),
        kernel_release: "6.18.3-foo".into(),
        kernel_build: "#1".into(),
        kernel_version: Some(KernelVersion::new(6, 18, 3)),
        config: Some(cfg(&[("CONFIG_USER_NS", "y"), ("CONFIG_NF_TABLES", "m")])),
        config_source: "/proc/config.gz".into(),
        cgroup: CgroupMode::V2,
        kvm: KvmSupport::Hardware,
        userns: UserNs {
            supported: true,
            unprivileged: true,
            max_user_namespaces: Some(1000),
            unprivileged_userns_clone: None,
        },
        vsyscall: crate::host::Vsyscall::Xonly,
        from_cache: false,
    }
}

fn kernel(id: &str, config: Option<&[(&str, &str)]>, pvm: bool) -> CandidateKernel {
    let version = KernelVersion::parse(id).unwrap();
    CandidateKernel {
        id: id.to_string(),
        release: format!("{version}-amphi"),
        version,
        config: config.map(cfg),
        pvm,
    }
}

/// Newest first, as the catalog lists them: an unknown-config 6.13, a
/// PVM-enabled 6.12 with NF_TABLES built in, a 6.1 with NF_TABLES as a module.
fn kernels() -> Vec<CandidateKernel> {
    vec![
        kernel("6.13.0-ccc", None, false),
        kernel(
            "6.12.57-aaa",
            Some(&[("CONFIG_USER_NS", "y"), ("CONFIG_NF_TABLES", "y")]),
            true,
        ),
        kernel(
            "6.1.150-bbb",
            Some(&[("CONFIG_USER_NS", "y"), ("CONFIG_NF_TABLES", "m")]),
            false,
        ),
    ]
}

const TRUST: &str = r#"
[[trust]]
match = "registry.internal/*"
isolation = "auto"
[[trust]]
match = "**"
isolation = "vm"
[[image]]
match = "docker.io/library/alpine:*"
isolation = "container"
[[image]]
match = "docker.io/library/debian"
kernel = "6.1"
"#;

#[derive(Clone, Copy)]
enum Want {
    Native,
    Vm(&'static str),
    Refused(&'static str, &'static str),
}

struct Case {
    name: &'static str,
    reference: &'static str,
    arch: &'static str,
    os: &'static str,
    ann: &'static [(&'static str, &'static str)],
    policy: &'static str,
    cli: IsolationChoice,
    host: fn(&mut HostInfo),
    kernels: fn() -> Vec<CandidateKernel>,
    /// `kernels` is the operator's `--kernel`.
    cli_kernel: bool,
    want: Want,
    /// (rule, outcome, text the reason must contain: "" for any).
    reasons: &'static [(&'static str, Outcome, &'static str)],
}

const BASE: Case = Case {
    name: "",
    reference: "localhost/demo/busybox:latest",
    arch: "amd64",
    os: "linux",
    ann: &[],
    policy: "",
    cli: IsolationChoice::Auto,
    host: |_| {},
    kernels,
    cli_kernel: false,
    want: Want::Native,
    reasons: &[],
};

use IsolationChoice::{Auto, Container as CliContainer, Vm as CliVm};
use Outcome::*;

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "plain native: every rule checked",
            reasons: &[
                ("architecture", Ok, "amd64"),
                ("os", Ok, "linux"),
                ("kernel.version", Ok, "6.18.3"),
                ("kernel.config", Ok, ""),
                ("policy.default", Info, "requirements decide"),
            ],
            ..BASE
        },
        Case {
            name: "version met natively",
            ann: &[(KEY_KERNEL_VERSION, ">=6.1")],
            reasons: &[("kernel.version", Ok, ">=6.1")],
            ..BASE
        },
        Case {
            name: "version missed: newest kernel in range",
            ann: &[(KEY_KERNEL_VERSION, "<6.13")],
            want: Want::Vm("6.12.57-aaa"),
            reasons: &[
                ("kernel.version", NeedsVm, "<6.13"),
                ("host.kvm", Info, "built-in VMM"),
                ("kernel.select", Ok, "6.12.57-aaa"),
            ],
            ..BASE
        },
        Case {
            name: "version range picks 6.1",
            ann: &[(KEY_KERNEL_VERSION, ">=6.1, <6.2")],
            want: Want::Vm("6.1.150-bbb"),
            reasons: &[("kernel.version", NeedsVm, ">=6.1, <6.2")],
            ..BASE
        },
        Case {
            name: "config met natively (module counts on the host)",
            ann: &[(KEY_KERNEL_CONFIG, "CONFIG_USER_NS=y,NF_TABLES")],
            reasons: &[
                ("kernel.config", Ok, "CONFIG_USER_NS=y"),
                ("kernel.config", Ok, "CONFIG_NF_TABLES=m"),
            ],
            ..BASE
        },
        Case {
            name: "config =y missed on host: guest kernel that has it",
            ann: &[(KEY_KERNEL_CONFIG, "CONFIG_NF_TABLES=y")],
            want: Want::Vm("6.12.57-aaa"),
            reasons: &[("kernel.config", NeedsVm, "CONFIG_NF_TABLES=m")],
            ..BASE
        },
        Case {
            name: "no kernel has the option: build hint",
            ann: &[(KEY_KERNEL_CONFIG, "CONFIG_BPF=y")],
            want: Want::Refused("kernel.select", "amphi kernel build --version 6.12"),
            reasons: &[
                ("kernel.config", NeedsVm, "CONFIG_BPF not set"),
                ("kernel.select", Refused, "cannot prove"),
            ],
            ..BASE
        },
        Case {
            name: "a module does not count in a guest kernel",
            ann: &[(KEY_KERNEL_VERSION, "<6.12"), (KEY_KERNEL_CONFIG, "NF_TABLES")],
            want: Want::Refused("kernel.select", "--version 6.1`"),
            reasons: &[("kernel.select", Refused, "guest cannot load it")],
            ..BASE
        },
        Case {
            name: "unknown guest config cannot prove options; no buildable series",
            ann: &[(KEY_KERNEL_VERSION, "=6.13"), (KEY_KERNEL_CONFIG, "USER_NS")],
            want: Want::Refused("kernel.select", "no kernel series amphi builds"),
            reasons: &[("kernel.select", Refused, "6.13.0-ccc: its config is unknown")],
            ..BASE
        },
        Case {
            name: "host config unknown: options need a VM",
            ann: &[(KEY_KERNEL_CONFIG, "USER_NS")],
            host: |h| {
                h.config = None;
                h.config_source = "kernel config unknown: /proc/config.gz does not exist".into();
            },
            want: Want::Vm("6.12.57-aaa"),
            reasons: &[("kernel.config", NeedsVm, "/proc/config.gz does not exist")],
            ..BASE
        },
        Case {
            name: "host release not a version",
            ann: &[(KEY_KERNEL_VERSION, ">=5.15")],
            host: |h| h.kernel_version = None,
            want: Want::Vm("6.13.0-ccc"),
            reasons: &[("kernel.version", NeedsVm, "not a version")],
            ..BASE
        },
        Case {
            name: "architecture mismatch refused",
            arch: "arm64",
            want: Want::Refused("architecture", "host architecture"),
            reasons: &[("architecture", Refused, "arm64")],
            ..BASE
        },
        Case {
            name: "architecture mismatch refused even with --isolation container",
            arch: "arm64",
            cli: CliContainer,
            want: Want::Refused("architecture", "arm64"),
            ..BASE
        },
        Case {
            name: "another OS refused",
            os: "windows",
            want: Want::Refused("os", "another OS"),
            reasons: &[("architecture", Ok, ""), ("os", Refused, "windows")],
            ..BASE
        },
        Case {
            name: "empty os and architecture are assumed",
            os: "",
            arch: "",
            reasons: &[("architecture", Info, ""), ("os", Info, "assuming linux")],
            ..BASE
        },
        Case {
            name: "cli vm: newest kernel",
            cli: CliVm,
            want: Want::Vm("6.13.0-ccc"),
            reasons: &[
                ("cli.isolation", ForcesVm, "--isolation vm on the command line"),
                ("policy.default", Info, "overridden by --isolation on the command line"),
            ],
            ..BASE
        },
        Case {
            name: "cli container honoured with a warning",
            cli: CliContainer,
            ann: &[(KEY_KERNEL_VERSION, "<6.13")],
            reasons: &[
                ("cli.isolation", ForcesContainer, ""),
                ("cli.isolation", Warning, "running natively anyway because of --isolation container"),
                ("cli.isolation", Warning, "host is 6.18.3"),
            ],
            ..BASE
        },
        Case {
            name: "annotation vm",
            ann: &[(KEY_ISOLATION, "vm")],
            want: Want::Vm("6.13.0-ccc"),
            reasons: &[("annotation.isolation", ForcesVm, "manifest annotation")],
            ..BASE
        },
        Case {
            name: "cli beats annotation",
            ann: &[(KEY_ISOLATION, "vm")],
            cli: CliContainer,
            reasons: &[
                ("cli.isolation", ForcesContainer, "the user's choice"),
                ("annotation.isolation", Info, "overridden by --isolation on the command line"),
            ],
            ..BASE
        },
        Case {
            name: "policy image rule beats trust rule",
            reference: "docker.io/library/alpine:3.19",
            policy: TRUST,
            reasons: &[
                ("policy.image", ForcesContainer, "[[image]] rule 1"),
                ("policy.trust", Info, "overridden by policy.image"),
            ],
            ..BASE
        },
        Case {
            name: "image vm raises a policy image rule's container",
            reference: "docker.io/library/alpine:3.19",
            policy: TRUST,
            ann: &[(KEY_ISOLATION, "vm")],
            want: Want::Vm("6.13.0-ccc"),
            reasons: &[
                ("annotation.isolation", ForcesVm, "more isolation than policy.image"),
                ("policy.image", Info, "raised to vm by the image"),
            ],
            ..BASE
        },
        Case {
            name: "trust rule forces vm",
            reference: "quay.io/x/y:1",
            policy: TRUST,
            want: Want::Vm("6.13.0-ccc"),
            reasons: &[
                ("policy.trust", ForcesVm, "[[trust]] rule 2"),
                ("policy.default", Info, "overridden by policy.trust"),
            ],
            ..BASE
        },
        Case {
            name: "trust rule auto decides (default not consulted)",
            reference: "registry.internal/team/app:1",
            policy: "default_isolation = \"vm\"\n[[trust]]\nmatch = \"registry.internal/*\"\nisolation = \"auto\"\n",
            reasons: &[
                ("policy.trust", Info, "requirements decide"),
                ("policy.default", Info, "overridden by policy.trust"),
            ],
            ..BASE
        },
        Case {
            name: "policy default vm",
            policy: "default_isolation = \"vm\"\n",
            want: Want::Vm("6.13.0-ccc"),
            reasons: &[("policy.default", ForcesVm, "default_isolation")],
            ..BASE
        },
        Case {
            name: "policy default container with unmet requirements warns",
            policy: "default_isolation = \"container\"\n",
            ann: &[(KEY_KERNEL_CONFIG, "CONFIG_BPF")],
            reasons: &[("policy.default", Warning, "CONFIG_BPF")],
            ..BASE
        },
        Case {
            name: "preferred kernel from annotation",
            cli: CliVm,
            ann: &[(KEY_KERNEL, "6.1")],
            want: Want::Vm("6.1.150-bbb"),
            reasons: &[("kernel.select", Ok, "the preferred kernel")],
            ..BASE
        },
        Case {
            name: "preferred kernel from policy image rule (name without tag)",
            reference: "docker.io/library/debian:12",
            policy: TRUST,
            want: Want::Vm("6.1.150-bbb"),
            reasons: &[
                ("policy.trust", ForcesVm, ""),
                ("kernel.select", Ok, "[[image]] rule 2"),
            ],
            ..BASE
        },
        Case {
            name: "policy kernel beats the image's kernel",
            reference: "docker.io/library/debian:12",
            policy: TRUST,
            ann: &[(KEY_KERNEL, "6.12")],
            want: Want::Vm("6.1.150-bbb"),
            reasons: &[
                ("kernel.select", Info, "an image's preference applies only where the policy has none"),
                ("kernel.select", Ok, "6.1 (from [[image]] rule 2"),
            ],
            ..BASE
        },
        Case {
            name: "the image's kernel applies where the policy has none",
            reference: "quay.io/x/y:1",
            policy: TRUST,
            ann: &[(KEY_KERNEL, "6.12")],
            want: Want::Vm("6.12.57-aaa"),
            reasons: &[("kernel.select", Ok, "manifest annotation io.amphi.kernel")],
            ..BASE
        },
        Case {
            name: "--kernel: neither the policy's nor the image's preference applies",
            reference: "docker.io/library/debian:12",
            policy: TRUST,
            ann: &[(KEY_KERNEL, "6.1")],
            kernels: || vec![kernel("6.12.57-aaa", None, true)],
            cli_kernel: true,
            want: Want::Vm("6.12.57-aaa"),
            reasons: &[
                ("kernel.select", Info, "6.1 (from [[image]] rule 2"),
                ("kernel.select", Ok, "the newest kernel"),
            ],
            ..BASE
        },
        Case {
            name: "preferred kernel by ID prefix",
            cli: CliVm,
            ann: &[(KEY_KERNEL, "6.12.57-a")],
            want: Want::Vm("6.12.57-aaa"),
            ..BASE
        },
        Case {
            name: "preferred kernel by exact version",
            cli: CliVm,
            ann: &[(KEY_KERNEL, "6.1.150")],
            want: Want::Vm("6.1.150-bbb"),
            ..BASE
        },
        Case {
            name: "preferred kernel not meeting the requirements",
            cli: CliVm,
            ann: &[(KEY_KERNEL, "6.1"), (KEY_KERNEL_VERSION, ">=6.12")],
            want: Want::Refused("kernel.select", "does not meet"),
            reasons: &[("kernel.select", Refused, "outside >=6.12")],
            ..BASE
        },
        Case {
            name: "preferred kernel missing",
            cli: CliVm,
            ann: &[(KEY_KERNEL, "5.10")],
            want: Want::Refused("kernel.select", "not in the kernel catalog"),
            ..BASE
        },
        Case {
            name: "preferred buildable series missing: build hint",
            cli: CliVm,
            ann: &[(KEY_KERNEL, "6.1")],
            kernels: || vec![kernel("6.12.57-aaa", None, true)],
            want: Want::Refused("kernel.select", "amphi kernel build --version 6.1`"),
            ..BASE
        },
        Case {
            name: "PVM host prefers a PVM-enabled kernel",
            cli: CliVm,
            host: |h| h.kvm = KvmSupport::Pvm,
            want: Want::Vm("6.12.57-aaa"),
            reasons: &[
                ("host.kvm", Info, "PVM-enabled guest kernel"),
                ("kernel.select", Ok, "PVM-enabled"),
            ],
            ..BASE
        },
        Case {
            name: "PVM host without a PVM kernel in range warns",
            cli: CliVm,
            ann: &[(KEY_KERNEL_VERSION, "=6.1")],
            host: |h| h.kvm = KvmSupport::Pvm,
            want: Want::Vm("6.1.150-bbb"),
            reasons: &[("kernel.select", Info, "software emulation")],
            ..BASE
        },
        Case {
            name: "no KVM: QEMU",
            cli: CliVm,
            host: |h| h.kvm = KvmSupport::None,
            want: Want::Vm("6.13.0-ccc"),
            reasons: &[("host.kvm", Info, "QEMU")],
            ..BASE
        },
        Case {
            name: "empty catalog",
            cli: CliVm,
            kernels: Vec::new,
            want: Want::Refused("kernel.select", "catalog is empty"),
            ..BASE
        },
    ]
}

fn requirements(c: &Case) -> Requirements {
    let config = ImageConfig {
        architecture: c.arch.into(),
        os: c.os.into(),
        ..Default::default()
    };
    let ann: BTreeMap<String, String> = c
        .ann
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Requirements::from_parts(&config, &ann).unwrap()
}

fn has_reason(reasons: &[Reason], rule: &str, outcome: Outcome, text: &str) -> bool {
    reasons
        .iter()
        .any(|r| r.rule == rule && r.outcome == outcome && r.to_string().contains(text))
}

#[test]
fn decision_table() {
    for c in cases() {
        let mut h = host();
        (c.host)(&mut h);
        let req = requirements(&c);
        let policy = Policy::parse(c.policy, Path::new("/etc/amphi/policy.toml")).unwrap();
        let ks = (c.kernels)();
        let input = DecideInput {
            host: &h,
            reference: c.reference,
            requirements: &req,
            policy: &policy,
            cli: c.cli,
            kernels: &ks,
            cli_kernel: c.cli_kernel,
            facts: &[],
        };
        let result = decide(&input);
        let reasons: Vec<Reason> = match (&result, c.want) {
            (Result::Ok(d), Want::Native) => {
                assert_eq!(d.isolation, Isolation::Container, "{}", c.name);
                assert_eq!(d.kernel, None, "{}", c.name);
                d.reasons.clone()
            }
            (Result::Ok(d), Want::Vm(id)) => {
                assert_eq!(d.isolation, Isolation::Vm, "{}: {d}", c.name);
                assert_eq!(
                    d.kernel.as_ref().map(|k| k.id.as_str()),
                    Some(id),
                    "{}: {d}",
                    c.name
                );
                d.reasons.clone()
            }
            (Err(e), Want::Refused(rule, text)) => {
                let DispatchError::Refused { rule: got, .. } = e else {
                    panic!("{}: {e:?}", c.name)
                };
                assert_eq!(got, rule, "{}: {e}", c.name);
                assert!(e.to_string().contains(text), "{}: {e}", c.name);
                assert_eq!(e.reasons().last().unwrap().outcome, Refused, "{}", c.name);
                e.reasons().to_vec()
            }
            (r, _) => panic!("{}: unexpected {r:?}", c.name),
        };
        // Every decision checks architecture first.
        assert_eq!(reasons[0].rule, "architecture", "{}", c.name);
        for (rule, outcome, text) in c.reasons {
            assert!(
                has_reason(&reasons, rule, *outcome, text),
                "{}: no reason {rule} {outcome} containing {text:?} in:\n{}",
                c.name,
                reasons
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

#[test]
fn cli_auto_is_not_an_opinion() {
    let h = host();
    let req = requirements(&BASE);
    let policy = Policy::default();
    let d = decide(&DecideInput {
        host: &h,
        reference: BASE.reference,
        requirements: &req,
        policy: &policy,
        cli: Auto,
        kernels: &kernels(),
        cli_kernel: false,
        facts: &[],
    })
    .unwrap();
    assert!(!d.reasons.iter().any(|r| r.rule == "cli.isolation"));
    assert!(!d.reasons.iter().any(|r| r.rule == "kernel.select"));
}

#[test]
fn display_and_json() {
    let h = host();
    let c = Case {
        ann: &[(KEY_KERNEL_VERSION, "<6.13")],
        ..BASE
    };
    let req = requirements(&c);
    let policy = Policy::default();
    let ks = kernels();
    let d = decide(&DecideInput {
        host: &h,
        reference: c.reference,
        requirements: &req,
        policy: &policy,
        cli: Auto,
        kernels: &ks,
        cli_kernel: false,
        facts: &[],
    })
    .unwrap();
    let text = d.to_string();
    assert_eq!(text.lines().count(), d.reasons.len() + 1, "{text}");
    assert!(text.starts_with("isolation: vm (guest kernel 6.12.57-aaa, 6.12.57-amphi)"));
    assert!(text.contains(
        "kernel.version: wanted <6.13, have 6.18.3: needs-vm (the host kernel is outside the image's range; from manifest annotation io.amphi.kernel.version)"
    ), "{text}");
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["isolation"], "vm");
    assert_eq!(json["kernel"]["id"], "6.12.57-aaa");
    assert_eq!(json["kernel"]["version"], "6.12.57");
    assert!(json["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["outcome"] == "needs-vm" && r["rule"] == "kernel.version"));
    let back: Decision = serde_json::from_value(json).unwrap();
    assert_eq!(back, d);
}

/// Decides `reference` under `policy` for an image with `ann`.
fn decide_with(
    reference: &str,
    policy: &str,
    cli: IsolationChoice,
    ann: &'static [(&'static str, &'static str)],
) -> Decision {
    try_decide_with(reference, policy, cli, ann).unwrap()
}

/// As [`decide_with`], but the refusal too.
fn try_decide_with(
    reference: &str,
    policy: &str,
    cli: IsolationChoice,
    ann: &'static [(&'static str, &'static str)],
) -> Result<Decision, DispatchError> {
    let h = host();
    let req = requirements(&Case { ann, ..BASE });
    let policy = Policy::parse(policy, Path::new("/etc/amphi/policy.toml")).unwrap();
    let ks = kernels();
    decide(&DecideInput {
        host: &h,
        reference,
        requirements: &req,
        policy: &policy,
        cli,
        kernels: &ks,
        cli_kernel: false,
        facts: &[],
    })
}

/// The images of the precedence table: what a hostile image can say about
/// itself (labels and annotations alike end up here).
const IMAGES: &[(&str, &[(&str, &str)])] = &[
    ("no opinion, host meets requirements", &[]),
    ("container", &[(KEY_ISOLATION, "container")]),
    ("auto", &[(KEY_ISOLATION, "auto")]),
    (
        "container + a version range the host meets",
        &[(KEY_ISOLATION, "container"), (KEY_KERNEL_VERSION, ">=6.1")],
    ),
    (
        "auto + a version range the host meets",
        &[(KEY_ISOLATION, "auto"), (KEY_KERNEL_VERSION, ">=5.0, <7")],
    ),
    (
        "container + a kernel preference",
        &[(KEY_ISOLATION, "container"), (KEY_KERNEL, "6.1")],
    ),
    ("vm", &[(KEY_ISOLATION, "vm")]),
    (
        "no opinion, host misses requirements",
        &[(KEY_KERNEL_VERSION, "<6.13")],
    ),
];

/// The policy is the authority: every way a policy can say vm holds
/// against everything an image can say; only the operator's
/// `--isolation` overrides it.
#[test]
fn image_cannot_lower_a_policy_vm() {
    let ref_ = "docker.io/library/alpine:3.19";
    let policies = [
        ("default_isolation vm", "default_isolation = \"vm\"\n", "policy.default"),
        (
            "[[trust]] vm",
            "[[trust]]\nmatch = \"docker.io/*\"\nisolation = \"vm\"\n",
            "policy.trust",
        ),
        (
            "[[image]] vm over a container trust rule and default",
            "default_isolation = \"container\"\n[[trust]]\nmatch = \"**\"\nisolation = \"container\"\n[[image]]\nmatch = \"docker.io/library/alpine\"\nisolation = \"vm\"\n",
            "policy.image",
        ),
        (
            "[[image]] vm without a tag covers the tag",
            "[[image]]\nmatch = \"docker.io/library/alpine\"\nisolation = \"vm\"\n",
            "policy.image",
        ),
    ];
    for (pname, policy, rule) in policies {
        for (iname, ann) in IMAGES {
            let d = decide_with(ref_, policy, Auto, ann);
            assert_eq!(d.isolation, Isolation::Vm, "{pname} / image {iname}: {d}");
            if !iname.starts_with("vm") {
                assert!(
                    d.decided_by.contains("policy.toml"),
                    "{pname} / {iname}: decided by {}",
                    d.decided_by
                );
                assert!(
                    has_reason(&d.reasons, rule, ForcesVm, ""),
                    "{pname} / {iname}: {d}"
                );
            }
            // An image's `auto` is no opinion; its `container` is listed as ignored.
            if ann
                .iter()
                .any(|(k, v)| *k == KEY_ISOLATION && *v == "container")
            {
                assert!(
                    has_reason(&d.reasons, "annotation.isolation", Info, "ignored"),
                    "{pname} / {iname}: {d}"
                );
            }
            // The command line may not lower the policy's vm: refused,
            // naming the policy.
            let e = try_decide_with(ref_, policy, CliContainer, ann).unwrap_err();
            assert!(
                e.to_string()
                    .contains("--isolation container is not allowed")
                    && e.to_string().contains("policy.toml"),
                "{pname} / {iname}: {e}"
            );
            assert!(
                has_reason(e.reasons(), "cli.isolation", Refused, "may not be lowered"),
                "{pname} / {iname}: {e:?}"
            );
            // It may say vm too.
            let d = decide_with(ref_, policy, CliVm, ann);
            assert_eq!(d.isolation, Isolation::Vm, "{pname} / {iname}");
        }
    }
}

#[test]
fn precedence_table() {
    let ref_ = "docker.io/library/alpine:3.19";
    let container = "default_isolation = \"container\"\n";
    let auto = "";
    for (iname, ann) in IMAGES {
        let image_iso = ann
            .iter()
            .find(|(k, _)| *k == KEY_ISOLATION)
            .map(|(_, v)| *v);
        let misses = iname.contains("misses");
        // A container policy: only the image's vm raises it.
        let d = decide_with(ref_, container, Auto, ann);
        let want = if image_iso == Some("vm") {
            Isolation::Vm
        } else {
            Isolation::Container
        };
        assert_eq!(d.isolation, want, "container policy / {iname}: {d}");
        // An auto policy: the image chooses, else its requirements.
        let d = decide_with(ref_, auto, Auto, ann);
        let want = match image_iso {
            Some("vm") => Isolation::Vm,
            Some("container") => Isolation::Container,
            _ if misses => Isolation::Vm,
            _ => Isolation::Container,
        };
        assert_eq!(d.isolation, want, "auto policy / {iname}: {d}");
        // The user's vm wins over a container policy and everything the
        // image says.
        let d = decide_with(ref_, container, CliVm, ann);
        assert_eq!(d.isolation, Isolation::Vm, "--isolation vm / {iname}: {d}");
        assert!(
            d.decided_by.contains("--isolation vm on the command line"),
            "{}",
            d.decided_by
        );
    }
    // Who decided, in each case.
    let d = decide_with(ref_, container, Auto, &[(KEY_ISOLATION, "vm")]);
    assert!(
        d.decided_by.contains("io.amphi.isolation"),
        "{}",
        d.decided_by
    );
    assert!(
        has_reason(
            &d.reasons,
            "annotation.isolation",
            ForcesVm,
            "more isolation"
        ),
        "{d}"
    );
    let d = decide_with(ref_, auto, Auto, &[(KEY_ISOLATION, "container")]);
    assert!(
        d.decided_by.contains("io.amphi.isolation"),
        "{}",
        d.decided_by
    );
    let d = decide_with(ref_, auto, Auto, &[]);
    assert!(
        d.decided_by.contains("default_isolation"),
        "{}",
        d.decided_by
    );
    let d = decide_with(ref_, container, Auto, &[(KEY_ISOLATION, "container")]);
    assert!(
        has_reason(
            &d.reasons,
            "annotation.isolation",
            Info,
            "the same as policy.default"
        ),
        "{d}"
    );
}

/// Policy patterns never reach across registries: an attacker's reference
/// that only looks internal falls through to the vm default.
#[test]
fn globs_do_not_cross_registries() {
    let policy = "default_isolation = \"vm\"\n[[trust]]\nmatch = \"*.internal/*\"\nisolation = \"container\"\n[[image]]\nmatch = \"registry.internal/team/app\"\nisolation = \"container\"\n";
    let cases = [
        ("registry.internal/team/app:1", Isolation::Container),
        ("registry.internal/other/tool:2", Isolation::Container),
        ("ghcr.io/attacker/evil.internal/app:1", Isolation::Vm),
        (
            "docker.io/attacker/registry.internal/team/app:1",
            Isolation::Vm,
        ),
        ("registry.internal.attacker.io/team/app:1", Isolation::Vm),
        ("registry.internal:5000/team/app:1", Isolation::Vm),
        ("evil.example/x.internal/app:1", Isolation::Vm),
    ];
    for (reference, want) in cases {
        for (iname, ann) in IMAGES {
            let d = decide_with(reference, policy, Auto, ann);
            let want = if ann.iter().any(|(k, v)| *k == KEY_ISOLATION && *v == "vm") {
                Isolation::Vm
            } else {
                want
            };
            assert_eq!(d.isolation, want, "{reference} / {iname}: {d}");
        }
    }
}
