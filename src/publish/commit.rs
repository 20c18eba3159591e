//! Atomic file commit: write a Parquet file under a hidden temporary name in its
//! final folder, flush it to disk, then rename it into place. Readers see the old
//! file or the new one, never a part; a killed run leaves at most a hidden
//! `.*.tmp` file, which Parquet readers (DuckDB, pyarrow, Polars) skip.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;

use super::PublishError;

/// Writes `batch` to `dir/name` atomically, replacing any file already there.
pub fn write_parquet(
    dir: &Path,
    name: &str,
    batch: &RecordBatch,
    tag: &str,
) -> Result<PathBuf, PublishError> {
    let io = |path: &Path, source: std::io::Error| PublishError::Io {
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let target = dir.join(name);
    let temp = dir.join(format!(".{name}.{tag}.tmp"));
    let result = (|| {
        let file = File::create(&temp).map_err(|e| io(&temp, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer =
            ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|source| {
                PublishError::Parquet {
                    path: target.clone(),
                    source,
                }
            })?;
        writer
            .write(batch)
            .map_err(|source| PublishError::Parquet {
                path: target.clone(),
                source,
            })?;
        let file = writer
            .into_inner()
            .map_err(|source| PublishError::Parquet {
                path: target.clone(),
                source,
            })?;
        file.sync_all().map_err(|e| io(&temp, e))?;
        fs::rename(&temp, &target).map_err(|e| io(&target, e))?;
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| target)
}
