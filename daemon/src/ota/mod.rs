//! Over-the-air model updates. A bundle is a tar of a model bundle folder
//! (manifest.toml, the ONNX, golden/) with a detached minisign signature. An
//! install goes step by step, and a bundle failing any step changes nothing:
//!
//!   signature (a key in [ota] trusted_keys_dir) -> unpack to staging (regular
//!   files only, no path outside) -> compatible string -> manifest and hashes ->
//!   load with the configured backend (a TensorRT engine is built here) ->
//!   golden case against the manifest -> atomic switch.
//!
//! Under `<data_dir>/models/`: `bundles/<name>-<version>-<sha12>/` holds each
//! installed bundle, the symlink `active` names the one in service and
//! `previous` the one before (or `factory`: the configured/built-in model), for
//! `scanside model rollback`. Each link is replaced by rename(2), so a crash
//! leaves the old or the new link, never none. The daemon watches `active` and
//! loads what it names; a job in flight finishes on the model it started with.

pub mod fetch;

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::infer::{manifest::sha256_hex, verify, Bundle, Model};

/// Target of `previous` when the model before was the configured or built-in one.
const FACTORY: &str = "factory";

/// Why a bundle was refused: the step it failed and the reason.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub step: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused at {}: {}", self.step, self.reason)
    }
}

impl std::error::Error for Refused {}

fn refuse(step: &'static str, reason: impl std::fmt::Display) -> Refused {
    Refused {
        step,
        reason: reason.to_string(),
    }
}

/// What an install put in service.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    pub name: String,
    pub version: String,
    /// sha256 of the ONNX (what results name)
    pub sha256: String,
    /// sha256 of the signed tar
    pub bundle_sha256: String,
    pub dir: PathBuf,
    pub previous: String,
    pub golden_voxel_counts: Vec<u64>,
    pub backend: String,
}

fn models_root(cfg: &Config) -> PathBuf {
    cfg.storage.data_dir.join("models")
}

/// The bundle folder `active` names, if an OTA model is in service.
pub fn active_dir(cfg: &Config) -> Option<PathBuf> {
    let link = models_root(cfg).join("active");
    let target = fs::read_link(&link).ok()?;
    let dir = models_root(cfg).join(target);
    dir.join("manifest.toml").is_file().then_some(dir)
}

/// The model bundle the daemon (and `scanside selftest`) should run: the OTA
/// one in service, else [inference] model_dir, else (None) the built-in one.
pub fn model_dir(cfg: &Config) -> Option<PathBuf> {
    active_dir(cfg).or_else(|| cfg.inference.model_dir.clone())
}

/// Verifies `sig` (minisign, detached) over `data` with a trusted key.
pub fn check_signature(cfg: &Config, data: &[u8], sig: &str) -> Result<String, Refused> {
    let Some(dir) = &cfg.ota.trusted_keys_dir else {
        return Err(refuse(
            "signature",
            "ota.trusted_keys_dir is not set: no key is trusted, so nothing can be installed",
        ));
    };
    let mut keys = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| {
        refuse(
            "signature",
            format!("ota.trusted_keys_dir {}: {e}", dir.display()),
        )
    })?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "pub") {
            match minisign_verify::PublicKey::from_file(&p) {
                Ok(k) => keys.push((p, k)),
                Err(err) => {
                    tracing::warn!(key = %p.display(), error = %err, "not a minisign public key; skipped")
                }
            }
        }
    }
    if keys.is_empty() {
        return Err(refuse(
            "signature",
            format!("no minisign public key (*.pub) in {}", dir.display()),
        ));
    }
    let sig = minisign_verify::Signature::decode(sig).map_err(|e| {
        refuse(
            "signature",
            format!("the signature file does not parse: {e}"),
        )
    })?;
    let mut wrong_key = true;
    for (path, k) in &keys {
        match k.verify(data, &sig, false) {
            Ok(()) => return Ok(format!("{} ({})", path.display(), sig.trusted_comment())),
            Err(minisign_verify::Error::UnexpectedKeyId) => {}
            Err(_) => wrong_key = false,
        }
    }
    Err(refuse(
        "signature",
        if wrong_key {
            "signed with a key that is not trusted (its key id matches no key in ota.trusted_keys_dir)"
        } else {
            "the signature does not match the bundle (tampered or incomplete)"
        },
    ))
}

/// Unpacks the tar into `dest`: regular files and folders only, relative paths
/// without `..`, within `max` bytes. A single top folder is taken as the bundle.
fn unpack(data: &[u8], dest: &Path, max: u64) -> Result<(), Refused> {
    let bad = |r: String| refuse("bundle", r);
    let mut ar = tar::Archive::new(data);
    let mut total = 0u64;
    let mut files = 0usize;
    for entry in ar
        .entries()
        .map_err(|e| bad(format!("not a tar file: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("not a tar file: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("a member's name does not parse: {e}")))?
            .into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad(format!(
                "member {:?}: absolute or leaving the bundle",
                path.display().to_string()
            )));
        }
        let kind = entry.header().entry_type();
        let out = dest.join(&path);
        if kind.is_dir() {
            fs::create_dir_all(&out).map_err(|e| bad(format!("{}: {e}", out.display())))?;
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!(
                "member {:?} is not a regular file or folder (links and devices are refused)",
                path.display().to_string()
            )));
        }
        files += 1;
        total += entry.size();
        if files > 256 || total > max {
            return Err(bad(format!(
                "more than 256 files or {max} bytes (ota.max_bundle_bytes)"
            )));
        }
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(|e| bad(format!("{}: {e}", parent.display())))?;
        }
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("member {}: {e}", path.display())))?;
        write_synced(&out, &buf).map_err(|e| bad(format!("{}: {e}", out.display())))?;
    }
    if files == 0 {
        return Err(bad("the tar holds no file".into()));
    }
    Ok(())
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// The folder holding manifest.toml: the root, or its one top folder.
fn bundle_root(staged: &Path) -> Result<PathBuf, Refused> {
    if staged.join("manifest.toml").is_file() {
        return Ok(staged.to_path_buf());
    }
    let subs: Vec<PathBuf> = fs::read_dir(staged)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    match subs.as_slice() {
        [one] if one.join("manifest.toml").is_file() => Ok(one.clone()),
        _ => Err(refuse(
            "bundle",
            "no manifest.toml at the top of the tar (or in its one top folder)",
        )),
    }
}

/// Points `name` at `target` by renaming a fresh link over it.
fn set_link(root: &Path, name: &str, target: &str) -> std::io::Result<()> {
    let tmp = root.join(format!(".{name}.new"));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, root.join(name))?;
    sync_dir(root);
    Ok(())
}

fn link_target(root: &Path, name: &str) -> Option<String> {
    fs::read_link(root.join(name))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// Holds the install lock (CLI and the daemon's pull never install at once).
struct Lock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

fn lock(root: &Path) -> Result<Lock, Refused> {
    fs::create_dir_all(root).map_err(|e| refuse("switch", format!("{}: {e}", root.display())))?;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("lock"))
        .map_err(|e| refuse("switch", format!("lock: {e}")))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map(Lock)
        .map_err(|(_, e)| refuse("switch", format!("lock: {e}")))
}

/// Installs a signed bundle (see the module comment); on any failure the model
/// in service and the links are as they were. Either way it goes in the audit trail.
pub fn install(cfg: &Config, data: &[u8], sig: &str) -> Result<Installed, Refused> {
    let r = install_checked(cfg, data, sig);
    let bundle = format!("model bundle sha256:{}", sha256_hex(data));
    let (what, description) = match &r {
        Ok(i) => (
            format!("model {} {} sha256:{}", i.name, i.version, i.sha256),
            "model installed".to_string(),
        ),
        Err(e) => (bundle, format!("model install {e}")),
    };
    audit(cfg, r.is_ok(), &what, &description);
    r
}

fn audit(cfg: &Config, ok: bool, what: &str, description: &str) {
    crate::audit::append_direct(
        &cfg.storage.data_dir,
        &cfg.dicom.ae_title,
        &crate::audit::change_event(crate::audit::SOFTWARE_CONFIGURATION, ok, what, description),
    );
}

fn install_checked(cfg: &Config, data: &[u8], sig: &str) -> Result<Installed, Refused> {
    if data.len() as u64 > cfg.ota.max_bundle_bytes {
        return Err(refuse(
            "bundle",
            format!(
                "{} bytes is more than ota.max_bundle_bytes ({})",
                data.len(),
                cfg.ota.max_bundle_bytes
            ),
        ));
    }
    let signer = check_signature(cfg, data, sig)?;
    let root = models_root(cfg);
    let _lock = lock(&root)?;
    let staging = root.join("staging");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| refuse("bundle", format!("staging: {e}")))?;
    let r = stage_and_check(cfg, data, &staging).and_then(|(bundle_dir, model, golden)| {
        switch(&root, &bundle_dir, data, sig, &model, golden)
    });
    let _ = fs::remove_dir_all(&staging);
    match &r {
        Ok(i) => {
            tracing::info!(model = %i.name, version = %i.version, sha256 = %i.sha256, signer = %signer, "model bundle installed")
        }
        Err(e) => {
            tracing::warn!(step = e.step, reason = %e.reason, "model bundle refused; the model in service is unchanged")
        }
    }
    r
}

fn stage_and_check(
    cfg: &Config,
    data: &[u8],
    staging: &Path,
) -> Result<(PathBuf, Model, Vec<u64>), Refused> {
    unpack(data, staging, cfg.ota.max_bundle_bytes)?;
    let dir = bundle_root(staging)?;
    let text = fs::read_to_string(dir.join("manifest.toml"))
        .map_err(|e| refuse("manifest", format!("manifest.toml: {e}")))?;
    let compatible = text.parse::<toml::Table>().ok().and_then(|t| {
        t.get("compatible")
            .and_then(|v| v.as_str().map(String::from))
    });
    match compatible {
        Some(c) if c == cfg.ota.compatible => {}
        Some(c) => {
            return Err(refuse(
                "compatible",
                format!(
                    "the bundle is for {c:?}, this box takes {:?} (ota.compatible)",
                    cfg.ota.compatible
                ),
            ))
        }
        None => {
            return Err(refuse(
                "compatible",
                "manifest.toml has no compatible string",
            ))
        }
    }
    let bundle = Bundle::open(&dir).map_err(|e| refuse("manifest", format!("{e:#}")))?;
    let cache = cfg
        .inference
        .engine_cache_dir
        .clone()
        .unwrap_or_else(|| cfg.storage.data_dir.join("engine-cache"));
    let mut model = Model::with_bundle(bundle, &cfg.inference, &cache)
        .map_err(|e| refuse("load", format!("{e:#}")))?;
    let g = verify::run_golden(&mut model).map_err(|e| refuse("golden", format!("{e:#}")))?;
    if !g.ok {
        return Err(refuse(
            "golden",
            format!(
                "the golden case gave label counts {:?}, the manifest expects {:?} (tolerance {} of the voxels)",
                g.counts,
                model.bundle.manifest.golden.voxel_counts,
                verify::GOLDEN_TOLERANCE
            ),
        ));
    }
    Ok((dir, model, g.counts))
}

fn switch(
    root: &Path,
    staged: &Path,
    data: &[u8],
    sig: &str,
    model: &Model,
    golden: Vec<u64>,
) -> Result<Installed, Refused> {
    let m = &model.bundle.manifest;
    let id = format!("{}-{}-{}", m.name, m.version, &model.bundle.sha256[..12]);
    let rel = format!("bundles/{id}");
    let dest = root.join(&rel);
    let io = |e: std::io::Error| refuse("switch", e);
    fs::create_dir_all(root.join("bundles")).map_err(io)?;
    write_synced(&staged.join("bundle.minisig"), sig.as_bytes()).map_err(io)?;
    if dest.exists() {
        // The same model again (e.g. re-signed): the copy in place is kept.
        let _ = fs::remove_dir_all(staged);
    } else {
        fs::rename(staged, &dest).map_err(io)?;
        sync_dir(&root.join("bundles"));
    }
    let before = link_target(root, "active").filter(|t| root.join(t).is_dir());
    if before.as_deref() == Some(rel.as_str()) {
        tracing::info!(bundle = %rel, "this bundle is already the one in service");
    } else {
        set_link(root, "previous", before.as_deref().unwrap_or(FACTORY)).map_err(io)?;
        set_link(root, "active", &rel).map_err(io)?;
    }
    Ok(Installed {
        name: m.name.clone(),
        version: m.version.clone(),
        sha256: model.bundle.sha256.clone(),
        bundle_sha256: sha256_hex(data),
        dir: dest,
        previous: link_target(root, "previous").unwrap_or_default(),
        golden_voxel_counts: golden,
        backend: model.backend.name(),
    })
}

/// Puts the previous model back in service (the current one becomes previous).
pub fn rollback(cfg: &Config) -> Result<(String, String), Refused> {
    let r = rollback_checked(cfg);
    match &r {
        Ok((from, to)) => audit(
            cfg,
            true,
            &format!("model {to}"),
            &format!("model rolled back from {from} to {to}"),
        ),
        Err(e) => audit(cfg, false, "model", &format!("model rollback {e}")),
    }
    r
}

fn rollback_checked(cfg: &Config) -> Result<(String, String), Refused> {
    let root = models_root(cfg);
    let _lock = lock(&root)?;
    let Some(prev) = link_target(&root, "previous") else {
        return Err(refuse(
            "rollback",
            "no previous model: nothing was installed over the air",
        ));
    };
    if prev != FACTORY && !root.join(&prev).join("manifest.toml").is_file() {
        return Err(refuse(
            "rollback",
            format!(
                "the previous model {prev} is missing from {}",
                root.display()
            ),
        ));
    }
    let cur = link_target(&root, "active").unwrap_or_else(|| FACTORY.into());
    let io = |e: std::io::Error| refuse("rollback", e);
    set_link(&root, "previous", &cur).map_err(io)?;
    if prev == FACTORY {
        fs::remove_file(root.join("active")).map_err(io)?;
        sync_dir(&root);
    } else {
        set_link(&root, "active", &prev).map_err(io)?;
    }
    tracing::info!(from = %cur, to = %prev, "model rolled back");
    Ok((cur, prev))
}

/// The signature that came with the model in service (to skip a pull of it).
pub fn active_signature(cfg: &Config) -> Option<String> {
    fs::read_to_string(active_dir(cfg)?.join("bundle.minisig")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data, kind) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // set_path refuses "..": write the raw name as a hostile tool would.
            let raw = &mut h.as_gnu_mut().unwrap().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn members_leaving_the_bundle_or_not_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for (name, kind) in [
            ("../evil", tar::EntryType::Regular),
            ("/etc/evil", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
            ("dev", tar::EntryType::Char),
        ] {
            let t = tar_of(&[(name, b"x", kind)]);
            let e = unpack(&t, d.path(), 1 << 20).unwrap_err();
            assert_eq!(e.step, "bundle", "{name}: {e}");
        }
        assert!(!d.path().join("evil").exists());
        let t = tar_of(&[("m/manifest.toml", b"x", tar::EntryType::Regular)]);
        unpack(&t, d.path(), 1 << 20).unwrap();
        assert_eq!(bundle_root(d.path()).unwrap(), d.path().join("m"));
        let e = unpack(&t, d.path(), 0).unwrap_err();
        assert!(e.reason.contains("max_bundle_bytes"), "{e}");
    }
}
