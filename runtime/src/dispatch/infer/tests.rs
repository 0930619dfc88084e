//! The inference rules against host fixtures, and their effect on
//! [`decide`](crate::dispatch::decide).

use super::*;
use crate::dispatch::{decide, CandidateKernel, DecideInput, Isolation, IsolationChoice, Outcome};
use crate::dispatch::{DispatchError, Policy, Requirements};
use crate::host::{CgroupMode, KvmSupport, Vsyscall};
use crate::image::manifest::ImageConfig;
use std::collections::BTreeMap;
use std::path::Path;

/// The host cache tests' fake host, with this cgroup mode, vsyscall mode
/// and kernel, and hardware KVM.
fn host(cgroup: CgroupMode, vsyscall: Vsyscall, kernel: (u32, u32, u32)) -> HostInfo {
    let v = KernelVersion::new(kernel.0, kernel.1, kernel.2);
    HostInfo {
        kernel_release: format!("{v}-test"),
        kernel_version: Some(v),
        cgroup,
        kvm: KvmSupport::Hardware,
        vsyscall,
        ..crate::host::cache::tests::fake_host()
    }
}

fn systemd(v: u32) -> Fact {
    Fact::SystemdInit {
        version: Some(v),
        path: "/usr/lib/systemd/systemd".into(),
    }
}

fn abi(v: (u32, u32, u32)) -> Fact {
    Fact::LibcMinKernel {
        version: KernelVersion::new(v.0, v.1, v.2),
        path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
    }
}

fn glibc(v: &str) -> Fact {
    Fact::GlibcVersion {
        version: v.into(),
        path: "/lib64/libc-2.12.so".into(),
    }
}

fn needs(facts: &[Fact]) -> Vec<Need> {
    infer(facts).into_iter().map(|i| i.need).collect()
}

#[test]
fn systemd_rules_by_version() {
    assert_eq!(needs(&[systemd(257)]), vec![Need::CgroupV2]);
    assert_eq!(needs(&[systemd(256)]), vec![Need::CgroupV2]);
    assert_eq!(needs(&[systemd(255)]), vec![]);
    assert_eq!(needs(&[systemd(230)]), vec![]);
    assert_eq!(needs(&[systemd(229)]), vec![Need::CgroupV1]);
    assert_eq!(needs(&[systemd(219)]), vec![Need::CgroupV1]);
    let unknown = Fact::SystemdInit {
        version: None,
        path: "/sbin/init".into(),
    };
    assert_eq!(needs(&[unknown]), vec![]);
}

#[test]
fn cgroup_needs_against_each_host_mode() {
    let x = Vsyscall::Xonly;
    let k = (6, 18, 0);
    for (mode, v2_ok, v1_ok) in [
        (CgroupMode::V2, true, false),
        (CgroupMode::Hybrid, false, true),
        (CgroupMode::V1, false, true),
        (CgroupMode::None, false, false),
    ] {
        let h = host(mode, x, k);
        assert_eq!(host_meets(&Need::CgroupV2, &h).is_ok(), v2_ok, "{mode:?}");
        assert_eq!(host_meets(&Need::CgroupV1, &h).is_ok(), v1_ok, "{mode:?}");
    }
    let e = host_meets(&Need::CgroupV2, &host(CgroupMode::Hybrid, x, k)).unwrap_err();
    assert!(e.contains("hybrid"), "{e}");
}

#[test]
fn vsyscall_needs_against_each_host_mode() {
    assert_eq!(needs(&[glibc("2.12")]), vec![Need::VsyscallCalls]);
    assert_eq!(needs(&[glibc("2.14")]), vec![Need::VsyscallCalls]);
    assert_eq!(needs(&[glibc("2.15")]), vec![]);
    assert_eq!(needs(&[glibc("2.41")]), vec![]);
    let k = (6, 18, 0);
    for (mode, ok) in [
        (Vsyscall::Emulate, true),
        (Vsyscall::Xonly, true),
        (Vsyscall::None, false),
    ] {
        let h = host(CgroupMode::V2, mode, k);
        assert_eq!(host_meets(&Need::VsyscallCalls, &h).is_ok(), ok, "{mode}");
    }
    assert_eq!(guest_cmdline(&Need::VsyscallCalls), Some("vsyscall=xonly"));
    assert_eq!(
        guest_config(&Need::VsyscallCalls)[0].to_string(),
        "CONFIG_X86_VSYSCALL_EMULATION=y"
    );
}

#[test]
fn kernel_versions_on_both_sides_of_the_abi_tag() {
    let need = &needs(&[abi((4, 4, 0))])[0];
    assert_eq!(
        *need,
        Need::KernelAtLeast {
            version: KernelVersion::new(4, 4, 0)
        }
    );
    let h = |k| host(CgroupMode::V2, Vsyscall::Xonly, k);
    assert!(host_meets(need, &h((4, 4, 0))).is_ok());
    assert!(host_meets(need, &h((5, 10, 1))).is_ok());
    assert!(host_meets(need, &h((4, 3, 99))).is_err());
    assert!(host_meets(need, &h((3, 10, 0))).is_err());
}

#[test]
fn modules_need_a_kernel_of_their_own() {
    let ships = Fact::ShipsModules {
        releases: vec!["6.1.0-9-amd64".into()],
        path: "/lib/modules".into(),
    };
    let loads = Fact::LoadsModules {
        path: "/usr/bin/kmod".into(),
    };
    assert_eq!(needs(&[ships]), vec![Need::OwnKernel]);
    assert_eq!(needs(&[loads]), vec![Need::OwnKernel]);
    let h = host(CgroupMode::V2, Vsyscall::Xonly, (6, 18, 0));
    assert!(host_meets(&Need::OwnKernel, &h).is_err());
}

#[test]
fn facts_that_need_nothing() {
    let f = [
        Fact::Musl {
            path: "/lib/ld-musl-x86_64.so.1".into(),
        },
        Fact::StaticBinary {
            path: "/bin/busybox".into(),
        },
        Fact::Unreadable {
            path: "/sbin/init".into(),
            reason: "malformed ELF".into(),
        },
        glibc("2.36"),
    ];
    assert!(infer(&f).is_empty());
}

// --- the rules inside the decision ---

fn guest(id: &str, config: &[(&str, &str)]) -> CandidateKernel {
    let version = KernelVersion::parse(id).unwrap();
    CandidateKernel {
        id: id.into(),
        release: format!("{version}-amphi"),
        version,
        config: Some(
            config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        pvm: false,
    }
}

fn catalog() -> Vec<CandidateKernel> {
    let full = [
        ("CONFIG_CGROUPS", "y"),
        ("CONFIG_X86_VSYSCALL_EMULATION", "y"),
    ];
    vec![guest("6.12.57-a", &full), guest("6.1.150-b", &full)]
}

fn decide_facts(
    h: &HostInfo,
    facts: &[Fact],
    policy: &str,
    cli: IsolationChoice,
    kernels: &[CandidateKernel],
) -> Result<crate::dispatch::Decision, DispatchError> {
    let req = Requirements::from_parts(
        &ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        },
        &BTreeMap::new(),
    )
    .unwrap();
    let policy = Policy::parse(policy, Path::new("/etc/amphi/policy.toml")).unwrap();
    decide(&DecideInput {
        host: h,
        reference: "localhost/debian-systemd:13",
        requirements: &req,
        policy: &policy,
        cli,
        kernels,
        cli_kernel: false,
        facts,
    })
}

#[test]
fn systemd_257_on_a_hybrid_host_goes_to_a_microvm() {
    let h = host(CgroupMode::Hybrid, Vsyscall::Xonly, (6, 18, 0));
    let d = decide_facts(&h, &[systemd(257)], "", IsolationChoice::Auto, &catalog()).unwrap();
    assert_eq!(d.isolation, Isolation::Vm, "{d}");
    assert_eq!(d.kernel.as_ref().unwrap().id, "6.12.57-a");
    let r = d
        .reasons
        .iter()
        .find(|r| r.rule == "image.systemd")
        .unwrap();
    assert_eq!(r.outcome, Outcome::NeedsVm);
    assert!(
        r.note.contains("/usr/lib/systemd/systemd is systemd 257") && r.have.contains("hybrid"),
        "{r}"
    );
    assert!(d.guest_cmdline.is_empty());
    // On a cgroup v2 host the same image stays native.
    let h2 = host(CgroupMode::V2, Vsyscall::Xonly, (6, 18, 0));
    let d = decide_facts(&h2, &[systemd(257)], "", IsolationChoice::Auto, &catalog()).unwrap();
    assert_eq!(d.isolation, Isolation::Container, "{d}");
}

#[test]
fn forcing_native_runs_with_one_warning_naming_the_fact() {
    let h = host(CgroupMode::Hybrid, Vsyscall::Xonly, (6, 18, 0));
    let d = decide_facts(
        &h,
        &[systemd(257)],
        "",
        IsolationChoice::Container,
        &catalog(),
    )
    .unwrap();
    assert_eq!(d.isolation, Isolation::Container);
    let warnings: Vec<_> = d
        .reasons
        .iter()
        .filter(|r| r.outcome == Outcome::Warning)
        .collect();
    assert_eq!(warnings.len(), 1, "{d}");
    assert!(
        warnings[0].to_string().contains("systemd 257"),
        "{}",
        warnings[0]
    );
}

#[test]
fn the_policy_can_turn_inference_off_and_still_force_a_vm() {
    let h = host(CgroupMode::Hybrid, Vsyscall::Xonly, (6, 18, 0));
    let off = "[[image]]\nmatch = \"localhost/**\"\ninfer = false\n";
    let d = decide_facts(&h, &[systemd(257)], off, IsolationChoice::Auto, &catalog()).unwrap();
    assert_eq!(d.isolation, Isolation::Container, "{d}");
    assert!(d.inferred.is_empty());
    assert!(d.reasons.iter().any(|r| r.rule == "policy.infer"), "{d}");
    // A top-level switch, overridden per image.
    let top = "infer = false\n[[image]]\nmatch = \"localhost/debian-*\"\ninfer = true\n";
    let d = decide_facts(&h, &[systemd(257)], top, IsolationChoice::Auto, &catalog()).unwrap();
    assert_eq!(d.isolation, Isolation::Vm, "{d}");
    // Off, but the policy forces a microVM anyway.
    let forced = "default_isolation = \"vm\"\ninfer = false\n";
    let d = decide_facts(
        &h,
        &[systemd(257)],
        forced,
        IsolationChoice::Auto,
        &catalog(),
    )
    .unwrap();
    assert_eq!(d.isolation, Isolation::Vm, "{d}");
    // Inference never lowers a policy's vm: a host that meets everything.
    let h2 = host(CgroupMode::V2, Vsyscall::Xonly, (6, 18, 0));
    let d = decide_facts(
        &h2,
        &[systemd(257)],
        "default_isolation = \"vm\"\n",
        IsolationChoice::Auto,
        &catalog(),
    )
    .unwrap();
    assert_eq!(d.isolation, Isolation::Vm, "{d}");
}

#[test]
fn an_abi_tag_newer_than_every_kernel_is_refused_naming_the_file() {
    let h = host(CgroupMode::Hybrid, Vsyscall::Xonly, (6, 18, 0));
    let e = decide_facts(
        &h,
        &[abi((99, 0, 0))],
        "",
        IsolationChoice::Auto,
        &catalog(),
    )
    .unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("/usr/lib/x86_64-linux-gnu/libc.so.6") && m.contains("99.0.0"),
        "{m}"
    );
    assert!(m.contains("no guest kernel"), "{m}");
    // One the catalog meets: the newest such kernel, and the host is older.
    let old_host = host(CgroupMode::Hybrid, Vsyscall::Xonly, (5, 10, 0));
    let d = decide_facts(
        &old_host,
        &[abi((6, 5, 0))],
        "",
        IsolationChoice::Auto,
        &catalog(),
    )
    .unwrap();
    assert_eq!(d.kernel.unwrap().id, "6.12.57-a");
    // 6.1 alone cannot serve it.
    let e = decide_facts(
        &old_host,
        &[abi((6, 5, 0))],
        "",
        IsolationChoice::Auto,
        &catalog()[1..],
    )
    .unwrap_err();
    assert!(e.to_string().contains("older than 6.5.0"), "{e}");
}

#[test]
fn old_glibc_on_a_vsyscall_none_host_gets_a_guest_that_serves_it() {
    let h = host(CgroupMode::V2, Vsyscall::None, (6, 18, 0));
    let d = decide_facts(&h, &[glibc("2.12")], "", IsolationChoice::Auto, &catalog()).unwrap();
    assert_eq!(d.isolation, Isolation::Vm, "{d}");
    assert_eq!(d.guest_cmdline, vec!["vsyscall=xonly".to_string()]);
    // A guest kernel without vsyscall emulation cannot serve it.
    let bare = vec![guest("6.12.57-a", &[("CONFIG_CGROUPS", "y")])];
    let e = decide_facts(&h, &[glibc("2.12")], "", IsolationChoice::Auto, &bare).unwrap_err();
    assert!(
        e.to_string().contains("CONFIG_X86_VSYSCALL_EMULATION"),
        "{e}"
    );
    // The same image on an xonly host stays native.
    let h = host(CgroupMode::V2, Vsyscall::Xonly, (6, 18, 0));
    let d = decide_facts(&h, &[glibc("2.12")], "", IsolationChoice::Auto, &catalog()).unwrap();
    assert_eq!(d.isolation, Isolation::Container, "{d}");
}

#[test]
fn old_systemd_on_a_v2_host_gets_v1_hierarchies_in_the_guest() {
    let h = host(CgroupMode::V2, Vsyscall::Xonly, (6, 18, 0));
    let d = decide_facts(&h, &[systemd(219)], "", IsolationChoice::Auto, &catalog()).unwrap();
    assert_eq!(d.isolation, Isolation::Vm, "{d}");
    assert_eq!(
        d.guest_cmdline,
        vec!["systemd.unified_cgroup_hierarchy=0".to_string()]
    );
    let h = host(CgroupMode::Hybrid, Vsyscall::Xonly, (6, 18, 0));
    let d = decide_facts(&h, &[systemd(219)], "", IsolationChoice::Auto, &catalog()).unwrap();
    assert_eq!(d.isolation, Isolation::Container, "{d}");
}
