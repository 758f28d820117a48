//! Filter: keeps the rows for which a SQL boolean clause is TRUE (NULL drops the row, as in
//! a SQL WHERE).
//!
//! The clause is parsed by `sqlparser` and bound to the input schema as a small tree of
//! [`Node`]s evaluated with Arrow compute kernels. Binding settles every type, inserts the
//! casts SQL coercion needs and folds constant sub-expressions, so a bad literal such as
//! `DATE '2024-13-01'` is reported before any data moves.

use std::fmt::Display;
use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{new_empty_array, Array, ArrayRef, AsArray, BooleanArray, Datum};
use arrow::array::{Decimal128Array, Float64Array, Int64Array, NullArray, StringArray};
use arrow::compute::kernels::{cmp, comparison, numeric};
use arrow::compute::CastOptions;
use arrow::compute::{and_kleene, cast_with_options, filter_record_batch, is_null, not, or_kleene};
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use ferry_core::{Error, Result, TransformSpec};
use serde::Deserialize;
use sqlparser::ast::{BinaryOperator as B, CastKind, DataType as S, ExactNumberInfo, Expr, Ident};
use sqlparser::ast::{TimezoneInfo, UnaryOperator as U, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

use crate::util::{self, is_string};
use crate::Transform;

mod functions;
use functions::Func;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    clause: String,
}

type ArrowResult<T> = std::result::Result<T, ArrowError>;
type CmpFn = fn(&dyn Datum, &dyn Datum) -> ArrowResult<BooleanArray>;

/// A bound expression. A literal is a one-row array that kernels see as a scalar, so
/// comparing a column with a literal never materialises a full array.
enum Node {
    Col(usize),
    Lit(ArrayRef),
    Unary(Unary, Box<Node>),
    Bin(Box<Node>, Kernel, Box<Node>),
    /// A function, CASE, EXTRACT or regular expression match (see [`functions`]).
    Call(Func, Vec<Node>),
}

enum Unary {
    /// The flag is TRY_CAST: a value that does not convert becomes NULL, not an error.
    Cast(DataType, bool),
    Neg,
    Not,
    IsNull,
    /// `IS TRUE` / `IS FALSE`: never NULL.
    Is(bool),
}

#[derive(Clone, Copy)]
enum Kernel {
    Cmp(CmpFn),
    /// A comparison that only takes strings.
    Like(CmpFn),
    Num(fn(&dyn Datum, &dyn Datum) -> ArrowResult<ArrayRef>),
    /// AND / OR, with SQL's three-valued logic.
    Logic(fn(&BooleanArray, &BooleanArray) -> ArrowResult<BooleanArray>),
}

/// An evaluated node: one value per row or, when `.1` is set, one standing for every row.
struct Val(ArrayRef, bool);

impl Datum for Val {
    fn get(&self) -> (&dyn Array, bool) {
        (&self.0, self.1)
    }
}

/// A bound node and the type it evaluates to.
struct Bound {
    node: Node,
    ty: DataType,
}

struct Filter {
    label: String,
    node: Node,
    schema: SchemaRef,
}

pub(crate) fn bind(spec: &TransformSpec, input: &SchemaRef) -> Result<Box<dyn Transform>> {
    let Options { clause } = util::options(spec)?;
    util::no_columns(spec)?;
    let binder = Binder {
        spec,
        schema: input,
    };
    let expr = parse(&clause).map_err(|e| binder.err(format!("clause does not parse: {e}")))?;
    let node = binder.boolean(binder.expr(&expr)?, "clause", &expr)?.node;
    let (label, schema) = (spec.label(), input.clone());
    Ok(Box::new(Filter {
        label,
        node,
        schema,
    }))
}

pub(crate) fn parse(sql: &str) -> std::result::Result<Expr, ParserError> {
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    let expr = parser.parse_expr()?;
    parser.expect_token(&Token::EOF)?;
    Ok(expr)
}

impl Transform for Filter {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let fail =
            |e: ArrowError| crate::data_error(&self.label, format!("evaluating the clause: {e}"));
        let Val(mask, scalar) = self
            .node
            .eval(batch.columns(), batch.num_rows())
            .map_err(fail)?;
        let mask = bools(&mask).map_err(fail)?;
        match scalar {
            false => filter_record_batch(&batch, mask).map_err(fail),
            true if first(mask) == Some(true) => Ok(batch),
            true => Ok(batch.slice(0, 0)),
        }
    }
}

fn cast_options(safe: bool) -> CastOptions<'static> {
    CastOptions {
        safe,
        ..Default::default()
    }
}

fn bools(a: &dyn Array) -> ArrowResult<&BooleanArray> {
    let msg = || ArrowError::InvalidArgumentError(format!("not booleans: {}", a.data_type()));
    a.as_boolean_opt().ok_or_else(msg)
}

fn first(b: &BooleanArray) -> Option<bool> {
    b.iter().next().flatten()
}

/// Booleans `rows` long: a scalar's one value is repeated, an array is kept.
fn spread(b: &BooleanArray, scalar: bool, rows: usize) -> BooleanArray {
    if scalar && rows != 1 {
        vec![first(b); rows].into()
    } else {
        b.clone()
    }
}

impl Node {
    fn eval(&self, cols: &[ArrayRef], rows: usize) -> ArrowResult<Val> {
        match self {
            Node::Col(i) => match cols.get(*i) {
                Some(a) => Ok(Val(a.clone(), false)),
                None => Err(ArrowError::SchemaError(format!(
                    "no column {i} in the batch"
                ))),
            },
            Node::Lit(a) => Ok(Val(a.clone(), true)),
            Node::Unary(op, n) => {
                let Val(a, scalar) = n.eval(cols, rows)?;
                Ok(Val(op.apply(&a)?, scalar))
            }
            Node::Bin(l, kernel, r) => {
                let (l, r) = (l.eval(cols, rows)?, r.eval(cols, rows)?);
                let scalar = l.1 && r.1;
                Ok(Val(
                    kernel.apply(&l, &r, if scalar { 1 } else { rows })?,
                    scalar,
                ))
            }
            Node::Call(f, args) => {
                let args = args.iter().map(|a| a.eval(cols, rows));
                let args = args.collect::<ArrowResult<Vec<Val>>>()?;
                let scalar = args.iter().all(|a| a.1);
                Ok(Val(f.apply(&args, if scalar { 1 } else { rows })?, scalar))
            }
        }
    }

    fn is_const(&self) -> bool {
        match self {
            Node::Col(_) => false,
            Node::Lit(_) => true,
            Node::Unary(_, n) => n.is_const(),
            Node::Bin(l, _, r) => l.is_const() && r.is_const(),
            Node::Call(_, args) => args.iter().all(Node::is_const),
        }
    }
}

impl Unary {
    fn apply(&self, a: &dyn Array) -> ArrowResult<ArrayRef> {
        Ok(match self {
            Unary::Cast(ty, safe) => cast_with_options(a, ty, &cast_options(*safe))?,
            Unary::Neg => numeric::neg(a)?,
            Unary::Not => Arc::new(not(bools(a)?)?),
            Unary::IsNull => Arc::new(is_null(a)?),
            Unary::Is(want) => {
                let is = bools(a)?.iter().map(|v| Some(v == Some(*want)));
                Arc::new(is.collect::<BooleanArray>())
            }
        })
    }
}

impl Kernel {
    /// `rows` is the result's length: 1 when both operands are scalars.
    fn apply(self, l: &Val, r: &Val, rows: usize) -> ArrowResult<ArrayRef> {
        // AND / OR take arrays of equal length, so a scalar operand is repeated.
        let repeat = |v: &Val| -> ArrowResult<BooleanArray> { Ok(spread(bools(&v.0)?, v.1, rows)) };
        Ok(match self {
            Kernel::Cmp(f) | Kernel::Like(f) => Arc::new(f(l, r)?),
            Kernel::Num(f) => f(l, r)?,
            Kernel::Logic(f) => Arc::new(f(&repeat(l)?, &repeat(r)?)?),
        })
    }
}

impl Bound {
    fn lit(a: ArrayRef) -> Self {
        let ty = a.data_type().clone();
        Bound {
            node: Node::Lit(a),
            ty,
        }
    }

    fn is_lit(&self) -> bool {
        matches!(self.node, Node::Lit(_))
    }

    /// Whether this is a literal that converts to `to` and back without change, so it
    /// can be compared in the other side's type (`id = 5` compares as `id`'s type).
    fn exact_in(&self, to: &DataType) -> bool {
        let Node::Lit(a) = &self.node else {
            return false;
        };
        let strict = cast_options(false);
        cast_with_options(a, to, &strict)
            .and_then(|c| cast_with_options(&c, a.data_type(), &strict))
            .and_then(|back| cmp::eq(&back, a))
            .is_ok_and(|same| first(&same) == Some(true))
    }
}

struct Binder<'a> {
    spec: &'a TransformSpec,
    schema: &'a Schema,
}

impl Binder<'_> {
    fn err(&self, reason: impl Display) -> Error {
        Error::invalid_transform(self.spec.label(), reason)
    }

    fn expr(&self, e: &Expr) -> Result<Bound> {
        use comparison::{ilike, like, nilike, nlike};
        let compare = |l: &Expr, f: CmpFn, r: &Expr| self.op(l, Kernel::Cmp(f), r, e);
        match e {
            Expr::Identifier(id) => self.column(id),
            Expr::Nested(inner) => self.expr(inner),
            Expr::Value(v) => self.value(&v.value, e),
            Expr::TypedString(ts) => {
                let text = ts.value.value.clone().into_string();
                let text = text.ok_or_else(|| self.err(format!("expected a string in `{e}`")))?;
                let ty = self.sql_type(&ts.data_type)?;
                self.cast(Bound::lit(Arc::new(StringArray::from(vec![text]))), &ty, e)
            }
            Expr::Cast {
                kind,
                expr,
                data_type,
                format: None,
            } => {
                let safe = matches!(kind, CastKind::TryCast | CastKind::SafeCast);
                let ty = self.sql_type(data_type)?;
                self.unary(Unary::Cast(ty, safe), self.expr(expr)?, e)
            }
            Expr::UnaryOp { op: U::Not, expr } => self.not_if(true, self.bool_expr(expr)?, e),
            Expr::UnaryOp { op: U::Minus, expr } => self.unary(Unary::Neg, self.expr(expr)?, e),
            Expr::BinaryOp { left, op, right } => self.binary(left, op, right, e),
            Expr::IsNull(x) => self.unary(Unary::IsNull, self.expr(x)?, e),
            Expr::IsNotNull(x) => {
                let is_null = self.unary(Unary::IsNull, self.expr(x)?, e)?;
                self.not_if(true, is_null, e)
            }
            Expr::IsTrue(x) | Expr::IsNotTrue(x) | Expr::IsFalse(x) | Expr::IsNotFalse(x) => {
                let want = matches!(e, Expr::IsTrue(_) | Expr::IsNotTrue(_));
                let is = self.unary(Unary::Is(want), self.bool_expr(x)?, e)?;
                self.not_if(matches!(e, Expr::IsNotTrue(_) | Expr::IsNotFalse(_)), is, e)
            }
            Expr::IsDistinctFrom(l, r) => compare(l, cmp::distinct, r),
            Expr::IsNotDistinctFrom(l, r) => compare(l, cmp::not_distinct, r),
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let mut any: Option<Bound> = None;
                for item in list {
                    let eq = compare(expr, cmp::eq, item)?;
                    any = Some(match any {
                        None => eq,
                        Some(acc) => self.bin(acc, Kernel::Logic(or_kleene), eq, e)?,
                    });
                }
                let any = any.ok_or_else(|| self.err(format!("empty IN list in `{e}`")))?;
                self.not_if(*negated, any, e)
            }
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let lo = compare(expr, cmp::gt_eq, low)?;
                let hi = compare(expr, cmp::lt_eq, high)?;
                let both = self.bin(lo, Kernel::Logic(and_kleene), hi, e)?;
                self.not_if(*negated, both, e)
            }
            Expr::Like {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: None,
            } => {
                let f = if *negated { nlike } else { like };
                self.op(expr, Kernel::Like(f), pattern, e)
            }
            Expr::ILike {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: None,
            } => {
                let f = if *negated { nilike } else { ilike };
                self.op(expr, Kernel::Like(f), pattern, e)
            }
            Expr::Function(f) => self.function(f, e),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => self.case(operand.as_deref(), conditions, else_result.as_deref(), e),
            Expr::Trim {
                expr,
                trim_where,
                trim_what,
                trim_characters,
            } => self.trim_expr(
                expr,
                trim_where.as_ref(),
                trim_what.as_deref(),
                trim_characters.as_deref(),
                e,
            ),
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                special,
                shorthand,
            } => self.substring(
                match (shorthand, special) {
                    (true, _) => "function substr()",
                    (_, true) => "function substring()",
                    _ => "SUBSTRING",
                },
                expr,
                substring_from.as_deref(),
                substring_for.as_deref(),
                e,
            ),
            Expr::Extract { field, expr, .. } => self.extract(&field.to_string(), expr, e),
            Expr::Interval(iv) => self.interval(iv, e),
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => {
                Err(self.err(format!("subqueries are not supported: `{e}`")))
            }
            _ => {
                let debug = format!("{e:?}");
                let construct = debug.split(['(', ' ', '{']).next().unwrap_or_default();
                Err(self.err(format!("unsupported SQL ({construct}): `{e}`")))
            }
        }
    }

    fn column(&self, id: &Ident) -> Result<Bound> {
        let (name, fields) = (&id.value, self.schema.fields());
        let same = |i: &usize| fields[*i].name().eq_ignore_ascii_case(name);
        let index = match self.schema.index_of(name) {
            Ok(i) => i,
            // An unquoted name falls back to a case-insensitive match, if it is unambiguous.
            Err(_) if id.quote_style.is_none() && (0..fields.len()).filter(same).count() > 1 => {
                return Err(self.err(format!("column '{name}' is ambiguous; quote it")));
            }
            Err(_) => match (0..fields.len()).find(same) {
                Some(i) if id.quote_style.is_none() => i,
                _ => util::column(self.spec, self.schema, name)?,
            },
        };
        let col = Bound {
            node: Node::Col(index),
            ty: fields[index].data_type().clone(),
        };
        match &col.ty {
            DataType::Dictionary(_, values) => {
                let values = values.as_ref().clone();
                self.cast(col, &values, &Expr::Identifier(id.clone()))
            }
            _ => Ok(col),
        }
    }

    fn value(&self, v: &Value, e: &Expr) -> Result<Bound> {
        let array: ArrayRef = match v {
            Value::Number(n, _) => number(n).ok_or_else(|| self.err(format!("bad number {n}")))?,
            Value::Boolean(b) => Arc::new(BooleanArray::from(vec![*b])),
            Value::Null => Arc::new(NullArray::new(1)),
            other => match other.clone().into_string() {
                Some(s) => Arc::new(StringArray::from(vec![s])),
                None => return Err(self.err(format!("unsupported literal `{e}`"))),
            },
        };
        Ok(Bound::lit(array))
    }

    fn sql_type(&self, t: &S) -> Result<DataType> {
        use DataType::*;
        Ok(match t {
            S::Boolean | S::Bool => Boolean,
            S::TinyInt(_) => Int8,
            S::SmallInt(_) | S::Int2(_) | S::Int16 => Int16,
            S::Int(_) | S::Integer(_) | S::Int4(_) | S::Int32 => Int32,
            S::BigInt(_) | S::Int8(_) | S::Int64 => Int64,
            S::Real | S::Float4 | S::Float32 => Float32,
            S::Float(_) | S::Double(_) | S::DoublePrecision | S::Float8 | S::Float64 => Float64,
            S::Decimal(info) | S::Numeric(info) | S::Dec(info) => {
                let (p, s) = match info {
                    ExactNumberInfo::None => (38, 10),
                    ExactNumberInfo::Precision(p) => (*p, 0),
                    ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
                };
                match (u8::try_from(p), i8::try_from(s)) {
                    (Ok(p @ 1..=38), Ok(s)) if (0..=p as i8).contains(&s) => Decimal128(p, s),
                    _ => return Err(self.err(format!("type {t}: precision is 1 to 38"))),
                }
            }
            S::Char(_) | S::Character(_) | S::Varchar(_) | S::CharVarying(_) => Utf8,
            S::CharacterVarying(_) | S::Nvarchar(_) | S::Text | S::String(_) => Utf8,
            S::Date => Date32,
            S::Datetime(_) => Timestamp(TimeUnit::Microsecond, None),
            S::Timestamp(_, tz) => {
                let utc = matches!(tz, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz);
                Timestamp(TimeUnit::Microsecond, utc.then(|| "+00:00".into()))
            }
            other => return Err(self.err(format!("type {other} is not supported"))),
        })
    }

    /// Wraps `node`, replacing it by its value when it reads no column.
    fn make(&self, node: Node, ty: DataType, e: &Expr) -> Result<Bound> {
        let node = match node.is_const() {
            true => match node.eval(&[], 1) {
                Ok(Val(a, true)) => Node::Lit(a),
                Ok(_) => node,
                Err(x) => return Err(self.err(format!("cannot evaluate `{e}`: {x}"))),
            },
            false => node,
        };
        Ok(Bound { node, ty })
    }

    /// Running the kernel on empty arrays checks it takes the operand types and gives the
    /// result's type.
    fn unary(&self, op: Unary, b: Bound, e: &Expr) -> Result<Bound> {
        let out = op.apply(&new_empty_array(&b.ty));
        let out = out.map_err(|x| self.err(format!("cannot evaluate `{e}`: {x}")))?;
        let node = Node::Unary(op, Box::new(b.node));
        self.make(node, out.data_type().clone(), e)
    }

    fn bin(&self, l: Bound, kernel: Kernel, r: Bound, e: &Expr) -> Result<Bound> {
        let empty = |ty| Val(new_empty_array(ty), false);
        let out = kernel.apply(&empty(&l.ty), &empty(&r.ty), 0);
        let out = out.map_err(|x| self.err(format!("cannot evaluate `{e}`: {x}")))?;
        let node = Node::Bin(Box::new(l.node), kernel, Box::new(r.node));
        self.make(node, out.data_type().clone(), e)
    }

    fn cast(&self, b: Bound, ty: &DataType, e: &Expr) -> Result<Bound> {
        if b.ty == *ty {
            return Ok(b);
        }
        // Arrow (built without chrono-tz) knows only fixed offsets: values without a time
        // zone are read as UTC when the target zone is a name such as "UTC".
        if let DataType::Timestamp(unit, Some(tz)) = ty {
            if !matches!(b.ty, DataType::Timestamp(_, Some(_))) && tz.parse::<Tz>().is_err() {
                let b = self.cast(b, &DataType::Timestamp(*unit, Some("+00:00".into())), e)?;
                return self.cast(b, ty, e);
            }
        }
        self.unary(Unary::Cast(ty.clone(), false), b, e)
    }

    /// Checks `b` is boolean (a bare NULL counts as a boolean NULL).
    fn boolean(&self, b: Bound, what: &str, e: &Expr) -> Result<Bound> {
        match b.ty {
            DataType::Boolean => Ok(b),
            DataType::Null => self.cast(b, &DataType::Boolean, e),
            ref ty => Err(self.err(format!("{what} is not a boolean expression (it is {ty})"))),
        }
    }

    fn bool_expr(&self, e: &Expr) -> Result<Bound> {
        self.boolean(self.expr(e)?, &format!("`{e}`"), e)
    }

    fn not_if(&self, negated: bool, b: Bound, e: &Expr) -> Result<Bound> {
        if negated {
            self.unary(Unary::Not, b, e)
        } else {
            Ok(b)
        }
    }

    fn binary(&self, l: &Expr, op: &B, r: &Expr, e: &Expr) -> Result<Bound> {
        let kernel = match op {
            B::And | B::Or => {
                let f = if *op == B::And { and_kleene } else { or_kleene };
                return self.bin(self.bool_expr(l)?, Kernel::Logic(f), self.bool_expr(r)?, e);
            }
            B::Plus => Kernel::Num(numeric::add),
            B::Minus => Kernel::Num(numeric::sub),
            B::Multiply => Kernel::Num(numeric::mul),
            B::Divide => Kernel::Num(numeric::div),
            B::Modulo => Kernel::Num(numeric::rem),
            B::Eq => Kernel::Cmp(cmp::eq),
            B::NotEq => Kernel::Cmp(cmp::neq),
            B::Lt => Kernel::Cmp(cmp::lt),
            B::LtEq => Kernel::Cmp(cmp::lt_eq),
            B::Gt => Kernel::Cmp(cmp::gt),
            B::GtEq => Kernel::Cmp(cmp::gt_eq),
            B::PGRegexMatch | B::PGRegexIMatch | B::PGRegexNotMatch | B::PGRegexNotIMatch => {
                let flags = match op {
                    B::PGRegexIMatch | B::PGRegexNotIMatch => "i",
                    _ => "",
                };
                let negated = matches!(op, B::PGRegexNotMatch | B::PGRegexNotIMatch);
                return self.regex(&format!("operator {op}"), l, r, flags, negated, e);
            }
            _ => return Err(self.err(format!("operator {op} is not supported in `{e}`"))),
        };
        self.op(l, kernel, r, e)
    }

    /// A comparison, LIKE or arithmetic, with its operands coerced.
    fn op(&self, l: &Expr, kernel: Kernel, r: &Expr, e: &Expr) -> Result<Bound> {
        let (l, r) = (self.expr(l)?, self.expr(r)?);
        let not_string = |b: &&Bound| !is_string(&b.ty) && b.ty != DataType::Null;
        if let (Kernel::Like(_), Some(b)) = (kernel, [&l, &r].into_iter().find(not_string)) {
            return Err(self.err(format!("LIKE needs strings, not {}, in `{e}`", b.ty)));
        }
        let interval = |b: &Bound| matches!(b.ty, DataType::Interval(_));
        if matches!(kernel, Kernel::Num(_)) && (interval(&l) || interval(&r)) {
            // Date and timestamp arithmetic: arrow's kernels take the types as they are.
            let l = self.with_interval(l, &r, e)?;
            let r = self.with_interval(r, &l, e)?;
            return self.bin(l, kernel, r, e);
        }
        let (l, r) = self.coerce(l, r, !matches!(kernel, Kernel::Num(_)), e)?;
        self.bin(l, kernel, r, e)
    }

    /// Casts the operands of a comparison (`cmp`) or of arithmetic to types the kernel
    /// takes, following SQL's implicit conversions.
    fn coerce(&self, l: Bound, r: Bound, cmp: bool, e: &Expr) -> Result<(Bound, Bound)> {
        use DataType::*;
        let (lt, rt) = (l.ty.clone(), r.ty.clone());
        let numeric = lt.is_numeric() && rt.is_numeric();
        let datetime = is_datetime(&lt) && is_datetime(&rt);
        let t = if lt == rt {
            if lt != Null {
                return Ok((l, r));
            }
            Int64
        } else if rt == Null || (is_string(&rt) && r.is_lit() && !is_string(&lt)) {
            lt
        } else if lt == Null || (is_string(&lt) && l.is_lit() && !is_string(&rt)) {
            rt
        } else if is_string(&lt) && is_string(&rt) {
            [Utf8View, LargeUtf8]
                .into_iter()
                .find(|t| *t == lt || *t == rt)
                .unwrap_or(Utf8)
        } else if cmp && (numeric || datetime) && r.exact_in(&lt) {
            lt
        } else if cmp && (numeric || datetime) && l.exact_in(&rt) {
            rt
        } else if numeric {
            let (tl, tr) = numeric_types(&lt, &rt, cmp);
            return Ok((self.cast(l, &tl, e)?, self.cast(r, &tr, e)?));
        } else if datetime {
            match (&lt, &rt) {
                (Timestamp(u1, z1), Timestamp(u2, z2)) => {
                    Timestamp(*u1.max(u2), z1.clone().or(z2.clone()))
                }
                (Timestamp(..), _) => lt,
                (_, Timestamp(..)) => rt,
                _ => Date64,
            }
        } else {
            return Err(self.err(format!("incompatible types {lt} and {rt} in `{e}`")));
        };
        Ok((self.cast(l, &t, e)?, self.cast(r, &t, e)?))
    }
}

fn is_datetime(t: &DataType) -> bool {
    use DataType::*;
    matches!(t, Date32 | Date64 | Timestamp(..))
}

/// Numeric operand types: any float makes both Float64; a decimal makes both decimals
/// (comparisons share one precision and scale, arithmetic keeps each operand's and lets
/// the kernel derive the result's); integers widen to Int64 (UInt64 if both unsigned).
fn numeric_types(l: &DataType, r: &DataType, cmp: bool) -> (DataType, DataType) {
    use DataType::*;
    if l.is_floating() || r.is_floating() {
        return (Float64, Float64);
    }
    // UInt64 against a signed integer compares exactly as Decimal128(20, 0).
    let mixed = matches!((l, r), (UInt64, t) | (t, UInt64) if t.is_signed_integer());
    let ((p1, s1), (p2, s2)) = match (digits(l), digits(r)) {
        (Some(a), Some(b)) if !l.is_integer() || !r.is_integer() || mixed => (a, b),
        _ if l.is_unsigned_integer() && r.is_unsigned_integer() => return (UInt64, UInt64),
        _ => return (Int64, Int64),
    };
    let wide = matches!(l, Decimal256(..)) || matches!(r, Decimal256(..));
    let dec = |p: i16, s: i16| {
        let p = p.max(s).max(1).min(if wide { 76 } else { 38 }) as u8;
        let s = s.clamp(i8::MIN.into(), i8::MAX.into()) as i8;
        if wide {
            Decimal256(p, s)
        } else {
            Decimal128(p, s)
        }
    };
    if cmp {
        let s = s1.max(s2);
        let t = dec((p1 - s1).max(p2 - s2) + s, s);
        (t.clone(), t)
    } else {
        (dec(p1, s1), dec(p2, s2))
    }
}

/// Precision and scale of a decimal, or of the decimal holding every integer of a type.
fn digits(t: &DataType) -> Option<(i16, i16)> {
    use DataType::*;
    Some(match t {
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) => {
            ((*p).into(), (*s).into())
        }
        Int8 | UInt8 => (3, 0),
        Int16 | UInt16 => (5, 0),
        Int32 | UInt32 => (10, 0),
        Int64 => (19, 0),
        UInt64 => (20, 0),
        _ => return None,
    })
}

/// A numeric literal: Int64 if it fits, an exact Decimal128 if it has a fraction, else Float64.
fn number(text: &str) -> Option<ArrayRef> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Arc::new(Int64Array::from(vec![i])));
    }
    if !text.contains(['e', 'E']) {
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let all = format!("{int}{frac}");
        let precision = all.trim_start_matches('0').len().max(frac.len()).max(1);
        if let (Ok(v), true) = (all.parse::<i128>(), precision <= 38) {
            let a = Decimal128Array::from(vec![v]);
            let a = a.with_precision_and_scale(precision as u8, frac.len() as i8);
            return a.ok().map(|a| Arc::new(a) as ArrayRef);
        }
    }
    let f = text.parse::<f64>().ok()?;
    Some(Arc::new(Float64Array::from(vec![f])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;
    use arrow::compute::cast;
    use arrow::datatypes::Int64Type;
    use ferry_core::Action;

    const AMOUNTS: [DataType; 3] = [
        DataType::Decimal128(10, 2),
        DataType::Float64,
        DataType::Int64,
    ];

    fn spec(clause: &str) -> TransformSpec {
        let options = serde_json::json!({ "clause": clause }).as_object().cloned();
        let (name, action) = (Some("f".to_string()), Action::Filter);
        let options = options.unwrap_or_default();
        TransformSpec {
            name,
            action,
            columns: vec![],
            options,
        }
    }

    /// Space-separated strings, `-` for NULL, cast to `ty`.
    fn col(values: &str, ty: &DataType) -> ArrayRef {
        let strings: StringArray = values.split(' ').map(|v| (v != "-").then_some(v)).collect();
        cast(&strings, ty).unwrap()
    }

    fn ids(n: i64) -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(1..=n))
    }

    /// `amount` is one of [`AMOUNTS`]; its 300.5 is 300 as Int64.
    fn batch(amount: &DataType) -> RecordBatch {
        let days = "2024-01-15 2024-01-31 2024-02-01 2024-02-15 2024-03-01 -";
        RecordBatch::try_from_iter([
            ("id", ids(6)),
            (
                "amount",
                cast(&col("50 150 250 100 - 300.5", &DataType::Float64), amount).unwrap(),
            ),
            ("country", col("DE FR DE DE US -", &DataType::Utf8)),
            (
                "email",
                col("a@x.de - c@y.com d@x.de - f@x.de", &DataType::Utf8),
            ),
            ("day", col(days, &DataType::Date32)),
            ("Qty", Arc::new(Int32Array::from_iter_values(1..=6))),
        ])
        .unwrap()
    }

    fn kept(input: &RecordBatch, clause: &str) -> Vec<i64> {
        let mut f =
            bind(&spec(clause), &input.schema()).unwrap_or_else(|e| panic!("{clause}: {e}"));
        let out = f
            .apply(input.clone())
            .unwrap_or_else(|e| panic!("{clause}: {e}"));
        assert_eq!(out.schema(), input.schema());
        out.column(0).as_primitive::<Int64Type>().values().to_vec()
    }

    fn check(cases: &[(&str, &[i64])]) {
        for amount in &AMOUNTS {
            let input = batch(amount);
            for (clause, ids) in cases {
                assert_eq!(kept(&input, clause), *ids, "{clause} (amount: {amount})");
            }
        }
    }

    #[test]
    fn boolean_logic_and_comparisons() {
        check(&[
            ("amount > 100 AND country = 'DE'", &[3]),
            ("country = 'DE' OR id = 5", &[1, 3, 4, 5]),
            ("NOT (country = 'DE')", &[2, 5]),
            ("NOT (amount > 100)", &[1, 4]),
            ("amount <> 100 and (id < 3 or id != 6)", &[1, 2, 3]),
            ("amount >= 100.5", &[2, 3, 6]),
            ("1 = 1", &[1, 2, 3, 4, 5, 6]),
            ("FALSE", &[]),
            ("ID = 1 OR qty = 2 OR \"Qty\" = 3", &[1, 2, 3]),
        ]);
        // 300.5 must not be truncated to the column's type.
        for (amount, ids) in AMOUNTS.iter().zip([&[6][..], &[6], &[]]) {
            assert_eq!(kept(&batch(amount), "amount = 300.5"), ids, "{amount}");
        }
    }

    #[test]
    fn lists_ranges_patterns_and_nulls() {
        check(&[
            ("id IN (1, 3, 5)", &[1, 3, 5]),
            ("country NOT IN ('DE', 'US')", &[2]),
            ("id NOT IN (1, NULL)", &[]),
            ("amount BETWEEN 100 AND 250", &[2, 3, 4]),
            ("id NOT BETWEEN 2 AND 5", &[1, 6]),
            ("email LIKE '%@x.de'", &[1, 4, 6]),
            ("email NOT LIKE '%@x.de'", &[3]),
            ("country ILIKE 'de'", &[1, 3, 4]),
            ("email IS NULL", &[2, 5]),
            ("email IS NOT NULL AND amount IS NOT NULL", &[1, 3, 4, 6]),
            ("amount > NULL", &[]),
            ("NOT (id = NULL)", &[]),
            ("id = 1 OR NULL", &[1]),
            ("(amount > 100) IS NOT TRUE", &[1, 4, 5]),
            ("(country = 'DE') IS FALSE", &[2, 5]),
            ("country IS DISTINCT FROM 'DE'", &[2, 5, 6]),
        ]);
    }

    #[test]
    fn arithmetic_casts_and_dates() {
        check(&[
            ("amount * 2 > 300", &[3, 6]),
            ("id % 2 = 0", &[2, 4, 6]),
            ("-id < -4", &[5, 6]),
            ("amount / 4.0 >= 62.5", &[3, 6]),
            ("amount - id * 40 <= 10", &[1, 4]),
            ("id + 0.5 > 3 AND qty + 1 < 6", &[3, 4]),
            ("CAST(id AS VARCHAR) = '3'", &[3]),
            ("id::double precision / 4 = 0.75", &[3]),
            ("CAST(day AS TEXT) LIKE '2024-02%'", &[3, 4]),
            ("TRY_CAST(country AS INT) IS NULL", &[1, 2, 3, 4, 5, 6]),
            ("day >= DATE '2024-02-01'", &[3, 4, 5]),
            ("day >= '2024-02-01'", &[3, 4, 5]),
            ("day BETWEEN '2024-01-31' AND '2024-02-15'", &[2, 3, 4]),
            ("day < TIMESTAMP '2024-01-31 12:00:00'", &[1, 2]),
            ("day = TIMESTAMP '2024-01-31 00:00:00'", &[2]),
        ]);
    }

    #[test]
    fn other_column_types() {
        use DataType::*;
        let (ns, utc) = (TimeUnit::Nanosecond, Some("+00:00".into()));
        let t = col("2024-01-01T10:00:00 2024-01-02 -", &Timestamp(ns, utc));
        let input = RecordBatch::try_from_iter([
            ("id", ids(3)),
            (
                "d",
                col("a b -", &Dictionary(Box::new(Int8), Box::new(Utf8))),
            ),
            ("l", col("xa yb xc", &LargeUtf8)),
            ("v", col("xa yb xc", &Utf8View)),
            ("u", col("1 2 18446744073709551615", &UInt64)),
            ("t", cast(&t, &Timestamp(ns, Some("UTC".into()))).unwrap()),
            ("f", col("0.5 1.5 -", &Float32)),
        ])
        .unwrap();
        let cases: [(&str, &[i64]); 14] = [
            ("d = 'b' OR d IS NULL", &[2, 3]),
            ("upper(d) = 'B' OR length(d) IS NULL", &[2, 3]),
            ("EXTRACT(HOUR FROM t) = 10", &[1]),
            ("t + INTERVAL '12 hours' > '2024-01-02'", &[2]),
            ("t - INTERVAL '1 month' < '2023-12-02'", &[1]),
            ("abs(u - 2) = 1 AND round(f) = 1", &[1]),
            (
                "l ~ '^x' AND v !~ 'c$' AND substr(l, 2) = substr(v, 2, 1)",
                &[1],
            ),
            ("l LIKE 'x%' AND v NOT LIKE '%c' AND l = v", &[1]),
            ("u > 1 AND u >= id", &[2, 3]),
            ("u + id > 4", &[3]),
            ("t >= '2024-01-01 12:00:00'", &[2]),
            ("t < TIMESTAMP '2024-01-02 00:00:00'", &[1]),
            ("t < DATE '2024-01-02'", &[1]),
            ("f * 2 = 1 OR f > 1.4", &[1, 2]),
        ];
        for (clause, ids) in cases {
            assert_eq!(kept(&input, clause), ids, "{clause}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let schema = batch(&AMOUNTS[0]).schema();
        for (clause, needle) in [
            (
                "nope > 1 AND id = 1",
                "column 'nope' not found; columns are: id, amount, country",
            ),
            ("\"ID\" = 1", "column 'ID' not found"),
            (
                "amount + 1",
                "clause is not a boolean expression (it is Decimal128(",
            ),
            ("id + 1", "clause is not a boolean expression (it is Int64)"),
            (
                "amount >",
                "clause does not parse: sql parser error: Expected: an expression",
            ),
            ("id = 1 id", "clause does not parse"),
            (
                "country > 5",
                "incompatible types Utf8 and Int64 in `country > 5`",
            ),
            (
                "sqrt(id) > 1",
                "function sqrt() is not supported; functions are: abs, btrim,",
            ),
            ("id IN (SELECT 1)", "subqueries are not supported"),
            ("id = ANY(ARRAY[1])", "unsupported SQL (AnyOp)"),
            (
                "day >= '2024-13-45'",
                "cannot evaluate `day >= '2024-13-45'`",
            ),
            ("id = 'x'", "`id = 'x'`"),
            ("id LIKE '1%'", "LIKE needs strings, not Int64"),
            ("NOT id", "`id` is not a boolean expression"),
            ("1 / 0 = 1", "cannot evaluate `1 / 0`"),
            ("CAST(id AS DECIMAL(50, 2)) > 1", "precision is 1 to 38"),
            (
                "CAST(day AS BOOLEAN)",
                "cannot evaluate `CAST(day AS BOOLEAN)`",
            ),
        ] {
            let e = bind(&spec(clause), &schema)
                .err()
                .map(|e| (e.exit_code(), e.to_string()));
            assert!(
                e.as_ref()
                    .is_some_and(|(code, e)| *code == 2 && e.contains(needle)),
                "{clause}: {e:?}"
            );
        }

        let mut s = spec("id = 1");
        s.options.insert("where".into(), "x".into());
        assert!(bind(&s, &schema).is_err_and(|e| e.to_string().contains("unknown field `where`")));
        let mut s = spec("id = 1");
        s.columns.push("id".into());
        assert!(bind(&s, &schema).is_err_and(|e| e.to_string().contains("takes no 'columns'")));
    }

    /// Strings with spaces, case and a non-ASCII letter, a timestamp and a float.
    fn text_batch(name_type: &DataType) -> RecordBatch {
        let names = ["  Ada ", "BOB", "ÉMILE", "dave  ", "", "x"];
        let names: StringArray = (names.iter().enumerate())
            .map(|(i, n)| (i != 4).then_some(*n))
            .collect();
        let ts = "2024-01-15T10:30:00 2024-02-29T23:00:00 2024-03-31T00:00:00 \
            2023-12-31T12:00:45 - 2024-07-04T08:15:00";
        RecordBatch::try_from_iter([
            ("id", ids(6)),
            ("name", cast(&names, name_type).unwrap()),
            (
                "ts",
                col(ts, &DataType::Timestamp(TimeUnit::Microsecond, None)),
            ),
            ("n", col("-1.5 2.5 -0.4 - 3.14159 -7", &DataType::Float64)),
        ])
        .unwrap()
    }

    #[test]
    fn string_functions() {
        let cases: &[(&str, &[i64])] = &[
            ("lower(name) = 'bob'", &[2]),
            ("LOWER(name) = 'émile'", &[3]),
            ("Upper(name) LIKE '%ADA%'", &[1]),
            ("upper(name) IN ('DAVE  ', 'X')", &[4, 6]),
            ("trim(name) = 'Ada'", &[1]),
            ("ltrim(name) = 'Ada '", &[1]),
            ("rtrim(name) = 'dave'", &[4]),
            ("btrim(name, ' A') = 'da'", &[1]),
            ("TRIM(name) IN ('Ada', 'dave')", &[1, 4]),
            ("TRIM(LEADING ' ' FROM name) = 'Ada '", &[1]),
            ("TRIM(TRAILING 'ev ' FROM name) = 'da'", &[4]),
            ("TRIM(BOTH 'x' FROM name) = ''", &[6]),
            ("length(name) = 5", &[3]),
            ("char_length(name) = 6", &[1, 4]),
            ("CHARACTER_LENGTH(name) < 4", &[2, 6]),
            ("substr(name, 2, 3) = 'MIL'", &[3]),
            ("SUBSTRING(name FROM 3 FOR 2) = 'Ad'", &[1]),
            ("substring(name, 0, 2) = 'B'", &[2]),
            ("substr(name, -5, 7) = 'B'", &[2]),
            ("substr(name, 3) IN ('B', 'ILE')", &[2, 3]),
            ("SUBSTRING(name FOR 2) = 'BO'", &[2]),
            ("substr(name, 10) = ''", &[1, 2, 3, 4, 6]),
            ("substr(name, 2, 0) = ''", &[1, 2, 3, 4, 6]),
            ("upper(substr(trim(name), 1, 1)) IN ('A', 'D')", &[1, 4]),
            ("lower(name) IS NULL", &[5]),
            (
                "length(NULL) IS NULL AND upper(NULL) IS NULL",
                &[1, 2, 3, 4, 5, 6],
            ),
            ("length(trim(name)) = id", &[4]),
            ("lower('ABC') = 'abc' AND id < 3", &[1, 2]),
        ];
        for ty in [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View] {
            let input = text_batch(&ty);
            for (clause, ids) in cases {
                assert_eq!(kept(&input, clause), *ids, "{clause} ({ty})");
            }
        }
    }

    #[test]
    fn numeric_functions_and_coalesce() {
        check(&[
            ("abs(amount - 200) <= 50", &[2, 3]),
            ("abs(-id) = 3", &[3]),
            ("round(amount, -2) = 300", &[3, 6]),
            ("round(amount, 1) = amount", &[1, 2, 3, 4, 6]),
            ("round(amount) IS NULL", &[5]),
            ("coalesce(amount, 0) = 0", &[5]),
            ("COALESCE(amount, -1) < 60", &[1, 5]),
            ("coalesce(email, country) = 'US'", &[5]),
            ("coalesce(email, country, 'none') LIKE '%.de'", &[1, 4, 6]),
            ("coalesce(email, 'zz') = 'zz'", &[2, 5]),
            ("coalesce(NULL, NULL) IS NULL", &[1, 2, 3, 4, 5, 6]),
            ("coalesce(NULL, id) = 2", &[2]),
            ("coalesce(amount) IS NULL", &[5]),
        ]);
        for amount in &AMOUNTS[..2] {
            assert_eq!(kept(&batch(amount), "round(amount) = 301"), [6], "{amount}");
        }
        let input = text_batch(&DataType::Utf8);
        for (clause, ids) in [
            ("abs(n) > 2", &[2, 5, 6][..]),
            ("round(n) = -2", &[1]),
            ("round(n) = 3", &[2, 5]),
            ("round(n, 2) = 3.14", &[5]),
            ("round(n, -1) = -10", &[6]),
            ("round(n) = 0 OR round(n) IS NULL", &[3, 4]),
            ("abs(n) IS NULL", &[4]),
            ("round(id * 7, -1) = 40", &[5, 6]),
        ] {
            assert_eq!(kept(&input, clause), ids, "{clause}");
        }
    }

    #[test]
    fn case_expressions() {
        check(&[
            (
                "CASE WHEN amount > 200 THEN 'big' WHEN amount > 100 THEN 'mid' \
                 ELSE 'small' END = 'mid'",
                &[2],
            ),
            (
                "CASE WHEN amount > 200 THEN 'big' WHEN amount > 100 THEN 'mid' \
                 ELSE 'small' END = 'small'",
                &[1, 4, 5],
            ),
            (
                "CASE country WHEN 'DE' THEN 1 WHEN 'FR' THEN 2 END = 2",
                &[2],
            ),
            ("CASE country WHEN 'DE' THEN 1 END IS NULL", &[2, 5, 6]),
            ("CASE WHEN id > 3 THEN amount ELSE 0 END > 99", &[4, 6]),
            (
                "CASE WHEN country = 'DE' THEN id > 2 ELSE TRUE END",
                &[2, 3, 4, 5, 6],
            ),
            ("CASE WHEN id = 1 THEN NULL ELSE TRUE END", &[2, 3, 4, 5, 6]),
            ("CASE WHEN id < 3 THEN TRUE END", &[1, 2]),
            ("id IN (CASE WHEN TRUE THEN 2 END, abs(-4))", &[2, 4]),
            (
                "CASE WHEN 1 = 2 THEN FALSE ELSE TRUE END",
                &[1, 2, 3, 4, 5, 6],
            ),
            (
                "CASE WHEN email IS NULL THEN upper(country) ELSE lower(email) END ILIKE 'f%'",
                &[2, 6],
            ),
            (
                "CASE id % 3 WHEN 0 THEN 'x' WHEN 1 THEN 'y' END = 'y'",
                &[1, 4],
            ),
        ]);
    }

    #[test]
    fn intervals_and_extract() {
        check(&[
            ("day + INTERVAL '1 day' = DATE '2024-02-01'", &[2]),
            ("day - INTERVAL '1 month' < DATE '2024-01-01'", &[1, 2]),
            ("day + INTERVAL '1' MONTH = '2024-03-01'", &[3]),
            ("INTERVAL '2 days' + day = '2024-02-03'", &[3]),
            (
                "day + INTERVAL '12 hours' > TIMESTAMP '2024-02-15 06:00:00'",
                &[4, 5],
            ),
            ("day + INTERVAL '12 hours' IS NULL", &[6]),
            ("EXTRACT(MONTH FROM day) = 2", &[3, 4]),
            ("extract(dow from day) = 4", &[3, 4]),
            ("EXTRACT(DOY FROM day) = 32", &[3]),
            ("EXTRACT(QUARTER FROM day) = 1", &[1, 2, 3, 4, 5]),
            ("EXTRACT(YEAR FROM day) IS NULL", &[6]),
            (
                "EXTRACT(YEAR FROM day + INTERVAL '11 months') = 2025",
                &[3, 4, 5],
            ),
            ("date_part('day', day) = 15", &[1, 4]),
            ("EXTRACT(DAY FROM DATE '2024-05-06') = id + 1", &[5]),
        ]);
        let input = text_batch(&DataType::Utf8);
        for (clause, ids) in [
            (
                "ts - INTERVAL '2 hours' < TIMESTAMP '2024-01-15 08:30:00'",
                &[4][..],
            ),
            ("ts + INTERVAL '1 day' >= '2024-03-01'", &[2, 3, 6]),
            ("ts - INTERVAL '1 month' < '2024-02-01'", &[1, 2, 4]),
            (
                "ts + INTERVAL '30 minutes' * 2 = '2024-03-01 00:00:00'",
                &[2],
            ),
            ("EXTRACT(HOUR FROM ts) = 23", &[2]),
            ("EXTRACT(SECOND FROM ts) = 45", &[4]),
            ("EXTRACT(MINUTE FROM ts) = 15", &[6]),
            ("EXTRACT(ISODOW FROM ts) = 7", &[3, 4]),
            ("EXTRACT(YEAR FROM ts) < 2024 OR ts IS NULL", &[4, 5]),
        ] {
            assert_eq!(kept(&input, clause), ids, "{clause}");
        }
    }

    #[test]
    fn regular_expressions() {
        check(&[
            ("email ~ '^[a-c]@'", &[1, 3]),
            ("email !~ '[.]de$'", &[3]),
            ("country ~* '^de$'", &[1, 3, 4]),
            ("country !~* 'D'", &[2, 5]),
            ("regexp_like(email, 'X[.]DE', 'i')", &[1, 4, 6]),
            ("REGEXP_LIKE(email, 'y')", &[3]),
            ("regexp_like(email, 'X[.]DE')", &[]),
            ("email ~ NULL", &[]),
            ("upper(email) ~ '^A'", &[1]),
            (
                "CASE WHEN email ~ 'x' THEN 'x' ELSE 'other' END = 'other'",
                &[2, 3, 5],
            ),
        ]);
        for ty in [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View] {
            let input = text_batch(&ty);
            assert_eq!(kept(&input, "name ~* '^\\s*[ab]'"), [1, 2], "{ty}");
            assert_eq!(kept(&input, "name ~ '\\p{Lu}{5}'"), [3], "{ty}");
        }
    }

    #[test]
    fn function_errors_name_the_problem() {
        let schema = batch(&AMOUNTS[0]).schema();
        for (clause, needle) in [
            (
                "sqrt(id) > 1",
                "function sqrt() is not supported; functions are: abs, btrim, char_length, \
                 character_length, coalesce, date_part, length, lower, ltrim, regexp_like, \
                 round, rtrim, substr, substring, trim, upper",
            ),
            ("count(*) > 1", "function count() is not supported"),
            (
                "lower(country, 1) = 'x'",
                "function lower() takes 1 argument, not 2, in `lower(country, 1)`",
            ),
            (
                "ltrim(country, 'a', 'b') = 'x'",
                "function ltrim() takes 1 or 2 arguments, not 3, in `ltrim(country, 'a', 'b')`",
            ),
            (
                "date_part('year') = 1",
                "function date_part() takes 2 arguments, not 1",
            ),
            (
                "coalesce() IS NULL",
                "function coalesce() takes at least 1 argument, not 0",
            ),
            (
                "round(amount, 1, 2) > 1",
                "function round() takes 1 or 2 arguments, not 3",
            ),
            (
                "email ~ '[a-'",
                "invalid regular expression '[a-' in `email ~ '[a-'`: unclosed character class",
            ),
            (
                "regexp_like(email, 'a(')",
                "invalid regular expression 'a(' in `regexp_like(email, 'a(')`: unclosed group",
            ),
            (
                "email ~ country",
                "operator ~ needs a string literal as its pattern, not `country`",
            ),
            (
                "regexp_like(email, 'a', 'q')",
                "function regexp_like() has no flag 'q'",
            ),
            (
                "lower(id) = 'x'",
                "function lower() needs a string, but `id` is Int64, in `lower(id)`",
            ),
            (
                "id ~ '1'",
                "operator ~ needs a string, but `id` is Int64, in `id ~ '1'`",
            ),
            (
                "abs(country) = 1",
                "function abs() needs a number, but `country` is Utf8, in `abs(country)`",
            ),
            (
                "length(day) = 1",
                "function length() needs a string, but `day` is Date32",
            ),
            (
                "EXTRACT(YEAR FROM id) = 1",
                "EXTRACT needs a date or timestamp, but `id` is Int64",
            ),
            (
                "EXTRACT(EPOCH FROM day) > 1",
                "EXTRACT(EPOCH) is not supported; fields are: year, quarter",
            ),
            (
                "round(amount, id) > 1",
                "function round() needs a constant integer, not `id`",
            ),
            (
                "substr(country, id) = 'x'",
                "function substr() needs a constant integer, not `id`",
            ),
            (
                "substr(country, 1, -1) = ''",
                "function substr() needs a length of 0 or more",
            ),
            (
                "lower(nope) = 'x'",
                "column 'nope' not found; columns are: id",
            ),
            (
                "CASE WHEN id THEN 1 END = 1",
                "`id` is not a boolean expression (it is Int64)",
            ),
            (
                "CASE WHEN id = 1 THEN country ELSE 2 END = 'a'",
                "incompatible types Utf8 and Int64 in `CASE WHEN id = 1",
            ),
            (
                "coalesce(country, id) = 'a'",
                "incompatible types Utf8 and Int64 in `coalesce",
            ),
            (
                "day > INTERVAL '2 days'",
                "incompatible types Date32 and Interval(MonthDayNano)",
            ),
            (
                "day + INTERVAL 'soon' > day",
                "cannot evaluate `INTERVAL 'soon'`",
            ),
            (
                "id + INTERVAL '1 day' > 1",
                "cannot evaluate `id + INTERVAL '1 day'`",
            ),
            (
                "lower(DISTINCT country) = 'x'",
                "function lower() takes plain arguments",
            ),
        ] {
            let e = bind(&spec(clause), &schema)
                .err()
                .map(|e| (e.exit_code(), e.to_string()));
            assert!(
                e.as_ref()
                    .is_some_and(|(code, e)| *code == 2 && e.contains(needle) && !e.contains('\n')),
                "{clause}: {e:?}"
            );
        }
    }

    #[test]
    fn evaluation_errors_are_data_errors() {
        let input = batch(&DataType::Float64);
        let mut f = bind(&spec("id / (id - 3) > 0"), &input.schema()).unwrap();
        let e = f
            .apply(input)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let expected = "transformation 'f' (Filter): evaluating the clause: Divide by zero";
        assert!(e.starts_with(expected), "{e}");
    }
}
