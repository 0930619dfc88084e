//! amphi's own microVM kernel: built from Debian's `linux-source-<series>`
//! tarball with the embedded recipe (`guest-kernel/build.sh`) and config
//! fragment (`guest-kernel/microvm.config`), once per machine, into the
//! build cache (`$AMPHI_KERNEL_CACHE`, default `/var/cache/amphi/kernels`),
//! then registered in a store's catalog.
//!
//! A build is keyed by `<series>-<hash12>`, hash12 being the first 12 hex
//! digits of sha256(fragment ++ recipe ++ "\n<tarball size> <tarball mtime>\n"):
//! a new recipe, fragment or source package gives a new build.

use super::catalog::Catalog;
use super::{KernelEntry, KernelError, KernelVersion};
use crate::sys::io::IoAt;
use rustix::fs::FlockOperation;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The config fragment, applied on top of `make allnoconfig`.
pub const CONFIG_FRAGMENT: &[u8] = include_bytes!("../../../guest-kernel/microvm.config");
/// The build recipe: `sh build.sh TARBALL FRAGMENT OUTDIR`.
pub const BUILD_SCRIPT: &[u8] = include_bytes!("../../../guest-kernel/build.sh");

/// The machine-wide build cache: `$AMPHI_KERNEL_CACHE` or /var/cache/amphi/kernels.
pub fn cache_root() -> PathBuf {
    env_dir("AMPHI_KERNEL_CACHE", "/var/cache/amphi/kernels")
}

/// Where the `linux-source-<series>.tar.xz` tarballs are:
/// `$AMPHI_LINUX_SOURCE_DIR` or /usr/src.
pub fn source_dir() -> PathBuf {
    env_dir("AMPHI_LINUX_SOURCE_DIR", "/usr/src")
}

fn env_dir(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    // The recipe changes directory: every path it gets must be absolute.
    std::path::absolute(&p).unwrap_or(p)
}

/// The first 12 hex digits of the build key for a source tarball of this
/// size and modification time (seconds).
pub fn recipe_hash(tarball_size: u64, tarball_mtime_secs: i64) -> String {
    let mut h = Sha256::new();
    h.update(CONFIG_FRAGMENT);
    h.update(BUILD_SCRIPT);
    h.update(format!("\n{tarball_size} {tarball_mtime_secs}\n").as_bytes());
    hex::encode(h.finalize())[..12].to_string()
}

/// One series' build: its source tarball and cache key.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// "6.12".
    pub series: String,
    /// `<source dir>/linux-source-<series>.tar.xz`.
    pub tarball: PathBuf,
    /// First 12 hex digits of the build key.
    pub hash12: String,
}

impl Recipe {
    /// The recipe for `series` ("6.12" or "6.1"); needs the source tarball.
    pub fn for_series(series: &str) -> Result<Recipe, KernelError> {
        let series = parse_series(series)?;
        let tarball = source_dir().join(format!("linux-source-{series}.tar.xz"));
        let meta = match fs::metadata(&tarball) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(KernelError::NoSource { series, tarball }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KernelError::NoSource { series, tarball })
            }
            Err(e) => return Err(KernelError::io(&tarball, e)),
        };
        Ok(Recipe {
            hash12: recipe_hash(meta.len(), meta.mtime()),
            series,
            tarball,
        })
    }

    /// "6.12-b9a0e125f111": the build's name in the cache and in `meta.json`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.series, self.hash12)
    }

    /// The build output in the cache: `<cache>/<key>/`.
    pub fn output(&self) -> PathBuf {
        cache_root().join(self.key())
    }

    /// The cache holds a complete build.
    pub fn is_built(&self) -> bool {
        let out = self.output();
        ["vmlinux", "bzImage", "config", "version"]
            .iter()
            .all(|f| out.join(f).is_file())
    }
}

/// "6.12" -> "6.12"; anything else but `X.Y` is refused.
fn parse_series(s: &str) -> Result<String, KernelError> {
    let v = KernelVersion::parse(s)?;
    if s.trim().matches('.').count() != 1 {
        return Err(KernelError::BadVersion(format!(
            "{s} (give the series, e.g. 6.12: the patch level comes from the linux-source package)"
        )));
    }
    Ok(v.series())
}

/// The series whose source tarballs are installed, newest first.
pub fn available_series() -> Vec<String> {
    let mut found: Vec<KernelVersion> = fs::read_dir(source_dir())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let series = name
                        .strip_prefix("linux-source-")?
                        .strip_suffix(".tar.xz")?;
                    (series.matches('.').count() == 1)
                        .then(|| KernelVersion::parse(series).ok())
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by(|a, b| b.cmp(a));
    found.iter().map(KernelVersion::series).collect()
}

/// Registers amphi's own kernel of every installed series that the
/// machine's build cache holds (best effort, no build): how an empty
/// catalog gets its first kernels.
pub fn register_builtins(store_root: &Path) {
    for series in available_series() {
        let _ = ensure_builtin(store_root, &series);
    }
}

/// amphi's own kernel for `series`, for the current recipe: from the
/// catalog, else registered from the machine's build cache (cheap: no
/// build), else [`KernelError::NoBuiltin`].
pub fn ensure_builtin(store_root: &Path, series: &str) -> Result<KernelEntry, KernelError> {
    let series = parse_series(series)?;
    let recipe = match Recipe::for_series(&series) {
        Ok(r) => r,
        Err(KernelError::NoSource { .. }) => return Err(KernelError::NoBuiltin { series }),
        Err(e) => return Err(e),
    };
    let catalog = Catalog::open(store_root);
    let key = recipe.key();
    if let Some(e) = catalog
        .list()?
        .into_iter()
        .find(|e| e.recipe.as_deref() == Some(key.as_str()))
    {
        return Ok(e);
    }
    if recipe.is_built() {
        return catalog.register_build(&recipe.output(), &series, &key, false);
    }
    Err(KernelError::NoBuiltin { series })
}

/// Options of [`build`].
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// "6.12" or "6.1"; None: the newest series whose source is installed.
    pub series: Option<String>,
    /// Build again even if the cache has this build.
    pub rebuild: bool,
}

/// Builds (or finds in the cache) amphi's kernel and registers it in the
/// catalog of `store_root`. `note` gets the messages for the user.
pub fn build(
    store_root: &Path,
    opts: &BuildOptions,
    note: &mut dyn FnMut(&str),
) -> Result<KernelEntry, KernelError> {
    let series = match &opts.series {
        Some(s) => parse_series(s)?,
        None => available_series()
            .into_iter()
            .next()
            .ok_or_else(|| KernelError::NoSources { dir: source_dir() })?,
    };
    let recipe = Recipe::for_series(&series)?;
    let catalog = Catalog::open(store_root);
    let out = recipe.output();
    if !opts.rebuild && recipe.is_built() {
        note(&format!(
            "guest kernel {series} is in the build cache: {}",
            out.display()
        ));
        return catalog.register_build(&out, &series, &recipe.key(), false);
    }
    check_tools()?;
    let cache = cache_root();
    fs::create_dir_all(&cache).at(&cache)?;
    let _lock = lock_build(&cache.join(format!("{}.lock", recipe.key())), note)?;
    if opts.rebuild && out.exists() {
        let old = cache.join(format!("{}.old-{}", recipe.key(), std::process::id()));
        fs::rename(&out, &old).at(&out)?;
        fs::remove_dir_all(&old).at(&old)?;
    } else if recipe.is_built() {
        // Another amphi built it while we waited for the lock.
        return catalog.register_build(&out, &series, &recipe.key(), false);
    }
    run_recipe(&recipe, note)?;
    catalog.register_build(&out, &series, &recipe.key(), opts.rebuild)
}

/// Runs `sh build.sh` with the embedded recipe, output to `<cache>/<key>.log`.
fn run_recipe(recipe: &Recipe, note: &mut dyn FnMut(&str)) -> Result<(), KernelError> {
    let cache = cache_root();
    let key = recipe.key();
    let src = cache.join(format!("{key}.recipe"));
    let _ = fs::remove_dir_all(&src);
    fs::create_dir_all(&src).at(&src)?;
    let script = src.join("build.sh");
    let fragment = src.join("microvm.config");
    fs::write(&script, BUILD_SCRIPT).at(&script)?;
    fs::write(&fragment, CONFIG_FRAGMENT).at(&fragment)?;
    let log_path = cache.join(format!("{key}.log"));
    let log = File::create(&log_path).at(&log_path)?;
    let log2 = log.try_clone().at(&log_path)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    note(&format!(
        "building guest kernel {}.x (about {} minutes on {cores} cores); log: {}",
        recipe.series,
        (34 / cores).max(3),
        log_path.display()
    ));
    let started = std::time::Instant::now();
    let status = Command::new("sh")
        .arg(&script)
        .arg(&recipe.tarball)
        .arg(&fragment)
        .arg(recipe.output())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .status()
        .map_err(|e| KernelError::io(Path::new("sh"), e));
    let _ = fs::remove_dir_all(&src);
    let status = status?;
    if !status.success() || !recipe.is_built() {
        // The recipe leaves its work tree behind on failure: gigabytes.
        let work = PathBuf::from(format!("{}.build", recipe.output().display()));
        let _ = fs::remove_dir_all(work);
        return Err(KernelError::BuildFailed {
            series: recipe.series.clone(),
            status: if status.success() {
                "no output".into()
            } else {
                status.to_string()
            },
            tail: log_tail(&log_path, 20),
            log: log_path,
        });
    }
    let secs = started.elapsed().as_secs();
    note(&format!(
        "built guest kernel {} in {}m{:02}s",
        recipe.series,
        secs / 60,
        secs % 60
    ));
    Ok(())
}

/// The last `n` lines of a file.
fn log_tail(path: &Path, n: usize) -> String {
    let Ok(f) = File::open(path) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The build lock for one key; says so when another build holds it.
fn lock_build(path: &Path, note: &mut dyn FnMut(&str)) -> Result<File, KernelError> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .at(path)?;
    if rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        note(&format!(
            "another amphi is building this kernel; waiting for it (lock {})",
            path.display()
        ));
        rustix::fs::flock(&f, FlockOperation::LockExclusive)
            .map_err(|e| KernelError::io(path, e.into()))?;
    }
    Ok(f)
}

/// The tools and headers the recipe needs: the missing ones and their packages.
fn check_tools() -> Result<(), KernelError> {
    let tools = [
        ("make", "make"),
        ("gcc", "gcc"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("tar", "tar"),
        ("xz", "xz-utils"),
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = |tool: &str| std::env::split_paths(&path).any(|d| d.join(tool).is_file());
    let mut missing = Vec::new();
    let mut packages = Vec::new();
    for (tool, package) in tools {
        if !on_path(tool) {
            missing.push(tool.to_string());
            packages.push(package);
        }
    }
    let libelf = ["/usr/include/libelf.h", "/usr/include/gelf.h"]
        .iter()
        .any(|p| Path::new(p).is_file());
    if !libelf {
        missing.push("the libelf headers".into());
        packages.push("libelf-dev");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(KernelError::MissingTools {
        missing: missing.join(", "),
        packages: packages.join(" "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of the builds made on these machines (`/usr/src` tarballs of
    /// Debian's linux-source-6.12 and linux-source-6.1 as installed on
    /// 2026-12-04, with the fragment that builds in vsyscall emulation and
    /// virtio-fs): a change of the recipe must show here, as it rebuilds
    /// every machine's kernels.
    #[test]
    fn recipe_hash_matches_the_machine_cache() {
        assert_eq!(recipe_hash(151_970_188, 1_795_859_651), "69f065bb088c");
        assert_eq!(recipe_hash(138_008_000, 1_795_713_176), "dff9c9468dfe");
    }

    #[test]
    fn series() {
        assert_eq!(parse_series("6.12").unwrap(), "6.12");
        assert_eq!(parse_series("6.1").unwrap(), "6.1");
        assert!(parse_series("6.12.117").is_err());
        assert!(parse_series("six").is_err());
    }

    #[test]
    fn embeds_the_recipe() {
        assert!(BUILD_SCRIPT.starts_with(b"#!/bin/sh"));
        assert!(CONFIG_FRAGMENT
            .windows(b"CONFIG_PVH=y".len())
            .any(|w| w == b"CONFIG_PVH=y"));
    }

    /// The library path the VM backend uses; needs the machine's build.
    #[test]
    fn ensure_builtin_registers_the_cached_build() {
        let Ok(recipe) = Recipe::for_series("6.12") else {
            amphi_test_skip::skip("linux-source-6.12 is not installed (scripts/setup installs it)");
            return;
        };
        if !recipe.is_built() {
            amphi_test_skip::skip(&format!(
                "{} is not built (run `amphi kernel build --version 6.12`)",
                recipe.output().display()
            ));
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let e = ensure_builtin(root.path(), "6.12").unwrap();
        assert_eq!(e.recipe.as_deref(), Some(recipe.key().as_str()));
        assert!(e.vmlinux().unwrap().is_file());
        assert!(e.bzimage().unwrap().is_file());
        assert_eq!(e.config().unwrap()["CONFIG_PVH"], "y");
        assert!(!e.pvm);
        // Again: found in the catalog, the same entry.
        assert_eq!(ensure_builtin(root.path(), "6.12").unwrap(), e);
        assert_eq!(Catalog::open(root.path()).get("6.12").unwrap(), e);
        // A series with no source: the error says how to get it.
        let err = ensure_builtin(root.path(), "5.4").unwrap_err().to_string();
        assert_eq!(
            err,
            "no guest kernel for 5.4: run `amphi kernel build --version 5.4`"
        );
    }
}
