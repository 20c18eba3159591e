//! Atomic file commit: write a file under a hidden temporary name in its final
//! folder (`stage_*`), then flush it to disk and rename it into place
//! (`Staged::commit`, or [`commit_all`] for many). Readers see the old file or
//! the new one, never a part; a killed run leaves at most a hidden `.*.tmp`
//! file, which Parquet readers (DuckDB, pyarrow, Polars) skip. A file nothing
//! names until a later commit (a kept state's, named by its manifest) is
//! written in place instead (`stage_parquet_in_place`). A run stages all
//! its files before it commits any, so an error while writing one leaves every
//! dataset as it was, and flushes them all in one wave ([`flush_all`]) before
//! it puts any in place.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;

use super::PublishError;

/// A file written under its temporary name (closed), not yet flushed nor in place.
/// Dropped without `commit`, it is removed.
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    target: PathBuf,
    /// Written under its final name ([`stage_parquet_in_place`]): it needs
    /// no rename, and its folder is flushed with its content.
    in_place: bool,
    /// Its content, and its name if in place, are on disk ([`flush_all`]).
    flushed: bool,
    committed: bool,
}

impl Staged {
    /// Flushes the file, renames it into place (replacing any file there) and
    /// makes the rename durable.
    pub fn commit(self) -> Result<PathBuf, PublishError> {
        let mut paths = commit_all(vec![self])?;
        Ok(paths.remove(0))
    }
}

/// Flushes `files` to disk side by side, so the file system can write them in
/// one journal commit, and marks them flushed: their commits then only rename
/// them. A run flushes every file it staged this way before it commits any,
/// rather than one wave for its datasets, one for its kept states' files and
/// one for their manifests. Each file is reopened to be flushed: a run may
/// stage thousands (a state kept per date), more than it may hold open.
pub fn flush_all<'a>(files: impl IntoIterator<Item = &'a mut Staged>) -> Result<(), PublishError> {
    let mut files: Vec<&mut Staged> = files.into_iter().filter(|f| !f.flushed).collect();
    let mut paths: BTreeSet<&Path> = files.iter().map(|f| f.temp.as_path()).collect();
    // A name written in place is final already: its folder is flushed now.
    paths.extend(
        files
            .iter()
            .filter(|f| f.in_place)
            .filter_map(|f| f.target.parent()),
    );
    let paths: Vec<&Path> = paths.into_iter().collect();
    each_in_parallel(&paths, |path| sync(path))?;
    for f in &mut files {
        f.flushed = true;
    }
    Ok(())
}

/// Commits `files` together: every file is flushed to disk (unless
/// [`flush_all`] did), then each is renamed into place in order, then each
/// folder is flushed once, the flushes of a wave side by side. A file is on
/// disk before its name is; a crash may leave any subset of the renames, so
/// what must follow another is committed in a later call.
pub fn commit_all(mut files: Vec<Staged>) -> Result<Vec<PathBuf>, PublishError> {
    flush_all(files.iter_mut())?;
    let mut paths = Vec::with_capacity(files.len());
    let mut dirs = BTreeSet::new();
    for mut f in files {
        if !f.in_place {
            fs::rename(&f.temp, &f.target).map_err(|e| io(&f.target, e))?;
            dirs.extend(f.target.parent().map(Path::to_path_buf));
        }
        f.committed = true;
        paths.push(f.target.clone());
    }
    let dirs: Vec<PathBuf> = dirs.into_iter().collect();
    each_in_parallel(&dirs, |dir| sync(dir))?;
    Ok(paths)
}

/// Flushes the file or folder at `path` to disk.
fn sync(path: &Path) -> Result<(), PublishError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(path, e))
}

/// Runs `work` on every item, on up to 8 threads; the first error, if any.
pub fn each_in_parallel<T: Sync>(
    items: &[T],
    work: impl Fn(&T) -> Result<(), PublishError> + Sync,
) -> Result<(), PublishError> {
    if items.len() <= 1 {
        return items.iter().try_for_each(&work);
    }
    let chunk = items.len().div_ceil(8);
    std::thread::scope(|scope| {
        let threads: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().try_for_each(&work)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    })
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

fn io(path: &Path, source: std::io::Error) -> PublishError {
    PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Stages `batch` as the Parquet file `dir/name`.
pub fn stage_parquet(
    dir: &Path,
    name: &str,
    batch: &RecordBatch,
    tag: &str,
) -> Result<Staged, PublishError> {
    stage(dir, name, Some(tag), |file, target| {
        write_parquet_to(file, target, batch, None, Compression::SNAPPY)
    })
}

/// Writes `batch` as the Parquet file `dir/name` under its final name, for a
/// file nothing names until a later commit does (a kept state's file, named
/// by its manifest): committed, it is flushed but not renamed. Row groups of
/// at most `rows` rows: small groups of sorted rows let a filtered read skip
/// most of them. Uncompressed: every incremental run reads kept states back,
/// and decompressing their pages was 4% of its instructions (BENCHMARKS.md).
pub fn stage_parquet_in_place(
    dir: &Path,
    name: &str,
    batch: &RecordBatch,
    rows: Option<usize>,
) -> Result<Staged, PublishError> {
    stage(dir, name, None, |file, target| {
        write_parquet_to(file, target, batch, rows, Compression::UNCOMPRESSED)
    })
}

fn write_parquet_to(
    file: File,
    target: &Path,
    batch: &RecordBatch,
    rows: Option<usize>,
    compression: Compression,
) -> Result<File, PublishError> {
    let parquet = |source| PublishError::Parquet {
        path: target.to_path_buf(),
        source,
    };
    let mut props = WriterProperties::builder().set_compression(compression);
    if rows.is_some() {
        props = props.set_max_row_group_row_count(rows);
    }
    let props = props.build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(parquet)?;
    writer.write(batch).map_err(parquet)?;
    writer.into_inner().map_err(parquet)
}

/// Stages `batch` as a JSON array of row objects, `dir/name`.
pub fn stage_json(
    dir: &Path,
    name: &str,
    batch: &RecordBatch,
    tag: &str,
) -> Result<Staged, PublishError> {
    stage(dir, name, Some(tag), |file, target| {
        let arrow = |source| PublishError::Arrow {
            dataset: "exports",
            source,
        };
        let mut writer = datafusion::arrow::json::ArrayWriter::new(file);
        writer.write(batch).map_err(arrow)?;
        writer.finish().map_err(arrow)?;
        let mut file = writer.into_inner();
        file.write_all(b"\n").map_err(|e| io(target, e))?;
        Ok(file)
    })
}

/// Stages `text` as the file `dir/name`.
pub fn stage_text(dir: &Path, name: &str, text: &str) -> Result<Staged, PublishError> {
    let tag = std::process::id().to_string();
    stage(dir, name, Some(&tag), |mut file, target| {
        file.write_all(text.as_bytes()).map_err(|e| io(target, e))?;
        Ok(file)
    })
}

/// Writes `dir/name` with `write`: under a hidden temporary name marked
/// `tag`, or, without a tag, in place.
fn stage(
    dir: &Path,
    name: &str,
    tag: Option<&str>,
    write: impl FnOnce(File, &Path) -> Result<File, PublishError>,
) -> Result<Staged, PublishError> {
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let target = dir.join(name);
    let staged = Staged {
        temp: tag.map_or_else(
            || target.clone(),
            |tag| dir.join(format!(".{name}.{tag}.tmp")),
        ),
        target,
        in_place: tag.is_none(),
        flushed: false,
        committed: false,
    };
    let file = File::create(&staged.temp).map_err(|e| io(&staged.temp, e))?;
    write(file, &staged.target)?;
    Ok(staged)
}

/// Writes `batch` to `dir/name` atomically, replacing any file already there.
pub fn write_parquet(
    dir: &Path,
    name: &str,
    batch: &RecordBatch,
    tag: &str,
) -> Result<PathBuf, PublishError> {
    stage_parquet(dir, name, batch, tag)?.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn commits_many_files_in_several_folders() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::write(a.join("0.txt"), "old").unwrap();
        // More files than threads: each thread flushes several.
        let files: Vec<Staged> = (0..20)
            .map(|i| {
                let dir = if i % 2 == 0 { &a } else { &b };
                stage_text(dir, &format!("{i}.txt"), &format!("file {i}")).unwrap()
            })
            .collect();
        // Staged, nothing is in place yet.
        assert_eq!(fs::read_to_string(a.join("0.txt")).unwrap(), "old");
        assert!(!b.join("1.txt").exists());

        let paths = commit_all(files).unwrap();
        let expected: Vec<PathBuf> = (0..20)
            .map(|i| (if i % 2 == 0 { &a } else { &b }).join(format!("{i}.txt")))
            .collect();
        assert_eq!(paths, expected);
        for (i, path) in paths.iter().enumerate() {
            assert_eq!(fs::read_to_string(path).unwrap(), format!("file {i}"));
        }
        // No temporary file is left behind.
        assert_eq!(names(&a).len(), 10);
        assert_eq!(names(&b).len(), 10);
    }

    #[test]
    fn a_file_that_cannot_be_flushed_puts_none_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<Staged> = (0..3)
            .map(|i| stage_text(dir.path(), &format!("{i}.txt"), "new").unwrap())
            .collect();
        fs::remove_file(&files[1].temp).unwrap();
        let err = commit_all(files).unwrap_err();
        assert!(err.to_string().contains(".1.txt."), "{err}");
        // Every file is flushed before any is renamed, and the staged files
        // are removed when dropped.
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[test]
    fn files_in_place_and_flushed_ahead_commit_without_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let batch = RecordBatch::try_from_iter([(
            "x",
            std::sync::Arc::new(datafusion::arrow::array::Int32Array::from(vec![1, 2]))
                as datafusion::arrow::array::ArrayRef,
        )])
        .unwrap();
        let mut data = stage_parquet_in_place(dir.path(), "data.parquet", &batch, None).unwrap();
        // Under its final name at once, and nothing else.
        assert_eq!(
            names(dir.path()),
            BTreeSet::from(["data.parquet".to_string()])
        );
        let mut manifest = stage_text(dir.path(), "manifest.json", "data.parquet").unwrap();
        flush_all([&mut data, &mut manifest]).unwrap();
        assert!(data.flushed && manifest.flushed);
        assert_eq!(
            commit_all(vec![data]).unwrap(),
            vec![dir.path().join("data.parquet")]
        );
        commit_all(vec![manifest]).unwrap();
        assert_eq!(
            names(dir.path()),
            BTreeSet::from(["data.parquet".to_string(), "manifest.json".to_string()])
        );
        // Dropped before its commit, a file in place is removed like any other.
        let dropped = stage_parquet_in_place(dir.path(), "other.parquet", &batch, None).unwrap();
        drop(dropped);
        assert!(!dir.path().join("other.parquet").exists());
    }

    #[test]
    fn a_staged_file_dropped_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let staged = stage_text(dir.path(), "x.txt", "new").unwrap();
        assert_eq!(names(dir.path()).len(), 1);
        drop(staged);
        assert!(names(dir.path()).is_empty());
    }
}
