//! amphi and runc (Debian's) on the same bundle, asserting the same
//! observable result (issue 20). Each test says which runc behaviour it
//! pins down.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::parity::Pair;
use serde_json::json;

/// The harness itself: the same process, same output and exit status.
#[test]
fn the_same_bundle_runs_the_same_on_both() {
    let Some(p) = Pair::new("same", |_| {}) else {
        return;
    };
    p.script("echo hello; id -u; exit 7");
    let a = p.run_same();
    assert_eq!((a.code, a.stdout.as_str()), (7, "hello\n0\n"));
}

/// linux.rootfsPropagation: both runtimes start the process ("shared"
/// failed in amphi with EINVAL from pivot_root). "unbindable" is amphi's
/// alone: runc 1.1 fails it itself (EINVAL binding the rootfs, as amphi
/// did), crun runs it; spec_fields.rs checks what "/" gets for each.
#[test]
fn rootfs_propagation_shared_private_slave() {
    for prop in ["shared", "private", "slave"] {
        let Some(p) = Pair::new("prop", |v| v["linux"]["rootfsPropagation"] = json!(prop)) else {
            return;
        };
        p.script("echo up");
        let a = p.run_same();
        assert_eq!(a.stdout, "up\n", "{prop}: {}", a.stderr);
    }
}
