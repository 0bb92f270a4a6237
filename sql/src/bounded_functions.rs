//! Scalar functions whose output size is one of their arguments. `repeat('x', 2000000000)` is a few bytes of
//! SQL and a 2 GB string, built outside the query memory pool: DataFusion accounts for what its operators
//! hold (sorts, joins, aggregations), not for the values functions return. A few such calls side by side, or
//! `repeat(prompt_text, 1000000)` over a batch of prompts, ran the process out of memory, taking ingest and
//! detection with it.
//!
//! So these functions are registered again, wrapped: before a call runs, the most its arguments allow it
//! to build is reserved from the query memory pool, and a call that would need more than is free fails as
//! the query's memory limit does (HTTP 400, SQLSTATE 53200). The reservation ends when the call returns: it
//! bounds what one call builds at once, not what the batches carrying its output hold afterwards.
//!
//! What one call builds is bounded by the reservation, but not what becomes of a value afterwards: a 100 MB
//! `repeat` of one row, joined to a batch or spread by a window, is copied into all of its rows. So a text
//! value from `repeat` or the pads may hold at most as much as a constant may (`constant_limit`), and one
//! from the replaces at most that much more than the text it was made from (a mask keeps about the size).
//!
//! The time functions (`date_bin`, `date_trunc`, `date_part`, `to_char`, `make_date`, `to_timestamp`,
//! `to_date`) are wrapped the same way with no bound, for their errors: DataFusion reports their bad
//! arguments as plain execution errors, which read as the server's fault.
//!
//! Covered: `repeat`, `lpad`, `rpad`, `replace`, `array_repeat`, `array_resize`, the list forms of
//! `range` and `generate_series` (the table functions of those names stream their rows and are bounded by
//! the answer's row limit); a range step whose parts point different ways is refused, since DataFusion may
//! step by it for ever; `regexp_replace`, whose group references each copy at most the text once over all
//! matches (they do not overlap), so its bound is linear in the text. A constant folded from these
//! (`kind || repeat('x', 100000000)`) is bounded by `constant_limit`. Not covered: list values (a one-row
//! `array_repeat` joined to a batch), and large text built by operators and aggregates (`||` over `||`,
//! `string_agg`): DataFusion accounts for no expression's output.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, FieldRef, Int64Type, IntervalUnit, TimeUnit};
use datafusion::common::{ExprSchema, Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult};
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping,
};
use datafusion::prelude::SessionContext;

/// How a function's arguments bound the bytes it builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    /// `repeat(text, n)`: the text `n` times.
    Repeat,
    /// `lpad`/`rpad(text, n[, fill])`: `n` characters of up to four bytes, and the fill as characters.
    Pad,
    /// `replace(text, from, to)`: every occurrence of `from` (between every character if empty) as `to`.
    Replace,
    /// `array_repeat(value, n)`: the value `n` times.
    ArrayRepeat,
    /// `array_resize(list, n[, fill])`: `n` elements.
    ArrayResize,
    /// `range`/`generate_series([start,] stop[, step])`: one 8-byte element per step.
    Range,
    /// `regexp_replace(text, pattern, replacement[, flags])`: each match as the replacement, whose group
    /// references each copy a part of the match.
    RegexpReplace,
}

const FUNCTIONS: &[(&str, Option<Bound>)] = &[
    ("repeat", Some(Bound::Repeat)),
    ("lpad", Some(Bound::Pad)),
    ("rpad", Some(Bound::Pad)),
    ("replace", Some(Bound::Replace)),
    ("array_repeat", Some(Bound::ArrayRepeat)),
    ("array_resize", Some(Bound::ArrayResize)),
    ("range", Some(Bound::Range)),
    ("generate_series", Some(Bound::Range)),
    ("regexp_replace", Some(Bound::RegexpReplace)),
    // Wrapped only for their errors: every one they report as a plain execution error is about an
    // argument (`date_bin` with a zero stride, `date_trunc('fortnight', ..)`, a month of 13).
    ("date_bin", None),
    ("date_trunc", None),
    ("date_part", None),
    ("to_char", None),
    ("make_date", None),
    ("to_timestamp", None),
    ("to_date", None),
];

/// Registers the bounded versions over the context's own, drawing on `pool` (the context's memory pool).
/// `max_value_bytes` is the most one text value built by `repeat` or the pads may hold, and what one built
/// by the replaces may hold beyond its text (see [`Bounded::check_values`]).
pub(crate) fn register(
    ctx: &SessionContext,
    pool: &Arc<dyn MemoryPool>,
    max_value_bytes: usize,
) -> Result<()> {
    for &(name, bound) in FUNCTIONS {
        let inner = ctx.udf(name)?;
        ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
            inner,
            bound,
            pool: pool.clone(),
            max_value_bytes,
        }));
    }
    Ok(())
}

/// `EXTRACT(field FROM t)` is planned by DataFusion straight to its own `date_part`, not through the
/// registry, so the wrapped one (whose bad arguments are the client's errors) is planned first.
pub(crate) fn plan_extract_wrapped(ctx: SessionContext) -> Result<SessionContext> {
    #[derive(Debug)]
    struct Extract(Arc<ScalarUDF>);
    impl ExprPlanner for Extract {
        fn plan_extract(&self, args: Vec<Expr>) -> Result<PlannerResult<Vec<Expr>>> {
            Ok(PlannerResult::Planned(Expr::ScalarFunction(
                ScalarFunction::new_udf(self.0.clone(), args),
            )))
        }
    }
    let date_part = ctx.udf("date_part")?;
    let state = ctx.state();
    let mut planners: Vec<Arc<dyn ExprPlanner>> = vec![Arc::new(Extract(date_part))];
    planners.extend(state.expr_planners().iter().cloned());
    let state = SessionStateBuilder::new_from_existing(state)
        .with_expr_planners(planners)
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// A function whose calls reserve their output's bound from the memory pool first (if it has one), and
/// whose errors about its arguments are reported as the query's.
#[derive(Debug)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    bound: Option<Bound>,
    pool: Arc<dyn MemoryPool>,
    max_value_bytes: usize,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.bound == other.bound
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.bound.hash(state);
    }
}

impl Bounded {
    fn inner(&self) -> &dyn ScalarUDFImpl {
        self.inner.inner().as_ref()
    }

    /// Refuses a text value larger than `max_value_bytes` (from a replace: than its text and that much
    /// more). The reservation bounds what one call builds, but not what happens to a value after: one
    /// row's 100 MB `repeat` joined to a batch (`CROSS JOIN (SELECT repeat(..) ...)`, or spread by a
    /// window) is copied into every one of its 8,192 rows, outside any pool. Values that large are no
    /// dashboard's, and a replace that masks text keeps about the text's size.
    fn check_values(&self, made_from: &PerRow, out: &ColumnarValue) -> Result<()> {
        let cap = self.max_value_bytes as u64;
        // A replace may keep its text and add up to the cap: chained replaces then grow by the cap per
        // call, not twofold (`replace(replace(.., 'x', 'xx'), 'x', 'xx')`...).
        let grows_text = matches!(self.bound, Some(Bound::Replace | Bound::RegexpReplace));
        let too_large = |row: usize, len: u64| {
            let allowed = if grows_text {
                made_from.at(row).saturating_add(cap)
            } else {
                cap
            };
            (len > allowed).then_some((len, allowed))
        };
        let found = match out {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(v))
                | ScalarValue::LargeUtf8(Some(v))
                | ScalarValue::Utf8View(Some(v)),
            ) => too_large(0, v.len() as u64),
            ColumnarValue::Scalar(_) => None,
            ColumnarValue::Array(array) => match bytes(Some(out))? {
                PerRow::Each(lengths) if !array.data_type().is_nested() => lengths
                    .iter()
                    .enumerate()
                    .find_map(|(row, &len)| too_large(row, len)),
                _ => None,
            },
        };
        match found {
            None => Ok(()),
            Some((len, allowed)) => Err(DataFusionError::ResourcesExhausted(format!(
                "{}() built a value of {len} bytes, more than the {allowed} one value may hold here: a \
                 join or a window could copy it into every row",
                self.name()
            ))),
        }
    }
}

impl ScalarUDFImpl for Bounded {
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let _reservation = match self.bound {
            Some(bound) => {
                let bytes = output_bound(bound, &args.args, args.number_rows)?;
                // The consumer's name is what the pool's error names: "Failed to allocate additional
                // 1907.3 MB for repeat() ...".
                let reservation =
                    MemoryConsumer::new(format!("{}()", self.name())).register(&self.pool);
                reservation.try_grow(usize::try_from(bytes).unwrap_or(usize::MAX))?;
                Some(reservation)
            }
            None => None,
        };
        let made_from = match self.bound {
            Some(Bound::Repeat | Bound::Pad | Bound::Replace | Bound::RegexpReplace) => {
                Some(bytes(args.args.first())?)
            }
            _ => None,
        };
        let out = self
            .inner()
            .invoke_with_args(args)
            .map_err(argument_error)?;
        if let Some(made_from) = made_from {
            self.check_values(&made_from, &out)?;
        }
        Ok(out)
    }

    fn name(&self) -> &str {
        self.inner().name()
    }

    fn aliases(&self) -> &[String] {
        self.inner().aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner().signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner().return_type(arg_types)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let updated = self.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Bounded {
            inner: Arc::new(updated),
            bound: self.bound,
            pool: self.pool.clone(),
            max_value_bytes: self.max_value_bytes,
        }))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        // While planning, a bad argument is a query that does not plan (`date_part` of a column).
        self.inner()
            .return_field_from_args(args)
            .map_err(|e| match e {
                DataFusionError::Execution(message) => DataFusionError::Plan(message),
                other => other,
            })
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[allow(deprecated)]
        self.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner().is_strict()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner().simplify(args, info)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner().preimage(args, lit_expr, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner().short_circuits()
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner().conditional_arguments(args)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner().evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner().propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner().preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner().coerce_types(arg_types)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<StructFieldMapping> {
        self.inner().struct_field_mapping(literal_args)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner().documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner().placement(args)
    }
}

/// DataFusion's functions report a bad argument (`date_bin` with a zero stride) as a plain execution
/// error, which reads as the server's fault (HTTP 500, SQLSTATE XX000) and is counted as one. From these
/// functions it is always the argument's, so it becomes Arrow's invalid-argument error: the client's
/// (HTTP 400, SQLSTATE 22023).
fn argument_error(e: DataFusionError) -> DataFusionError {
    match e {
        DataFusionError::Execution(message) => DataFusionError::ArrowError(
            Box::new(arrow::error::ArrowError::InvalidArgumentError(message)),
            None,
        ),
        other => other,
    }
}

/// The most bytes a call with `args` over `rows` rows can build.
fn output_bound(bound: Bound, args: &[ColumnarValue], rows: usize) -> Result<u128> {
    // Every row, even when all arguments are scalars: some functions then still build one value per row.
    let arg = |i: usize| args.get(i);
    let per_row: Vec<PerRow> = match bound {
        Bound::Repeat => vec![bytes(arg(0))?, counts(arg(1))?],
        Bound::Pad => vec![counts(arg(1))?, bytes(arg(2))?],
        Bound::Replace => vec![bytes(arg(0))?, bytes(arg(1))?, bytes(arg(2))?],
        Bound::ArrayRepeat | Bound::ArrayResize => {
            let element = match bound {
                Bound::ArrayRepeat => arg(0),
                _ => arg(2),
            };
            vec![bytes(element)?, counts(arg(1))?, list_lengths(element)?]
        }
        Bound::Range => vec![range_lengths(args, rows)?],
        Bound::RegexpReplace => vec![
            bytes(arg(0))?,
            bytes(arg(2))?,
            group_references(arg(2))?,
            PerRow::Same(u64::from(replaces_all(arg(3)))),
            PerRow::Same(shortest_match(arg(1), arg(3))),
        ],
    };
    let mut total: u128 = 0;
    for row in 0..rows {
        let v = |i: usize| u128::from(per_row[i].at(row));
        let bytes = match bound {
            // The result, and a scratch copy as large.
            Bound::Repeat => 2 * v(0) * v(1),
            // Characters of up to four bytes, and the fill as characters.
            Bound::Pad => 4 * (v(0) + v(1)),
            // Between every character when `from` is empty, else at most once per `from`'s length.
            Bound::Replace => v(0) + (v(0) / v(1).max(1) + 1) * v(2),
            // Each element at least as large as a list offset and a null bit; a list element also takes
            // an index and a value per item of it.
            Bound::ArrayRepeat | Bound::ArrayResize => (v(0).max(16) + 16 * v(2)) * v(1),
            Bound::Range => v(0) * 8,
            // The text kept, the replacement's own bytes once per match (one, or up to one per position
            // with `g`), and each group reference at most the matched text: matches do not overlap, so
            // one reference copies at most the whole text over all of them. Linear in the text, so
            // ordinary calls (`'\s+'` to `' '`) reserve a few times their input; `'\0'` repeated a
            // thousand times reserves a thousand times it.
            Bound::RegexpReplace => {
                // Matches do not overlap: no more than the text holds of the shortest one, and one more
                // where a match may be empty.
                let matches = match (v(3), v(4)) {
                    (1, 0) => v(0) + 1,
                    (1, shortest) => v(0) / shortest + 1,
                    _ => 1,
                };
                v(0) + v(2) * v(0) + matches * v(1)
            }
        };
        total = total.saturating_add(bytes);
    }
    Ok(total)
}

/// An argument's value for each row; a scalar (or a missing argument) is the same in every row.
enum PerRow {
    Same(u64),
    Each(Vec<u64>),
}

impl PerRow {
    fn at(&self, row: usize) -> u64 {
        match self {
            PerRow::Same(v) => *v,
            PerRow::Each(values) => values.get(row).copied().unwrap_or(0),
        }
    }
}

/// Byte lengths of text and binary values; the in-memory size of any other value.
fn bytes(arg: Option<&ColumnarValue>) -> Result<PerRow> {
    let array = match arg {
        None => return Ok(PerRow::Same(0)),
        Some(ColumnarValue::Scalar(scalar)) => {
            return Ok(PerRow::Same(match scalar {
                ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
                    s.as_ref().map_or(0, |s| s.len() as u64)
                }
                other => other.size() as u64,
            }))
        }
        Some(ColumnarValue::Array(array)) => array,
    };
    let lengths = match array.data_type() {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView => arrow::compute::kernels::length::length(array)?,
        _ => {
            let each = array.get_array_memory_size() / array.len().max(1);
            return Ok(PerRow::Same(each as u64));
        }
    };
    Ok(PerRow::Each(non_negative(&lengths)?))
}

/// Group references a replacement may hold: each starts with `$` (`$1`, `${name}`) or `\` (`\1`, which
/// DataFusion turns into `${1}`), so counting those never counts too few.
fn group_references(arg: Option<&ColumnarValue>) -> Result<PerRow> {
    let count = |s: &str| s.bytes().filter(|b| matches!(b, b'$' | b'\\')).count() as u64;
    match arg {
        None => Ok(PerRow::Same(0)),
        Some(ColumnarValue::Scalar(scalar)) => Ok(PerRow::Same(match scalar {
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
                s.as_deref().map_or(0, count)
            }
            _ => 0,
        })),
        Some(ColumnarValue::Array(array)) => {
            let text = cast(array, &DataType::Utf8)?;
            let text = text.as_string::<i32>();
            Ok(PerRow::Each(
                (0..text.len())
                    .map(|i| {
                        if text.is_null(i) {
                            0
                        } else {
                            count(text.value(i))
                        }
                    })
                    .collect(),
            ))
        }
    }
}

/// The fewest bytes a match of a constant pattern takes, as DataFusion compiles it: the flags (all but
/// `g`) go in front as an inline group, `(?ix)pattern`, and `x` or `i` change what a pattern matches. 0 if a
/// match may be empty, or the pattern or flags are not constants, or the flags hold anything but the
/// letters of inline flags (text spliced into the group could change the pattern itself).
fn shortest_match(pattern: Option<&ColumnarValue>, flags: Option<&ColumnarValue>) -> u64 {
    let text = |arg: Option<&ColumnarValue>| match arg {
        Some(ColumnarValue::Scalar(
            ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v),
        )) => Some(v.clone()),
        None => Some(None),
        Some(_) => None,
    };
    let (Some(Some(pattern)), Some(flags)) = (text(pattern), text(flags)) else {
        return 0;
    };
    let inline: String = flags
        .unwrap_or_default()
        .chars()
        .filter(|&c| c != 'g')
        .collect();
    if !inline
        .chars()
        .all(|c| matches!(c, 'i' | 'm' | 's' | 'U' | 'x' | 'R'))
    {
        return 0;
    }
    let compiled = if inline.is_empty() {
        pattern
    } else {
        format!("(?{inline}){pattern}")
    };
    regex_syntax::parse(&compiled)
        .ok()
        .and_then(|hir| hir.properties().minimum_len())
        .map_or(0, |n| n as u64)
}

/// Whether the flags (of any row) ask for every match to be replaced (`g`).
fn replaces_all(arg: Option<&ColumnarValue>) -> bool {
    match arg {
        None => false,
        Some(ColumnarValue::Scalar(scalar)) => match scalar {
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
                s.as_deref().is_some_and(|f| f.contains('g'))
            }
            _ => true,
        },
        Some(ColumnarValue::Array(array)) => match cast(array, &DataType::Utf8) {
            Ok(text) => text
                .as_string::<i32>()
                .iter()
                .any(|f| f.is_some_and(|f| f.contains('g'))),
            Err(_) => true,
        },
    }
}

/// Counts (repetitions, lengths): negative and null ones are none.
fn counts(arg: Option<&ColumnarValue>) -> Result<PerRow> {
    match arg {
        None => Ok(PerRow::Same(0)),
        Some(ColumnarValue::Scalar(scalar)) => {
            let value = scalar.cast_to(&DataType::Int64)?;
            Ok(PerRow::Same(match value {
                ScalarValue::Int64(Some(n)) => n.max(0) as u64,
                _ => 0,
            }))
        }
        Some(ColumnarValue::Array(array)) => Ok(PerRow::Each(non_negative(array)?)),
    }
}

fn non_negative(array: &ArrayRef) -> Result<Vec<u64>> {
    let ints = cast(array, &DataType::Int64)?;
    let ints = ints.as_primitive::<Int64Type>();
    Ok((0..ints.len())
        .map(|i| match ints.is_valid(i) {
            true => ints.value(i).max(0) as u64,
            false => 0,
        })
        .collect())
}

/// Items in each row's list value (0 for anything else).
fn list_lengths(arg: Option<&ColumnarValue>) -> Result<PerRow> {
    let Some(arg) = arg else {
        return Ok(PerRow::Same(0));
    };
    let array = arg.to_array(1)?;
    let lengths: Vec<u64> = match array.data_type() {
        DataType::List(_) => {
            let lists = array.as_list::<i32>();
            (0..lists.len())
                .map(|i| lists.value_length(i).max(0) as u64)
                .collect()
        }
        DataType::LargeList(_) => {
            let lists = array.as_list::<i64>();
            (0..lists.len())
                .map(|i| lists.value_length(i).max(0) as u64)
                .collect()
        }
        DataType::FixedSizeList(_, n) => vec![(*n).max(0) as u64; array.len()],
        _ => return Ok(PerRow::Same(0)),
    };
    Ok(match arg {
        ColumnarValue::Scalar(_) => PerRow::Same(lengths.first().copied().unwrap_or(0)),
        ColumnarValue::Array(_) => PerRow::Each(lengths),
    })
}

/// A range argument as numbers of one scale per row: integers as they are, dates and times in nanoseconds
/// (from their own unit, so dates outside what a nanosecond timestamp holds keep their value); `None` for a
/// null.
fn range_points(arg: &ColumnarValue, rows: usize) -> Result<Vec<Option<i128>>> {
    let array = arg.to_array(rows.max(1))?;
    const DAY: i128 = 86_400_000_000_000;
    let scaled = |array: &ArrayRef, to: &DataType, factor: i128| -> Result<Vec<Option<i128>>> {
        let ints = cast(&cast(array, to)?, &DataType::Int64)?;
        Ok(ints
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(|v| i128::from(v) * factor))
            .collect())
    };
    let points = match array.data_type() {
        DataType::Date32 => scaled(&array, &DataType::Int32, DAY)?,
        DataType::Date64 => scaled(&array, &DataType::Int64, 1_000_000)?,
        DataType::Timestamp(unit, _) => {
            let factor = match unit {
                TimeUnit::Second => 1_000_000_000,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1,
            };
            scaled(&array, &DataType::Int64, factor)?
        }
        _ => scaled(&array, &DataType::Int64, 1)?,
    };
    // A value the casts lost would make the range look empty.
    if points
        .iter()
        .zip(0..array.len())
        .any(|(p, i)| p.is_none() && array.is_valid(i))
    {
        return Err(DataFusionError::Plan(format!(
            "range bound of type {} out of range",
            array.data_type()
        )));
    }
    Ok(points)
}

/// Each row's step in the scale of [`range_points`]: an interval in nanoseconds, a month counted as 28
/// days (so the count is never under the real one). An interval whose parts point different ways (`1 month
/// -28 days`) is refused: DataFusion steps by months and days in turn, and such a step may never reach the
/// end (February 1 + 1 month - 28 days is February 1 again), looping where no timeout can stop it.
fn range_steps(arg: &ColumnarValue, rows: usize) -> Result<Vec<i128>> {
    const DAY: i128 = 86_400_000_000_000;
    let array = arg.to_array(rows.max(1))?;
    let parts: Vec<[i128; 3]> = match array.data_type() {
        DataType::Interval(IntervalUnit::MonthDayNano) => array
            .as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>()
            .iter()
            .map(|v| {
                v.map_or([0; 3], |v| {
                    [
                        i128::from(v.months) * 28 * DAY,
                        i128::from(v.days) * DAY,
                        i128::from(v.nanoseconds),
                    ]
                })
            })
            .collect(),
        DataType::Interval(IntervalUnit::DayTime) => array
            .as_primitive::<arrow::datatypes::IntervalDayTimeType>()
            .iter()
            .map(|v| {
                v.map_or([0; 3], |v| {
                    [
                        0,
                        i128::from(v.days) * DAY,
                        i128::from(v.milliseconds) * 1_000_000,
                    ]
                })
            })
            .collect(),
        DataType::Interval(IntervalUnit::YearMonth) => array
            .as_primitive::<arrow::datatypes::IntervalYearMonthType>()
            .iter()
            .map(|v| [v.map_or(0, |m| i128::from(m) * 28 * DAY), 0, 0])
            .collect(),
        _ => {
            let ints = cast(&array, &DataType::Int64)?;
            return Ok(ints
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| i128::from(v.unwrap_or(0)))
                .collect());
        }
    };
    parts
        .into_iter()
        .map(|p| {
            if p.iter().any(|&x| x > 0) && p.iter().any(|&x| x < 0) {
                return Err(DataFusionError::Plan(
                    "a range step whose months, days and time point different ways is not supported"
                        .into(),
                ));
            }
            Ok(p.iter().sum())
        })
        .collect()
}

/// Elements of each row's range: `(stop - start) / step + 1`.
fn range_lengths(args: &[ColumnarValue], rows: usize) -> Result<PerRow> {
    let (start, stop, step) = match args {
        [stop] => (None, stop, None),
        [start, stop] => (Some(start), stop, None),
        [start, stop, step, ..] => (Some(start), stop, Some(step)),
        [] => return Ok(PerRow::Same(0)),
    };
    let stop = range_points(stop, rows)?;
    let start = start.map(|s| range_points(s, rows)).transpose()?;
    let step = step.map(|s| range_steps(s, rows)).transpose()?;
    let lengths = (0..stop.len())
        .map(|row| {
            let from = start
                .as_ref()
                .map_or(Some(0), |s| s.get(row).copied().flatten());
            let (Some(from), Some(to)) = (from, stop.get(row).copied().flatten()) else {
                return 0;
            };
            let by = step
                .as_ref()
                .map_or(1, |s| s.get(row).copied().unwrap_or(0));
            // A step of zero or the wrong way is refused by the function itself.
            if by == 0 || (to - from).signum() * by.signum() < 0 {
                return 0;
            }
            u64::try_from((to - from) / by + 1).unwrap_or(u64::MAX)
        })
        .collect();
    Ok(PerRow::Each(lengths))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{run_query, session_context, QueryLimits};
    use crate::error::QueryError;
    use crate::test_support::TestSource;

    async fn context(dir: &std::path::Path, memory: usize) -> (SessionContext, QueryLimits) {
        let limits = QueryLimits {
            memory_limit_bytes: memory,
            ..QueryLimits::default()
        };
        let source = TestSource::with_hours(dir, &[(0, 4)], 3);
        let ctx = session_context(Arc::new(source), limits.clone()).expect("context");
        (ctx, limits)
    }

    /// Each of these would build about 2 GB (or 16 GB) before the fix: refused as the memory limit.
    #[tokio::test]
    async fn calls_that_would_build_more_than_the_pool_holds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, limits) = context(dir.path(), 64 << 20).await;
        for sql in [
            "SELECT repeat('x', 2000000000)",
            "SELECT length(repeat(kind, 100000000)) FROM events",
            "SELECT lpad('x', 2000000000)",
            "SELECT rpad(kind, 2000000000, 'ab') FROM events",
            "SELECT replace(repeat(kind, 1000), '', repeat('b', 10000)) FROM events",
            "SELECT cardinality(array_repeat(1, 2000000000))",
            "SELECT cardinality(array_resize([1], 2000000000, 0))",
            "SELECT cardinality(range(2000000000))",
            "SELECT cardinality(generate_series(1, 2000000000, 1))",
            // A thousand copies of every prompt: one reference per copy.
            "SELECT max(length(regexp_replace(repeat(kind, 1000), '^(.*)$', repeat('\\1', 4000)))) FROM events",
            "SELECT max(length(regexp_replace(repeat(kind, 1000), '.', repeat('$0', 2000), 'g'))) FROM events",
            "SELECT cardinality(range(TIMESTAMP '1970-01-01', TIMESTAMP '2100-01-01', INTERVAL '1 second'))",
            // Dates past what a nanosecond timestamp holds still count.
            "SELECT cardinality(generate_series(DATE '0001-01-01', DATE '9999-12-31', INTERVAL '1 second'))",
            // Repeating a list takes an index and a value per item.
            "SELECT cardinality(array_repeat(array_repeat(kind = 'llm', 100000), 10000)) FROM events",
        ] {
            match run_query(&ctx, sql, &limits).await {
                Err(QueryError::ResourcesExhausted(message)) => {
                    assert!(message.contains("Failed to allocate"), "{sql}: {message}")
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    /// A step whose parts point different ways could make DataFusion loop for ever (1 month - 28 days from
    /// February 1 is February 1): refused as the query's fault.
    #[tokio::test]
    async fn a_range_step_of_mixed_signs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, limits) = context(dir.path(), 64 << 20).await;
        let sql = "SELECT cardinality(generate_series(DATE '2025-02-01', DATE '2000-01-01', \
                   INTERVAL '1 month -28 days'))";
        match run_query(&ctx, sql, &limits).await {
            Err(QueryError::Invalid(message)) => {
                assert!(message.contains("different ways"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A large value built at run time, from one row, would be copied into every row of a batch by a join:
    /// refused as it is built. Values made from long text, at most twice its size, pass.
    #[tokio::test]
    async fn values_larger_than_a_row_may_hold_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, limits) = context(dir.path(), 1 << 30).await;
        for sql in [
            "SELECT max(length(e.kind || b.big)) FROM events e CROSS JOIN \
             (SELECT repeat('x', CAST(value AS INT)) AS big FROM range(1000000, 1000001)) b",
            "SELECT max(length(lpad(kind, 100000 + CAST(random() AS INT)))) FROM events",
            // Each call within the pool, each doubling the one before.
            "SELECT max(length(repeat(repeat(repeat(kind, 1000), 2), 2))) FROM events",
            "SELECT max(length(replace(replace(replace(repeat(kind, 1000), kind, kind || kind), kind, \
             kind || kind), kind, kind || kind))) FROM events",
            "SELECT max(length(replace(kind || kind || kind, substr(kind, 1, 1), repeat('y', 10000)))) \
             FROM events",
        ] {
            match run_query(&ctx, sql, &limits).await {
                Err(QueryError::ResourcesExhausted(message)) => {
                    assert!(message.contains("built a value of"), "{sql}: {message}")
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
        let batches = run_query(
            &ctx,
            "WITH t AS (SELECT string_agg(e.kind, ' ') AS long FROM events e CROSS JOIN range(3000)) \
             SELECT length(regexp_replace(long, 'e', 'E', 'g')) AS masked, \
             length(replace(long, ' ', '_')) AS joined FROM t",
            &limits,
        )
        .await
        .expect("values made from long text run");
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(!text.contains("| 0 "), "{text}");
    }

    /// Bad arguments are the query's fault, whether met while simplifying the plan or while rows run.
    #[tokio::test]
    async fn bad_arguments_of_time_functions_are_the_clients_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, limits) = context(dir.path(), 64 << 20).await;
        for sql in [
            "SELECT date_bin(INTERVAL '0 minutes', time) FROM events",
            "SELECT date_bin(INTERVAL '0 minutes', TIMESTAMP '2026-01-01 00:00:00')",
            "SELECT date_trunc(CASE WHEN kind = 'llm' THEN 'fortnight' ELSE 'day' END, time) FROM events",
            "SELECT date_part(kind || 'x', time) FROM events",
            "SELECT EXTRACT(fortnight FROM time) FROM events",
            "SELECT make_date(2026, 13, 1)",
        ] {
            match run_query(&ctx, sql, &limits).await {
                Err(e @ QueryError::Data { .. }) => assert!(e.is_client_error(), "{sql}: {e}"),
                Err(QueryError::Invalid(_)) => {}
                other => panic!("{sql}: {other:?}"),
            }
        }
        // The ordinary forms still run.
        run_query(
            &ctx,
            "SELECT date_bin(INTERVAL '5 minutes', time), date_trunc('hour', time), \
             date_part('hour', time), make_date(2026, 12, 7), EXTRACT(epoch FROM time) FROM events",
            &limits,
        )
        .await
        .expect("ordinary time functions run");
    }

    /// Ordinary calls are untouched, and give DataFusion's answers.
    #[tokio::test]
    async fn ordinary_calls_answer_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, limits) = context(dir.path(), 64 << 20).await;
        let batches = run_query(
            &ctx,
            "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS l, rpad('a', 2) AS p, \
             replace('a-b-c', '-', '+') AS s, cardinality(array_repeat('x', 4)) AS ar, \
             cardinality(range(5)) AS n, cardinality(generate_series(DATE '2026-01-01', \
             DATE '2026-03-01', INTERVAL '1 month')) AS months, max(length(repeat(kind, 2))) AS k, \
             max(regexp_replace(prompt_text, '\\s+', ' ', 'g')) AS squeezed, \
             regexp_replace('foobarbaz', 'b(..)', 'X\\1Y', 'g') AS groups \
             FROM events",
            &limits,
        )
        .await
        .expect("ordinary calls run");
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        for expected in [
            "ababab",
            "007",
            "a ",
            "a+b+c",
            "| 4 ",
            "| 5 ",
            "| 3 ",
            "fooXarYXazY",
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
    }

    #[test]
    fn bounds_follow_the_arguments_row_by_row() {
        let text: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![
            Some("abc"),
            None,
            Some("abcdef"),
        ]));
        let times: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![2, 1000, -5]));
        let args = [ColumnarValue::Array(text), ColumnarValue::Array(times)];
        // (3 * 2 + 0 * 1000 + 6 * 0), and as much scratch.
        assert_eq!(output_bound(Bound::Repeat, &args, 3).unwrap(), 12);
        let scalar = [
            ColumnarValue::Scalar(ScalarValue::Int64(Some(1))),
            ColumnarValue::Scalar(ScalarValue::Int64(Some(10))),
            ColumnarValue::Scalar(ScalarValue::Int64(Some(3))),
        ];
        // 1, 4, 7, 10: four elements.
        assert_eq!(output_bound(Bound::Range, &scalar, 1).unwrap(), 4 * 8);
        let text = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        // 100 bytes, one match replaced by 4 bytes holding one reference: 100 + 100 + 4.
        let once = [text(&"a".repeat(100)), text("(a+)"), text("<\\1>")];
        assert_eq!(output_bound(Bound::RegexpReplace, &once, 1).unwrap(), 204);
        // A card number's sixteen digits at most once per sixteen bytes: 160 + (10 + 1) * 6.
        let cards = [
            text(&"1".repeat(160)),
            text("\\d{16}"),
            text("<card>"),
            text("g"),
        ];
        assert_eq!(
            output_bound(Bound::RegexpReplace, &cards, 1).unwrap(),
            160 + 11 * 6
        );
        // Flags go in front of the pattern as DataFusion compiles it: with `x` the spaces match nothing,
        // and flags that are not inline flags' letters give no shortest match.
        let spaced = format!("a{}", " ".repeat(99));
        let flagged = |flags: &str| {
            [
                text(&"a".repeat(100)),
                text(&spaced),
                text("<>"),
                text(flags),
            ]
        };
        assert_eq!(
            output_bound(Bound::RegexpReplace, &flagged("g"), 1).unwrap(),
            100 + 2 * 2
        );
        assert_eq!(
            output_bound(Bound::RegexpReplace, &flagged("gx"), 1).unwrap(),
            100 + 101 * 2
        );
        assert_eq!(
            output_bound(Bound::RegexpReplace, &flagged("gi)|(?i"), 1).unwrap(),
            100 + 101 * 2
        );
        // Every match (up to 101) as 1 byte, no reference: 100 + 101.
        let all = [text(&"a".repeat(100)), text("\\s+"), text(" "), text("g")];
        assert_eq!(output_bound(Bound::RegexpReplace, &all, 1).unwrap(), 201);
        // The fill is counted as characters of four bytes (a constant that large is refused before any
        // call by `constant_limit`, so only the bound shows it).
        let pad = [
            ColumnarValue::Scalar(ScalarValue::Utf8(Some("é".into()))),
            ColumnarValue::Scalar(ScalarValue::Int64(Some(1))),
            ColumnarValue::Scalar(ScalarValue::Utf8(Some("a".repeat(1000)))),
        ];
        assert_eq!(output_bound(Bound::Pad, &pad, 2).unwrap(), 2 * 4 * 1001);
    }
}
