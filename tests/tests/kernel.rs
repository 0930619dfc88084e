//! `amphi kernel ls|build|add|inspect|rm`, end to end: amphi's own kernels
//! registered from the machine's build cache (scripts/test builds them once),
//! kernels added from files (vmlinux and bzImage, with version and config
//! detection), and bad input, which must fail clearly and leave the catalog
//! as it was.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::{run_cmd, skip, Amphi};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

/// The machine's finished build of `series` and its recipe hash, or a loud
/// skip (scripts/test builds both kernels before the tests).
fn cached_build(series: &str) -> Option<(PathBuf, String)> {
    let (dir, _) = amphi_tests::guest_kernel_build(series)?;
    let hash = amphi_tests::guest_kernel_recipe_hash(series)?;
    Some((dir, hash))
}

fn version_of(build: &Path) -> String {
    fs::read_to_string(build.join("version"))
        .unwrap()
        .trim()
        .to_string()
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(p).unwrap()))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ls_json(a: &Amphi) -> Vec<Value> {
    serde_json::from_str::<Value>(&a.ok(&["kernel", "ls", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn inspect_json(a: &Amphi, kernel: &str) -> Value {
    serde_json::from_str(&a.ok(&["kernel", "inspect", kernel, "--json"])).unwrap()
}

/// The names in `$AMPHI_ROOT/kernels`, the lock file aside.
fn catalog_dirs(a: &Amphi) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(a.root().join("kernels"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".lock")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn build_registers_both_series_from_the_cache() {
    let a = Amphi::new();
    let mut ids = Vec::new();
    for series in ["6.12", "6.1"] {
        let Some((build, hash)) = cached_build(series) else {
            return;
        };
        let version = version_of(&build);
        let out = a.run(&["kernel", "build", "--version", series]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("is in the build cache"), "{stderr}");
        assert!(!stderr.contains("building guest kernel"), "{stderr}");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(id, format!("{version}-{hash}"));
        // Again: the same entry, still one.
        assert_eq!(a.ok(&["kernel", "build", "--version", series]).trim(), id);

        let e = inspect_json(&a, &id);
        assert_eq!(e["id"], id.as_str());
        assert_eq!(e["version"], version.as_str());
        assert_eq!(e["pvm"], false);
        assert_eq!(e["recipe"], format!("{series}-{hash}").as_str());
        assert_eq!(e["formats"], serde_json::json!(["vmlinux", "bzImage"]));
        assert_eq!(
            e["config_sha256"],
            sha256_file(&build.join("config")).as_str()
        );
        assert!(e["pvh_entry"].as_u64().is_some(), "{e}");
        assert!(e["source"].as_str().unwrap().starts_with(&format!(
            "built from linux-source-{series} (recipe hash {hash})"
        )));
        for (key, file) in [
            ("vmlinux", "vmlinux"),
            ("bzImage", "bzImage"),
            ("config", "config"),
        ] {
            let p = PathBuf::from(e[key].as_str().unwrap());
            assert_eq!(sha256_file(&p), sha256_file(&build.join(file)), "{key}");
        }
        let opts = &e["config_options"];
        for on in [
            "CONFIG_PVH",
            "CONFIG_KVM_GUEST",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
            "CONFIG_EROFS_FS",
        ] {
            assert_eq!(opts[on], "y", "{on} in {series}");
        }
        assert_eq!(opts["CONFIG_MODULES"], Value::Null);
        ids.push(id);
    }

    // The table: newest first, both built.
    let table = a.ok(&["kernel", "ls"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "VERSION", "PVM", "FORMATS", "SOURCE"]
    );
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[1].starts_with(&ids[0]), "{table}");
    assert!(lines[2].starts_with(&ids[1]), "{table}");
    assert!(
        lines[1].contains(" no ") && lines[1].contains("vmlinux,bzImage"),
        "{table}"
    );
    let json = ls_json(&a);
    assert_eq!(
        json.iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ids
    );

    // Lookup by series and version; text inspect; one option.
    assert_eq!(inspect_json(&a, "6.12")["id"], ids[0].as_str());
    assert_eq!(inspect_json(&a, "6.1")["id"], ids[1].as_str());
    let v61 = json[1]["version"].as_str().unwrap();
    assert_eq!(inspect_json(&a, v61)["id"], ids[1].as_str());
    let text = a.ok(&["kernel", "inspect", "6.1"]);
    for want in [
        format!("ID:          {}", ids[1]),
        "PVM:         no".into(),
        "CONFIG_PVH=y".into(),
        "CONFIG_MODULES is not set".into(),
    ] {
        assert!(text.contains(&want), "{want:?} missing in:\n{text}");
    }
    assert_eq!(
        a.ok(&["kernel", "inspect", "6.12", "--option", "CONFIG_PVH"]),
        "y\n"
    );
    assert_eq!(
        a.ok(&["kernel", "inspect", "6.12", "--option", "NR_CPUS"]),
        "64\n"
    );
    let out = a.run(&["kernel", "inspect", "6.12", "--option", "CONFIG_PVM_GUEST"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "CONFIG_PVM_GUEST is not set\n"
    );
    let err = a.fail(&["kernel", "inspect", "5.10"]);
    assert!(err.contains("no kernel \"5.10\" in the catalog"), "{err}");

    // rm, and the cache brings it back without a build.
    assert_eq!(a.ok(&["kernel", "rm", &ids[1]]).trim(), ids[1]);
    assert_eq!(catalog_dirs(&a), vec![ids[0].clone()]);
    let err = a.fail(&["kernel", "rm", &ids[1]]);
    assert!(err.contains("no kernel with ID"), "{err}");
    a.ok(&["kernel", "build", "--version", "6.1"]);
    assert_eq!(ls_json(&a).len(), 2);
}

#[test]
fn build_defaults_to_the_newest_series() {
    let Some((build, hash)) = cached_build("6.12") else {
        return;
    };
    let a = Amphi::new();
    let id = a.ok(&["kernel", "build"]);
    assert_eq!(id.trim(), format!("{}-{hash}", version_of(&build)));
}

#[test]
fn add_the_built_vmlinux_and_bzimage() {
    let Some((build, hash)) = cached_build("6.12") else {
        return;
    };
    let version = version_of(&build);
    let a = Amphi::new();
    for (file, format) in [("vmlinux", "vmlinux"), ("bzImage", "bzImage")] {
        let path = build.join(file);
        let id = a.ok(&["kernel", "add", s(&path)]).trim().to_string();
        let short = &sha256_file(&path)[..12];
        assert_eq!(id, format!("{version}-{short}"));
        assert_ne!(short, hash);
        let e = inspect_json(&a, &id);
        assert_eq!(e["version"], version.as_str(), "{file}");
        assert_eq!(e["release"], version.as_str(), "{file}");
        assert_eq!(e["formats"], serde_json::json!([format]));
        assert_eq!(e["pvm"], false);
        // The config embedded by CONFIG_IKCONFIG is the build's .config.
        assert_eq!(e["config_source"], "embedded (IKCONFIG)");
        assert_eq!(
            e["config_sha256"],
            sha256_file(&build.join("config")).as_str()
        );
        assert_eq!(
            e["source"],
            format!("added from {}", path.display()).as_str()
        );
        assert_eq!(
            sha256_file(Path::new(e[format].as_str().unwrap())),
            sha256_file(&path)
        );
        if format == "vmlinux" {
            assert!(e["pvh_entry"].as_u64().is_some());
            assert_eq!(e["bzImage"], Value::Null);
        } else {
            assert_eq!(e["vmlinux"], Value::Null);
        }
        // Adding the same file again changes nothing.
        let out = a.run(&["kernel", "add", s(&path)]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("already in the catalog"));
    }
    assert_eq!(ls_json(&a).len(), 2);
    let table = a.ok(&["kernel", "ls"]);
    assert!(table.contains("added from "), "{table}");
}

#[test]
fn add_with_config_and_pvm() {
    let Some((build, _)) = cached_build("6.12") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // --pvm: declared.
    let a = Amphi::new();
    let id = a.ok(&["kernel", "add", s(&build.join("vmlinux")), "--pvm"]);
    let e = inspect_json(&a, id.trim());
    assert_eq!(e["pvm"], true);
    let table = a.ok(&["kernel", "ls"]);
    assert!(table.lines().nth(1).unwrap().contains(" yes "), "{table}");
    // The same kernel without --pvm is a different entry: refused.
    let err = a.fail(&["kernel", "add", s(&build.join("vmlinux"))]);
    assert!(err.contains("already in the catalog"), "{err}");
    assert!(err.contains("amphi kernel rm"), "{err}");

    // --config with CONFIG_PVM_GUEST=y: inferred, and the file is the config.
    let mut config = fs::read_to_string(build.join("config")).unwrap();
    config.push_str("CONFIG_PVM_GUEST=y\n");
    let config_path = tmp.path().join("config-pvm");
    fs::write(&config_path, &config).unwrap();
    let b = Amphi::new();
    let id = b.ok(&[
        "kernel",
        "add",
        s(&build.join("bzImage")),
        "--config",
        s(&config_path),
    ]);
    let id = id.trim();
    let e = inspect_json(&b, id);
    assert_eq!(e["pvm"], true);
    assert_eq!(e["config_sha256"], sha256_file(&config_path).as_str());
    assert_eq!(
        e["config_source"],
        format!("--config {}", config_path.display()).as_str()
    );
    assert_eq!(
        b.ok(&["kernel", "inspect", id, "--option", "PVM_GUEST"]),
        "y\n"
    );
    assert_eq!(
        fs::read_to_string(e["config"].as_str().unwrap()).unwrap(),
        config
    );
}

/// `amphi kernel add ARGS` fails, naming `names`, leaving the catalog as it was.
fn add_fails(a: &Amphi, args: &[&str], names: &Path, what: &str) {
    let before = catalog_dirs(a);
    let err = a.fail(&[&["kernel", "add"], args].concat());
    assert!(err.starts_with("amphi: error: "), "{err}");
    assert!(
        err.contains(s(names)),
        "{err} should name {}",
        names.display()
    );
    assert!(err.contains(what), "{err} should say {what:?}");
    assert_eq!(catalog_dirs(a), before, "the catalog changed: {err}");
}

#[test]
fn bad_input_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Amphi::new();
    let missing = tmp.path().join("no-such-vmlinux");
    add_fails(&a, &[s(&missing)], &missing, "does not exist");
    add_fails(&a, &[s(tmp.path())], tmp.path(), "is a directory");
    let text = tmp.path().join("notes.txt");
    fs::write(&text, "just some text\n".repeat(100)).unwrap();
    add_fails(
        &a,
        &[s(&text)],
        &text,
        "neither an ELF vmlinux nor a bzImage",
    );
    let empty = tmp.path().join("empty");
    fs::write(&empty, "").unwrap();
    add_fails(&a, &[s(&empty)], &empty, "empty file");
    // A program is an ELF, but not a kernel.
    let prog = amphi_tests::amphi_bin();
    add_fails(&a, &[s(&prog)], &prog, "not a usable kernel");

    let Some((build, _)) = cached_build("6.12") else {
        return;
    };
    for (file, what) in [
        ("vmlinux", "truncated ELF"),
        ("bzImage", "truncated bzImage"),
    ] {
        let data = fs::read(build.join(file)).unwrap();
        for cut in [40, 600, data.len() / 2, data.len() - 1] {
            let t = tmp.path().join(format!("{file}-{cut}"));
            fs::write(&t, &data[..cut]).unwrap();
            let what = if cut == 40 && file == "bzImage" {
                "neither an ELF vmlinux nor a bzImage"
            } else {
                what
            };
            add_fails(&a, &[s(&t)], &t, what);
        }
    }
    let vmlinux = build.join("vmlinux");
    let v = s(&vmlinux);
    add_fails(
        &a,
        &[v, "--config", s(&text)],
        &text,
        "not a kernel config: line 1",
    );
    add_fails(
        &a,
        &[v, "--config", s(&empty)],
        &empty,
        "no CONFIG_ options",
    );
    add_fails(
        &a,
        &[v, "--config", s(tmp.path())],
        tmp.path(),
        "is a directory",
    );
    let missing_cfg = tmp.path().join("no-such-config");
    add_fails(
        &a,
        &[v, "--config", s(&missing_cfg)],
        &missing_cfg,
        "does not exist",
    );
    assert!(catalog_dirs(&a).is_empty());

    let err = a.fail(&["kernel", "rm", "nope"]);
    assert!(err.contains("no kernel with ID \"nope\""), "{err}");
    let err = a.fail(&["kernel", "inspect", "6.12"]);
    assert!(err.contains("catalog is empty"), "{err}");
    let err = a.fail(&["kernel", "build", "--version", "6.12.117"]);
    assert!(err.contains("give the series"), "{err}");
}

#[test]
fn inspect_option_needs_a_known_config() {
    let Some((build, _)) = cached_build("6.12") else {
        return;
    };
    // A bzImage whose embedded config is unreadable (payload bytes damaged,
    // size kept): its config is recorded as unknown.
    let mut data = fs::read(build.join("bzImage")).unwrap();
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 4096] {
        *b = !*b;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bzImage");
    fs::write(&p, &data).unwrap();
    let a = Amphi::new();
    let id = a.ok(&["kernel", "add", s(&p)]);
    let e = inspect_json(&a, id.trim());
    assert_eq!(e["config_source"], "unknown");
    assert_eq!(e["config_sha256"], Value::Null);
    assert!(a
        .ok(&["kernel", "inspect", id.trim()])
        .contains("Config:      unknown"));
    let err = a.fail(&["kernel", "inspect", id.trim(), "--option", "CONFIG_PVH"]);
    assert!(err.contains("config is unknown"), "{err}");
}

#[test]
fn build_without_sources_or_tools_says_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Amphi::new();
    let empty = tmp.path().join("src");
    fs::create_dir(&empty).unwrap();
    let out = run_cmd(
        a.cmd(&["kernel", "build"])
            .env("AMPHI_LINUX_SOURCE_DIR", &empty)
            .env("AMPHI_KERNEL_CACHE", tmp.path().join("cache")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("apt-get install linux-source-6.12"), "{err}");
    let out = run_cmd(
        a.cmd(&["kernel", "build", "--version", "6.1"])
            .env("AMPHI_LINUX_SOURCE_DIR", &empty)
            .env("AMPHI_KERNEL_CACHE", tmp.path().join("cache")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("linux-source-6.1.tar.xz is missing"), "{err}");
    assert!(err.contains("apt-get install linux-source-6.1"), "{err}");

    // A source but no compiler on PATH: no build starts.
    fs::write(empty.join("linux-source-6.12.tar.xz"), "not a tarball").unwrap();
    let out = run_cmd(
        a.cmd(&["kernel", "build", "--version", "6.12"])
            .env("AMPHI_LINUX_SOURCE_DIR", &empty)
            .env("AMPHI_KERNEL_CACHE", tmp.path().join("cache"))
            .env("PATH", tmp.path().join("no-bin")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs make, gcc"), "{err}");
    assert!(err.contains("apt-get install make gcc"), "{err}");
    assert!(catalog_dirs(&a).is_empty());
}

#[test]
fn a_failed_build_shows_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let cache = tmp.path().join("cache");
    fs::create_dir(&src).unwrap();
    // A "source tarball" that tar cannot read: the recipe fails at once.
    fs::write(src.join("linux-source-6.12.tar.xz"), "not a tarball").unwrap();
    let a = Amphi::new();
    let out = run_cmd(
        a.cmd(&["kernel", "build", "--version", "6.12"])
            .env("AMPHI_LINUX_SOURCE_DIR", &src)
            .env("AMPHI_KERNEL_CACHE", &cache),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("building a guest kernel needs") {
        skip(&format!("kernel build tools missing: {err}"));
        return;
    }
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("building guest kernel 6.12.x (about") && err.contains("log: "),
        "{err}"
    );
    assert!(err.contains("building guest kernel 6.12 failed"), "{err}");
    assert!(err.contains("last lines of the log"), "{err}");
    assert!(err.contains("tar"), "the log's tail is shown: {err}");
    // Only the log and the lock are left in the cache.
    let mut left: Vec<String> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left[0].ends_with(".lock") && left[1].ends_with(".log"),
        "{left:?}"
    );
    assert!(catalog_dirs(&a).is_empty());
}

#[test]
fn help_has_examples() {
    let a = Amphi::new();
    for sub in [
        &["kernel"][..],
        &["kernel", "ls"],
        &["kernel", "build"],
        &["kernel", "add"],
        &["kernel", "inspect"],
        &["kernel", "rm"],
    ] {
        let out = a.ok(&[sub, &["--help"]].concat());
        assert!(
            out.contains("Examples:"),
            "amphi {} --help:\n{out}",
            sub.join(" ")
        );
    }
}
