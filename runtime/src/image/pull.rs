//! `amphi pull`: OCI distribution (v2) registries through `oci-client`
//! (anonymous and bearer-token auth, basic credentials), with our own digest
//! and size checks on everything written to the store.

use super::digest::Digest;
use super::import::{register, NewBlobs};
use super::index::ImageRecord;
use super::manifest::{parse_top_level, Descriptor, Platform, TopLevel, ACCEPTED_MANIFESTS};
use super::progress::Progress;
use super::reference::Reference;
use super::store::{Store, StoreError};
use super::ImageError;
use crate::sys::io::IoAt;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use sha2::Digest as _;
use std::io::Write;

/// Options of `amphi pull`.
pub struct PullOptions {
    pub platform: Platform,
    /// Plain http (and no TLS checks) for a registry that is not local.
    pub insecure: bool,
    /// `user:password` for basic auth, or through a bearer token server.
    pub creds: Option<(String, String)>,
    pub progress: Progress,
}

fn reg_err(r: &Reference, e: impl std::fmt::Display) -> ImageError {
    ImageError::Registry {
        registry: r.registry.clone(),
        reason: e.to_string(),
    }
}

/// Describes an oci-client error with its causes, which carry the useful
/// part ("connection refused").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// Pulls `reference` into the store and names it.
pub fn pull(
    store: &Store,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<ImageRecord, ImageError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| reg_err(reference, format!("cannot start the I/O runtime: {e}")))?;
    let mut new = NewBlobs::default();
    let r = rt.block_on(pull_async(store, reference, opts, &mut new));
    if r.is_err() {
        new.discard(store);
    }
    r
}

async fn pull_async(
    store: &Store,
    reference: &Reference,
    opts: &PullOptions,
    new: &mut NewBlobs,
) -> Result<ImageRecord, ImageError> {
    let (client, auth, oref) = client_for(reference, opts);
    authenticate(&client, &oref, &auth, reference, opts).await?;
    let (manifest_digest, manifest, manifest_bytes) =
        resolve_manifest(&client, &oref, &auth, reference, opts).await?;
    manifest.validate(&manifest_digest)?;

    // Config and layers.
    fetch(
        store,
        &client,
        &oref,
        &manifest.config,
        reference,
        &Progress::hidden(),
        new,
    )
    .await?;
    fetch_layers(
        store,
        &client,
        &oref,
        &manifest.layers,
        reference,
        opts,
        new,
    )
    .await?;
    let added = store.put_blob(
        &manifest_digest,
        Some(manifest_bytes.len() as u64),
        &mut &manifest_bytes[..],
    )?;
    new.add(added, &manifest_digest);

    let mut names = vec![reference.to_string()];
    if reference.tag.is_none() {
        names = vec![format!("{}@{}", reference.repo_name(), manifest_digest)];
    }
    register(store, names, &manifest_digest, &manifest, &opts.progress)
}

/// The registry client (plain HTTP for a local registry or --insecure),
/// the credentials, and the reference as the client names it.
fn client_for(
    reference: &Reference,
    opts: &PullOptions,
) -> (oci_client::Client, RegistryAuth, oci_client::Reference) {
    let plain = reference.is_local_registry() || opts.insecure;
    let config = ClientConfig {
        protocol: if plain {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        user_agent: concat!("amphi/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    let client = oci_client::Client::new(config);
    let auth = match &opts.creds {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    };
    let oref = match (&reference.tag, &reference.digest) {
        (_, Some(d)) => oci_client::Reference::with_digest(
            reference.registry.clone(),
            reference.repository.clone(),
            d.to_string(),
        ),
        (Some(t), None) => oci_client::Reference::with_tag(
            reference.registry.clone(),
            reference.repository.clone(),
            t.clone(),
        ),
        (None, None) => unreachable!("references always have a tag or a digest"),
    };
    (client, auth, oref)
}

/// Authenticates first: oci-client otherwise swallows the token service's
/// answer and only the registry's bare 401 would surface.
async fn authenticate(
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    auth: &RegistryAuth,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<(), ImageError> {
    client
        .auth(oref, auth, RegistryOperation::Pull)
        .await
        .map_err(|e| {
            let hint = if opts.creds.is_some() {
                "the registry refused these credentials"
            } else {
                "the registry wants credentials: pass --creds USER:PASSWORD"
            };
            match e {
                OciDistributionError::AuthenticationFailure(_)
                | OciDistributionError::UnauthorizedError { .. } => reg_err(
                    reference,
                    format!("authentication failed ({}): {hint}", describe(&e)),
                ),
                e => reg_err(reference, describe(&e)),
            }
        })?;
    Ok(())
}

/// The manifest the reference names, then (from an index) the platform's
/// manifest, each checked against its digest: (digest, manifest, bytes).
async fn resolve_manifest(
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    auth: &RegistryAuth,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<(Digest, super::manifest::Manifest, Vec<u8>), ImageError> {
    let (bytes, _) = client
        .pull_manifest_raw(oref, auth, ACCEPTED_MANIFESTS)
        .await
        .map_err(|e| {
            let hint = match e {
                OciDistributionError::UnauthorizedError { .. } if opts.creds.is_none() => {
                    " (the registry wants credentials: pass --creds USER:PASSWORD)"
                }
                OciDistributionError::ImageManifestNotFoundError(_) => " (no such image or tag)",
                _ => "",
            };
            reg_err(
                reference,
                format!("manifest of {}: {}{hint}", reference, describe(&e)),
            )
        })?;
    let top_digest = Digest::of(&bytes);
    if let Some(want) = &reference.digest {
        if *want != top_digest {
            return Err(StoreError::DigestMismatch {
                expected: want.clone(),
                actual: top_digest,
            }
            .into());
        }
    }
    let resolved = match parse_top_level(&bytes, None, &top_digest)? {
        TopLevel::Manifest(m) => (top_digest.clone(), m, bytes.to_vec()),
        TopLevel::Index(idx) => {
            let desc = idx.select(&opts.platform, &top_digest)?;
            let child = oref.clone_with_digest(desc.digest.to_string());
            let (b, _) = client
                .pull_manifest_raw(&child, auth, ACCEPTED_MANIFESTS)
                .await
                .map_err(|e| {
                    reg_err(
                        reference,
                        format!("manifest {}: {}", desc.digest, describe(&e)),
                    )
                })?;
            let d = Digest::of(&b);
            if d != desc.digest {
                return Err(StoreError::DigestMismatch {
                    expected: desc.digest.clone(),
                    actual: d,
                }
                .into());
            }
            match parse_top_level(&b, Some(&desc.media_type), &d)? {
                TopLevel::Manifest(m) => (d, m, b.to_vec()),
                TopLevel::Index(_) => {
                    return Err(reg_err(reference, "nested image indexes are not supported"))
                }
            }
        }
    };
    Ok(resolved)
}

/// The layers the store does not have yet, three at a time; the blobs
/// written go into `new` even when one download fails.
async fn fetch_layers(
    store: &Store,
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    layers: &[Descriptor],
    reference: &Reference,
    opts: &PullOptions,
    new: &mut NewBlobs,
) -> Result<(), ImageError> {
    let mut pending = Vec::new();
    for l in layers {
        if !store.has_blob(&l.digest) {
            pending.push(l.clone());
        }
    }
    let results = futures_util::stream::iter(pending.iter().map(|l| {
        let progress = opts.progress.clone();
        async move {
            let mut local = NewBlobs::default();
            let r = fetch(store, client, oref, l, reference, &progress, &mut local).await;
            (r, local)
        }
    }))
    .buffer_unordered(3)
    .collect::<Vec<_>>()
    .await;
    let mut first_err = None;
    for (r, local) in results {
        new.0.extend(local.0);
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(())
}

/// Downloads one blob into the store, verifying digest and size.
async fn fetch(
    store: &Store,
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    desc: &Descriptor,
    reference: &Reference,
    progress: &Progress,
    new: &mut NewBlobs,
) -> Result<(), ImageError> {
    if store.has_blob(&desc.digest) {
        return Ok(());
    }
    let digest_str = desc.digest.to_string();
    let mut stream = client
        .pull_blob_stream(oref, digest_str.as_str())
        .await
        .map_err(|e| reg_err(reference, format!("blob {}: {}", desc.digest, describe(&e))))?;
    let bar = progress.bytes(
        &format!("pull {}", desc.digest.short()),
        desc.size.max(0) as u64,
    );
    let tmp = store.temp_path("blob");
    let result = async {
        let file = std::fs::File::create(&tmp).at(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(256 * 1024, file);
        let mut hasher = sha2::Sha256::new();
        let mut n: u64 = 0;
        while let Some(chunk) = stream.stream.next().await {
            let chunk = chunk.map_err(|e| {
                reg_err(reference, format!("blob {}: {}", desc.digest, describe(&e)))
            })?;
            hasher.update(&chunk);
            n += chunk.len() as u64;
            if desc.size >= 0 && n > desc.size as u64 {
                return Err(StoreError::SizeMismatch {
                    digest: desc.digest.clone(),
                    expected: desc.size as u64,
                    actual: n,
                }
                .into());
            }
            w.write_all(&chunk).at(&tmp)?;
            bar.inc(chunk.len() as u64);
        }
        w.into_inner().map_err(|e| e.into_error()).at(&tmp)?;
        let actual = Digest::parse(&format!("sha256:{}", hex::encode(hasher.finalize())))
            .expect("sha256 hex is a valid digest");
        store.commit_blob(
            &tmp,
            &desc.digest,
            &actual,
            Some(desc.size.max(0) as u64),
            n,
        )?;
        Ok::<(), ImageError>(())
    }
    .await;
    bar.finish_and_clear();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        new.add(true, &desc.digest);
    }
    result
}
