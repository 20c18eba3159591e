//! Integer keys checked with bitmaps. `unique` on one integer column and a
//! `relationship` between integer columns are the expensive checks: a hash
//! aggregate over every key, a hash join probing every row. When the keys' range
//! is small enough (true of surrogate keys), a bitmap answers both exactly, in
//! one decode of the key columns: a bit per key seen, a second per key seen
//! twice. For a relationship the bitmap of the `to` keys becomes a SQL function
//! (`in_keys`) that the `from` source's single scan calls, so the orphans are
//! counted in the same pass as that source's other checks, with no join. When a
//! range is too wide, the check runs as SQL (`compile.rs`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::compile::ident;

/// Bits in a bitmap at most: 2^28 keys, 32 MiB.
const MAX_RANGE: u64 = 1 << 28;

/// A check the bitmap path can answer, with the columns it reads.
#[derive(Debug, Clone)]
pub enum FastKeys {
    /// Measures duplicated rows (`m0`) and keys (`m1`).
    Unique { table: String, column: String },
    /// A relationship's scan of the `from` keys calling `in_keys`; when the
    /// `to` keys do not fit a bitmap, its anti-join (`fallback`) runs instead.
    Relationship {
        /// The pipeline's check index, naming its `in_keys` function.
        index: usize,
        to: (String, String),
        fallback: String,
    },
}

/// The check's measurements as the SQL would give them, or `None` when the
/// keys' range is too wide for a bitmap.
pub async fn measure(
    ctx: &SessionContext,
    fast: &FastKeys,
) -> Result<Option<Vec<RecordBatch>>, DataFusionError> {
    let values = match fast {
        FastKeys::Unique { table, column } => {
            let Some((min, bits)) = range(ctx, table, column).await? else {
                return Ok(None);
            };
            let (mut seen, mut twice) = (Bitmap::new(bits), Bitmap::new(bits));
            let (mut extra, mut keys) = (0i64, 0i64);
            for_each_key(ctx, table, column, |k| {
                let i = k.wrapping_sub(min) as u64;
                if k < min || i >= bits {
                    return; // cannot happen: the range came from the same keys
                }
                if !seen.insert(i) {
                    extra += 1;
                    if twice.insert(i) {
                        keys += 1;
                    }
                }
            })
            .await?;
            // Every occurrence of a duplicated key: the extra ones and the first.
            vec![extra + keys, keys]
        }
        FastKeys::Relationship { .. } => return Ok(None),
    };
    let fields: Vec<Field> = (0..values.len())
        .map(|i| Field::new(format!("m{i}"), DataType::Int64, false))
        .collect();
    let columns = values
        .into_iter()
        .map(|v| Arc::new(Int64Array::from(vec![v])) as _)
        .collect();
    Ok(Some(vec![RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?]))
}

/// The keys of a column, as a bitmap over their range.
#[derive(Debug)]
pub struct KeySet {
    min: i64,
    bits: u64,
    present: Bitmap,
}

impl KeySet {
    fn contains(&self, k: i64) -> bool {
        let i = k.wrapping_sub(self.min) as u64;
        k >= self.min && i < self.bits && self.present.contains(i)
    }
}

/// The non-null keys of `table.column` as a bitmap, or `None` when their range
/// is too wide.
pub async fn key_set(
    ctx: &SessionContext,
    table: &str,
    column: &str,
) -> Result<Option<KeySet>, DataFusionError> {
    let Some((min, bits)) = range(ctx, table, column).await? else {
        return Ok(None);
    };
    let mut present = Bitmap::new(bits);
    for_each_key(ctx, table, column, |k| {
        let i = k.wrapping_sub(min) as u64;
        if k >= min && i < bits {
            present.insert(i);
        }
    })
    .await?;
    Ok(Some(KeySet { min, bits, present }))
}

/// The SQL function `name(key) -> boolean`: whether `key` is in `keys`. Without
/// keys (planning, or a range too wide for a bitmap) it returns NULL, which no
/// check counts.
pub fn in_keys(name: &str, keys: Option<Arc<KeySet>>) -> ScalarUDF {
    ScalarUDF::from(InKeys {
        name: name.to_string(),
        signature: Signature::any(1, Volatility::Immutable),
        keys,
    })
}

/// The name of the `in_keys` function of the pipeline's `index`-th check.
pub fn in_keys_name(index: usize) -> String {
    format!("{IN_KEYS_PREFIX}{index}")
}

/// How every `in_keys` function's name starts.
pub const IN_KEYS_PREFIX: &str = "__kpiforge_in_keys_";

#[derive(Debug)]
struct InKeys {
    name: String,
    signature: Signature,
    keys: Option<Arc<KeySet>>,
}

// Functions are told apart by name; each check has its own.
impl PartialEq for InKeys {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for InKeys {}
impl std::hash::Hash for InKeys {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for InKeys {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let [arg] = args.args.as_slice() else {
            return Err(DataFusionError::Internal(format!(
                "{} takes one argument",
                self.name
            )));
        };
        let keys = cast(&arg.to_array(rows)?, &DataType::Int64)?;
        let keys = keys.as_primitive::<Int64Type>();
        let result: BooleanArray = match &self.keys {
            None => BooleanArray::new_null(rows),
            Some(set) => keys.iter().map(|k| k.map(|k| set.contains(k))).collect(),
        };
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

/// The smallest key and the bitmap size, if the range fits.
async fn range(
    ctx: &SessionContext,
    table: &str,
    column: &str,
) -> Result<Option<(i64, u64)>, DataFusionError> {
    let c = ident(column);
    let sql = format!("SELECT CAST(min({c}) AS BIGINT), CAST(max({c}) AS BIGINT) FROM {table}");
    let batches = ctx.sql(&sql).await?.collect().await?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Some((0, 1)));
    };
    let (min, max) = (
        b.column(0).as_primitive::<Int64Type>(),
        b.column(1).as_primitive::<Int64Type>(),
    );
    if min.is_null(0) || max.is_null(0) {
        return Ok(Some((0, 1)));
    }
    let (min, max) = (min.value(0), max.value(0));
    let span = (max as i128 - min as i128 + 1) as u128;
    Ok((span <= MAX_RANGE as u128).then_some((min, span as u64)))
}

/// Streams the non-null keys of a column.
async fn for_each_key(
    ctx: &SessionContext,
    table: &str,
    column: &str,
    mut f: impl FnMut(i64),
) -> Result<(), DataFusionError> {
    let c = ident(column);
    let sql = format!("SELECT {c} FROM {table} WHERE {c} IS NOT NULL");
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let keys = cast(batch.column(0), &DataType::Int64)?;
        let keys = keys.as_primitive::<Int64Type>();
        for k in keys.iter().flatten() {
            f(k);
        }
    }
    Ok(())
}

#[derive(Debug)]
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(bits: u64) -> Bitmap {
        Bitmap(vec![0; bits.div_ceil(64) as usize])
    }

    /// Sets bit `i`; whether it was clear.
    fn insert(&mut self, i: u64) -> bool {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let clear = self.0[word] & bit == 0;
        self.0[word] |= bit;
        clear
    }

    fn contains(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }
}
