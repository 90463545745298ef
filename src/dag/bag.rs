//! The DAG files of a directory, loaded and kept current.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Dag;
use super::error::{LoadError, Problem};
use super::load::load_str;
use crate::tasks::Registry;

/// Every DAG in the DAGs directory, plus the files that failed to load and why.
///
/// A broken file never hides the others; its error stays here until the file is fixed.
#[derive(Default)]
pub struct DagBag {
    dir: PathBuf,
    dags: BTreeMap<String, Arc<Dag>>,
    errors: BTreeMap<PathBuf, LoadError>,
    /// File text by path, so a refresh parses only what changed; a file that cannot be
    /// loaded as text holds why.
    sources: BTreeMap<PathBuf, Source>,
}

/// What a DAG file held when last read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Text(String),
    /// Not UTF-8, or a link out of the DAGs folder: a broken file, with the reason.
    Refused(String),
}

/// What a refresh found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub changed_files: Vec<PathBuf>,
    pub removed_files: Vec<PathBuf>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.changed_files.is_empty() && self.removed_files.is_empty()
    }
}

impl DagBag {
    pub fn load(dir: &Path, registry: &Registry) -> DagBag {
        let mut bag = DagBag {
            dir: dir.to_path_buf(),
            ..DagBag::default()
        };
        bag.refresh(registry);
        bag
    }

    pub fn get(&self, dag_id: &str) -> Option<&Arc<Dag>> {
        self.dags.get(dag_id)
    }

    pub fn dags(&self) -> impl Iterator<Item = &Arc<Dag>> {
        self.dags.values()
    }

    pub fn errors(&self) -> impl Iterator<Item = &LoadError> {
        self.errors.values()
    }

    /// The load error of the file that would define `dag_id`, to explain why it is missing.
    pub fn error_for(&self, dag_id: &str) -> Option<&LoadError> {
        self.errors
            .values()
            .find(|e| e.path.file_stem().and_then(|s| s.to_str()) == Some(dag_id))
    }

    /// Re-reads the directory; only files whose text changed are parsed again.
    pub fn refresh(&mut self, registry: &Registry) -> Changes {
        let files = match dag_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list DAG files");
                Vec::new()
            }
        };
        let mut sources = BTreeMap::new();
        let mut changes = Changes::default();
        for path in files {
            let source = match read_source(&self.dir, &path) {
                Ok(source) => source,
                // Mid-write or removed between listing and reading: try again next refresh.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read DAG file");
                    if let Some(old) = self.sources.get(&path) {
                        sources.insert(path, old.clone());
                    }
                    continue;
                }
            };
            if self.sources.get(&path) != Some(&source) {
                changes.changed_files.push(path.clone());
            }
            sources.insert(path, source);
        }
        changes.removed_files = self
            .sources
            .keys()
            .filter(|p| !sources.contains_key(*p))
            .cloned()
            .collect();
        if changes.is_empty() {
            return changes;
        }
        self.rebuild(sources, registry);
        changes
    }

    fn rebuild(&mut self, sources: BTreeMap<PathBuf, Source>, registry: &Registry) {
        let previous: BTreeMap<&Path, &Arc<Dag>> =
            self.dags.values().map(|d| (d.path.as_path(), d)).collect();
        let mut dags: BTreeMap<String, Arc<Dag>> = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for (path, source) in &sources {
            let text = match source {
                Source::Text(text) => text,
                Source::Refused(why) => {
                    errors.insert(
                        path.clone(),
                        LoadError::single(path, Problem::nowhere(why.clone())),
                    );
                    continue;
                }
            };
            // A plug-in's files (a stream's definition) live in the same folder; it loads them.
            if registry.is_foreign_file(text) {
                continue;
            }
            let loaded = match previous.get(path.as_path()) {
                Some(dag) if self.sources.get(path) == Some(source) => Ok(Arc::clone(dag)),
                _ => load_str(path, text, registry).map(Arc::new),
            };
            match loaded {
                Ok(dag) => match dags.get(&dag.id) {
                    Some(first) => {
                        let problem = Problem::nowhere(format!(
                            "DAG id `{}` is already defined by {}",
                            dag.id,
                            first.path.display()
                        ));
                        errors.insert(path.clone(), LoadError::single(path, problem));
                    }
                    None => {
                        dags.insert(dag.id.clone(), dag);
                    }
                },
                Err(e) => {
                    errors.insert(path.clone(), e);
                }
            }
        }
        self.dags = dags;
        self.errors = errors;
        self.sources = sources;
    }
}

/// Reads a DAG file of `dir`. A file that is not UTF-8 text, or a symbolic link to a file
/// outside `dir`, is refused with the reason: a broken file, never its content in an error.
fn read_source(dir: &Path, path: &Path) -> std::io::Result<Source> {
    Ok(match read_folder_file(dir, path)? {
        Ok(text) => Source::Text(text),
        Err(why) => Source::Refused(why),
    })
}

/// The text of a file of the DAGs folder `dir`, or why it is refused: not UTF-8, or a
/// symbolic link to a file outside `dir` (whose content must never be echoed in an error).
pub(crate) fn read_folder_file(dir: &Path, path: &Path) -> std::io::Result<Result<String, String>> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        let target = std::fs::canonicalize(path)?;
        let inside = std::fs::canonicalize(dir).is_ok_and(|dir| target.starts_with(dir));
        if !inside {
            return Ok(Err(
                "a symbolic link to a file outside the DAGs folder; not read".to_string(),
            ));
        }
    }
    let bytes = std::fs::read(path)?;
    Ok(String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {}); save the file as UTF-8",
            e.utf8_error().valid_up_to()
        )
    }))
}

/// `*.yaml` and `*.yml` files directly in `dir`, sorted; a missing directory has none.
pub(crate) fn dag_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if is_yaml && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
