//! Image archives that carry only the layers a host lacks.
//!
//! `docker save` writes every layer of an image; `docker load` reads a
//! layer's tar only when the engine lacks the layer's chain (the layer with
//! everything under it), and skips it otherwise without opening the file.
//! So an archive from which the layers the host already has are left out
//! loads the same image: the manifest and the image configs always go, and
//! a one-line change to a large image sends one small layer instead of the
//! whole image again. This is what a registry's push does; here it needs
//! nothing but the engines at both ends.
//!
//! Pure, apart from reading and writing the archive files it is given.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The chain IDs of an image's layers, bottom first, from its diff IDs:
/// the first is its diff ID, each next one `sha256(previous + " " + diff)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chains: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let chain = match chains.last() {
            None => diff.clone(),
            Some(below) => format!(
                "sha256:{:x}",
                Sha256::digest(format!("{below} {diff}").as_bytes())
            ),
        };
        chains.push(chain);
    }
    chains
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// An archive's layer files and the chain each one stands for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Layers {
    /// Path of a layer file in the archive → its chain IDs (a file may
    /// serve several images).
    pub chains: HashMap<String, BTreeSet<String>>,
    /// Files that other entries link to: never left out.
    pub linked: HashSet<String>,
}

/// Entries larger than this are layers, never the manifest or a config.
const SMALL: u64 = 4 << 20;

impl Layers {
    /// Read `manifest.json`, the image configs it names and the links of a
    /// `docker save` archive: the legacy layout (`<id>/layer.tar`, configs
    /// at the top) and the OCI one of Docker 25 and later (everything under
    /// `blobs/sha256/`) alike, since only the manifest's own paths are used.
    pub fn of_archive(archive: &Path) -> Result<Layers> {
        let mut small: HashMap<String, Vec<u8>> = HashMap::new();
        let mut layers = Layers::default();
        let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
        for entry in tar.entries()? {
            let mut entry = entry?;
            let path = normalize(&entry.path()?.to_string_lossy());
            if let Some(target) = entry.link_name()? {
                // Relative to the link's folder, as docker save writes them.
                let dir = Path::new(&path).parent().unwrap_or(Path::new(""));
                layers
                    .linked
                    .insert(normalize(&dir.join(target).to_string_lossy()));
            } else if entry.size() <= SMALL {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                small.insert(path, bytes);
            }
        }
        let manifest: Vec<ManifestEntry> = serde_json::from_slice(
            small
                .get("manifest.json")
                .context("the image archive has no manifest.json")?,
        )
        .context("the image archive's manifest.json")?;
        for image in manifest {
            let config: ImageConfig = serde_json::from_slice(
                small
                    .get(&normalize(&image.config))
                    .with_context(|| format!("the image archive has no {}", image.config))?,
            )
            .with_context(|| format!("the image archive's {}", image.config))?;
            let chains = chain_ids(&config.rootfs.diff_ids);
            for (path, chain) in image.layers.iter().zip(chains) {
                layers
                    .chains
                    .entry(normalize(path))
                    .or_default()
                    .insert(chain);
            }
        }
        Ok(layers)
    }

    /// The layer files a host with the chains `present` does not need.
    pub fn not_needed(&self, present: &HashSet<String>) -> HashSet<String> {
        self.chains
            .iter()
            .filter(|(path, chains)| {
                !self.linked.contains(*path) && chains.iter().all(|c| present.contains(c))
            })
            .map(|(path, _)| path.clone())
            .collect()
    }
}

fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// Copy `archive` to `out` without the entries in `leave_out`; returns the
/// bytes written.
pub fn write_without(archive: &Path, leave_out: &HashSet<String>, out: impl Write) -> Result<u64> {
    let mut counted = CountingWriter {
        inner: out,
        count: 0,
    };
    {
        let mut builder = tar::Builder::new(&mut counted);
        let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
        for entry in tar.entries()? {
            let entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            if leave_out.contains(&normalize(&path)) {
                continue;
            }
            let mut header = entry.header().clone();
            match entry.link_name()? {
                Some(target) => {
                    let target = target.into_owned();
                    builder.append_link(&mut header, &path, target)?
                }
                None => builder.append_data(&mut header, &path, entry)?,
            }
        }
        builder.finish()?;
    }
    counted.flush()?;
    Ok(counted.count)
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_dockers_rule() {
        let diffs = vec!["sha256:aa".to_string(), "sha256:bb".to_string()];
        let chains = chain_ids(&diffs);
        assert_eq!(chains[0], "sha256:aa");
        assert_eq!(
            chains[1],
            format!("sha256:{:x}", Sha256::digest(b"sha256:aa sha256:bb"))
        );
        // The same diff on another base is another chain.
        let other = chain_ids(&["sha256:cc".to_string(), "sha256:bb".to_string()]);
        assert_ne!(other[1], chains[1]);
    }

    /// A tar archive being written to `path`.
    fn builder(path: &Path) -> tar::Builder<std::fs::File> {
        tar::Builder::new(std::fs::File::create(path).unwrap())
    }

    fn add_file(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    }

    /// An archive shaped like `docker save`'s: two layers, one linked.
    fn archive(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("save.tar");
        let mut b = builder(&path);
        let mut add = |name: &str, data: &[u8]| add_file(&mut b, name, data);
        add("l1/layer.tar", &[1u8; 2048]);
        add("l2/layer.tar", &[2u8; 1024]);
        add("l2/json", b"{}");
        add(
            "img.json",
            br#"{"rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]}}"#,
        );
        add(
            "manifest.json",
            br#"[{"Config":"img.json","RepoTags":["x:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#,
        );
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "l3/layer.tar", "../l2/layer.tar")
            .unwrap();
        b.finish().unwrap();
        path
    }

    #[test]
    fn the_oci_layout_of_newer_engines_is_read_from_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oci.tar");
        let mut b = builder(&path);
        let mut add = |name: &str, data: &[u8]| add_file(&mut b, name, data);
        add("blobs/sha256/aaaa", &[1u8; 4096]);
        add(
            "blobs/sha256/cfg",
            br#"{"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#,
        );
        add("index.json", b"{}");
        add(
            "manifest.json",
            br#"[{"Config":"blobs/sha256/cfg","RepoTags":["x:1"],"Layers":["blobs/sha256/aaaa"]}]"#,
        );
        b.finish().unwrap();
        drop(b);
        let layers = Layers::of_archive(&path).unwrap();
        let present = HashSet::from(["sha256:aa".to_string()]);
        assert_eq!(
            layers.not_needed(&present),
            HashSet::from(["blobs/sha256/aaaa".to_string()])
        );
    }

    #[test]
    fn layers_the_host_has_are_left_out_but_links_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive(dir.path());
        let layers = Layers::of_archive(&path).unwrap();
        assert!(layers.linked.contains("l2/layer.tar"));
        let chains = chain_ids(&["sha256:aa".into(), "sha256:bb".into()]);
        let present: HashSet<String> = chains.iter().cloned().collect();
        // l2 is linked to, so only l1 goes.
        assert_eq!(
            layers.not_needed(&present),
            HashSet::from(["l1/layer.tar".to_string()])
        );
        // Only the bottom layer present: the top one must travel.
        let bottom: HashSet<String> = HashSet::from([chains[0].clone()]);
        assert_eq!(
            layers.not_needed(&bottom),
            HashSet::from(["l1/layer.tar".to_string()])
        );
        assert!(layers.not_needed(&HashSet::new()).is_empty());

        let mut out = Vec::new();
        let written = write_without(&path, &layers.not_needed(&present), &mut out).unwrap();
        assert_eq!(written as usize, out.len());
        let names: Vec<String> = tar::Archive::new(out.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(!names.contains(&"l1/layer.tar".to_string()));
        assert!(names.contains(&"l2/layer.tar".to_string()));
        assert!(names.contains(&"manifest.json".to_string()));
        assert!(names.contains(&"l3/layer.tar".to_string()));
    }
}
