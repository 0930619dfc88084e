//! `amphi load`, end to end: OCI layouts, OCI archives (plain and gzip),
//! hand-made `docker save` archives, skopeo's output; naming, removal, gc and
//! sharing; and bad input, which must fail with a clear error and leave the
//! store exactly as it was.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use amphi_tests::{
    raw_tar, run_cmd, sha256_digest, skip, test_image, Amphi, Compression, LayoutBuilder, TarEntry,
};
use common::*;
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

fn file<'a>(path: &'a str, data: &'a [u8]) -> TarEntry<'a> {
    TarEntry::File {
        path,
        data,
        mode: 0o644,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A layer of its own (unique content, so a chain no other test has).
fn unique_layer(what: &str) -> Vec<u8> {
    let name = format!("etc/{}", unique(what));
    raw_tar(&[TarEntry::Dir { path: "etc" }, file(&name, b"unique")])
}

/// `amphi images --json`.
fn images(a: &Amphi) -> Vec<Value> {
    serde_json::from_str::<Value>(&a.ok(&["images", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A store that already holds one image, so that "unchanged" means something.
fn store_with_an_image() -> Amphi {
    let a = Amphi::new();
    let b = LayoutBuilder::new().layer(unique_layer("other"), Compression::Gzip);
    let (dir, _) = layout(&b);
    a.ok(&["load", "-q", "--tag", "example.com/other:1", s(dir.path())]);
    a
}

/// `amphi load ARGS` fails, leaving the store as it was; returns stderr.
fn load_fails(a: &Amphi, args: &[&str]) -> String {
    let before = store_state(a.root());
    let out = a.run(&[&["load", "-q"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.starts_with("amphi: error: loading "),
        "not a load error: {stderr}"
    );
    assert_store_unchanged(a.root(), &before);
    stderr
}

/// Some kilobytes of compressible, varied text.
fn text(kib: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0u64;
    while out.len() < kib * 1024 {
        writeln!(
            out,
            "line {i} of the file, value {}",
            i.wrapping_mul(2654435761) % 9973
        )
        .unwrap();
        i += 1;
    }
    out
}

// ------------------------------------------------------------- bad input

#[test]
fn corrupt_gzip_stream_is_refused() {
    let a = store_with_an_image();
    let data = text(256);
    let tar = raw_tar(&[file("big", &data)]);
    let mut gz = Compression::Gzip.compress(&tar);
    let mid = gz.len() / 2;
    for b in &mut gz[mid..mid + 16] {
        *b ^= 0x5a;
    }
    // The layer digest is that of the corrupt blob: only the stream is bad.
    let b = LayoutBuilder::new()
        .layer(unique_layer("base"), Compression::Gzip)
        .raw_layer(
            gz.clone(),
            Compression::Gzip.media_type(),
            &sha256_digest(&tar),
        );
    let (dir, built) = layout(&b);
    assert_eq!(built.layers[1], sha256_digest(&gz));
    let stderr = load_fails(&a, &[s(dir.path())]);
    assert!(stderr.contains("layer 2/2"), "{stderr}");
    assert!(stderr.contains(&built.layers[1]), "{stderr}");
    assert!(
        stderr.contains("gzip") || stderr.contains("diff ID mismatch"),
        "{stderr}"
    );
}

#[test]
fn truncated_tar_is_refused() {
    let a = store_with_an_image();
    let data = text(64);
    let tar = raw_tar(&[file("first", b"1"), file("big", &data), file("last", b"2")]);
    // Cut in the middle of "big"'s data; the blob digest matches the cut blob.
    let cut = tar[..tar.len() / 2].to_vec();
    let b = LayoutBuilder::new()
        .layer(unique_layer("base"), Compression::None)
        .raw_layer(cut, Compression::None.media_type(), &sha256_digest(&tar));
    let (dir, built) = layout(&b);
    let stderr = load_fails(&a, &[s(dir.path())]);
    assert!(stderr.contains("layer 2/2"), "{stderr}");
    assert!(stderr.contains(&built.layers[1]), "{stderr}");
    assert!(
        stderr.contains("cannot read the layer stream") || stderr.contains("\"big\""),
        "{stderr}"
    );
}

#[test]
fn blob_digest_mismatch_is_refused() {
    let a = store_with_an_image();
    let b = LayoutBuilder::new()
        .layer(unique_layer("base"), Compression::Gzip)
        .layer(unique_layer("top"), Compression::Gzip);
    let (dir, built) = layout(&b);
    let blob = dir.path().join("blobs/sha256").join(&built.layers[1][7..]);
    let other = Compression::Gzip.compress(&unique_layer("impostor"));
    fs::write(&blob, &other).unwrap();
    let stderr = load_fails(&a, &[s(dir.path())]);
    assert!(stderr.contains(&built.layers[1]), "{stderr}");
    assert!(
        stderr.contains("digest mismatch") || stderr.contains("size mismatch"),
        "{stderr}"
    );
}

#[test]
fn missing_blob_is_refused() {
    let a = store_with_an_image();
    let b = LayoutBuilder::new()
        .layer(unique_layer("base"), Compression::Gzip)
        .layer(unique_layer("top"), Compression::Gzip);
    let (dir, built) = layout(&b);
    fs::remove_file(dir.path().join("blobs/sha256").join(&built.layers[1][7..])).unwrap();
    let stderr = load_fails(&a, &[s(dir.path())]);
    assert!(stderr.contains(&built.layers[1]), "{stderr}");
    assert!(stderr.contains("missing"), "{stderr}");
}

#[test]
fn unknown_layer_media_type_is_refused() {
    let a = store_with_an_image();
    let tar = unique_layer("foo");
    let b = LayoutBuilder::new()
        .layer(unique_layer("base"), Compression::Gzip)
        .raw_layer(tar.clone(), "application/x-foo", &sha256_digest(&tar));
    let (dir, built) = layout(&b);
    let stderr = load_fails(&a, &[s(dir.path())]);
    assert!(stderr.contains("application/x-foo"), "{stderr}");
    assert!(stderr.contains(&built.layers[1]), "{stderr}");
    assert!(stderr.contains("media type"), "{stderr}");
}

#[test]
fn no_manifest_for_the_host_platform() {
    let a = store_with_an_image();
    let b = LayoutBuilder::new()
        .layer(unique_layer("arm"), Compression::Gzip)
        .platforms(&["linux/arm64", "linux/s390x"]);
    let (dir, built) = layout(&b);
    let stderr = load_fails(&a, &[s(dir.path())]);
    assert!(
        stderr.contains("no manifest for platform linux/amd64"),
        "{stderr}"
    );
    assert!(stderr.contains("linux/arm64, linux/s390x"), "{stderr}");

    let out = a.ok(&[
        "load",
        "-q",
        "--platform",
        "linux/arm64",
        "--tag",
        "example.com/arm:1",
        s(dir.path()),
    ]);
    assert!(out.contains("Loaded image: example.com/arm:1"), "{out}");
    let info = inspect(&a, "example.com/arm:1");
    assert_eq!(info["Platform"], "linux/arm64");
    assert_eq!(info["Digest"], built.manifests[0].as_str());
    assert_eq!(diff_dirs(&a, "example.com/arm:1").len(), 1);
}

#[test]
fn nonexistent_path_is_refused() {
    let a = store_with_an_image();
    let missing = std::env::temp_dir().join(unique("missing"));
    let stderr = load_fails(&a, &[s(&missing)]);
    assert!(stderr.contains(s(&missing)), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
}

#[test]
fn directory_that_is_not_a_layout_is_refused() {
    let a = store_with_an_image();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("README"), "not an image").unwrap();
    fs::create_dir(dir.path().join("blobs")).unwrap();
    let stderr = load_fails(&a, &[s(dir.path())]);
    assert!(stderr.contains(s(dir.path())), "{stderr}");
    assert!(stderr.contains("not an OCI layout"), "{stderr}");
}

#[test]
fn malformed_index_json_is_refused() {
    let a = store_with_an_image();
    let b = LayoutBuilder::new().layer(unique_layer("idx"), Compression::Gzip);
    let (dir, _) = layout(&b);
    fs::write(
        dir.path().join("index.json"),
        r#"{"schemaVersion": 2, "manifests": [{"mediaType": "#,
    )
    .unwrap();
    let stderr = load_fails(&a, &[s(dir.path())]);
    assert!(stderr.contains("index.json"), "{stderr}");
    assert!(stderr.contains("malformed"), "{stderr}");
}

// ---------------------------------------------------------- archive formats

/// Appends a regular file to a tar being built.
fn add(t: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    t.append_data(&mut h, path, data).unwrap();
}

#[test]
fn docker_save_archive_uses_repo_tags() {
    let a = Amphi::new();
    let l1 = raw_tar(&[
        TarEntry::Dir { path: "etc" },
        file("etc/os-release", b"ID=demo\n"),
        file("etc/old", b"old"),
    ]);
    let l2 = raw_tar(&[file("etc/.wh.old", b""), file("etc/app", b"app")]);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": {"Cmd": ["/bin/app"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&l1), sha256_digest(&l2)]},
    }))
    .unwrap();
    let hex = &sha256_digest(&config)[7..];
    let (id1, id2) = (&sha256_digest(b"one")[7..], &sha256_digest(b"two")[7..]);
    let manifest = json!([{
        "Config": format!("{hex}.json"),
        "RepoTags": ["example.com/demo/app:1"],
        "Layers": [format!("{id1}/layer.tar"), format!("{id2}/layer.tar")],
    }]);
    let mut t = tar::Builder::new(Vec::new());
    add(
        &mut t,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    add(&mut t, &format!("{hex}.json"), &config);
    add(&mut t, &format!("{id1}/layer.tar"), &l1);
    add(&mut t, &format!("{id2}/layer.tar"), &l2);
    add(
        &mut t,
        "repositories",
        br#"{"example.com/demo/app":{"1":"x"}}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    fs::write(&archive, t.into_inner().unwrap()).unwrap();

    let out = a.ok(&["load", "-q", s(&archive)]);
    assert_eq!(out.trim(), "Loaded image: example.com/demo/app:1");
    let imgs = images(&a);
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0]["names"], json!(["example.com/demo/app:1"]));
    assert_eq!(imgs[0]["config"], format!("sha256:{hex}").as_str());
    assert_eq!(imgs[0]["platform"], "linux/amd64");
    let info = inspect(&a, "example.com/demo/app:1");
    assert_eq!(info["Id"], format!("sha256:{hex}").as_str());
    assert_eq!(info["Names"], json!(["example.com/demo/app:1"]));
    assert_eq!(info["Config"]["config"]["Cmd"], json!(["/bin/app"]));
    let table = a.ok(&["images"]);
    assert!(
        table.contains("example.com/demo/app") && table.contains(&hex[..12]),
        "{table}"
    );
    let diffs = diff_dirs(&a, "example.com/demo/app:1");
    assert_eq!(merged_view(&diffs), ["etc", "etc/app", "etc/os-release"]);
    assert!(listing(&a.root().join("tmp")).is_empty());
}

/// The bytes of a tar of everything in `dir` (paths relative to it).
fn tar_of_dir(dir: &Path) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    t.append_dir_all(".", dir).unwrap();
    t.into_inner().unwrap()
}

fn check_oci_archive(gzip: bool) {
    let a = Amphi::new();
    let b = LayoutBuilder::new()
        .tag("example.com/oci/app:2")
        .layer(unique_layer("oci1"), Compression::Gzip)
        .layer(raw_tar(&[file("etc/two", b"2")]), Compression::Zstd);
    let (dir, built) = layout(&b);
    let mut bytes = tar_of_dir(dir.path());
    if gzip {
        bytes = Compression::Gzip.compress(&bytes);
    }
    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir
        .path()
        .join(if gzip { "app.tar.gz" } else { "app.tar" });
    fs::write(&archive, &bytes).unwrap();

    let out = a.ok(&["load", "-q", s(&archive)]);
    assert_eq!(out.trim(), "Loaded image: example.com/oci/app:2");
    let info = inspect(&a, "example.com/oci/app:2");
    assert_eq!(info["Digest"], built.digest.as_str());
    let diffs = diff_dirs(&a, "example.com/oci/app:2");
    assert_eq!(fs::read(diffs[1].join("etc/two")).unwrap(), b"2");
    // The blobs are the layout's, byte for byte; nothing is left in tmp/.
    for l in &built.layers {
        assert_eq!(
            fs::read(a.root().join("blobs/sha256").join(&l[7..])).unwrap(),
            fs::read(dir.path().join("blobs/sha256").join(&l[7..])).unwrap()
        );
    }
    assert!(listing(&a.root().join("tmp")).is_empty());
}

#[test]
fn oci_archive_loads() {
    check_oci_archive(false);
}

#[test]
fn gzip_compressed_oci_archive_loads() {
    check_oci_archive(true);
}

#[test]
fn oci_archive_with_a_bare_tag_is_named_after_the_file() {
    let a = Amphi::new();
    let b = LayoutBuilder::new()
        .tag("v1")
        .layer(unique_layer("bare"), Compression::Gzip);
    let (dir, _) = layout(&b);
    let out_dir = tempfile::tempdir().unwrap();
    let tar = tar_of_dir(dir.path());
    for (file, data) in [
        ("my-app.tar", tar.clone()),
        ("my-app.tar.gz", Compression::Gzip.compress(&tar)),
        ("my-app.tar.zst", Compression::Zstd.compress(&tar)),
    ] {
        let archive = out_dir.path().join(file);
        fs::write(&archive, data).unwrap();
        let out = a.ok(&["load", "-q", s(&archive)]);
        assert_eq!(out.trim(), "Loaded image: localhost/my-app:v1", "{file}");
    }
    assert_eq!(images(&a).len(), 1);
}

fn skopeo(args: &[&str]) -> bool {
    if !amphi_tests::have("skopeo") {
        skip("skopeo is not installed");
        return false;
    }
    let out = run_cmd(Command::new("skopeo").args(args));
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn skopeo_oci_and_docker_archives_load() {
    let busybox = test_image("busybox");
    let tmp = tempfile::Builder::new()
        .prefix("amphi-skopeo-")
        .tempdir()
        .unwrap();
    let (x, y) = (tmp.path().join("x.tar"), tmp.path().join("y.tar"));
    let src = format!("oci:{}:latest", busybox.display());
    if !skopeo(&["copy", "-q", &src, &format!("oci-archive:{}", x.display())])
        || !skopeo(&[
            "copy",
            "-q",
            &src,
            &format!("docker-archive:{}:example.com/bb:1", y.display()),
        ])
    {
        return;
    }
    let a = Amphi::new();
    let out = a.ok(&["load", "-q", s(&x)]);
    assert!(out.starts_with("Loaded image"), "{out}");
    let out = a.ok(&["load", "-q", s(&y)]);
    assert_eq!(out.trim(), "Loaded image: example.com/bb:1");

    let imgs = images(&a);
    assert_eq!(imgs.len(), 2, "{imgs:?}");
    let bb = inspect(&a, "example.com/bb:1");
    let diffs = diff_dirs(&a, "example.com/bb:1");
    let view = merged_view(&diffs);
    assert!(view.iter().any(|p| p == "bin/busybox"), "{view:?}");
    // Both copies carry the same layers (by diff ID): they share the unpacked ones.
    let other = imgs
        .iter()
        .find(|i| i["names"] != json!(["example.com/bb:1"]))
        .unwrap();
    assert_eq!(other["layers"], bb["Layers"]);
    assert_eq!(
        listing(&a.root().join("layers/sha256")).len(),
        diffs.len(),
        "layers are not shared"
    );
    assert!(listing(&a.root().join("tmp")).is_empty());
}

// --------------------------------------------------- naming, removal, sharing

#[test]
fn tag_option_names_the_image() {
    let a = Amphi::new();
    let b = LayoutBuilder::new()
        .tag("example.com/from/annotation:1")
        .layer(unique_layer("tag"), Compression::Gzip);
    let (dir, _) = layout(&b);
    let out = a.ok(&["load", "-q", "--tag", "example.com/named:7", s(dir.path())]);
    assert_eq!(out.trim(), "Loaded image: example.com/named:7");
    let imgs = images(&a);
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0]["names"], json!(["example.com/named:7"]));
    a.ok(&["inspect", "example.com/named:7"]);
    a.fail(&["inspect", "example.com/from/annotation:1"]);
    // Short names are normalised like docker's.
    let out = a.ok(&["load", "-q", "--tag", "short", s(dir.path())]);
    assert_eq!(out.trim(), "Loaded image: docker.io/library/short:latest");
    a.ok(&["inspect", "short"]);
}

#[test]
fn rmi_by_name_and_by_id_prefix_then_gc_empties_the_store() {
    let a = Amphi::new();
    let shared = unique_layer("shared");
    for (name, top) in [("example.com/a:1", "a"), ("example.com/b:1", "b")] {
        let b = LayoutBuilder::new()
            .layer(shared.clone(), Compression::Gzip)
            .layer(unique_layer(top), Compression::Zstd);
        let (dir, _) = layout(&b);
        a.ok(&["load", "-q", "--tag", name, s(dir.path())]);
    }
    assert_eq!(listing(&a.root().join("layers/sha256")).len(), 3);
    let id_b = inspect(&a, "example.com/b:1")["Id"]
        .as_str()
        .unwrap()
        .to_string();

    let out = a.ok(&["rmi", "example.com/a:1"]);
    assert!(out.contains("Untagged: example.com/a:1"), "{out}");
    a.fail(&["inspect", "example.com/a:1"]);
    a.ok(&["inspect", "example.com/b:1"]);
    assert_eq!(listing(&a.root().join("layers/sha256")).len(), 2);

    let out = a.ok(&["rmi", &id_b[7..19]]);
    assert!(out.contains(&format!("Deleted: {id_b}")), "{out}");
    a.ok(&["gc"]);
    assert!(images(&a).is_empty());
    assert_eq!(listing(&a.root().join("blobs/sha256")), Default::default());
    assert_eq!(listing(&a.root().join("layers/sha256")), Default::default());
    assert!(listing(&a.root().join("tmp")).is_empty());
}

#[test]
fn loading_the_same_image_twice_keeps_one_copy() {
    let a = Amphi::new();
    let b = LayoutBuilder::new()
        .tag("example.com/twice:1")
        .layer(unique_layer("twice"), Compression::Gzip)
        .layer(raw_tar(&[file("x", b"x")]), Compression::None);
    let (dir, _) = layout(&b);
    a.ok(&["load", "-q", s(dir.path())]);
    let first = store_state(a.root());
    let imgs1 = images(&a);
    a.ok(&["load", "-q", s(dir.path())]);
    let second = store_state(a.root());
    assert_eq!(second.blobs, first.blobs);
    assert_eq!(second.layers, first.layers);
    let imgs2 = images(&a);
    assert_eq!(imgs2.len(), 1, "{imgs2:?}");
    assert_eq!(imgs2[0]["manifest"], imgs1[0]["manifest"]);
    assert_eq!(imgs2[0]["names"], json!(["example.com/twice:1"]));
    assert!(listing(&a.root().join("tmp")).is_empty());
}

#[test]
fn layouts_sharing_a_base_layer_share_its_unpacked_dir() {
    let a = Amphi::new();
    let base = unique_layer("base");
    for (name, top) in [("example.com/one:1", "one"), ("example.com/two:1", "two")] {
        // The same base tar, compressed differently: same diff ID, same chain.
        let c = if top == "one" {
            Compression::Gzip
        } else {
            Compression::Zstd
        };
        let b = LayoutBuilder::new()
            .layer(base.clone(), c)
            .layer(unique_layer(top), Compression::Gzip);
        let (dir, _) = layout(&b);
        a.ok(&["load", "-q", "--tag", name, s(dir.path())]);
    }
    let one = diff_dirs(&a, "example.com/one:1");
    let two = diff_dirs(&a, "example.com/two:1");
    assert_eq!(one[0], two[0], "the base layer is unpacked twice");
    assert_ne!(one[1], two[1]);
    assert_eq!(listing(&a.root().join("layers/sha256")).len(), 3);
    // Removing one image keeps the shared base for the other.
    a.ok(&["rmi", "example.com/one:1"]);
    assert!(one[0].is_dir() && two[1].is_dir() && !one[1].exists());
}

/// overlayfs splits its options on ',' and `lowerdir` on ':', and takes '\'
/// as an escape: a store whose path holds all three still unpacks a layer
/// through an overlay of the one below (its whiteout applied) and runs the
/// image on an overlay of both.
#[test]
fn a_store_path_with_overlay_separators_works() {
    let a = Amphi::new();
    let store = a.root().join(r"st:o,r\e");
    let store = s(&store);
    let multi = test_image("busybox-multi");
    a.ok(&[
        "--store",
        store,
        "load",
        "-q",
        "--tag",
        "localhost/t/multi:latest",
        s(&multi),
    ]);
    let out = a.ok(&[
        "--store",
        store,
        "run",
        "--rm",
        "localhost/t/multi:latest",
        "sh",
        "-c",
        "cat /data/hello.txt >/dev/null && echo new >/data/new && cat /data/new; \
         test -e /bin/vi || echo vi-whited-out",
    ]);
    assert_eq!(out, "new\nvi-whited-out\n");
}

/// `--tag` names one image: an index with two refs is refused (and the
/// store left as it was), one image listed twice under one ref is not.
#[test]
fn tag_names_exactly_one_image() {
    let a = store_with_an_image();
    let (dir, _) = layout(&LayoutBuilder::new().layer(unique_layer("tag"), Compression::Gzip));
    let index_path = dir.path().join("index.json");
    let index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let first = index["manifests"][0].clone();
    let mut second = first.clone();
    second["annotations"]["org.opencontainers.image.ref.name"] = "other".into();
    let write = |manifests: Value| {
        let mut index = index.clone();
        index["manifests"] = manifests;
        fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    };
    write(json!([first, second]));
    let err = load_fails(&a, &["--tag", "example.com/one:1", s(dir.path())]);
    assert!(
        err.contains(&format!(
            "{} holds 2 images; --tag names exactly one",
            dir.path().display()
        )),
        "{err}"
    );
    write(json!([first, first]));
    a.ok(&["load", "-q", "--tag", "example.com/one:1", s(dir.path())]);
    assert!(images(&a)
        .iter()
        .any(|i| i["names"] == json!(["example.com/one:1"])));
}
