//! Checks of the test harness itself; none of these need the amphi binary.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Runs a tool, asserts success and returns its stdout.
fn tool(program: &str, args: &[&str]) -> String {
    let out = run_cmd(Command::new(program).args(args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap()
}

/// (path, link target, entry type) of every entry of a tar archive.
fn listing(tar: &[u8]) -> Vec<(String, Option<String>, tar::EntryType)> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().unwrap().map(|e| {
        let e = e.unwrap();
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        (path, link, e.header().entry_type())
    });
    entries.collect()
}

fn layer_tar() -> Vec<u8> {
    raw_tar(&[
        TarEntry::Dir { path: "etc" },
        TarEntry::File {
            path: "etc/hello",
            data: b"hello\n",
            mode: 0o644,
        },
    ])
}

#[test]
fn raw_tar_keeps_hostile_names_verbatim() {
    let long = format!("{}/deep", "d".repeat(120));
    let tar = raw_tar(&[
        TarEntry::File {
            path: "../../etc/x",
            data: b"evil",
            mode: 0o4755,
        },
        TarEntry::File {
            path: "/abs/x",
            data: b"abs",
            mode: 0o644,
        },
        TarEntry::Dir { path: "dir/" },
        TarEntry::Symlink {
            path: "dir/out",
            target: "/etc/shadow",
        },
        TarEntry::Hardlink {
            path: "hard",
            target: "../../x",
        },
        TarEntry::CharDev { path: "dev/null" },
        TarEntry::Symlink {
            path: &long,
            target: &long,
        },
    ]);
    use tar::EntryType as T;
    let expected = vec![
        ("../../etc/x".to_string(), None, T::Regular),
        ("/abs/x".to_string(), None, T::Regular),
        ("dir/".to_string(), None, T::Directory),
        (
            "dir/out".to_string(),
            Some("/etc/shadow".to_string()),
            T::Symlink,
        ),
        ("hard".to_string(), Some("../../x".to_string()), T::Link),
        ("dev/null".to_string(), None, T::Char),
        (long.clone(), Some(long.clone()), T::Symlink),
    ];
    assert_eq!(listing(&tar), expected);

    let mut archive = tar::Archive::new(&tar[..]);
    let mut first = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(first.header().mode().unwrap(), 0o4755);
    let mut data = String::new();
    std::io::Read::read_to_string(&mut first, &mut data).unwrap();
    assert_eq!(data, "evil");
}

#[test]
fn layout_builder_writes_a_layout_skopeo_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let tars = [
        layer_tar(),
        raw_tar(&[TarEntry::Symlink {
            path: "link",
            target: "etc/hello",
        }]),
        layer_tar(),
    ];
    let built = LayoutBuilder::new()
        .tag("v1")
        .layer(tars[0].clone(), Compression::None)
        .layer(tars[1].clone(), Compression::Gzip)
        .layer(tars[2].clone(), Compression::Zstd)
        .write(dir.path());

    let reference = format!("oci:{}:v1", dir.path().display());
    let inspect: Value = serde_json::from_str(&tool("skopeo", &["inspect", &reference])).unwrap();
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Layers"], serde_json::json!(built.layers));
    let config: Value =
        serde_json::from_str(&tool("skopeo", &["inspect", "--config", &reference])).unwrap();
    let want: Vec<String> = tars.iter().map(|t| sha256_digest(t)).collect();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(want));
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));

    // A full copy reads and verifies every blob.
    let copy = tempfile::tempdir().unwrap();
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "-q",
            &reference,
            &format!("dir:{}", copy.path().display()),
        ],
    );
    let zstd_blob = blob(dir.path(), &built.layers[2]);
    assert_eq!(zstd::decode_all(&zstd_blob[..]).unwrap(), tars[2]);
}

#[test]
fn layout_builder_can_corrupt_digests() {
    let dir = tempfile::tempdir().unwrap();
    let built = LayoutBuilder::new()
        .layer(layer_tar(), Compression::Gzip)
        .corrupt_layer_digest(0)
        .write(dir.path());
    let stored = std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap();
    let names: Vec<String> = stored
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.contains(&built.layers[0][7..].to_string()),
        "the named layer blob must not exist"
    );

    let dir = tempfile::tempdir().unwrap();
    let built = LayoutBuilder::new()
        .layer(layer_tar(), Compression::Gzip)
        .corrupt_diff_id(0)
        .write(dir.path());
    assert_ne!(built.diff_ids[0], sha256_digest(&layer_tar()));
    let gz = blob(dir.path(), &built.layers[0]);
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    assert_eq!(tar, layer_tar(), "the layer itself stays intact");
}

#[test]
fn layout_builder_platform_index() {
    let dir = tempfile::tempdir().unwrap();
    let built = LayoutBuilder::new()
        .layer(layer_tar(), Compression::Gzip)
        .platforms(&["linux/arm64/v8", "linux/amd64", "linux/arm/v7"])
        .write(dir.path());
    let reference = format!("oci:{}:latest", dir.path().display());
    let raw: Value =
        serde_json::from_str(&tool("skopeo", &["inspect", "--raw", &reference])).unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 3);
    assert_eq!(raw["manifests"][2]["platform"]["variant"], "v7");
    assert_eq!(raw["manifests"][1]["digest"], built.manifests[1]);
    assert_eq!(
        json_file(&dir.path().join("index.json"))["manifests"][0]["digest"],
        built.digest
    );
    // skopeo picks this machine's platform out of the index.
    let inspect: Value = serde_json::from_str(&tool("skopeo", &["inspect", &reference])).unwrap();
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(
        inspect["Digest"], built.digest,
        "skopeo reports the index digest"
    );
}

#[test]
fn test_images_are_valid_layouts() {
    for name in ["busybox", "busybox-multi"] {
        let layout = test_image(name);
        let index = json_file(&layout.join("index.json"));
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
        let reference = format!("oci:{}:latest", layout.display());
        let inspect: Value =
            serde_json::from_str(&tool("skopeo", &["inspect", &reference])).unwrap();
        assert_eq!(inspect["Architecture"], "amd64");
    }
    let multi = test_image("busybox-multi");
    let manifest_digest = json_file(&multi.join("index.json"))["manifests"][0]["digest"].clone();
    let manifest: Value =
        serde_json::from_slice(&blob(&multi, manifest_digest.as_str().unwrap())).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let gz = blob(&multi, layers[1]["digest"].as_str().unwrap());
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    let paths: Vec<String> = listing(&tar).into_iter().map(|(p, _, _)| p).collect();
    assert!(paths.contains(&"bin/.wh.vi".to_string()), "{paths:?}");
    assert!(paths.contains(&"data/hello.txt".to_string()), "{paths:?}");
}

#[test]
fn registry_push_and_catalog() {
    let registry = Registry::start();
    registry.push(&test_image("busybox"), "busybox:latest");
    registry.push(&test_image("busybox-multi"), "test/busybox-multi:v2");
    let catalog = tool(
        "curl",
        &["-fsS", &format!("http://{}/v2/_catalog", registry.addr())],
    );
    let catalog: Value = serde_json::from_str(&catalog).unwrap();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["busybox", "test/busybox-multi"]),
        "{}",
        registry.log()
    );
    let tags = tool(
        "curl",
        &[
            "-fsS",
            &format!("http://{}/v2/test/busybox-multi/tags/list", registry.addr()),
        ],
    );
    assert!(tags.contains("\"v2\""), "{tags}");
    assert_eq!(
        registry.reference("busybox:latest"),
        format!("{}/busybox:latest", registry.addr())
    );
}

#[test]
fn registry_stops_on_drop() {
    let registry = Registry::start();
    let addr = registry.addr().to_string();
    drop(registry);
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "registry at {addr} still listening"
    );
}
