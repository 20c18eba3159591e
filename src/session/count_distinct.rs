//! `count(DISTINCT key)` per group, kept as bitmaps where the keys allow.
//!
//! DataFusion counts distinct values per group in one hash set of `(group, value)`
//! pairs: each row is a random access into a set as large as all the pairs. In
//! the TPC-H workload (distinct customers per month over 6 M order lines) that was
//! 14% of the run's CPU, and each of the eight partial aggregates held a set of
//! its own. Counted keys are mostly dense integers (customer or product ids,
//! dates), so here each group's values are bits over the range of values seen, as
//! long as groups × range fits in [`DENSE_BYTES`]; past that the pairs move to a
//! hash set, as DataFusion keeps them. [`CountKeys`] puts [`CountDistinct`] in
//! place of DataFusion's `count(DISTINCT x)` in grouped aggregates of integers and
//! dates; the result is the same.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, PrimitiveArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{cast, max, min};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, HashSet, Result, ScalarValue};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, ExprSchemable, GroupsAccumulator,
    LogicalPlan, Signature, Volatility,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The most memory one accumulator's bitmaps may take (groups × range / 8 bytes):
/// 80 months × 1.5 M customers (TPC-H SF10) is 15 MiB.
const DENSE_BYTES: u128 = 32 << 20;

/// `count(DISTINCT x)` for integers and dates; NULLs are not counted.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CountDistinct {
    signature: Signature,
}

impl CountDistinct {
    pub fn udaf() -> AggregateUDF {
        AggregateUDF::new_from_impl(CountDistinct {
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl AggregateUDFImpl for CountDistinct {
    fn name(&self) -> &str {
        "count_distinct_keys"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new_list(
            format_state_name(args.name, "values"),
            Field::new_list_field(DataType::Int64, true),
            true,
        ))])
    }

    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup(Distinct::default())))
    }

    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Distinct::default()))
    }

    fn default_value(&self, _: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }
}

/// The distinct values seen per group, and their counts.
#[derive(Debug, Default)]
struct Distinct {
    counts: Vec<i64>,
    seen: Seen,
}

#[derive(Debug)]
enum Seen {
    /// Group `g`'s value `v` is bit `v - base` of `bits[g * words..(g + 1) * words]`.
    Dense {
        base: i128,
        words: usize,
        bits: Vec<u64>,
    },
    Sparse(HashSet<(usize, i64)>),
}

impl Default for Seen {
    fn default() -> Self {
        Seen::Dense {
            base: 0,
            words: 0,
            bits: Vec::new(),
        }
    }
}

impl Distinct {
    /// Makes room for `groups` groups and for values in `values` (lowest, highest).
    fn reserve(&mut self, groups: usize, values: Option<(i64, i64)>) {
        if self.counts.len() < groups {
            self.counts.resize(groups, 0);
        }
        let groups = self.counts.len();
        let Seen::Dense { base, words, bits } = &mut self.seen else {
            return;
        };
        let fits = |words: u128| words * groups as u128 * 8 <= DENSE_BYTES;
        let end = *base + 64 * *words as i128; // one past the last value covered
        let words_for = |span: i128| (span.max(0) as u128).div_ceil(64);
        let (add_left, add_right) = match values {
            Some((lo, hi)) if *words == 0 => (0, words_for(i128::from(hi) + 1 - i128::from(lo))),
            Some((lo, hi)) => (
                words_for(*base - i128::from(lo)),
                words_for(i128::from(hi) + 1 - end),
            ),
            None => (0, 0),
        };
        if add_left == 0 && add_right == 0 {
            if fits(*words as u128) {
                bits.resize(groups * *words, 0);
            } else {
                self.move_to_pairs();
            }
            return;
        }
        let now = *words as u128;
        // A side that grows takes a quarter more room than it needs, so that keys
        // arriving in order (ascending or descending) lay the bits out a few dozen
        // times, not every batch, while a range that is nearly all there at the
        // first batch (keys in no order) is not doubled for one key past its end.
        let slack = |add: u128| if add > 0 { add.max(now / 4) } else { 0 };
        let (left, right) = if fits(now + slack(add_left) + slack(add_right)) {
            (slack(add_left), slack(add_right))
        } else if fits(now + add_left + add_right) {
            (add_left, add_right)
        } else {
            self.move_to_pairs();
            return;
        };
        let new_words = (now + left + right) as usize;
        let mut new_bits = vec![0u64; groups * new_words];
        if *words > 0 {
            for (g, old) in bits.chunks_exact(*words).enumerate() {
                let at = g * new_words + left as usize;
                new_bits[at..at + old.len()].copy_from_slice(old);
            }
        }
        *base = match values {
            Some((lo, _)) if now == 0 => i128::from(lo),
            _ => *base - 64 * left as i128,
        };
        *words = new_words;
        *bits = new_bits;
    }

    /// Moves the values from bits to a hash set of pairs.
    fn move_to_pairs(&mut self) {
        let Seen::Dense { base, words, bits } = &self.seen else {
            return;
        };
        let mut set = HashSet::default();
        if *words > 0 {
            for (i, &word) in bits.iter().enumerate() {
                for v in ones(word, *base + 64 * (i % words) as i128) {
                    set.insert((i / words, v));
                }
            }
        }
        self.seen = Seen::Sparse(set);
    }

    /// Adds `(group, value)` pairs; the groups and values have room (`reserve`).
    fn insert(&mut self, pairs: impl Iterator<Item = (usize, i64)>) {
        let counts = &mut self.counts;
        match &mut self.seen {
            Seen::Dense { base, words, bits } => {
                // Wrapping arithmetic gives the true offset: it is in 0..64 * words.
                let base = *base as i64;
                for (g, v) in pairs {
                    let offset = v.wrapping_sub(base) as u64 as usize;
                    let word = &mut bits[g * *words + offset / 64];
                    let bit = 1u64 << (offset % 64);
                    if *word & bit == 0 {
                        *word |= bit;
                        counts[g] += 1;
                    }
                }
            }
            Seen::Sparse(set) => {
                for (g, v) in pairs {
                    if set.insert((g, v)) {
                        counts[g] += 1;
                    }
                }
            }
        }
    }

    /// The values of the first `n` groups, one list per group.
    fn lists(&self, n: usize) -> ListArray {
        let lengths = self.counts[..n].iter().map(|&c| c as usize);
        let offsets = OffsetBuffer::<i32>::from_lengths(lengths);
        let mut values = vec![0i64; offsets[n] as usize];
        match &self.seen {
            Seen::Dense { base, words, bits } => {
                let mut at = 0;
                for (i, &word) in bits[..n * words].iter().enumerate() {
                    for v in ones(word, *base + 64 * (i % words) as i128) {
                        values[at] = v;
                        at += 1;
                    }
                }
            }
            Seen::Sparse(set) => {
                let mut next: Vec<usize> = offsets[..n].iter().map(|&o| o as usize).collect();
                for &(g, v) in set.iter().filter(|(g, _)| *g < n) {
                    values[next[g]] = v;
                    next[g] += 1;
                }
            }
        }
        let field = Arc::new(Field::new_list_field(DataType::Int64, true));
        ListArray::new(field, offsets, Arc::new(Int64Array::from(values)), None)
    }

    /// Drops the first `n` groups (emitted); the others are numbered from 0.
    fn forget(&mut self, emit: EmitTo) -> Vec<i64> {
        let counts = emit.take_needed(&mut self.counts);
        let n = counts.len();
        match (&mut self.seen, emit) {
            (seen, EmitTo::All) => *seen = Seen::default(),
            (Seen::Dense { words, bits, .. }, EmitTo::First(_)) => {
                bits.drain(..n * *words);
            }
            (Seen::Sparse(set), EmitTo::First(_)) => {
                *set = set
                    .drain()
                    .filter(|(g, _)| *g >= n)
                    .map(|(g, v)| (g - n, v))
                    .collect();
            }
        }
        counts
    }

    fn size(&self) -> usize {
        let seen = match &self.seen {
            Seen::Dense { bits, .. } => bits.capacity() * 8,
            Seen::Sparse(set) => set.capacity() * (size_of::<(usize, i64)>() + 1),
        };
        size_of::<Self>() + self.counts.capacity() * 8 + seen
    }
}

/// The values whose bits are set in `word`, bit 0 being `first`.
fn ones(mut word: u64, first: i128) -> impl Iterator<Item = i64> {
    std::iter::from_fn(move || {
        (word != 0).then(|| {
            let bit = word.trailing_zeros();
            word &= word - 1;
            (first + i128::from(bit)) as i64
        })
    })
}

/// The lowest and highest non-null value.
fn range(values: &PrimitiveArray<Int64Type>) -> Option<(i64, i64)> {
    Some((min(values)?, max(values)?))
}

/// The rows of `values` a filter keeps, non-null, with their groups.
fn rows<'a>(
    values: &'a Int64Array,
    groups: &'a [usize],
    filter: Option<&'a BooleanArray>,
) -> impl Iterator<Item = (usize, i64)> + 'a {
    let nulls = values.nulls().filter(|n| n.null_count() > 0);
    (0..values.len())
        .filter(move |&i| {
            nulls.is_none_or(|n| n.is_valid(i))
                && filter.is_none_or(|f| f.is_valid(i) && f.value(i))
        })
        .map(move |i| (groups[i], values.value(i)))
}

impl GroupsAccumulator for Distinct {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let values = cast(&values[0], &DataType::Int64)?;
        let values = values.as_primitive::<Int64Type>();
        self.reserve(total_num_groups, range(values));
        if values.null_count() == 0 && opt_filter.is_none() {
            // The common case, as a plain zip the compiler keeps tight.
            self.insert(
                group_indices
                    .iter()
                    .copied()
                    .zip(values.values().iter().copied()),
            );
        } else {
            self.insert(rows(values, group_indices, opt_filter));
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let lists = values[0].as_list::<i32>();
        let flat = lists.values().as_primitive::<Int64Type>();
        self.reserve(total_num_groups, range(flat));
        let offsets = lists.value_offsets();
        let pairs = (0..lists.len())
            .filter(|&i| lists.is_valid(i))
            .flat_map(|i| {
                let (from, to) = (offsets[i] as usize, offsets[i + 1] as usize);
                (from..to).map(move |j| (group_indices[i], flat.value(j)))
            });
        self.insert(pairs);
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from(self.forget(emit_to))))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let n = match emit_to {
            EmitTo::All => self.counts.len(),
            EmitTo::First(n) => n,
        };
        let lists = self.lists(n);
        self.forget(emit_to);
        Ok(vec![Arc::new(lists)])
    }

    /// Each row as its own group: a list of its value, empty for NULL or a row
    /// the filter drops. DataFusion passes rows on like this when a partial
    /// aggregate finds nearly as many groups as rows.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let values = cast(&values[0], &DataType::Int64)?;
        let values = values.as_primitive::<Int64Type>();
        let kept: Vec<bool> = (0..values.len())
            .map(|i| values.is_valid(i) && opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i)))
            .collect();
        let offsets = OffsetBuffer::<i32>::from_lengths(kept.iter().map(|&k| usize::from(k)));
        let kept: Int64Array = (0..values.len())
            .filter(|&i| kept[i])
            .map(|i| values.value(i))
            .collect();
        let field = Arc::new(Field::new_list_field(DataType::Int64, true));
        Ok(vec![Arc::new(ListArray::new(
            field,
            offsets,
            Arc::new(kept),
            None,
        ))])
    }

    fn size(&self) -> usize {
        Distinct::size(self)
    }
}

/// The same count without a `GROUP BY`: one group.
#[derive(Debug)]
struct OneGroup(Distinct);

impl Accumulator for OneGroup {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        GroupsAccumulator::update_batch(&mut self.0, values, &vec![0; values[0].len()], None, 1)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        GroupsAccumulator::merge_batch(&mut self.0, states, &vec![0; states[0].len()], 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(
            self.0.counts.first().copied().unwrap_or(0),
        )))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.reserve(1, None);
        Ok(vec![ScalarValue::List(Arc::new(self.0.lists(1)))])
    }

    fn size(&self) -> usize {
        self.0.size()
    }
}

/// Replaces `count(DISTINCT x)` over an integer or date `x` in grouped
/// aggregates by [`CountDistinct`]. Output names are kept.
#[derive(Debug, Default)]
pub struct CountKeys;

impl OptimizerRule for CountKeys {
    fn name(&self) -> &str {
        "kpiforge_count_distinct_keys"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if aggregate.group_expr.is_empty() {
            return Ok(Transformed::no(plan));
        }
        let input = aggregate.input.schema().clone();
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            let saved = names.save(&expr);
            Ok(count_keys(expr, &input).update_data(|e| saved.restore(e)))
        })
    }
}

fn count_keys(expr: Expr, input: &DFSchema) -> Transformed<Expr> {
    if let Expr::Alias(alias) = expr {
        return count_keys(*alias.expr, input)
            .update_data(|e| e.alias_qualified(alias.relation, alias.name));
    }
    let Expr::AggregateFunction(f) = &expr else {
        return Transformed::no(expr);
    };
    let p = &f.params;
    let keys = f.func.name() == "count"
        && p.distinct
        && p.order_by.is_empty()
        && matches!(&p.args[..], [arg] if arg.get_type(input).is_ok_and(|t| is_key(&t)));
    if !keys {
        return Transformed::no(expr);
    }
    Transformed::yes(Expr::AggregateFunction(AggregateFunction::new_udf(
        Arc::new(CountDistinct::udaf()),
        p.args.clone(),
        false,
        p.filter.clone(),
        Vec::new(),
        p.null_treatment,
    )))
}

/// Types whose values are exactly an `i64`.
fn is_key(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Date32
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::functions_aggregate::expr_fn::{count, count_distinct};
    use datafusion::prelude::col;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Small batches and four partitions, so that partial counts are merged.
    async fn context(rule: bool) -> SessionContext {
        let config = SessionConfig::new()
            .with_target_partitions(4)
            .with_batch_size(1000);
        let ctx = SessionContext::new_with_config(config);
        if rule {
            ctx.add_optimizer_rule(Arc::new(CountKeys));
        }
        // 30,000 rows: keys with NULLs and negatives, in no order.
        ctx.sql(
            "CREATE VIEW t AS SELECT x, x % 7 AS g, x % 5000 AS many, \
             CASE WHEN x % 13 = 0 THEN NULL ELSE (x * 7919) % 100000 - 500 END AS v \
             FROM (SELECT unnest(range(0, 30000)) AS x)",
        )
        .await
        .unwrap();
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let frame = ctx.sql(sql).await.expect(sql);
        let plan = frame.clone().into_optimized_plan().unwrap();
        let rows = pretty_format_batches(&frame.collect().await.unwrap())
            .unwrap()
            .to_string();
        (plan.display_indent().to_string(), rows)
    }

    /// Each query gives DataFusion's own result, through the bitmaps, the hash
    /// set, and the move from one to the other in mid-stream.
    #[tokio::test]
    async fn same_counts_as_datafusion() {
        let (plain, fast) = (context(false).await, context(true).await);
        let queries = [
            // Dense: seven groups over a range of 100,000.
            "SELECT g, count(DISTINCT v) AS n, count(*) AS c FROM t GROUP BY g ORDER BY g",
            "SELECT g, count(DISTINCT v) FILTER (WHERE x % 3 = 0) AS n, sum(v) AS s FROM t GROUP BY g ORDER BY g",
            // Keys arriving in descending order, then ascending: the range grows both ways.
            "SELECT g, count(DISTINCT 100000 - x) AS n, count(DISTINCT x - 100000) AS m, max(x) AS top FROM t GROUP BY g ORDER BY g",
            // A range of 10^15: pairs in a hash set from the start.
            "SELECT g, count(DISTINCT v * 10000000000) AS n, avg(v) AS mean FROM t GROUP BY g ORDER BY g",
            // 5,000 groups × 100,000 values outgrow the bitmaps' budget mid-stream.
            "SELECT many, count(DISTINCT v) AS n, count(v) AS c FROM t GROUP BY many ORDER BY many",
            // Other key types.
            "SELECT g, count(DISTINCT CAST(v + 1 AS INT)) AS a, count(DISTINCT CAST(v % 200 + 300 AS SMALLINT)) AS b, \
             count(DISTINCT CAST(x % 250 AS TINYINT UNSIGNED)) AS c, \
             count(DISTINCT CAST(CAST(v * 2 AS INT) AS DATE)) AS d, count(*) AS e FROM t GROUP BY g ORDER BY g",
        ];
        for sql in queries {
            let (_, expected) = run(&plain, sql).await;
            let (plan, actual) = run(&fast, sql).await;
            assert!(
                plan.contains("count_distinct_keys"),
                "not rewritten: {sql}\n{plan}"
            );
            assert_eq!(actual, expected, "{sql}");
        }
        // Aliased inside the aggregate, as kpiforge's shared aggregates name theirs.
        let aliased = |ctx: SessionContext| async move {
            let frame = ctx.table("t").await.unwrap().aggregate(
                vec![col("g")],
                vec![
                    count_distinct(col("v")).alias("c0"),
                    count(col("x")).alias("c1"),
                ],
            );
            let frame = frame.unwrap().sort_by(vec![col("g")]).unwrap();
            let plan = frame.clone().into_optimized_plan().unwrap();
            let rows = pretty_format_batches(&frame.collect().await.unwrap()).unwrap();
            (plan.display_indent().to_string(), rows.to_string())
        };
        let ((_, expected), (plan, actual)) = (aliased(plain).await, aliased(fast.clone()).await);
        assert!(
            plan.contains("count_distinct_keys"),
            "aliased count not rewritten"
        );
        assert_eq!(actual, expected);
        // Floats and strings are left to DataFusion.
        let (plan, _) = run(
            &fast,
            "SELECT g, count(DISTINCT CAST(v AS DOUBLE)), count(*) FROM t GROUP BY g",
        )
        .await;
        assert!(
            !plan.contains("count_distinct_keys"),
            "a float count rewritten"
        );
    }

    /// Emitting the first groups early (sorted input, memory pressure) keeps the rest.
    #[test]
    fn emits_first_groups_and_keeps_the_others() {
        let mut counts = Distinct::default();
        let values: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(5),
            Some(5),
            None,
            Some(9),
            Some(700),
            Some(5),
        ]));
        counts
            .update_batch(&[values], &[0, 0, 1, 1, 2, 2], None, 3)
            .unwrap();
        let first = counts.evaluate(EmitTo::First(1)).unwrap();
        assert_eq!(first.as_primitive::<Int64Type>().values(), &[1]);
        let state = counts.state(EmitTo::First(1)).unwrap();
        assert_eq!(
            state[0]
                .as_list::<i32>()
                .value(0)
                .as_primitive::<Int64Type>()
                .values(),
            &[9]
        );
        counts.move_to_pairs();
        let rest = counts.evaluate(EmitTo::All).unwrap();
        assert_eq!(rest.as_primitive::<Int64Type>().values(), &[2]);
    }

    /// Rows passed on as states (a partial aggregate that skips aggregating)
    /// merge to the counts of the rows themselves, filter and NULLs included.
    #[test]
    fn rows_as_states_merge_to_the_same_counts() {
        let values: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(3),
            None,
            Some(3),
            Some(4),
            Some(8),
            Some(3),
        ]));
        let filter = BooleanArray::from(vec![true, true, true, true, false, true]);
        let groups = [0, 0, 0, 1, 1, 1];
        let mut direct = Distinct::default();
        direct
            .update_batch(std::slice::from_ref(&values), &groups, Some(&filter), 2)
            .unwrap();
        let passed = direct.convert_to_state(&[values], Some(&filter)).unwrap();
        assert_eq!(passed[0].len(), 6);
        let mut merged = Distinct::default();
        merged.merge_batch(&passed, &groups, 2).unwrap();
        let expected = direct.evaluate(EmitTo::All).unwrap();
        assert_eq!(expected.as_primitive::<Int64Type>().values(), &[1, 2]);
        assert_eq!(&merged.evaluate(EmitTo::All).unwrap(), &expected);
    }
}
