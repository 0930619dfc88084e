//! Helpers shared by the `unpack_safety`, `load` and `pull` end-to-end tests.
#![allow(dead_code)]

use amphi_tests::{run_cmd, Amphi, BuiltLayout, LayoutBuilder};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// A string no other test (or test process) uses, for temp names outside the store.
pub fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "amphi-{what}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Names in a directory (empty when it does not exist).
pub fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What a failed load must not change.
#[derive(Debug, PartialEq, Eq)]
pub struct StoreState {
    pub images: Option<Value>,
    pub blobs: BTreeSet<String>,
    pub layers: BTreeSet<String>,
}

pub fn store_state(root: &Path) -> StoreState {
    StoreState {
        images: fs::read(root.join("images.json"))
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("images.json is valid JSON")),
        blobs: listing(&root.join("blobs/sha256")),
        layers: listing(&root.join("layers/sha256")),
    }
}

/// The store is exactly as `before`, and nothing is left in `tmp/`.
pub fn assert_store_unchanged(root: &Path, before: &StoreState) {
    let after = store_state(root);
    assert_eq!(
        after.images, before.images,
        "images.json changed by a failed load"
    );
    assert_eq!(after.blobs, before.blobs, "blobs/ changed by a failed load");
    assert_eq!(
        after.layers, before.layers,
        "layers/ changed by a failed load"
    );
    let tmp = listing(&root.join("tmp"));
    assert!(
        tmp.is_empty(),
        "tmp/ not empty after a failed load: {tmp:?}"
    );
}

/// An OCI layout written by `builder` into a fresh temporary directory.
pub fn layout(builder: &LayoutBuilder) -> (tempfile::TempDir, BuiltLayout) {
    let dir = tempfile::Builder::new()
        .prefix("amphi-layout-")
        .tempdir()
        .unwrap();
    let built = builder.write(dir.path());
    (dir, built)
}

/// Loads `builder`'s image as `name` and returns the `diff` dirs of its layers, bottom first.
pub fn load_layers(a: &Amphi, builder: &LayoutBuilder, name: &str) -> Vec<PathBuf> {
    let (dir, _) = layout(builder);
    a.ok(&["load", "-q", "--tag", name, dir.path().to_str().unwrap()]);
    diff_dirs(a, name)
}

/// `amphi inspect NAME` as JSON (the one object).
pub fn inspect(a: &Amphi, name: &str) -> Value {
    let out = a.ok(&["inspect", name]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

/// The `diff` directories of an image's layers, bottom first.
pub fn diff_dirs(a: &Amphi, name: &str) -> Vec<PathBuf> {
    inspect(a, name)["Layers"]
        .as_array()
        .expect("inspect shows Layers")
        .iter()
        .map(|c| {
            let hex = c.as_str().unwrap().strip_prefix("sha256:").unwrap();
            let d = a.root().join("layers/sha256").join(hex).join("diff");
            assert!(d.is_dir(), "{} is missing", d.display());
            d
        })
        .collect()
}

/// Every path (relative, sorted) of the read-only overlay of `diffs` (bottom first): what a
/// container would see.
pub fn merged_view(diffs: &[PathBuf]) -> Vec<String> {
    if let [only] = diffs {
        // overlayfs wants two lower dirs when there is no upper one.
        let mut all: Vec<String> = find_named(only, "")
            .iter()
            .map(|p| p.strip_prefix(only).unwrap().display().to_string())
            .collect();
        all.sort();
        return all;
    }
    let mnt = tempfile::Builder::new()
        .prefix("amphi-merged-")
        .tempdir()
        .unwrap();
    let lower: Vec<String> = diffs
        .iter()
        .rev()
        .map(|d| d.display().to_string())
        .collect();
    let script = format!(
        "mount -t overlay overlay -o ro,lowerdir={} {} && cd {} && find . -mindepth 1 | sort",
        lower.join(":"),
        mnt.path().display(),
        mnt.path().display()
    );
    // A private mount namespace: the mount cannot outlive the command.
    let out = run_cmd(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    assert!(
        out.status.success(),
        "overlay view failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .collect()
}

/// Every path under `dir` (recursively, not following symlinks) whose name contains `needle`.
pub fn find_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(needle) {
                hits.push(p.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(p);
            }
        }
    }
    hits
}

/// Nothing named after `needle` anywhere it could have escaped to: `/`, `/tmp`, the parent
/// of the store, and nowhere in the store itself either.
pub fn assert_no_trace(a: &Amphi, needle: &str) {
    let mut hits = find_named(a.root(), needle);
    for dir in [
        PathBuf::from("/"),
        PathBuf::from("/tmp"),
        a.root().parent().unwrap().to_path_buf(),
    ] {
        hits.extend(
            listing(&dir)
                .into_iter()
                .filter(|n| n.contains(needle))
                .map(|n| dir.join(n)),
        );
    }
    assert!(hits.is_empty(), "{needle} was written: {hits:?}");
}
