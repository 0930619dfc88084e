//! `amphi pull` against a real registry (Debian's docker-registry) on
//! 127.0.0.1: plain pulls, digests, platforms, concurrency, kill -9, and
//! registry-side bad input.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use amphi_tests::{test_image, Amphi, Compression, LayoutBuilder, Registry, TarEntry};
use common::listing;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Every blob in the store hashes to its name, every layer dir is complete.
fn assert_store_consistent(root: &Path) {
    for name in listing(&root.join("blobs/sha256")) {
        let data = fs::read(root.join("blobs/sha256").join(&name)).unwrap();
        assert_eq!(
            amphi_tests::sha256_digest(&data),
            format!("sha256:{name}"),
            "blob {name} does not match its digest"
        );
    }
    for name in listing(&root.join("layers/sha256")) {
        assert!(
            root.join("layers/sha256")
                .join(&name)
                .join("layer.json")
                .is_file(),
            "layer {name} is incomplete but visible"
        );
    }
}

#[test]
fn pull_lists_inspects_and_removes() {
    let reg = Registry::start();
    reg.push(&test_image("busybox"), "demo/busybox:latest");
    let a = Amphi::new();
    let r = reg.reference("demo/busybox:latest");
    let id = a.ok(&["pull", "-q", &r]);
    assert!(id.trim().starts_with("sha256:"), "{id}");

    let table = a.ok(&["images"]);
    assert!(
        table.contains(&format!("{}/demo/busybox", reg.addr())),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&a.ok(&["images", "--json"])).unwrap();
    assert_eq!(json[0]["names"][0], r);
    assert_eq!(json[0]["platform"], "linux/amd64");

    let inspect: serde_json::Value = serde_json::from_str(&a.ok(&["inspect", &r])).unwrap();
    assert_eq!(inspect[0]["Config"]["config"]["Cmd"][0], "sh");
    assert_eq!(inspect[0]["Id"], id.trim());
    assert!(inspect[0]["Manifest"]["layers"].is_array());

    // The layer is unpacked and usable: busybox is in it.
    let chain = inspect[0]["Layers"][0]
        .as_str()
        .unwrap()
        .replace("sha256:", "");
    let bb = a
        .root()
        .join("layers/sha256")
        .join(chain)
        .join("diff/bin/busybox");
    assert!(bb.is_file(), "{} missing", bb.display());

    a.ok(&["rmi", &r]);
    assert_eq!(a.ok(&["images", "-q"]).trim(), "");
    assert!(listing(&a.root().join("blobs/sha256")).is_empty());
    assert!(listing(&a.root().join("layers/sha256")).is_empty());
}

#[test]
fn pull_by_digest_and_refuse_wrong_digest() {
    let reg = Registry::start();
    reg.push(&test_image("busybox"), "demo/busybox:1");
    let a = Amphi::new();
    a.ok(&["pull", "-q", &reg.reference("demo/busybox:1")]);
    let json: serde_json::Value = serde_json::from_str(&a.ok(&["images", "--json"])).unwrap();
    let digest = json[0]["manifest"].as_str().unwrap().to_string();

    let b = Amphi::new();
    let by_digest = format!("{}/demo/busybox@{digest}", reg.addr());
    b.ok(&["pull", "-q", &by_digest]);
    b.ok(&["inspect", &by_digest]);

    // A digest that names other content: the registry has no such manifest.
    let c = Amphi::new();
    let wrong = format!("{}/demo/busybox@sha256:{}", reg.addr(), "0".repeat(64));
    let err = c.fail(&["pull", "-q", &wrong]);
    assert!(err.contains(reg.addr()), "{err}");
    assert!(listing(&c.root().join("blobs/sha256")).is_empty());
}

#[test]
fn pull_picks_platform_from_index() {
    let dir = tempfile::tempdir().unwrap();
    let layer = amphi_tests::raw_tar(&[TarEntry::File {
        path: "hello.txt",
        data: b"multi",
        mode: 0o644,
    }]);
    LayoutBuilder::new()
        .tag("latest")
        .layer(layer, Compression::Gzip)
        .platforms(&["linux/amd64", "linux/arm64/v8", "linux/s390x"])
        .write(dir.path());
    let reg = Registry::start();
    reg.push(dir.path(), "demo/multi:latest");

    let a = Amphi::new();
    a.ok(&["pull", "-q", &reg.reference("demo/multi:latest")]);
    let j: serde_json::Value = serde_json::from_str(&a.ok(&["images", "--json"])).unwrap();
    assert_eq!(j[0]["platform"], "linux/amd64");

    let b = Amphi::new();
    b.ok(&[
        "pull",
        "-q",
        "--platform",
        "linux/arm64",
        &reg.reference("demo/multi:latest"),
    ]);
    let j: serde_json::Value = serde_json::from_str(&b.ok(&["images", "--json"])).unwrap();
    assert!(
        j[0]["platform"]
            .as_str()
            .unwrap()
            .starts_with("linux/arm64"),
        "{j}"
    );

    let c = Amphi::new();
    let err = c.fail(&[
        "pull",
        "-q",
        "--platform",
        "linux/riscv64",
        &reg.reference("demo/multi:latest"),
    ]);
    assert!(
        err.contains("linux/riscv64") && err.contains("linux/s390x"),
        "{err}"
    );
    assert!(listing(&c.root().join("blobs/sha256")).is_empty());
}

#[test]
fn pull_zstd_and_uncompressed_layers() {
    let dir = tempfile::tempdir().unwrap();
    let l1 = amphi_tests::raw_tar(&[TarEntry::File {
        path: "a/zstd.txt",
        data: b"z",
        mode: 0o644,
    }]);
    let l2 = amphi_tests::raw_tar(&[TarEntry::File {
        path: "a/plain.txt",
        data: b"p",
        mode: 0o644,
    }]);
    LayoutBuilder::new()
        .tag("latest")
        .layer(l1, Compression::Zstd)
        .layer(l2, Compression::None)
        .write(dir.path());
    let reg = Registry::start();
    reg.push(dir.path(), "demo/zstd:latest");
    let a = Amphi::new();
    a.ok(&["pull", "-q", &reg.reference("demo/zstd:latest")]);
    let j: serde_json::Value = serde_json::from_str(&a.ok(&["images", "--json"])).unwrap();
    let top = j[0]["layers"][1].as_str().unwrap().replace("sha256:", "");
    let diff = a.root().join("layers/sha256").join(top).join("diff");
    assert_eq!(fs::read(diff.join("a/plain.txt")).unwrap(), b"p");
}

#[test]
fn unreachable_registry_and_unknown_image() {
    let a = Amphi::new();
    let err = a.fail(&["pull", "-q", "127.0.0.1:1/demo/busybox:latest"]);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.to_lowercase().contains("connect"), "{err}");

    let reg = Registry::start();
    let err = a.fail(&["pull", "-q", &reg.reference("no/such:image")]);
    assert!(err.contains("no/such"), "{err}");
    let err = a.fail(&["pull", "-q", "Not A Reference"]);
    assert!(err.contains("invalid image reference"), "{err}");
    assert!(listing(&a.root().join("blobs/sha256")).is_empty());
    assert!(listing(&a.root().join("tmp")).is_empty());
    assert_eq!(a.ok(&["images", "-q"]).trim(), "");
}

#[test]
fn registry_serving_a_lying_blob_is_refused() {
    // Push an image, then corrupt a layer blob inside the registry storage:
    // the registry serves bytes that do not match the digest.
    let reg = Registry::start();
    reg.push(&test_image("busybox"), "demo/busybox:latest");
    let a = Amphi::new();
    a.ok(&["pull", "-q", &reg.reference("demo/busybox:latest")]);
    let inspect: serde_json::Value =
        serde_json::from_str(&a.ok(&["inspect", &reg.reference("demo/busybox:latest")])).unwrap();
    let layer = inspect[0]["Manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .replace("sha256:", "");
    let data_dir = reg.storage_dir();
    let blob = data_dir
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer[..2])
        .join(&layer)
        .join("data");
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, bytes).unwrap();

    let b = Amphi::new();
    let err = b.fail(&["pull", "-q", &reg.reference("demo/busybox:latest")]);
    assert!(err.contains(&layer[..12]) || err.contains(&layer), "{err}");
    assert!(err.to_lowercase().contains("digest"), "{err}");
    assert_eq!(b.ok(&["images", "-q"]).trim(), "");
    assert!(listing(&b.root().join("layers/sha256")).is_empty());
    assert!(listing(&b.root().join("tmp")).is_empty());
}

#[test]
fn concurrent_pulls_both_succeed_with_one_copy() {
    let reg = Registry::start();
    reg.push(&test_image("busybox-multi"), "demo/multi:latest");
    let a = Amphi::new();
    let r = reg.reference("demo/multi:latest");
    let children: Vec<_> = (0..2)
        .map(|_| {
            a.cmd(&["pull", "-q", &r])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "concurrent pull failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let j: serde_json::Value = serde_json::from_str(&a.ok(&["images", "--json"])).unwrap();
    assert_eq!(j.as_array().unwrap().len(), 1);
    // manifest + config + 2 layers, each once; 2 layer dirs.
    assert_eq!(listing(&a.root().join("blobs/sha256")).len(), 4);
    assert_eq!(listing(&a.root().join("layers/sha256")).len(), 2);
    assert_store_consistent(a.root());
    a.ok(&["gc"]);
    assert_eq!(listing(&a.root().join("blobs/sha256")).len(), 4);
}

#[test]
fn kill_9_at_any_moment_leaves_a_consistent_store() {
    let reg = Registry::start();
    reg.push(&test_image("minbase"), "demo/minbase:latest");
    let r = reg.reference("demo/minbase:latest");
    let a = Amphi::new();
    // Kill at a spread of moments: during the manifest, the download, the
    // unpack and the index write.
    for delay_ms in [5u64, 40, 150, 400, 900, 1600, 2500] {
        let mut child = a
            .cmd(&["pull", "-q", &r])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert_store_consistent(a.root());
        // A half-done image is never listed.
        let j: serde_json::Value = serde_json::from_str(&a.ok(&["images", "--json"])).unwrap();
        for img in j.as_array().unwrap() {
            for l in img["layers"].as_array().unwrap() {
                let l = l.as_str().unwrap().replace("sha256:", "");
                assert!(a
                    .root()
                    .join("layers/sha256")
                    .join(l)
                    .join("layer.json")
                    .is_file());
            }
        }
        // No overlay mount of the killed unpack survives it.
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(a.root().to_str().unwrap()),
            "leaked mount under the store:\n{mounts}"
        );
    }
    // gc repairs: tmp is swept.
    a.ok(&["gc"]);
    assert!(listing(&a.root().join("tmp")).is_empty());
    // And the next pull completes.
    a.ok(&["pull", "-q", &r]);
    assert_store_consistent(a.root());
    let j: serde_json::Value = serde_json::from_str(&a.ok(&["images", "--json"])).unwrap();
    assert_eq!(j[0]["names"][0], r);
    assert!(listing(&a.root().join("tmp")).is_empty());
}

#[test]
fn docker_schema2_manifests_pull() {
    let reg = Registry::start();
    // skopeo converts the OCI layout to a Docker schema2 manifest.
    let out = amphi_tests::run_cmd(
        std::process::Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "-q",
                "--format",
                "v2s2",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:latest", test_image("busybox").display()))
            .arg(format!("docker://{}/demo/v2s2:latest", reg.addr())),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = Amphi::new();
    let r = reg.reference("demo/v2s2:latest");
    a.ok(&["pull", "-q", &r]);
    let inspect: serde_json::Value = serde_json::from_str(&a.ok(&["inspect", &r])).unwrap();
    assert_eq!(
        inspect[0]["Manifest"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        inspect[0]["Manifest"]["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let chain = inspect[0]["Layers"][0]
        .as_str()
        .unwrap()
        .replace("sha256:", "");
    assert!(a
        .root()
        .join("layers/sha256")
        .join(chain)
        .join("diff/bin/busybox")
        .is_file());
}
