//! `pull`, `load`, `images`, `inspect`, `rmi`, `gc`.

use crate::image::load::LoadOptions;
use crate::image::manifest::Platform;
use crate::image::progress::Progress;
use crate::image::pull::PullOptions;
use crate::image::{Access, ImageRecord, Reference, Store};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PullArgs {
    /// Image reference, e.g. 127.0.0.1:5000/demo/busybox:latest
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Platform to pick from multi-platform images (OS/ARCH[/VARIANT])
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// Use plain http (no TLS) even for a registry that is not on localhost
    #[arg(long)]
    pub insecure: bool,
    /// Credentials for the registry, USER:PASSWORD
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "AMPHI_REGISTRY_CREDS",
        hide_env_values = true
    )]
    pub creds: Option<String>,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct LoadArgs {
    /// Archive file, OCI layout directory, or - for standard input
    #[arg(value_name = "FILE|DIR")]
    pub input: Option<PathBuf>,
    /// Archive to read (same as the positional argument, as in docker load -i)
    #[arg(short, long, value_name = "FILE", conflicts_with = "input")]
    pub input_file: Option<PathBuf>,
    /// Name for the loaded image, e.g. localhost/demo/busybox:latest
    #[arg(long, value_name = "NAME")]
    pub tag: Option<String>,
    /// Platform to pick from multi-platform images (OS/ARCH[/VARIANT])
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct ImagesArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Only print image IDs
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Images, by name or ID
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

#[derive(Args)]
pub struct RmiArgs {
    /// Images, by name or ID
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
    /// Remove the image even when other names point at it (removes all its names)
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args)]
pub struct GcArgs {
    /// Print what was removed as JSON
    #[arg(long)]
    pub json: bool,
}

fn platform(p: &Option<String>) -> Result<Platform> {
    match p {
        Some(s) => Platform::parse(s).map_err(anyhow::Error::msg),
        None => Ok(Platform::host()),
    }
}

pub fn pull(root: &Path, a: PullArgs) -> Result<()> {
    let reference = Reference::parse(&a.image)?;
    let creds = match &a.creds {
        Some(c) => {
            let Some((u, p)) = c.split_once(':') else {
                bail!("--creds must be USER:PASSWORD");
            };
            Some((u.to_string(), p.to_string()))
        }
        None => None,
    };
    let opts = PullOptions {
        platform: platform(&a.platform)?,
        insecure: a.insecure,
        creds,
        progress: Progress::new(a.quiet),
    };
    let store = Store::open(root, Access::Write)?;
    let rec = crate::image::pull::pull(&store, &reference, &opts)
        .with_context(|| format!("pulling {reference}"))?;
    if !a.quiet {
        eprintln!("Pulled {reference} ({})", rec.manifest);
    }
    println!("{}", rec.config);
    Ok(())
}

pub fn load(root: &Path, a: LoadArgs) -> Result<()> {
    let input = a
        .input
        .or(a.input_file)
        .unwrap_or_else(|| PathBuf::from("-"));
    let opts = LoadOptions {
        tag: a.tag,
        platform: platform(&a.platform)?,
        progress: Progress::new(a.quiet),
    };
    let store = Store::open(root, Access::Write)?;
    let loaded = if input.as_os_str() == "-" {
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!("no input: give an archive or directory, or pipe an archive to `amphi load -`");
        }
        let tmp = store.temp_path("stdin");
        let r = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::copy(&mut std::io::stdin().lock(), &mut f)?;
            drop(f);
            Ok::<_, anyhow::Error>(crate::image::load::load(&store, &tmp, &opts)?)
        })();
        let _ = std::fs::remove_file(&tmp);
        r.context("loading from standard input")?
    } else {
        crate::image::load::load(&store, &input, &opts)
            .with_context(|| format!("loading {}", input.display()))?
    };
    for rec in loaded {
        if rec.names.is_empty() {
            println!("Loaded image ID: {}", rec.config);
        }
        for n in &rec.names {
            println!("Loaded image: {n}");
        }
    }
    Ok(())
}

/// `registry/repo` and tag of a stored name, for the table.
fn split_name(n: &str) -> (String, String) {
    match Reference::parse(n) {
        Ok(r) => (
            r.repo_name(),
            r.tag.clone().unwrap_or_else(|| "<none>".to_string()),
        ),
        Err(_) => (n.to_string(), "<none>".to_string()),
    }
}

pub fn images(root: &Path, a: ImagesArgs) -> Result<()> {
    let store = Store::open(root, Access::Read)?;
    let mut idx = store.index()?;
    idx.images.sort_by_key(|i| std::cmp::Reverse(i.added));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&idx.images)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    if a.quiet {
        for i in &idx.images {
            writeln!(out, "{}", i.config.short())?;
        }
        return Ok(());
    }
    let mut rows = vec![[
        "REPOSITORY".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "CREATED".into(),
        "SIZE".into(),
        "PLATFORM".into(),
    ]];
    let now = unix_now();
    for i in &idx.images {
        let names: Vec<(String, String)> = if i.names.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            i.names.iter().map(|n| split_name(n)).collect()
        };
        for (repo, tag) in names {
            rows.push([
                repo,
                tag,
                i.config.short().to_string(),
                i.created
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map(|t| ago(now, t))
                    .unwrap_or_else(|| "unknown".into()),
                human_size(i.unpacked_size),
                i.platform.clone(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<w$}", w = widths[c]))
            .collect();
        writeln!(out, "{}", line.join("   ").trim_end())?;
    }
    Ok(())
}

pub fn inspect(root: &Path, a: InspectArgs) -> Result<()> {
    let store = Store::open(root, Access::Read)?;
    let idx = store.index()?;
    let mut out = Vec::new();
    for name in &a.images {
        let rec = idx.find(name)?;
        out.push(inspect_one(&store, rec)?);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn inspect_one(store: &Store, rec: &ImageRecord) -> Result<serde_json::Value> {
    let manifest: serde_json::Value = serde_json::from_slice(&store.read_blob(&rec.manifest)?)?;
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&rec.config)?)?;
    Ok(serde_json::json!({
        "Id": rec.config,
        "Digest": rec.manifest,
        "Names": rec.names,
        "Platform": rec.platform,
        "Size": rec.size,
        "UnpackedSize": rec.unpacked_size,
        "Layers": rec.layers,
        "Manifest": manifest,
        "Config": config,
    }))
}

pub fn rmi(root: &Path, a: RmiArgs) -> Result<()> {
    let store = Store::open(root, Access::Exclusive)?;
    let mut failed = 0;
    for name in &a.images {
        match store.update_index(|idx| Ok(remove_image(idx, name, a.force))) {
            Ok(Ok(lines)) => lines.iter().for_each(|l| println!("{l}")),
            Ok(Err(msg)) => {
                eprintln!("amphi: error: {msg}");
                failed += 1;
            }
            Err(e) => {
                eprintln!("amphi: error: {e}");
                failed += 1;
            }
        }
    }
    // Drop what no image uses any more, as docker rmi does.
    crate::guestfs::gc(&store)?;
    if failed > 0 {
        bail!("{failed} of {} images could not be removed", a.images.len());
    }
    Ok(())
}

/// docker's rmi semantics: a name untags (and deletes the image with its
/// last name); an ID deletes the image, refusing when several names point
/// at it unless forced.
fn remove_image(
    idx: &mut crate::image::index::Index,
    arg: &str,
    force: bool,
) -> std::result::Result<Vec<String>, String> {
    let manifest = idx.find(arg).map_err(|e| e.to_string())?.manifest.clone();
    let pos = idx
        .images
        .iter()
        .position(|i| i.manifest == manifest)
        .expect("found above");
    let name = Reference::parse(arg)
        .ok()
        .map(|r| r.to_string())
        .filter(|n| idx.images[pos].names.contains(n));
    let img = &mut idx.images[pos];
    let mut out = Vec::new();
    match name {
        Some(n) => {
            img.names.retain(|x| *x != n);
            out.push(format!("Untagged: {n}"));
            if !img.names.is_empty() {
                return Ok(out);
            }
        }
        None if img.names.len() > 1 && !force => {
            return Err(format!(
                "image {arg} is referenced by several names ({}); remove them by name or use --force",
                img.names.join(", ")
            ));
        }
        None => out.extend(img.names.iter().map(|n| format!("Untagged: {n}"))),
    }
    let removed = idx.images.remove(pos);
    out.push(format!("Deleted: {}", removed.config));
    Ok(out)
}

pub fn gc(root: &Path, state_root: &Path, a: GcArgs) -> Result<()> {
    let store = Store::open(root, Access::Exclusive)?;
    // Stale containers first (their writable layers are in the store).
    let c = crate::run::manage::gc(root, state_root);
    let r = crate::guestfs::gc(&store)?;
    // Kept sealed copies of other amphi binaries (container::sealed).
    let sealed = crate::container::sealed::sweep();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["sealed_copies_removed"] = serde_json::to_value(&sealed)?;
        v["containers_removed"] = serde_json::to_value(&c.removed)?;
        v["containers_failed"] = serde_json::to_value(&c.failed)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for n in &c.removed {
            println!("Removed stale container {n}");
        }
        for p in &sealed {
            println!(
                "Removed the sealed copy of another amphi binary at {}",
                p.display()
            );
        }
        println!(
            "Removed {} blobs, {} layers, {} dangling images; freed {}",
            r.blobs_removed,
            r.layers_removed,
            r.images_removed,
            human_size(r.bytes_freed)
        );
    }
    for f in &c.failed {
        eprintln!("amphi: error: stale container {f}");
    }
    if !c.failed.is_empty() {
        bail!("{} stale containers could not be removed", c.failed.len());
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T12:00:00.5Z`,
/// offsets allowed).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) => {
            let oh: i64 = r[1..3].parse().ok()?;
            let om: i64 = r[4..6].parse().ok()?;
            let o = oh * 3600 + om * 60;
            if r.starts_with('+') {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from civil (proleptic Gregorian), Howard Hinnant's formulation.
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se - offset)
}

fn ago(now: i64, t: i64) -> String {
    let s = (now - t).max(0);
    let (n, unit) = match s {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (s / 60, "minute"),
        3600..=86399 => (s / 3600, "hour"),
        86400..=1209599 => (s / 86400, "day"),
        1209600..=5183999 => (s / 604800, "week"),
        5184000..=63071999 => (s / 2592000, "month"),
        _ => (s / 31536000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Sizes the way docker prints them (decimal units).
pub fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            .chars()
            .take(5)
            .collect::<String>()
            .trim_end_matches('.')
            .to_string()
            + UNITS[u]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951868800));
        assert_eq!(
            parse_rfc3339("2024-05-01T12:00:00.123456789+02:00"),
            Some(1714557600)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(human_size(117_000_000), "117MB");
    }
}
