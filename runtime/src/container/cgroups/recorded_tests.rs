//! What applying a cgroup writes, through the effects recorder
//! (container::effects::record), on a tree of directories and files laid
//! out as the kernel's: no root needed.

use super::*;
use crate::container::effects::record::{Call, Recorder};
use rustix::io::Errno;

/// A temporary cgroup tree: `files` created (with their contents) as the
/// kernel would show them.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for (f, v) in files {
        let p = t.path().join(f);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, v).unwrap();
    }
    t
}

fn res(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).unwrap()
}

fn cgroup(mode: Mode) -> Cgroup {
    Cgroup {
        mode,
        path: "amphi/c1".into(),
        created_parent: None,
    }
}

fn write(path: &str, data: &str) -> Call {
    Call::Write {
        path: path.into(),
        data: data.into(),
    }
}

fn open(path: &str) -> Call {
    Call::Open(path.into())
}

fn mkdir_all(path: &str) -> Call {
    Call::MkdirAll(path.into())
}

#[test]
fn v2_enables_controllers_on_the_way_down_writes_limits_then_moves_the_pid() {
    let t = tree(&[
        ("cgroup.controllers", "cpuset cpu io memory hugetlb pids"),
        ("amphi/cgroup.controllers", "memory pids"),
        ("amphi/c1/memory.max", ""),
        ("amphi/c1/cpu.max", ""),
        ("amphi/c1/pids.max", ""),
        ("amphi/c1/cgroup.procs", ""),
    ]);
    let fx = Recorder::new(t.path());
    let layout = Layout {
        root: t.path(),
        v1: &[],
    };
    let r = res(serde_json::json!({
        "memory": {"limit": 1048576, "swap": 2097152},
        "cpu": {"quota": 50000, "period": 100000},
        "pids": {"limit": 32},
    }));
    cgroup(Mode::Unified)
        .apply_in(&fx, &layout, 42, Some(&r), None)
        .unwrap();
    assert_eq!(
        fx.calls(),
        [
            // Only what each level offers is enabled below it.
            write("/cgroup.subtree_control", "+memory +pids +cpu"),
            mkdir_all("/amphi"),
            write("/amphi/cgroup.subtree_control", "+memory +pids"),
            mkdir_all("/amphi/c1"),
            open("/amphi/c1/memory.max"),
            write("/amphi/c1/memory.max", "1048576"),
            // memory.swap.max is optional: this host has no swap accounting.
            open("/amphi/c1/cpu.max"),
            write("/amphi/c1/cpu.max", "50000 100000"),
            open("/amphi/c1/pids.max"),
            write("/amphi/c1/pids.max", "32"),
            write("/amphi/c1/cgroup.procs", "42"),
        ]
    );
    assert_eq!(
        fs::read_to_string(t.path().join("amphi/c1/cgroup.procs")).unwrap(),
        "42"
    );
}

#[test]
fn v2_names_the_field_of_a_limit_the_host_has_no_file_for() {
    let t = tree(&[("cgroup.controllers", "memory pids")]);
    let fx = Recorder::new(t.path());
    let layout = Layout {
        root: t.path(),
        v1: &[],
    };
    let r = res(serde_json::json!({"pids": {"limit": 5}}));
    let e = cgroup(Mode::Unified)
        .apply_in(&fx, &layout, 42, Some(&r), None)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "linux.resources.pids.limit cannot be applied: this host's cgroups have no pids.max ({} is missing)",
            t.path().join("amphi/c1/pids.max").display()
        )
    );
    assert!(
        !fx.calls()
            .iter()
            .any(|c| matches!(c, Call::Write { path, .. } if path.ends_with("cgroup.procs"))),
        "the process is not moved in"
    );
}

/// A v1 host's hierarchies, with the files of the container's cgroup.
fn v1_tree() -> (tempfile::TempDir, Vec<PathBuf>) {
    let t = tree(&[
        ("memory/amphi/c1/memory.limit_in_bytes", ""),
        ("memory/amphi/c1/cgroup.procs", ""),
        ("cpu/amphi/c1/cpu.shares", ""),
        ("cpu/amphi/c1/cgroup.procs", ""),
        ("cpuset/cpuset.cpus", "0-7"),
        ("cpuset/cpuset.mems", "0"),
        ("cpuset/amphi/cpuset.cpus", ""),
        ("cpuset/amphi/cpuset.mems", ""),
        ("cpuset/amphi/c1/cpuset.cpus", ""),
        ("cpuset/amphi/c1/cpuset.mems", ""),
        ("cpuset/amphi/c1/cgroup.procs", ""),
        ("devices/amphi/c1/devices.allow", ""),
        ("devices/amphi/c1/devices.deny", ""),
        ("devices/amphi/c1/cgroup.procs", ""),
    ]);
    let v1 = ["memory", "cpu", "cpuset", "devices"]
        .map(|h| t.path().join(h))
        .to_vec();
    (t, v1)
}

#[test]
fn v1_makes_each_hierarchys_cgroup_fills_cpuset_writes_limits_rules_then_the_pid() {
    let (t, v1) = v1_tree();
    let fx = Recorder::new(t.path());
    let layout = Layout {
        root: t.path(),
        v1: &v1,
    };
    let r = res(serde_json::json!({
        "memory": {"limit": 1048576},
        "cpu": {"shares": 512, "cpus": "1-2"},
    }));
    let rules = [
        crate::container::devices::DENY_ALL,
        Rule {
            allow: true,
            kind: crate::container::devices::Kind::Char,
            major: Some(1),
            minor: Some(3),
            access: crate::container::devices::READ | crate::container::devices::WRITE,
        },
    ];
    let mut cg = cgroup(Mode::Legacy);
    cg.apply_in(&fx, &layout, 7, Some(&r), Some(&rules))
        .unwrap();
    assert_eq!(
        fx.calls(),
        [
            mkdir_all("/memory/amphi/c1"),
            mkdir_all("/cpu/amphi/c1"),
            mkdir_all("/cpuset/amphi/c1"),
            // A new cpuset cgroup has no cpus or mems: they come down
            // from the nearest parent that has them.
            write("/cpuset/amphi/cpuset.cpus", "0-7"),
            write("/cpuset/amphi/c1/cpuset.cpus", "0-7"),
            write("/cpuset/amphi/cpuset.mems", "0"),
            write("/cpuset/amphi/c1/cpuset.mems", "0"),
            mkdir_all("/devices/amphi/c1"),
            open("/memory/amphi/c1/memory.limit_in_bytes"),
            write("/memory/amphi/c1/memory.limit_in_bytes", "1048576"),
            open("/cpu/amphi/c1/cpu.shares"),
            write("/cpu/amphi/c1/cpu.shares", "512"),
            open("/cpuset/amphi/c1/cpuset.cpus"),
            write("/cpuset/amphi/c1/cpuset.cpus", "1-2"),
            // One descriptor per file, one write per rule.
            open("/devices/amphi/c1/devices.deny"),
            write("/devices/amphi/c1/devices.deny", "a"),
            open("/devices/amphi/c1/devices.allow"),
            write("/devices/amphi/c1/devices.allow", "c 1:3 rw"),
            write("/memory/amphi/c1/cgroup.procs", "7"),
            write("/cpu/amphi/c1/cgroup.procs", "7"),
            write("/cpuset/amphi/c1/cgroup.procs", "7"),
            write("/devices/amphi/c1/cgroup.procs", "7"),
        ]
    );
    assert_eq!(cg.created_parent, None, "amphi/ was there");
}

#[test]
fn v1_refuses_a_limit_whose_controller_is_not_mounted_before_making_anything() {
    let (t, v1) = v1_tree();
    let fx = Recorder::new(t.path());
    let layout = Layout {
        root: t.path(),
        v1: &v1,
    };
    let r = res(serde_json::json!({"pids": {"limit": 10}}));
    let e = cgroup(Mode::Legacy)
        .apply_in(&fx, &layout, 7, Some(&r), None)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "linux.resources.pids.limit needs the cgroup v1 pids controller, which this host does not mount ({} is missing)",
            t.path().join("pids").display()
        )
    );
    assert_eq!(fx.calls(), []);
}

#[test]
fn v1_without_a_devices_hierarchy_cannot_restrict_devices() {
    let t = tree(&[("memory/amphi/c1/cgroup.procs", "")]);
    let v1 = [t.path().join("memory")];
    let fx = Recorder::new(t.path());
    let layout = Layout {
        root: t.path(),
        v1: &v1,
    };
    let e = cgroup(Mode::Legacy)
        .apply_in(
            &fx,
            &layout,
            7,
            None,
            Some(&[crate::container::devices::DENY_ALL]),
        )
        .unwrap_err();
    assert!(matches!(e, CgroupError::NoDevicesController { .. }), "{e}");
    assert!(
        !fx.calls().iter().any(|c| matches!(c, Call::Write { .. })),
        "nothing written: {:?}",
        fx.calls()
    );
}

#[test]
fn a_new_cgroup_remembers_the_parents_it_made_but_not_amphis() {
    let t = tree(&[("memory/cgroup.procs", "")]);
    let v1 = [t.path().join("memory")];
    let layout = Layout {
        root: t.path(),
        v1: &v1,
    };
    let fx = Recorder::new(t.path());
    let at = |path: &str| Cgroup {
        mode: Mode::Legacy,
        path: path.into(),
        created_parent: None,
    };
    // An exec joining a cgroup passes no device rules: nothing is noted.
    let mut cg = at("pods/p1/c1");
    cg.apply_in(&fx, &layout, 1, None, None).unwrap();
    assert_eq!(cg.created_parent, None);
    assert!(t.path().join("memory/pods/p1/c1").is_dir());
    // A new container's (with rules; here the devices hierarchy is
    // missing, which fails after the parents were looked at).
    let rules = [crate::container::devices::DENY_ALL];
    let mut cg = at("pods/p2/c1");
    assert!(cg.apply_in(&fx, &layout, 1, None, Some(&rules)).is_err());
    assert_eq!(cg.created_parent.as_deref(), Some("pods/p2"));
    let mut cg = at("amphi/c1");
    assert!(cg.apply_in(&fx, &layout, 1, None, Some(&rules)).is_err());
    assert_eq!(
        cg.created_parent, None,
        "the shared amphi/ is never removed"
    );
}

#[test]
fn update_on_v1_writes_memory_and_swap_in_the_other_order_when_the_kernel_refuses() {
    let (t, _) = v1_tree();
    fs::write(
        t.path().join("memory/amphi/c1/memory.memsw.limit_in_bytes"),
        "",
    )
    .unwrap();
    // Raising both: the new limit is above the old memsw, EINVAL.
    let refused = std::cell::Cell::new(false);
    let fx = Recorder::new(t.path()).fail(move |c| match c {
        Call::Write { path, .. } if path.ends_with("memory.limit_in_bytes") && !refused.get() => {
            refused.set(true);
            Some(Errno::INVAL)
        }
        _ => None,
    });
    let r = res(serde_json::json!({
        "memory": {"limit": 4194304, "swap": 8388608},
        "cpu": {"shares": 100},
    }));
    cgroup(Mode::Legacy).update_in(&fx, t.path(), &r).unwrap();
    let writes: Vec<Call> = fx
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Write { .. }))
        .collect();
    assert_eq!(
        writes,
        [
            write("/memory/amphi/c1/memory.limit_in_bytes", "4194304"),
            write("/memory/amphi/c1/memory.memsw.limit_in_bytes", "8388608"),
            write("/memory/amphi/c1/memory.limit_in_bytes", "4194304"),
            write("/cpu/amphi/c1/cpu.shares", "100"),
        ]
    );
    assert_eq!(
        fs::read_to_string(t.path().join("memory/amphi/c1/memory.limit_in_bytes")).unwrap(),
        "4194304"
    );
}

#[test]
fn a_failed_write_names_the_field_value_and_file() {
    let (t, _) = v1_tree();
    let fx = Recorder::new(t.path()).fail(|c| match c {
        Call::Write { path, .. } if path.ends_with("cpu.shares") => Some(Errno::INVAL),
        _ => None,
    });
    let r = res(serde_json::json!({"cpu": {"shares": 1}}));
    let e = cgroup(Mode::Legacy)
        .update_in(&fx, t.path(), &r)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "linux.resources.cpu.shares: writing \"1\" to {}: {}",
            t.path().join("cpu/amphi/c1/cpu.shares").display(),
            std::io::Error::from_raw_os_error(libc::EINVAL)
        )
    );
    assert_eq!(crate::container::sync::errno_of(&e), Some(libc::EINVAL));
}
