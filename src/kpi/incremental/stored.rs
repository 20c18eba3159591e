//! Kept aggregate states: one folder per aggregate under
//! `.kpiforge/incremental/<pipeline>/`, holding Parquet files and
//! `manifest.json`, which names the files that make up the state and the source
//! files it covers. A run writes new files under new names and replaces the
//! manifest last, so a run that fails or stops half-way leaves the previous
//! state whole; files no manifest names are removed by the next commit.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Pipeline;
use crate::publish::{Staged, commit_all, each_in_parallel, stage_parquet_in_place, stage_text};

/// A source file as the state saw it: changed in size or time, it is another file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub path: String,
    pub len: u64,
    pub modified_ns: u64,
}

impl Stamp {
    pub fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some(Stamp {
            path: path.to_string_lossy().into_owned(),
            len: meta.len(),
            modified_ns: modified.as_nanos() as u64,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The aggregate's plan as text; a different plan does not use this state.
    pub plan: String,
    /// Per source, the files whose rows are in the state.
    pub sources: BTreeMap<String, Vec<Stamp>>,
    /// The files of per-group partial results, one per partition (a value of
    /// the first `DATE` grouping column, or `all`).
    pub groups: BTreeMap<String, String>,
    /// Whether `groups` has one file per partition (large states) or one file, `all`.
    #[serde(default)]
    pub partitioned: bool,
    /// Per `count(DISTINCT)`, the files of its `(group, value)` pairs.
    pub pairs: Vec<Vec<String>>,
    /// Kept counts (`counts.rs`), which need no files.
    #[serde(default)]
    pub counts: Vec<i64>,
    /// A kept KPI output (`outputs.rs`): the version of each state it was
    /// computed from, by state key.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

/// The states of one pipeline.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    tag: String,
}

impl Store {
    pub fn new(pipeline: &Pipeline) -> Store {
        Store {
            dir: pipeline
                .state
                .local_dir()
                .join("incremental")
                .join(&pipeline.name),
            tag: format!(
                "{}-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"),
                std::process::id()
            ),
        }
    }

    /// The folder of the pipeline's states.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the pipeline's lock on its kept states: one run at a time updates
    /// them. The run holds it (`Incremental`) until its new states are
    /// committed or dropped.
    pub fn lock(&self) -> Result<File, String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        crate::state::lock_dir(
            &self.dir,
            "of this pipeline is updating its kept aggregates",
        )
    }

    /// The kept manifest of `key`, if there is one for this very plan and
    /// every file it names is there.
    pub fn manifest(&self, key: &str, plan: &str) -> Option<Manifest> {
        let path = self.dir.join(key).join("manifest.json");
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str::<Manifest>(&text) {
            Ok(m) if m.plan == plan => {
                let files = m.groups.values().chain(m.pairs.iter().flatten());
                if let Some(lost) = files
                    .into_iter()
                    .find(|f| !self.dir.join(key).join(f).exists())
                {
                    tracing::warn!(file = %self.dir.join(key).join(lost).display(), "a file of a kept aggregate is missing: rebuilding it");
                    return None;
                }
                Some(m)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "unreadable aggregate state: rebuilding it");
                None
            }
        }
    }

    /// The full paths of `files` of `key`; `None` for no files.
    pub fn paths(&self, key: &str, files: &[String]) -> Option<Vec<String>> {
        (!files.is_empty()).then(|| {
            files
                .iter()
                .map(|f| self.dir.join(key).join(f).to_string_lossy().into_owned())
                .collect()
        })
    }

    /// Stages `batch` as a new file of `key`; returns its name and the staged file.
    pub fn stage(
        &self,
        key: &str,
        kind: &str,
        batch: &RecordBatch,
    ) -> Result<(String, Staged), DataFusionError> {
        let name = format!("{kind}-{}.parquet", self.tag);
        // In place: only the manifest names it, and is committed after it.
        // Small row groups: a read of some partitions skips the others.
        let staged = stage_parquet_in_place(&self.dir.join(key), &name, batch, Some(16 * 1024))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok((name, staged))
    }

    pub fn stage_manifest(
        &self,
        key: &str,
        manifest: &Manifest,
    ) -> Result<Staged, DataFusionError> {
        let text = serde_json::to_string_pretty(manifest)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        stage_text(&self.dir.join(key), "manifest.json", &text)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// The new states of a run, put in place when it publishes.
#[derive(Debug, Default)]
pub struct Pending {
    /// Per aggregate, its new files, the manifest last.
    states: Vec<Vec<Staged>>,
    /// The lock on the kept states ([`Store::lock`]): held at least until the
    /// states are committed; released when the run lets go of it too.
    lock: Option<Arc<File>>,
}

impl Pending {
    pub fn locked(lock: Arc<File>) -> Pending {
        Pending {
            states: Vec::new(),
            lock: Some(lock),
        }
    }

    pub fn add(&mut self, staged: Vec<Staged>) {
        if !staged.is_empty() {
            self.states.push(staged);
        }
    }

    /// Every staged file, to be flushed with the run's others
    /// ([`crate::publish::flush_all`]) before any is committed.
    pub fn files_mut(&mut self) -> impl Iterator<Item = &mut Staged> {
        self.states.iter_mut().flatten()
    }

    /// Adds another run part's new states (and its hold on the lock).
    pub fn extend(&mut self, other: Pending) {
        self.states.extend(other.states);
        if self.lock.is_none() {
            self.lock = other.lock;
        }
    }

    /// Puts every new state in place, then removes the files no manifest names.
    /// Each state's files go in place before any manifest, so that a manifest
    /// never names a file that a crash left out.
    pub fn commit(self) -> Result<(), crate::publish::PublishError> {
        let _lock = self.lock;
        let (mut files, mut manifests) = (Vec::new(), Vec::new());
        for mut state in self.states {
            manifests.extend(state.pop());
            files.extend(state);
        }
        commit_all(files)?;
        let dirs: Vec<PathBuf> = commit_all(manifests)?
            .iter()
            .filter_map(|m| m.parent().map(Path::to_path_buf))
            .collect();
        each_in_parallel(&dirs, |dir| {
            remove_unlisted(dir);
            Ok(())
        })
    }
}

/// Removes the files of an aggregate's folder that its manifest does not name
/// (earlier states, and files of runs that failed). Best effort.
fn remove_unlisted(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) else {
        return;
    };
    let Ok(manifest) = serde_json::from_str::<Manifest>(&text) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let listed = name == "manifest.json"
            || manifest.groups.values().any(|g| *g == name)
            || manifest.pairs.iter().flatten().any(|p| *p == name);
        // Temporary files of a run still going are left to it.
        if !listed && !name.starts_with('.') {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A state's version: a new one each time its files change.
pub fn version(manifest: &Manifest) -> String {
    hash(&serde_json::to_string(manifest).unwrap_or_default())
}

/// A short, stable name for an aggregate's folder.
pub fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
