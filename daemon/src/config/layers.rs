//! Layered configuration: on the device a read-only defaults file (in the image)
//! is overlaid by the site's file (on the data partition). Later layers win key
//! by key; tables merge, anything else (numbers, strings, arrays, including arrays
//! of tables such as `[[upstream]]` and `[[dicom.allowed_peers]]`) is replaced as a
//! whole, so a site's allowlist never silently keeps an entry of the defaults.
//! Errors name the key and the layer that set it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError, ConfigErrors};

/// Reads, merges and checks the layers in order (the first is the base).
pub fn load_layers(paths: &[PathBuf]) -> Result<Config, ConfigErrors> {
    if let [one] = paths {
        return Config::load(one);
    }
    let source = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" < ");
    let mut merged = toml::Table::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for p in paths {
        let table = read_table(p)?;
        merge(
            &mut merged,
            table,
            "",
            &p.display().to_string(),
            &mut origin,
        );
    }
    let text = toml::to_string(&merged).map_err(|e| ConfigErrors {
        source: source.clone(),
        errors: vec![ConfigError {
            key: "<merged>".into(),
            message: format!("cannot merge the layers: {e}"),
        }],
    })?;
    Config::parse(&text, &source).map_err(|mut errs| {
        for e in &mut errs.errors {
            let unknown = e
                .message
                .split('`')
                .nth(1)
                .map(|field| format!("{}.{field}", e.key));
            let found = unknown
                .and_then(|k| origin.get(&k).map(String::as_str))
                .or_else(|| layer_of(&e.key, &origin));
            if let Some(layer) = found {
                e.message = format!("{} (set in {layer})", e.message);
            }
        }
        errs
    })
}

fn read_table(p: &Path) -> Result<toml::Table, ConfigErrors> {
    let source = p.display().to_string();
    let fail = |key: &str, message: String| ConfigErrors {
        source: source.clone(),
        errors: vec![ConfigError {
            key: key.into(),
            message,
        }],
    };
    let text =
        std::fs::read_to_string(p).map_err(|e| fail("<file>", format!("cannot read: {e}")))?;
    text.parse::<toml::Table>()
        .map_err(|e| fail("<syntax>", e.message().to_string()))
}

/// Overlays `top` onto `base`, recording which layer set each leaf.
fn merge(
    base: &mut toml::Table,
    top: toml::Table,
    prefix: &str,
    layer: &str,
    origin: &mut BTreeMap<String, String>,
) {
    for (k, v) in top {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => {
                merge(b, t, &path, layer, origin)
            }
            (_, v) => {
                origin.retain(|key, _| !(key == &path || key.starts_with(&format!("{path}."))));
                mark(&v, &path, layer, origin);
                base.insert(k, v);
            }
        }
    }
}

fn mark(v: &toml::Value, path: &str, layer: &str, origin: &mut BTreeMap<String, String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            mark(v, &format!("{path}.{k}"), layer, origin);
        }
    } else {
        origin.insert(path.to_string(), layer.to_string());
    }
}

/// The layer behind an error's key: the key itself or its nearest parent
/// (`upstream[0].port` -> `upstream`).
fn layer_of<'a>(key: &str, origin: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let mut k = key.to_string();
    loop {
        if let Some(l) = origin.get(&k) {
            return Some(l);
        }
        let cut = k.rfind(['.', '['])?;
        k.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_site_layer_overrides_key_by_key_and_replaces_arrays() {
        let d = tempfile::tempdir().unwrap();
        let base = write(d.path(), "default.toml", super::super::EMBEDDED_DEFAULT);
        let site = write(
            d.path(),
            "site.toml",
            "[dicom]\nae_title = \"SITE_A\"\n[[dicom.allowed_peers]]\nae_title = \"MR1\"\naddress = \"10.0.0.0/24\"\n[gate]\nmin_slices = 30\n",
        );
        let c = load_layers(&[base, site]).unwrap();
        assert_eq!(c.dicom.ae_title, "SITE_A");
        // the rest of [dicom] comes from the defaults
        assert_eq!(c.dicom.listen, "127.0.0.1:11112");
        assert_eq!(
            c.dicom.allowed_peers.len(),
            1,
            "the site's allowlist replaces the default's"
        );
        assert_eq!(c.dicom.allowed_peers[0].ae_title, "MR1");
        assert_eq!(c.gate.min_slices, 30);
        assert_eq!(c.gate.min_matrix, 128);
    }

    #[test]
    fn an_error_names_the_layer_that_set_the_key() {
        let d = tempfile::tempdir().unwrap();
        let base = write(d.path(), "default.toml", super::super::EMBEDDED_DEFAULT);
        let site = write(d.path(), "site.toml", "[dicom]\nmax_associations = 0\n");
        let e = load_layers(&[base.clone(), site.clone()]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("dicom.max_associations"), "{text}");
        assert!(
            text.contains(&format!("set in {}", site.display())),
            "{text}"
        );
        let unknown = write(d.path(), "unknown.toml", "[gate]\nmin_slice = 3\n");
        let e = load_layers(&[base.clone(), unknown.clone()]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!("set in {}", unknown.display())),
            "{text}"
        );
        let bad = write(d.path(), "bad.toml", "[dicom\n");
        let e = load_layers(&[base, bad.clone()]).unwrap_err();
        assert_eq!(e.source, bad.display().to_string());
        assert_eq!(e.errors[0].key, "<syntax>");
    }
}
