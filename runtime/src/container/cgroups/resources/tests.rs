use super::*;

fn res(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap()
}

fn host() -> Host {
    Host {
        hugepage_sizes: vec!["1GB".into(), "2MB".into()],
    }
}

fn writes(s: &[Setting]) -> Vec<(String, String, String)> {
    s.iter()
        .map(|s| (s.controller.to_string(), s.file.clone(), s.value.clone()))
        .collect()
}

fn w(c: &str, f: &str, v: &str) -> (String, String, String) {
    (c.into(), f.into(), v.into())
}

#[test]
fn page_sizes_are_named_as_the_cgroup_files_name_them() {
    assert_eq!(page_size_name(2048), "2MB");
    assert_eq!(page_size_name(1048576), "1GB");
    assert_eq!(page_size_name(64), "64KB");
    assert_eq!(page_size_name(3072), "3MB");
}

#[test]
fn v1_memory_writes_every_field_limit_first() {
    let r = res(r#"{"memory": {"limit": 50593792, "reservation": 50593792,
        "swap": 50593792, "kernel": 50593792, "kernelTCP": 50593792,
        "swappiness": 10, "disableOOMKiller": true}}"#);
    assert_eq!(
        writes(&v1(&r, &host()).unwrap()),
        vec![
            w("memory", "memory.limit_in_bytes", "50593792"),
            w("memory", "memory.memsw.limit_in_bytes", "50593792"),
            w("memory", "memory.soft_limit_in_bytes", "50593792"),
            w("memory", "memory.kmem.limit_in_bytes", "50593792"),
            w("memory", "memory.kmem.tcp.limit_in_bytes", "50593792"),
            w("memory", "memory.swappiness", "10"),
            w("memory", "memory.oom_control", "1"),
        ]
    );
}

#[test]
fn v1_cpu_writes_the_period_before_the_quota_and_cpusets() {
    let r = res(
        r#"{"cpu": {"shares": 1024, "quota": 50000, "period": 100000,
        "realtimeRuntime": 950000, "realtimePeriod": 1000000, "cpus": "0", "mems": "0"}}"#,
    );
    assert_eq!(
        writes(&v1(&r, &host()).unwrap()),
        vec![
            w("cpu", "cpu.shares", "1024"),
            w("cpu", "cpu.cfs_period_us", "100000"),
            w("cpu", "cpu.cfs_quota_us", "50000"),
            w("cpu", "cpu.rt_period_us", "1000000"),
            w("cpu", "cpu.rt_runtime_us", "950000"),
            w("cpuset", "cpuset.cpus", "0"),
            w("cpuset", "cpuset.mems", "0"),
        ]
    );
}

#[test]
fn v1_blkio_hugetlb_and_network() {
    let r = res(r#"{"blockIO": {"weight": 500, "leafWeight": 300,
          "weightDevice": [{"major": 8, "minor": 0, "weight": 100, "leafWeight": 50}],
          "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 600}],
          "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 300}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 2147483648}],
        "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 500}]}}"#);
    let s = v1(&r, &host()).unwrap();
    assert_eq!(
        writes(&s),
        vec![
            w("blkio", "blkio.bfq.weight", "500"),
            w("blkio", "blkio.weight", "500"),
            w("blkio", "blkio.leaf_weight", "300"),
            w("blkio", "blkio.weight_device", "8:0 100"),
            w("blkio", "blkio.leaf_weight_device", "8:0 50"),
            w("blkio", "blkio.throttle.read_bps_device", "8:0 600"),
            w("blkio", "blkio.throttle.write_iops_device", "8:16 300"),
            w("hugetlb", "hugetlb.2MB.limit_in_bytes", "2147483648"),
            w("hugetlb", "hugetlb.2MB.rsvd.limit_in_bytes", "2147483648"),
            w("net_cls", "net_cls.classid", "1048577"),
            w("net_prio", "net_prio.ifpriomap", "eth0 500"),
        ]
    );
    // Only the alternatives are optional; a limit that cannot be written
    // is an error.
    let opt: Vec<_> = s
        .iter()
        .filter(|s| s.optional)
        .map(|s| &s.file[..])
        .collect();
    assert_eq!(opt, ["blkio.bfq.weight", "hugetlb.2MB.rsvd.limit_in_bytes"]);
}

#[test]
fn a_page_size_the_host_lacks_is_refused_by_name() {
    let r = res(r#"{"hugepageLimits": [{"pageSize": "3MB", "limit": 1}]}"#);
    let e = v1(&r, &host()).unwrap_err().to_string();
    assert!(e.contains("\"3MB\"") && e.contains("1GB, 2MB"), "{e}");
    let e = v2(&r, &Host::default()).unwrap_err().to_string();
    assert!(e.contains("no huge pages"), "{e}");
}

#[test]
fn v2_only_fields_are_refused_on_v1_and_v1_only_ones_on_v2() {
    let e = v1(&res(r#"{"unified": {"memory.high": "1G"}}"#), &host())
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux.resources.unified"), "{e}");
    let e = v2(&res(r#"{"network": {"classID": 1}}"#), &host())
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux.resources.network"), "{e}");
    let e = v2(&res(r#"{"memory": {"disableOOMKiller": true}}"#), &host())
        .unwrap_err()
        .to_string();
    assert!(e.contains("disableOOMKiller"), "{e}");
    let e = v2(&res(r#"{"cpu": {"realtimeRuntime": 1}}"#), &host())
        .unwrap_err()
        .to_string();
    assert!(e.contains("realtime"), "{e}");
}

#[test]
fn v2_converts_as_runc_does() {
    let r = res(
        r#"{"memory": {"limit": 1000, "swap": 3000, "reservation": 500, "swappiness": 10},
        "cpu": {"shares": 1024, "quota": 50000, "cpus": "0-1"},
        "pids": {"limit": -1},
        "blockIO": {"weight": 1000, "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 9}]},
        "hugepageLimits": [{"pageSize": "1GB", "limit": -1}],
        "unified": {"memory.high": "900"}}"#,
    );
    assert_eq!(
        writes(&v2(&r, &host()).unwrap()),
        vec![
            w("", "memory.max", "1000"),
            w("", "memory.low", "500"),
            w("", "memory.swap.max", "2000"),
            w("", "cpu.weight", "39"),
            w("", "cpu.max", "50000 100000"),
            w("", "cpuset.cpus", "0-1"),
            w("", "pids.max", "max"),
            w("", "io.bfq.weight", "1000"),
            w("", "io.weight", "10000"),
            w("", "io.max", "8:0 wbps=9"),
            w("", "hugetlb.1GB.max", "max"),
            w("", "hugetlb.1GB.rsvd.max", "max"),
            w("", "memory.high", "900"),
        ]
    );
}

#[test]
fn unified_keys_cannot_leave_the_cgroup_directory() {
    for k in ["../../cgroup.procs", "/etc/passwd", "..", ".", ""] {
        let r = LinuxResources::default();
        let mut map = std::collections::HashMap::new();
        map.insert(k.to_string(), "1".to_string());
        let mut r = r;
        r.set_unified(Some(map));
        assert!(v2(&r, &host()).is_err(), "{k:?} accepted");
    }
}

#[test]
fn v2_controllers_follow_the_files() {
    let r = res(r#"{"cpu": {"cpus": "0"}, "hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}"#);
    let c = v2_controllers(&v2(&r, &host()).unwrap());
    assert_eq!(c, ["memory", "pids", "cpu", "cpuset", "hugetlb"]);
}
