//! Proving a table copy: `ferry verify` of two datasets of rows (a table, a query, files).
//!
//! Each side is read once, in parallel, in batches. Every row's values are normalised by
//! type (integers of any width, decimals by value, floats by their shortest decimal,
//! booleans as 0/1, dates as days, timestamps as a UTC instant, NULL apart from empty),
//! hashed with xxh3-128, and the hashes summed with wrapping addition: a multiset digest,
//! so order and partitioning do not matter and a duplicated row counts.
//!
//! With a key whose first column is an integer, rows are summed per key range instead
//! (power-of-two ranges, coarsened while reading so that at most [`MAX_RANGES`] exist):
//! memory is bounded by the number of ranges, whatever the table's size. Ranges that
//! differ are reported; when they hold few rows, they are read again on both sides and
//! the keys whose rows differ are named.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float32Type, Float64Type, Int16Type,
    Int32Type, Int64Type, Int8Type, Schema, SchemaRef, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use ferry_connectors::{open_source, open_table, Selection, TableScan};
use ferry_core::{DataAddress, Entry, Error, Result, Source};
use ferry_formats::Format;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::runtime::Handle;

use crate::records::{collect_inputs, join_error, probe_schema, read_input, RecordOptions};
use crate::report::Status;
use crate::CopyOptions;

/// Most key ranges a side keeps: more, and neighbouring ranges are merged.
pub const MAX_RANGES: usize = 4096;
/// Most rows (on the larger side) of the differing ranges read again to name keys.
const DRILL_ROWS: u64 = 500_000;
/// Most differing ranges read again.
const DRILL_RANGES: usize = 64;
/// Most keys listed in a report.
const MAX_KEYS: usize = 100;
/// Rows per batch read from a table.
const BATCH_ROWS: usize = 32_768;

/// How to compare: the key, when not the table's primary key.
#[derive(Clone, Debug, Default)]
pub struct RowVerifyOptions {
    /// Key columns (`--key`); the first must be an integer to split into ranges.
    pub key: Vec<String>,
}

/// One side's totals.
#[derive(Clone, Debug, Serialize)]
pub struct RowSide {
    pub address: String,
    pub rows: u64,
    /// The sum of the row hashes (hex), comparable with the other side's.
    pub digest: String,
}

/// A key range whose rows differ: `[from, to)` of the first key column.
#[derive(Clone, Debug, Serialize)]
pub struct RangeDifference {
    /// Inclusive; absent for the range of rows whose key is NULL.
    pub from: Option<i128>,
    /// Exclusive.
    pub to: Option<i128>,
    pub source_rows: u64,
    pub destination_rows: u64,
}

/// A key whose rows differ.
#[derive(Clone, Debug, Serialize)]
pub struct KeyDifference {
    /// `col=value, col=value`.
    pub key: String,
    /// `changed`, `missing at destination`, `only at destination`, or the row counts.
    pub difference: String,
    pub source_rows: u64,
    pub destination_rows: u64,
}

/// What a row verification found.
#[derive(Clone, Debug, Serialize)]
pub struct RowVerifyReport {
    pub status: Status,
    pub source: RowSide,
    pub destination: RowSide,
    /// The columns compared (by name, in the source's order).
    pub columns: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns_only_at_source: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns_only_at_destination: Vec<String>,
    /// The key columns rows are ranged and named by (empty: the whole dataset is one digest).
    pub key: Vec<String>,
    /// Values of the first key column per range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_width: Option<u128>,
    pub ranges: u64,
    pub differing_ranges: Vec<RangeDifference>,
    pub keys: Vec<KeyDifference>,
    /// Differing keys found but not listed, or ranges too large to read again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unlisted: Option<String>,
    pub duration_s: f64,
}

/// Whether `ferry verify SRC DST` compares rows rather than bytes: a table at either
/// end, or two known formats that differ.
pub fn compares_rows(src: &DataAddress, dst: &DataAddress) -> bool {
    let table = |a: &DataAddress| matches!(a, DataAddress::Table(_));
    if table(src) || table(dst) {
        return true;
    }
    let format = |a: &DataAddress| Format::from_name(&a.path_text());
    matches!((format(src), format(dst)), (Some(a), Some(b)) if a != b)
}

/// Compares the rows of `src` and `dst`. Files are read with `rec`'s source format and
/// options on the source side, its destination format and options on the other.
pub async fn verify_rows(
    src: &DataAddress,
    dst: &DataAddress,
    rec: &RecordOptions,
    opts: &CopyOptions,
    how: &RowVerifyOptions,
) -> Result<RowVerifyReport> {
    let started = Instant::now();
    for a in [src, dst] {
        if matches!(a, DataAddress::Kafka(_)) {
            return Err(Error::invalid_option(
                "verify",
                format!(
                    "{a}: a topic's rows cannot be verified; copy them into a table or files first"
                ),
            ));
        }
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let parallel = opts.transfers.min(cores).max(1);
    let dst_rec = RecordOptions {
        source_format: rec.dest_format,
        source_options: rec.dest_options.clone(),
        ..RecordOptions::default()
    };
    let (a, b) = futures::try_join!(Dataset::open(src, rec), Dataset::open(dst, &dst_rec))?;
    let plan = Arc::new(Plan::new(&a, &b, how)?);

    let (da, db) = futures::try_join!(
        a.digest(plan.clone(), Side::Source, None, parallel),
        b.digest(plan.clone(), Side::Destination, None, parallel)
    )?;
    let (mut da, mut db) = (da.digest, db.digest);
    let shift = da.shift.max(db.shift);
    da.coarsen_to(shift);
    db.coarsen_to(shift);

    let mut differing = Vec::new();
    let empty = Cell::default();
    let ids: std::collections::BTreeSet<i64> =
        da.ranges.keys().chain(db.ranges.keys()).copied().collect();
    for id in &ids {
        let (x, y) = (
            da.ranges.get(id).unwrap_or(&empty),
            db.ranges.get(id).unwrap_or(&empty),
        );
        if x != y {
            differing.push((Some(*id), *x, *y));
        }
    }
    if da.null_key != db.null_key {
        differing.push((None, da.null_key, db.null_key));
    }
    let ranged = plan.range_column.is_some();
    let ranges = if ranged {
        ids.len() as u64 + u64::from(da.null_key.rows + db.null_key.rows > 0)
    } else {
        1
    };
    let width = 1i128 << shift;
    let differing_ranges: Vec<RangeDifference> = if ranged {
        differing
            .iter()
            .map(|(id, x, y)| RangeDifference {
                from: id.map(|i| i128::from(i) * width),
                to: id.map(|i| (i128::from(i) + 1) * width),
                source_rows: x.rows,
                destination_rows: y.rows,
            })
            .collect()
    } else {
        Vec::new()
    };

    // Name the keys of small differing ranges (or of the whole dataset when it is small).
    let mut keys = Vec::new();
    let mut unlisted = None;
    let total_differs = da.total != db.total;
    if total_differs && !plan.key.is_empty() {
        let mut drill = HashSet::new();
        let mut rows = 0;
        let mut skipped = 0;
        for (id, x, y) in &differing {
            let Some(id) = id else {
                skipped += 1;
                continue;
            };
            let more = x.rows.max(y.rows);
            if drill.len() < DRILL_RANGES && rows + more <= DRILL_ROWS {
                rows += more;
                drill.insert(*id);
            } else {
                skipped += 1;
            }
        }
        if !ranged {
            if da.total.rows.max(db.total.rows) <= DRILL_ROWS {
                drill.insert(0);
            } else {
                unlisted = Some(format!(
                    "more than {DRILL_ROWS} rows without an integer key: keys not read again"
                ));
            }
        }
        if !drill.is_empty() {
            let drill = Arc::new(Drill { shift, ids: drill });
            let (ka, kb) = futures::try_join!(
                a.digest(plan.clone(), Side::Source, Some(drill.clone()), parallel),
                b.digest(
                    plan.clone(),
                    Side::Destination,
                    Some(drill.clone()),
                    parallel
                )
            )?;
            keys = compare_keys(ka.keys, kb.keys);
        }
        if skipped > 0 {
            unlisted = Some(format!(
                "{skipped} differing ranges too large (or too many) to read again for their keys"
            ));
        }
        if keys.len() > MAX_KEYS {
            let more = keys.len() - MAX_KEYS;
            keys.truncate(MAX_KEYS);
            let note = format!("{more} more differing keys not listed");
            unlisted = Some(match unlisted {
                Some(u) => format!("{u}; {note}"),
                None => note,
            });
        }
    }

    let schema_differs = !plan.only_at_source.is_empty() || !plan.only_at_destination.is_empty();
    Ok(RowVerifyReport {
        status: if total_differs || schema_differs || !differing.is_empty() {
            Status::Failed
        } else {
            Status::Succeeded
        },
        source: RowSide {
            address: src.to_string(),
            rows: da.total.rows,
            digest: format!("{:032x}", da.total.sum),
        },
        destination: RowSide {
            address: dst.to_string(),
            rows: db.total.rows,
            digest: format!("{:032x}", db.total.sum),
        },
        columns: plan.columns.iter().map(|c| c.name.clone()).collect(),
        columns_only_at_source: plan.only_at_source.clone(),
        columns_only_at_destination: plan.only_at_destination.clone(),
        key: plan.key_names.clone(),
        range_width: ranged.then_some(width as u128),
        ranges,
        differing_ranges,
        keys,
        unlisted,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

fn compare_keys(
    a: HashMap<Vec<u8>, KeyCell>,
    mut b: HashMap<Vec<u8>, KeyCell>,
) -> Vec<KeyDifference> {
    let mut out: Vec<(i64, KeyDifference)> = Vec::new();
    let describe = |x: u64, y: u64| match (x, y) {
        (_, 0) => "missing at destination".to_string(),
        (0, _) => "only at destination".to_string(),
        (1, 1) => "changed".to_string(),
        (x, y) if x == y => "changed".to_string(),
        (x, y) => format!("{x} rows at source, {y} at destination"),
    };
    for (k, x) in a {
        let y = b.remove(&k).unwrap_or_default();
        if x.rows != y.rows || x.sum != y.sum {
            out.push((
                x.order,
                KeyDifference {
                    key: x.shown,
                    difference: describe(x.rows, y.rows),
                    source_rows: x.rows,
                    destination_rows: y.rows,
                },
            ));
        }
    }
    for (_, y) in b {
        out.push((
            y.order,
            KeyDifference {
                key: y.shown,
                difference: describe(0, y.rows),
                source_rows: 0,
                destination_rows: y.rows,
            },
        ));
    }
    out.sort_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.key.cmp(&y.key)));
    out.into_iter().map(|(_, d)| d).collect()
}

#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

/// A multiset of rows: how many, and the wrapping sum of their hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cell {
    rows: u64,
    sum: u128,
}

impl Cell {
    fn add(&mut self, hash: u128) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(hash);
    }

    fn merge(&mut self, other: Cell) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

/// A side's digest: the total, and per key range (range `i` holds first-key values
/// `[i << shift, (i + 1) << shift)`).
#[derive(Clone, Debug, Default)]
struct Digest {
    total: Cell,
    shift: u32,
    ranges: BTreeMap<i64, Cell>,
    null_key: Cell,
}

impl Digest {
    fn add_range(&mut self, key: i64, cell: Cell) {
        let id = key >> self.shift;
        self.ranges.entry(id).or_default().merge(cell);
        while self.ranges.len() > MAX_RANGES {
            self.coarsen_to(self.shift + 1);
        }
    }

    fn coarsen_to(&mut self, shift: u32) {
        if shift <= self.shift {
            return;
        }
        let by = shift - self.shift;
        let mut merged = BTreeMap::new();
        for (id, cell) in std::mem::take(&mut self.ranges) {
            merged
                .entry(if by >= 64 { id >> 63 } else { id >> by })
                .or_insert_with(Cell::default)
                .merge(cell);
        }
        self.ranges = merged;
        self.shift = shift.min(63);
    }

    fn merge(&mut self, mut other: Digest) {
        let shift = self.shift.max(other.shift);
        self.coarsen_to(shift);
        other.coarsen_to(shift);
        self.total.merge(other.total);
        self.null_key.merge(other.null_key);
        for (id, cell) in other.ranges {
            self.ranges.entry(id).or_default().merge(cell);
        }
        while self.ranges.len() > MAX_RANGES {
            self.coarsen_to(self.shift + 1);
        }
    }
}

/// The rows of one key, read again.
#[derive(Clone, Debug, Default)]
struct KeyCell {
    rows: u64,
    sum: u128,
    shown: String,
    order: i64,
}

/// Ranges read again to name their keys.
struct Drill {
    shift: u32,
    ids: HashSet<i64>,
}

impl Drill {
    fn holds(&self, key: i64) -> bool {
        self.ids.contains(&(key >> self.shift))
    }

    /// The ranges as an SQL predicate on `column`.
    fn predicate(&self, column: &str) -> String {
        let quoted = format!("\"{}\"", column.replace('"', "\"\""));
        let mut ids: Vec<i64> = self.ids.iter().copied().collect();
        ids.sort_unstable();
        let parts: Vec<String> = ids
            .iter()
            .map(|id| {
                let from = i128::from(*id) << self.shift;
                let to = (i128::from(*id) + 1) << self.shift;
                let clamp = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
                format!("({quoted} >= {} AND {quoted} < {})", clamp(from), clamp(to))
            })
            .collect();
        parts.join(" OR ")
    }
}

/// What one pass over a side produced.
#[derive(Default)]
struct Pass {
    digest: Digest,
    keys: HashMap<Vec<u8>, KeyCell>,
}

impl Pass {
    fn merge(&mut self, other: Pass) {
        self.digest.merge(other.digest);
        for (k, cell) in other.keys {
            let mine = self.keys.entry(k).or_insert_with(|| KeyCell {
                shown: cell.shown.clone(),
                order: cell.order,
                ..KeyCell::default()
            });
            mine.rows += cell.rows;
            mine.sum = mine.sum.wrapping_add(cell.sum);
        }
    }
}

/// A column compared on both sides.
struct Column {
    name: String,
    source: usize,
    destination: usize,
    /// The type a side's text column is read as, to match the other side's type.
    source_cast: Option<DataType>,
    destination_cast: Option<DataType>,
}

/// Which columns are compared, how, and by which key.
struct Plan {
    columns: Vec<Column>,
    only_at_source: Vec<String>,
    only_at_destination: Vec<String>,
    /// Indices into `columns`.
    key: Vec<usize>,
    key_names: Vec<String>,
    /// Index into `columns` of the integer column ranges are cut by.
    range_column: Option<usize>,
}

/// The type a column is hashed as when [`Values`] does not read its own: wider decimals,
/// wider floats.
fn canonical_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Decimal32(_, s) | DataType::Decimal64(_, s) => Some(DataType::Decimal128(38, *s)),
        DataType::Float16 => Some(DataType::Float32),
        _ => None,
    }
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

impl Plan {
    fn new(a: &Dataset, b: &Dataset, how: &RowVerifyOptions) -> Result<Plan> {
        let (sa, sb) = (&a.schema, &b.schema);
        let find = |schema: &Schema, name: &str| -> Option<usize> {
            schema.index_of(name).ok().or_else(|| {
                let mut same = schema
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.name().eq_ignore_ascii_case(name));
                let first = same.next();
                first.filter(|_| same.next().is_none()).map(|(i, _)| i)
            })
        };
        let mut columns = Vec::new();
        let mut only_at_source = Vec::new();
        for (i, field) in sa.fields().iter().enumerate() {
            let Some(j) = find(sb, field.name()) else {
                only_at_source.push(field.name().clone());
                continue;
            };
            let (ta, tb) = (field.data_type(), sb.field(j).data_type());
            let (source_cast, destination_cast) = match (is_text(ta), is_text(tb)) {
                (true, false) => (Some(tb.clone()), None),
                (false, true) => (None, Some(ta.clone())),
                _ => (None, None),
            };
            columns.push(Column {
                name: field.name().clone(),
                source: i,
                destination: j,
                source_cast,
                destination_cast,
            });
        }
        let only_at_destination = sb
            .fields()
            .iter()
            .filter(|f| find(sa, f.name()).is_none())
            .map(|f| f.name().clone())
            .collect();
        let (key_names, given) = if !how.key.is_empty() {
            (how.key.clone(), true)
        } else if !a.primary_key.is_empty() {
            (a.primary_key.clone(), false)
        } else {
            (b.primary_key.clone(), false)
        };
        let mut key = Vec::new();
        for name in &key_names {
            let found = columns.iter().position(|c| c.name == *name).or_else(|| {
                columns
                    .iter()
                    .position(|c| c.name.eq_ignore_ascii_case(name))
            });
            match found {
                Some(i) => key.push(i),
                None if given => {
                    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                    return Err(Error::invalid_option(
                        "--key",
                        format!(
                            "column '{name}' is not a column of both sides (they share: {})",
                            names.join(", ")
                        ),
                    ));
                }
                // A primary key the other side lacks: compare without a key.
                None => {
                    return Ok(Plan::without_key(
                        columns,
                        only_at_source,
                        only_at_destination,
                    ))
                }
            }
        }
        let range_column = key.first().copied().filter(|&i| {
            let c = &columns[i];
            let ta = c
                .source_cast
                .as_ref()
                .unwrap_or(sa.field(c.source).data_type());
            let tb = c
                .destination_cast
                .as_ref()
                .unwrap_or(sb.field(c.destination).data_type());
            is_integer(ta) && is_integer(tb)
        });
        if given && range_column.is_none() {
            if let Some(&i) = key.first() {
                tracing::info!(column = %columns[i].name, "the first key column is not an integer: no key ranges");
            }
        }
        let key_names = key.iter().map(|&i| columns[i].name.clone()).collect();
        Ok(Plan {
            columns,
            only_at_source,
            only_at_destination,
            key,
            key_names,
            range_column,
        })
    }

    fn without_key(
        columns: Vec<Column>,
        only_at_source: Vec<String>,
        only_at_destination: Vec<String>,
    ) -> Plan {
        Plan {
            columns,
            only_at_source,
            only_at_destination,
            key: Vec::new(),
            key_names: Vec::new(),
            range_column: None,
        }
    }

    /// The batch's compared columns in plan order, text cast where the other side is typed.
    fn prepare(&self, batch: &RecordBatch, side: Side, location: &str) -> Result<Vec<ArrayRef>> {
        self.columns
            .iter()
            .map(|c| {
                let (index, cast) = match side {
                    Side::Source => (c.source, &c.source_cast),
                    Side::Destination => (c.destination, &c.destination_cast),
                };
                let mut array = batch.column(index).clone();
                if let Some(t) = cast {
                    array = arrow::compute::cast(&array, t).map_err(|e| {
                        Error::data(location, format!("column '{}' as {t}: {e}", c.name))
                    })?;
                }
                if let Some(t) = canonical_type(array.data_type()) {
                    array = arrow::compute::cast(&array, &t).map_err(|e| {
                        Error::data(location, format!("column '{}' as {t}: {e}", c.name))
                    })?;
                }
                Ok(array)
            })
            .collect()
    }

    /// One pass over `batches` (a partition of a table, or a file).
    fn pass(
        &self,
        batches: impl Iterator<Item = Result<RecordBatch>>,
        side: Side,
        location: &str,
        drill: Option<&Drill>,
    ) -> Result<Pass> {
        let mut pass = Pass::default();
        for batch in batches {
            self.add(&batch?, side, location, drill, &mut pass)?;
        }
        Ok(pass)
    }

    /// Adds a batch's rows to `pass`: its digest, or with `drill`, the rows of the drilled
    /// ranges per key.
    fn add(
        &self,
        batch: &RecordBatch,
        side: Side,
        location: &str,
        drill: Option<&Drill>,
        pass: &mut Pass,
    ) -> Result<()> {
        let arrays = self.prepare(batch, side, location)?;
        let values: Vec<Values> = arrays.iter().map(|a| Values::of(a.as_ref())).collect();
        let range = self.range_column.map(|i| &values[i]);
        let mut row = Vec::with_capacity(256);
        let mut text = String::new();
        let formatters = match drill {
            Some(_) => Some(
                self.key
                    .iter()
                    .map(|&i| {
                        ArrayFormatter::try_new(arrays[i].as_ref(), &FormatOptions::default())
                            .map_err(|e| Error::data(location, e))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        // Rows in a range are usually together: add them up before touching the map.
        let mut current: Option<(i64, Cell)> = None;
        for r in 0..batch.num_rows() {
            let key = range.and_then(|v| v.integer(r));
            if let Some(drill) = drill {
                let inside = match (self.range_column, key) {
                    (None, _) => true,
                    (Some(_), Some(k)) => drill.holds(k),
                    (Some(_), None) => false,
                };
                if !inside {
                    continue;
                }
            }
            row.clear();
            for v in &values {
                v.encode(r, &mut row, &mut text);
            }
            let hash = xxhash_rust::xxh3::xxh3_128(&row);
            if let (Some(drill_formatters), Some(_)) = (&formatters, drill) {
                let mut id = Vec::new();
                let mut shown = String::new();
                for (n, &i) in self.key.iter().enumerate() {
                    values[i].encode(r, &mut id, &mut text);
                    if n > 0 {
                        shown.push_str(", ");
                    }
                    let _ = write!(
                        shown,
                        "{}={}",
                        self.columns[i].name,
                        drill_formatters[n].value(r)
                    );
                }
                let cell = pass.keys.entry(id).or_insert_with(|| KeyCell {
                    shown,
                    order: key.unwrap_or(i64::MIN),
                    ..KeyCell::default()
                });
                cell.rows += 1;
                cell.sum = cell.sum.wrapping_add(hash);
                continue;
            }
            pass.digest.total.add(hash);
            match (self.range_column, key) {
                (None, _) => {}
                (Some(_), None) => pass.digest.null_key.add(hash),
                (Some(_), Some(k)) => {
                    let id = k >> pass.digest.shift;
                    match &mut current {
                        Some((at, cell)) if *at >> pass.digest.shift == id => cell.add(hash),
                        _ => {
                            if let Some((at, cell)) = current.take() {
                                pass.digest.add_range(at, cell);
                            }
                            let mut cell = Cell::default();
                            cell.add(hash);
                            current = Some((k, cell));
                        }
                    }
                }
            }
        }
        if let Some((at, cell)) = current {
            pass.digest.add_range(at, cell);
        }
        Ok(())
    }
}

/// A column's values, read by type.
enum Values<'a> {
    Null,
    Bool(&'a arrow::array::BooleanArray),
    Int(&'a dyn Array, IntKind),
    UInt64(&'a arrow::array::PrimitiveArray<UInt64Type>),
    Decimal(&'a arrow::array::PrimitiveArray<Decimal128Type>, i8),
    F32(&'a arrow::array::PrimitiveArray<Float32Type>),
    F64(&'a arrow::array::PrimitiveArray<Float64Type>),
    Date32(&'a arrow::array::PrimitiveArray<Date32Type>),
    Date64(&'a arrow::array::PrimitiveArray<Date64Type>),
    Instant(InstantValues<'a>),
    Time(TimeValues<'a>),
    Text(TextValues<'a>),
    Bytes(BytesValues<'a>),
    /// Anything else, as Arrow displays it.
    Other(&'a dyn Array, Option<ArrayFormatter<'a>>),
}

#[derive(Clone, Copy)]
enum IntKind {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
}

enum TimeValues<'a> {
    S(&'a arrow::array::PrimitiveArray<Time32SecondType>),
    Ms(&'a arrow::array::PrimitiveArray<Time32MillisecondType>),
    Us(&'a arrow::array::PrimitiveArray<Time64MicrosecondType>),
    Ns(&'a arrow::array::PrimitiveArray<Time64NanosecondType>),
}

enum InstantValues<'a> {
    S(&'a arrow::array::PrimitiveArray<TimestampSecondType>),
    Ms(&'a arrow::array::PrimitiveArray<TimestampMillisecondType>),
    Us(&'a arrow::array::PrimitiveArray<TimestampMicrosecondType>),
    Ns(&'a arrow::array::PrimitiveArray<TimestampNanosecondType>),
}

enum TextValues<'a> {
    Small(&'a arrow::array::StringArray),
    Large(&'a arrow::array::LargeStringArray),
    View(&'a arrow::array::StringViewArray),
}

enum BytesValues<'a> {
    Small(&'a arrow::array::BinaryArray),
    Large(&'a arrow::array::LargeBinaryArray),
    View(&'a arrow::array::BinaryViewArray),
    Fixed(&'a arrow::array::FixedSizeBinaryArray),
}

// Tags that keep values of different kinds apart in a row's encoding.
const NULL: u8 = 0;
const NUMBER: u8 = 1;
const FLOAT: u8 = 2;
const TEXT: u8 = 3;
const BYTES: u8 = 4;
const DATE: u8 = 5;
const INSTANT: u8 = 6;
const TIME: u8 = 7;
const OTHER: u8 = 8;

impl<'a> Values<'a> {
    fn of(array: &'a dyn Array) -> Values<'a> {
        use DataType as D;
        match array.data_type() {
            D::Null => Values::Null,
            D::Boolean => Values::Bool(array.as_boolean()),
            D::Int8 => Values::Int(array, IntKind::I8),
            D::Int16 => Values::Int(array, IntKind::I16),
            D::Int32 => Values::Int(array, IntKind::I32),
            D::Int64 => Values::Int(array, IntKind::I64),
            D::UInt8 => Values::Int(array, IntKind::U8),
            D::UInt16 => Values::Int(array, IntKind::U16),
            D::UInt32 => Values::Int(array, IntKind::U32),
            D::UInt64 => Values::UInt64(array.as_primitive()),
            D::Decimal128(_, s) => Values::Decimal(array.as_primitive(), *s),
            D::Float32 => Values::F32(array.as_primitive()),
            D::Float64 => Values::F64(array.as_primitive()),
            D::Date32 => Values::Date32(array.as_primitive()),
            D::Date64 => Values::Date64(array.as_primitive()),
            D::Timestamp(TimeUnit::Second, _) => {
                Values::Instant(InstantValues::S(array.as_primitive()))
            }
            D::Timestamp(TimeUnit::Millisecond, _) => {
                Values::Instant(InstantValues::Ms(array.as_primitive()))
            }
            D::Timestamp(TimeUnit::Microsecond, _) => {
                Values::Instant(InstantValues::Us(array.as_primitive()))
            }
            D::Timestamp(TimeUnit::Nanosecond, _) => {
                Values::Instant(InstantValues::Ns(array.as_primitive()))
            }
            D::Time32(TimeUnit::Second) => Values::Time(TimeValues::S(array.as_primitive())),
            D::Time32(_) => Values::Time(TimeValues::Ms(array.as_primitive())),
            D::Time64(TimeUnit::Microsecond) => Values::Time(TimeValues::Us(array.as_primitive())),
            D::Time64(_) => Values::Time(TimeValues::Ns(array.as_primitive())),
            D::Utf8 => Values::Text(TextValues::Small(array.as_string())),
            D::LargeUtf8 => Values::Text(TextValues::Large(array.as_string())),
            D::Utf8View => Values::Text(TextValues::View(array.as_string_view())),
            D::Binary => Values::Bytes(BytesValues::Small(array.as_binary())),
            D::LargeBinary => Values::Bytes(BytesValues::Large(array.as_binary())),
            D::BinaryView => Values::Bytes(BytesValues::View(array.as_binary_view())),
            D::FixedSizeBinary(_) => {
                Values::Bytes(BytesValues::Fixed(array.as_fixed_size_binary()))
            }
            _ => Values::Other(
                array,
                ArrayFormatter::try_new(array, &FormatOptions::default()).ok(),
            ),
        }
    }
}

/// `mantissa × 10^-scale` with trailing zeros taken off (down to scale 0), so 1.50, 1.5
/// and a float 1.5 are one value, and 5.00 is the integer 5.
fn push_number(out: &mut Vec<u8>, mut mantissa: i128, scale: i32) {
    let mut scale = scale;
    while scale < 0 {
        match mantissa.checked_mul(10) {
            Some(m) => {
                mantissa = m;
                scale += 1;
            }
            None => {
                // Beyond i128: as text, exactly.
                out.push(OTHER);
                let text = format!("{mantissa}e{}", -scale);
                push_len_bytes(out, text.as_bytes());
                return;
            }
        }
    }
    while scale > 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        scale -= 1;
    }
    out.push(NUMBER);
    out.extend_from_slice(&mantissa.to_le_bytes());
    out.push(scale as u8);
}

fn push_len_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A finite float as the decimal its shortest representation spells (`0.1` → 1 × 10^-1),
/// so a float and a decimal of the same value hash alike; others by their bits.
fn push_float(
    out: &mut Vec<u8>,
    text: &mut String,
    value: f64,
    shortest: impl FnOnce(&mut String),
) {
    if !value.is_finite() {
        out.push(FLOAT);
        let bits = if value.is_nan() {
            f64::NAN.to_bits()
        } else {
            value.to_bits()
        };
        out.extend_from_slice(&bits.to_le_bytes());
        return;
    }
    text.clear();
    shortest(text);
    let (digits, scale) = match text.split_once('.') {
        Some((int, frac)) => (format!("{int}{frac}"), frac.len() as i32),
        None => (text.clone(), 0),
    };
    match digits.parse::<i128>() {
        Ok(m) => push_number(out, m, scale),
        Err(_) => {
            out.push(FLOAT);
            out.extend_from_slice(&(value + 0.0).to_bits().to_le_bytes());
        }
    }
}

impl Values<'_> {
    /// Row `r` as an integer (for key ranges), when it is one and not NULL.
    fn integer(&self, r: usize) -> Option<i64> {
        match self {
            Values::Int(a, kind) => {
                if a.is_null(r) {
                    return None;
                }
                Some(match kind {
                    IntKind::I8 => i64::from(a.as_primitive::<Int8Type>().value(r)),
                    IntKind::I16 => i64::from(a.as_primitive::<Int16Type>().value(r)),
                    IntKind::I32 => i64::from(a.as_primitive::<Int32Type>().value(r)),
                    IntKind::I64 => a.as_primitive::<Int64Type>().value(r),
                    IntKind::U8 => i64::from(a.as_primitive::<UInt8Type>().value(r)),
                    IntKind::U16 => i64::from(a.as_primitive::<UInt16Type>().value(r)),
                    IntKind::U32 => i64::from(a.as_primitive::<UInt32Type>().value(r)),
                })
            }
            Values::UInt64(a) => {
                (!a.is_null(r)).then(|| i64::try_from(a.value(r)).unwrap_or(i64::MAX))
            }
            _ => None,
        }
    }

    /// Appends row `r`'s value, normalised, to `out`.
    fn encode(&self, r: usize, out: &mut Vec<u8>, text: &mut String) {
        let null = match self {
            Values::Null => true,
            Values::Bool(a) => a.is_null(r),
            Values::Int(a, _) | Values::Other(a, _) => a.is_null(r),
            Values::UInt64(a) => a.is_null(r),
            Values::Decimal(a, _) => a.is_null(r),
            Values::F32(a) => a.is_null(r),
            Values::F64(a) => a.is_null(r),
            Values::Date32(a) => a.is_null(r),
            Values::Date64(a) => a.is_null(r),
            Values::Instant(InstantValues::S(a)) => a.is_null(r),
            Values::Instant(InstantValues::Ms(a)) => a.is_null(r),
            Values::Instant(InstantValues::Us(a)) => a.is_null(r),
            Values::Instant(InstantValues::Ns(a)) => a.is_null(r),
            Values::Time(TimeValues::S(a)) => a.is_null(r),
            Values::Time(TimeValues::Ms(a)) => a.is_null(r),
            Values::Time(TimeValues::Us(a)) => a.is_null(r),
            Values::Time(TimeValues::Ns(a)) => a.is_null(r),
            Values::Text(TextValues::Small(a)) => a.is_null(r),
            Values::Text(TextValues::Large(a)) => a.is_null(r),
            Values::Text(TextValues::View(a)) => a.is_null(r),
            Values::Bytes(BytesValues::Small(a)) => a.is_null(r),
            Values::Bytes(BytesValues::Large(a)) => a.is_null(r),
            Values::Bytes(BytesValues::View(a)) => a.is_null(r),
            Values::Bytes(BytesValues::Fixed(a)) => a.is_null(r),
        };
        if null {
            out.push(NULL);
            return;
        }
        match self {
            Values::Null => {}
            Values::Bool(a) => push_number(out, i128::from(a.value(r)), 0),
            Values::Int(..) | Values::UInt64(_) => {
                let value = match self {
                    Values::UInt64(a) => i128::from(a.value(r)),
                    _ => i128::from(self.integer(r).unwrap_or_default()),
                };
                push_number(out, value, 0);
            }
            Values::Decimal(a, scale) => push_number(out, a.value(r), i32::from(*scale)),
            Values::F32(a) => {
                let v = a.value(r);
                push_float(out, text, f64::from(v), |t| {
                    let _ = write!(t, "{v}");
                });
            }
            Values::F64(a) => {
                let v = a.value(r);
                push_float(out, text, v, |t| {
                    let _ = write!(t, "{v}");
                });
            }
            Values::Date32(a) => {
                out.push(DATE);
                out.extend_from_slice(&i64::from(a.value(r)).to_le_bytes());
            }
            Values::Date64(a) => {
                out.push(DATE);
                out.extend_from_slice(&a.value(r).div_euclid(86_400_000).to_le_bytes());
            }
            Values::Instant(i) => {
                let nanos = match i {
                    InstantValues::S(a) => i128::from(a.value(r)) * 1_000_000_000,
                    InstantValues::Ms(a) => i128::from(a.value(r)) * 1_000_000,
                    InstantValues::Us(a) => i128::from(a.value(r)) * 1_000,
                    InstantValues::Ns(a) => i128::from(a.value(r)),
                };
                out.push(INSTANT);
                out.extend_from_slice(&nanos.to_le_bytes());
            }
            Values::Time(t) => {
                let nanos = match t {
                    TimeValues::S(a) => i64::from(a.value(r)) * 1_000_000_000,
                    TimeValues::Ms(a) => i64::from(a.value(r)) * 1_000_000,
                    TimeValues::Us(a) => a.value(r) * 1_000,
                    TimeValues::Ns(a) => a.value(r),
                };
                out.push(TIME);
                out.extend_from_slice(&nanos.to_le_bytes());
            }
            Values::Text(t) => {
                out.push(TEXT);
                let value = match t {
                    TextValues::Small(a) => a.value(r),
                    TextValues::Large(a) => a.value(r),
                    TextValues::View(a) => a.value(r),
                };
                push_len_bytes(out, value.as_bytes());
            }
            Values::Bytes(b) => {
                out.push(BYTES);
                let value = match b {
                    BytesValues::Small(a) => a.value(r),
                    BytesValues::Large(a) => a.value(r),
                    BytesValues::View(a) => a.value(r),
                    BytesValues::Fixed(a) => a.value(r),
                };
                push_len_bytes(out, value);
            }
            Values::Other(_, formatter) => {
                out.push(OTHER);
                text.clear();
                if let Some(f) = formatter {
                    let _ = write!(text, "{}", f.value(r));
                }
                push_len_bytes(out, text.as_bytes());
            }
        }
    }
}

/// One side, opened: its schema, primary key, and how to read it.
struct Dataset {
    schema: SchemaRef,
    primary_key: Vec<String>,
    origin: Origin,
}

enum Origin {
    Table {
        source: Box<dyn ferry_connectors::TableSource>,
    },
    Files {
        source: Arc<dyn Source>,
        inputs: Vec<(Entry, Format)>,
        rec: Box<RecordOptions>,
    },
}

impl Dataset {
    async fn open(address: &DataAddress, rec: &RecordOptions) -> Result<Dataset> {
        if let DataAddress::Table(table) = address {
            let source = open_table(table).await?;
            return Ok(Dataset {
                schema: source.schema(),
                primary_key: source.primary_key().to_vec(),
                origin: Origin::Table { source },
            });
        }
        let filter = crate::KeyFilter::new(&[], &[])?;
        let source = open_source(address)?;
        let inputs = collect_inputs(address, &filter, source.list().await?, rec)?;
        let (first, format) = inputs[0].clone();
        let schema = probe_schema(&source, &first, format, rec).await?;
        Ok(Dataset {
            schema,
            primary_key: Vec::new(),
            origin: Origin::Files {
                source,
                inputs,
                rec: Box::new(rec.clone()),
            },
        })
    }

    /// Reads the whole side (or with `drill`, the rows of those ranges) into a [`Pass`],
    /// `parallel` partitions or files at once, each on a blocking thread.
    async fn digest(
        &self,
        plan: Arc<Plan>,
        side: Side,
        drill: Option<Arc<Drill>>,
        parallel: usize,
    ) -> Result<Pass> {
        let handle = Handle::current();
        let passes: Vec<Pass> = match &self.origin {
            Origin::Table { source } => {
                let filter = match (&drill, plan.range_column) {
                    (Some(d), Some(i)) => Some(d.predicate(&plan.columns[i].name)),
                    _ => None,
                };
                let selection = Selection {
                    columns: None,
                    filter,
                };
                let scan: Arc<dyn TableScan> = source.scan(&selection, parallel).await?.into();
                let location = source.address().to_string();
                futures::stream::iter(0..scan.partitions().len())
                    .map(|i| {
                        let (scan, plan, drill, location) =
                            (scan.clone(), plan.clone(), drill.clone(), location.clone());
                        async move {
                            let mut rx = scan.read(i, BATCH_ROWS);
                            tokio::task::spawn_blocking(move || {
                                let batches = std::iter::from_fn(|| rx.blocking_recv());
                                plan.pass(batches, side, &location, drill.as_deref())
                            })
                            .await
                            .map_err(join_error)?
                        }
                    })
                    .buffer_unordered(parallel)
                    .try_collect()
                    .await?
            }
            Origin::Files {
                source,
                inputs,
                rec,
            } => {
                let schema = self.schema.clone();
                futures::stream::iter(inputs.iter().cloned())
                    .map(|(entry, format)| {
                        let (source, rec, schema, plan, drill, handle) = (
                            source.clone(),
                            (**rec).clone(),
                            schema.clone(),
                            plan.clone(),
                            drill.clone(),
                            handle.clone(),
                        );
                        async move {
                            tokio::task::spawn_blocking(move || {
                                let location = crate::records::location(&source, &entry);
                                let reader = read_input(
                                    &source, &entry, format, &rec, &schema, &handle, None,
                                )?;
                                plan.pass(reader, side, &location, drill.as_deref())
                            })
                            .await
                            .map_err(join_error)?
                        }
                    })
                    .buffer_unordered(parallel)
                    .try_collect()
                    .await?
            }
        };
        let mut total = Pass::default();
        for pass in passes {
            total.merge(pass);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BooleanArray, Date32Array, Decimal128Array, Float64Array, Int16Array, Int64Array,
        StringArray, TimestampMicrosecondArray, TimestampSecondArray,
    };

    fn encoded(array: &dyn Array, row: usize) -> Vec<u8> {
        let mut out = Vec::new();
        Values::of(array).encode(row, &mut out, &mut String::new());
        out
    }

    #[test]
    fn the_same_number_encodes_alike_whatever_its_type() {
        let decimal = Decimal128Array::from(vec![150, 500])
            .with_precision_and_scale(12, 2)
            .unwrap();
        let float = Float64Array::from(vec![1.5, 5.0]);
        let int = Int16Array::from(vec![2, 5]);
        let wide = Int64Array::from(vec![2, 5]);
        let flag = BooleanArray::from(vec![true]);
        assert_eq!(encoded(&decimal, 0), encoded(&float, 0));
        assert_eq!(encoded(&decimal, 1), encoded(&int, 1));
        assert_eq!(encoded(&float, 1), encoded(&wide, 1));
        assert_eq!(encoded(&int, 0), encoded(&wide, 0));
        assert_eq!(encoded(&flag, 0), encoded(&Int64Array::from(vec![1]), 0));
        assert_ne!(encoded(&decimal, 0), encoded(&decimal, 1));
        // 0.1 as a float is the decimal 0.1, not its binary expansion.
        let tenth = Decimal128Array::from(vec![1])
            .with_precision_and_scale(5, 1)
            .unwrap();
        assert_eq!(
            encoded(&Float64Array::from(vec![0.1]), 0),
            encoded(&tenth, 0)
        );
    }

    #[test]
    fn null_empty_text_and_dates_stay_apart_and_instants_are_utc() {
        let text = StringArray::from(vec![Some(""), None, Some("0")]);
        assert_ne!(encoded(&text, 0), encoded(&text, 1));
        assert_ne!(encoded(&text, 2), encoded(&Int64Array::from(vec![0]), 0));
        let date = Date32Array::from(vec![19_723]);
        assert_ne!(
            encoded(&date, 0),
            encoded(&Int64Array::from(vec![19_723]), 0)
        );
        let seconds = TimestampSecondArray::from(vec![1_700_000_000]);
        let micros =
            TimestampMicrosecondArray::from(vec![1_700_000_000_000_000]).with_timezone("UTC");
        assert_eq!(encoded(&seconds, 0), encoded(&micros, 0));
    }

    /// Rows added in any order, split among workers and merged, give the same digest,
    /// with ranges coarsened to at most MAX_RANGES.
    #[test]
    fn digests_ignore_order_and_partitioning_and_stay_bounded() {
        let hash = |k: i64| xxhash_rust::xxh3::xxh3_128(&k.to_le_bytes());
        let add = |d: &mut Digest, k: i64| {
            let mut cell = Cell::default();
            cell.add(hash(k));
            d.total.add(hash(k));
            d.add_range(k, cell);
        };
        let mut one = Digest::default();
        (0..100_000).for_each(|k| add(&mut one, k));
        let (mut a, mut b) = (Digest::default(), Digest::default());
        (0..100_000)
            .rev()
            .filter(|k| k % 3 == 0)
            .for_each(|k| add(&mut a, k));
        (0..100_000)
            .filter(|k| k % 3 != 0)
            .for_each(|k| add(&mut b, k));
        a.merge(b);
        assert!(one.ranges.len() <= MAX_RANGES && one.ranges.len() > MAX_RANGES / 4);
        one.coarsen_to(a.shift);
        a.coarsen_to(one.shift);
        assert_eq!(one.total, a.total);
        assert_eq!(one.ranges, a.ranges);
        // A duplicated row changes the digest.
        add(&mut a, 42);
        assert_ne!(one.total, a.total);
        assert_eq!(
            a.ranges
                .iter()
                .filter(|(id, c)| one.ranges[*id] != **c)
                .count(),
            1
        );
    }

    #[test]
    fn drilled_ranges_become_one_predicate() {
        let drill = Drill {
            shift: 4,
            ids: HashSet::from([2, -1]),
        };
        assert_eq!(
            drill.predicate("id"),
            "(\"id\" >= -16 AND \"id\" < 0) OR (\"id\" >= 32 AND \"id\" < 48)"
        );
        assert!(drill.holds(40) && !drill.holds(48) && drill.holds(-1));
    }
}
