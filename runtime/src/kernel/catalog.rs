//! The kernel catalog under `$AMPHI_ROOT/kernels/`: one directory per kernel,
//! written in a temporary directory and renamed into place under a lock.

use super::config::{self, KernelConfig};
use super::probe::{missing_or, probe, probe_bytes, Format, KernelImage};
use super::{KernelError, KernelVersion};
use crate::sys::io::IoAt;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One kernel in the catalog (its `meta.json`, plus where it lives).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelEntry {
    /// `<version>-<hash12>`: the recipe hash for amphi's builds, the kernel
    /// file's sha256 for added kernels.
    pub id: String,
    pub version: KernelVersion,
    /// The release as `uname -r` shows it in the guest.
    pub release: String,
    /// Built with `CONFIG_PVM_GUEST` (or declared so with `add --pvm`): can
    /// run under PVM hosts' KVM at native speed.
    pub pvm: bool,
    /// PVH entry point of the vmlinux (physical address), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvh_entry: Option<u64>,
    /// The kernel files present, vmlinux first.
    pub formats: Vec<Format>,
    /// sha256 of `config`, or None when the config is unknown.
    pub config_sha256: Option<String>,
    /// Where the config came from: "build", "--config PATH", "embedded
    /// (IKCONFIG)" or "unknown".
    pub config_source: String,
    /// "built from linux-source-6.12 (recipe hash ...)" or "added from PATH".
    pub source: String,
    /// `<series>-<hash12>` of the build recipe, for amphi's own builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// When it entered the catalog (RFC 3339).
    pub added: String,
    /// The entry's directory (not stored in meta.json).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl KernelEntry {
    fn file(&self, format: Format) -> Option<PathBuf> {
        self.formats
            .contains(&format)
            .then(|| self.dir.join(format.file_name()))
    }

    /// The ELF vmlinux (direct boot), if the entry has one.
    pub fn vmlinux(&self) -> Option<PathBuf> {
        self.file(Format::Vmlinux)
    }

    /// The bzImage (Linux boot protocol), if the entry has one.
    pub fn bzimage(&self) -> Option<PathBuf> {
        self.file(Format::BzImage)
    }

    /// The `config` file, if the config is known.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config_sha256.as_ref().map(|_| self.dir.join("config"))
    }

    /// The kernel config (`CONFIG_X` -> "y", "m" or the value; options not
    /// set are absent), or None when it is unknown or unreadable.
    pub fn config(&self) -> Option<KernelConfig> {
        let data = fs::read(self.config_path()?).ok()?;
        config::parse(&data).ok()
    }

    /// One option's value ("PVH" or "CONFIG_PVH"): Ok(None) when not set,
    /// Err(()) when the config is unknown.
    #[allow(clippy::result_unit_err)]
    pub fn config_option(&self, name: &str) -> Result<Option<String>, ()> {
        let c = self.config().ok_or(())?;
        Ok(c.get(&config::option_name(name)).cloned())
    }

    /// The series, "6.12".
    pub fn series(&self) -> String {
        self.version.series()
    }
}

/// Options of [`Catalog::add`].
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    /// The kernel's .config (else the embedded one, else unknown).
    pub config: Option<PathBuf>,
    /// Declare the kernel PVM-enabled (also inferred from CONFIG_PVM_GUEST=y).
    pub pvm: bool,
}

/// What [`Catalog::add`] did.
#[derive(Debug, Clone)]
pub struct Added {
    pub entry: KernelEntry,
    /// False when the same kernel was already in the catalog.
    pub new: bool,
}

/// The catalog of one store.
#[derive(Debug, Clone)]
pub struct Catalog {
    dir: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The files of a new entry, before they are committed.
struct NewEntry {
    files: Vec<(Format, PathBuf)>,
    /// Hard link the kernel files (the build cache) instead of copying them.
    link: bool,
    config: Option<Vec<u8>>,
    entry: KernelEntry,
}

impl Catalog {
    /// The catalog of the store at `store_root` (`$AMPHI_ROOT`). Nothing is
    /// created until something is added.
    pub fn open(store_root: &Path) -> Catalog {
        Catalog {
            dir: store_root.join("kernels"),
        }
    }

    /// `$AMPHI_ROOT/kernels`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every entry, newest version first (then by ID). Damaged entries are
    /// skipped with a warning.
    pub fn list(&self) -> Result<Vec<KernelEntry>, KernelError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KernelError::io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.at(&self.dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            match self.read_entry(&name) {
                Ok(entry) => out.push(entry),
                Err(err) => tracing::warn!("skipping kernel catalog entry: {err}"),
            }
        }
        out.sort_by(|a, b| b.version.cmp(&a.version).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    fn read_entry(&self, id: &str) -> Result<KernelEntry, KernelError> {
        let dir = self.dir.join(id);
        let meta = dir.join("meta.json");
        let corrupt = |reason: String| KernelError::CorruptEntry {
            path: dir.clone(),
            reason,
        };
        let data = fs::read(&meta).map_err(|e| corrupt(format!("meta.json: {e}")))?;
        let mut entry: KernelEntry =
            serde_json::from_slice(&data).map_err(|e| corrupt(format!("meta.json: {e}")))?;
        if entry.id != id {
            return Err(corrupt(format!("meta.json names {:?}", entry.id)));
        }
        entry.dir = dir;
        Ok(entry)
    }

    /// A kernel by ID, unique ID prefix, version ("6.12.117") or series
    /// ("6.12"). For a version or series, the newest matching kernel wins,
    /// amphi's own builds before added kernels.
    pub fn get(&self, query: &str) -> Result<KernelEntry, KernelError> {
        let all = self.list()?;
        if query.is_empty() {
            return Err(KernelError::NotFound("no kernel named \"\"".into()));
        }
        if let Some(e) = all.iter().find(|e| e.id == query) {
            return Ok(e.clone());
        }
        if self.dir.join(query).join("meta.json").is_file() && !query.contains('/') {
            // Present but unreadable: say so rather than "not found".
            self.read_entry(query)?;
        }
        if let Ok(v) = KernelVersion::parse(query) {
            let is_series = query.trim().matches('.').count() == 1;
            let mut matching: Vec<&KernelEntry> = all
                .iter()
                .filter(|e| {
                    if is_series {
                        e.version.major == v.major && e.version.minor == v.minor
                    } else {
                        e.version == v
                    }
                })
                .collect();
            if query.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
                matching.sort_by(|a, b| {
                    b.version
                        .cmp(&a.version)
                        .then_with(|| b.recipe.is_some().cmp(&a.recipe.is_some()))
                        .then_with(|| b.added.cmp(&a.added))
                });
                if let Some(e) = matching.first() {
                    return Ok((*e).clone());
                }
            }
        }
        // A version-like query ("6.1") is not an ID prefix: it must not
        // pick a 6.12 kernel when there is no 6.1.
        let version_like = query.chars().all(|c| c.is_ascii_digit() || c == '.')
            && KernelVersion::parse(query).is_ok();
        let prefixed: Vec<&KernelEntry> = all
            .iter()
            .filter(|e| !version_like && e.id.starts_with(query))
            .collect();
        match prefixed.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => {}
            many => {
                return Err(KernelError::Ambiguous {
                    query: query.to_string(),
                    ids: many.iter().map(|e| e.id.clone()).collect(),
                })
            }
        }
        Err(KernelError::NotFound(if all.is_empty() {
            format!(
                "no kernel {query:?}: the kernel catalog is empty; run `amphi kernel build` or `amphi kernel add PATH`"
            )
        } else {
            format!(
                "no kernel {query:?} in the catalog (have: {}); see `amphi kernel ls`",
                all.iter()
                    .map(|e| e.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }))
    }

    /// Adds a kernel file (vmlinux or bzImage). The same file added again
    /// with the same config and PVM flag is not an error (`new` is false).
    pub fn add(&self, path: &Path, opts: &AddOptions) -> Result<Added, KernelError> {
        let (image, data) = probe(path)?;
        let (config, config_source) = match &opts.config {
            Some(c) => (
                Some(read_config(c)?),
                format!("--config {}", absolute(c).display()),
            ),
            None => match image.ikconfig.clone() {
                Some(c) => (Some(c), "embedded (IKCONFIG)".to_string()),
                None => (None, "unknown".to_string()),
            },
        };
        let hash = hex::encode(Sha256::digest(&data));
        let id = format!("{}-{}", image.version, &hash[..12]);
        let source = format!("added from {}", absolute(path).display());
        let entry = self.new_entry(
            &id,
            &image,
            config.as_deref(),
            config_source,
            opts.pvm,
            source,
            None,
        );
        drop(data);
        let new = NewEntry {
            files: vec![(image.format, path.to_path_buf())],
            link: false,
            config,
            entry,
        };
        let _lock = self.lock()?;
        if let Ok(existing) = self.read_entry(&id) {
            if existing.pvm == new.entry.pvm && existing.config_sha256 == new.entry.config_sha256 {
                return Ok(Added {
                    entry: existing,
                    new: false,
                });
            }
            return Err(KernelError::Conflict {
                id,
                reason: "with a different config or PVM flag".into(),
            });
        }
        Ok(Added {
            entry: self.commit(new)?,
            new: true,
        })
    }

    /// Registers a finished build (`vmlinux`, `bzImage`, `config`, `version`
    /// in `out`) of recipe `recipe` ("6.12-b9a0e125f111"); the kernel files
    /// are hard-linked when they can be. Returns the existing entry when
    /// there is one, unless `replace`.
    pub(crate) fn register_build(
        &self,
        out: &Path,
        series: &str,
        recipe: &str,
        replace: bool,
    ) -> Result<KernelEntry, KernelError> {
        let corrupt = |reason: String| KernelError::CorruptEntry {
            path: out.to_path_buf(),
            reason,
        };
        let version_file = out.join("version");
        let version_text = fs::read_to_string(&version_file).at(&version_file)?;
        let version = KernelVersion::parse(&version_text)
            .map_err(|e| corrupt(format!("version file: {e}")))?;
        let hash12 = recipe.rsplit('-').next().unwrap_or(recipe);
        let id = format!("{version}-{hash12}");
        let _lock = self.lock()?;
        if let Ok(existing) = self.read_entry(&id) {
            if !replace {
                return Ok(existing);
            }
        }
        let vmlinux = out.join("vmlinux");
        let (image, _) = probe(&vmlinux)?;
        if image.version != version {
            return Err(corrupt(format!(
                "vmlinux is {} but the version file says {version}",
                image.version
            )));
        }
        let bzimage = out.join("bzImage");
        let bz = fs::read(&bzimage).at(&bzimage)?;
        probe_bytes(&bz).map_err(|reason| KernelError::BadKernel {
            path: bzimage.clone(),
            reason,
        })?;
        drop(bz);
        let config_file = out.join("config");
        let config = read_config(&config_file)?;
        let entry = self.new_entry(
            &id,
            &image,
            Some(&config),
            "build".into(),
            false,
            format!("built from linux-source-{series} (recipe hash {hash12})"),
            Some(recipe.to_string()),
        );
        let new = NewEntry {
            files: vec![(Format::Vmlinux, vmlinux), (Format::BzImage, bzimage)],
            link: true,
            config: Some(config),
            entry,
        };
        if replace {
            self.remove_locked(&id)?;
        }
        self.commit(new)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_entry(
        &self,
        id: &str,
        image: &KernelImage,
        config: Option<&[u8]>,
        config_source: String,
        pvm: bool,
        source: String,
        recipe: Option<String>,
    ) -> KernelEntry {
        let pvm_in_config = config
            .and_then(|c| config::parse(c).ok())
            .is_some_and(|c| c.get("CONFIG_PVM_GUEST").is_some_and(|v| v == "y"));
        KernelEntry {
            id: id.to_string(),
            version: image.version,
            release: image.release.clone(),
            pvm: pvm || pvm_in_config,
            pvh_entry: image.pvh_entry,
            formats: Vec::new(),
            config_sha256: config.map(|c| hex::encode(Sha256::digest(c))),
            config_source,
            source,
            recipe,
            added: crate::sys::time::now_rfc3339(),
            dir: self.dir.join(id),
        }
    }

    /// Writes the entry into a temporary directory and renames it into place.
    /// Call with the lock held.
    fn commit(&self, mut new: NewEntry) -> Result<KernelEntry, KernelError> {
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{}",
            new.entry.id,
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            fs::create_dir(&tmp).at(&tmp)?;
            new.files.sort_by_key(|(f, _)| *f);
            for (format, src) in &new.files {
                let dst = tmp.join(format.file_name());
                let linked = new.link && fs::hard_link(src, &dst).is_ok();
                if !linked {
                    fs::copy(src, &dst).at(src)?;
                }
                new.entry.formats.push(*format);
            }
            if let Some(c) = &new.config {
                let p = tmp.join("config");
                fs::write(&p, c).at(&p)?;
            }
            let meta = tmp.join("meta.json");
            let json = serde_json::to_vec_pretty(&new.entry).expect("meta serialises");
            fs::write(&meta, json).at(&meta)?;
            let dst = self.dir.join(&new.entry.id);
            fs::rename(&tmp, &dst).at(&dst)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result.map(|()| new.entry)
    }

    /// Removes the entry with exactly this ID (a damaged entry too).
    pub fn remove(&self, id: &str) -> Result<(), KernelError> {
        let valid_name = !id.is_empty() && !id.contains('/') && !id.starts_with('.');
        let _lock = self.lock()?;
        if valid_name && self.dir.join(id).is_dir() {
            return self.remove_locked(id);
        }
        let hint = match self.get(id) {
            Ok(e) => format!("; did you mean {}?", e.id),
            Err(_) => "; see `amphi kernel ls`".into(),
        };
        Err(KernelError::NotFound(format!(
            "no kernel with ID {id:?} in the catalog{hint}"
        )))
    }

    /// Removes an entry (renamed away first, so it vanishes at once). Call
    /// with the lock held.
    fn remove_locked(&self, id: &str) -> Result<(), KernelError> {
        let dir = self.dir.join(id);
        if !dir.exists() {
            return Ok(());
        }
        remove_dir(&self.dir, &dir)
    }

    /// Takes the catalog's writer lock, creating the catalog if needed, and
    /// sweeps debris of killed writers.
    fn lock(&self) -> Result<File, KernelError> {
        // 0700, the store root too if this makes it: the store is root's
        // only (the store's own check would otherwise warn and fix it).
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&self.dir)
            .at(&self.dir)?;
        let path = self.dir.join(".lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        rustix::fs::flock(&f, FlockOperation::LockExclusive)
            .map_err(|e| KernelError::io(&path, e.into()))?;
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(f)
    }
}

/// Renames `dir` to a hidden temporary name in `parent`, then deletes it.
fn remove_dir(parent: &Path, dir: &Path) -> Result<(), KernelError> {
    let gone = parent.join(format!(
        ".tmp-rm-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::rename(dir, &gone).at(dir)?;
    Ok(fs::remove_dir_all(&gone).at(&gone)?)
}

/// Reads and checks a config file.
fn read_config(path: &Path) -> Result<Vec<u8>, KernelError> {
    let bad = |line: usize, reason: String| KernelError::BadConfig {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| missing_or(e, "config file", path))?;
    if meta.is_dir() {
        return Err(bad(0, "is a directory".into()));
    }
    let data = fs::read(path).at(path)?;
    config::parse(&data).map_err(|e| bad(e.line, e.reason))?;
    Ok(data)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::probe::tests::{tiny_bzimage, tiny_elf};

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn add_get_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let files = tmp.path().join("files");
        fs::create_dir(&files).unwrap();
        let cat = Catalog::open(&tmp.path().join("store"));
        assert!(cat.list().unwrap().is_empty());
        assert!(cat.get("6.12").unwrap_err().to_string().contains("empty"));

        let vmlinux = write(
            &files,
            "vmlinux",
            &tiny_elf(true, b"Linux version 6.12.9 (x)"),
        );
        let a = cat.add(&vmlinux, &AddOptions::default()).unwrap();
        assert!(a.new);
        let e = a.entry;
        assert!(e.id.starts_with("6.12.9-"), "{}", e.id);
        assert_eq!(e.formats, vec![Format::Vmlinux]);
        assert_eq!(e.pvh_entry, Some(0x0100_0000));
        assert_eq!(e.config_source, "unknown");
        assert_eq!(e.config(), None);
        assert_eq!(e.config_option("PVH"), Err(()));
        assert!(e.bzimage().is_none());
        assert_eq!(
            fs::read(e.vmlinux().unwrap()).unwrap(),
            fs::read(&vmlinux).unwrap()
        );
        // The same file again: nothing new.
        assert!(!cat.add(&vmlinux, &AddOptions::default()).unwrap().new);
        // ... but with another flag: a conflict.
        let pvm = AddOptions {
            pvm: true,
            ..Default::default()
        };
        assert!(matches!(
            cat.add(&vmlinux, &pvm),
            Err(KernelError::Conflict { .. })
        ));

        let config = write(&files, "config", b"CONFIG_PVM_GUEST=y\nCONFIG_PVH=y\n");
        let bz = write(&files, "bzImage", &tiny_bzimage("6.1.7-custom", b"payload"));
        let e2 = cat
            .add(
                &bz,
                &AddOptions {
                    config: Some(config.clone()),
                    pvm: false,
                },
            )
            .unwrap()
            .entry;
        assert!(e2.pvm, "CONFIG_PVM_GUEST=y makes it a PVM kernel");
        assert_eq!(e2.release, "6.1.7-custom");
        assert_eq!(e2.config_option("CONFIG_PVM_GUEST"), Ok(Some("y".into())));
        assert_eq!(e2.config_option("MODULES"), Ok(None));

        let ids: Vec<String> = cat.list().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            vec![e.id.clone(), e2.id.clone()],
            "newest version first"
        );
        assert_eq!(cat.get("6.1").unwrap().id, e2.id);
        assert_eq!(cat.get("6.1.7").unwrap().id, e2.id);
        assert_eq!(cat.get(&e.id[..9]).unwrap().id, e.id);
        assert!(cat.get("6.1.8").is_err());
        assert!(matches!(cat.get("6."), Err(KernelError::Ambiguous { .. })));

        // Bad input leaves nothing behind.
        let text = write(&files, "text", b"hello\n");
        assert!(cat.add(&text, &AddOptions::default()).is_err());
        let bad_config = AddOptions {
            config: Some(text.clone()),
            pvm: false,
        };
        let err = cat.add(&bz, &bad_config).unwrap_err().to_string();
        assert!(err.contains("not a kernel config: line 1"), "{err}");
        assert_eq!(cat.list().unwrap().len(), 2);

        cat.remove(&e.id).unwrap();
        assert!(cat.remove(&e.id).is_err());
        assert!(cat.remove("../files").is_err());
        let left: Vec<String> = fs::read_dir(cat.dir())
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, vec![".lock".to_string(), e2.id.clone()]);
    }
}
