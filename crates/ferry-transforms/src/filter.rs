//! Filter: keeps the rows for which a SQL boolean clause is TRUE (NULL drops the row, as in
//! a SQL WHERE).
//!
//! The clause is parsed by `sqlparser` and bound to the input schema as a small tree of
//! [`Node`]s evaluated with Arrow compute kernels. Binding settles every type, inserts the
//! casts SQL coercion needs and folds constant sub-expressions, so a bad literal such as
//! `DATE '2024-13-01'` is reported before any data moves.

use std::fmt::Display;
use std::sync::Arc;

use arrow::array::{
    new_empty_array, Array, ArrayRef, AsArray, BooleanArray, Datum, Decimal128Array, Float64Array,
    Int64Array, NullArray, Scalar, StringArray,
};
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    clause: String,
}

type ArrowResult<T> = std::result::Result<T, ArrowError>;

/// A binary Arrow kernel. `Like` differs from `Cmp` only in requiring string operands.
#[derive(Clone, Copy)]
enum Kernel {
    Cmp(fn(&dyn Datum, &dyn Datum) -> ArrowResult<BooleanArray>),
    Like(fn(&dyn Datum, &dyn Datum) -> ArrowResult<BooleanArray>),
    Num(fn(&dyn Datum, &dyn Datum) -> ArrowResult<ArrayRef>),
}

impl Kernel {
    fn call(self, l: &dyn Datum, r: &dyn Datum) -> ArrowResult<ArrayRef> {
        match self {
            Kernel::Cmp(f) | Kernel::Like(f) => Ok(Arc::new(f(l, r)?)),
            Kernel::Num(f) => f(l, r),
        }
    }
}

/// A bound expression. Literals are one-row [`Scalar`]s, so comparing a column with a
/// literal never materialises a full array.
enum Node {
    Col(usize),
    Lit(Scalar<ArrayRef>),
    /// The flag is TRY_CAST: a value that does not convert becomes NULL, not an error.
    Cast(Box<Node>, DataType, bool),
    Bin(Box<Node>, Kernel, Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    IsNull(Box<Node>),
    /// `IS TRUE` / `IS FALSE`: never NULL.
    Truth(Box<Node>, bool),
}

/// A bound node and the type it evaluates to.
struct Bound {
    node: Node,
    ty: DataType,
}

/// An evaluated node: a scalar (one row standing for every row) or one value per row.
enum Val {
    Scalar(Scalar<ArrayRef>),
    Array(ArrayRef),
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
    let bound = binder.boolean(binder.expr(&expr)?, "clause", &expr)?;
    let (label, node, schema) = (spec.label(), bound.node, input.clone());
    Ok(Box::new(Filter {
        label,
        node,
        schema,
    }))
}

fn parse(sql: &str) -> std::result::Result<Expr, ParserError> {
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
        match self
            .node
            .eval(batch.columns(), batch.num_rows())
            .map_err(fail)?
        {
            Val::Scalar(s) => {
                let keep = bools(s.get().0).map_err(fail)?;
                Ok(if keep.is_valid(0) && keep.value(0) {
                    batch
                } else {
                    batch.slice(0, 0)
                })
            }
            Val::Array(mask) => {
                filter_record_batch(&batch, bools(&mask).map_err(fail)?).map_err(fail)
            }
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
    a.as_boolean_opt().ok_or_else(|| {
        ArrowError::InvalidArgumentError(format!("expected booleans, got {}", a.data_type()))
    })
}

impl Val {
    fn new(a: ArrayRef, scalar: bool) -> Self {
        if scalar && a.len() == 1 {
            Val::Scalar(Scalar::new(a))
        } else {
            Val::Array(a)
        }
    }

    fn datum(&self) -> &dyn Datum {
        match self {
            Val::Scalar(s) => s,
            Val::Array(a) => a,
        }
    }

    /// Applies a per-value function, keeping a scalar a scalar.
    fn map(self, f: impl FnOnce(&dyn Array) -> ArrowResult<ArrayRef>) -> ArrowResult<Self> {
        let (a, scalar) = self.datum().get();
        Ok(Val::new(f(a)?, scalar))
    }

    /// The booleans as `rows` values (a scalar is repeated).
    fn bools(&self, rows: usize) -> ArrowResult<BooleanArray> {
        let (a, scalar) = self.datum().get();
        let b = bools(a)?;
        Ok(match scalar && rows != 1 {
            true => BooleanArray::from(vec![b.is_valid(0).then(|| b.value(0)); rows]),
            false => b.clone(),
        })
    }
}

impl Node {
    fn eval(&self, cols: &[ArrayRef], rows: usize) -> ArrowResult<Val> {
        let both = |l: &Node, r: &Node| -> ArrowResult<(Val, Val, bool)> {
            let (l, r) = (l.eval(cols, rows)?, r.eval(cols, rows)?);
            let scalar = matches!((&l, &r), (Val::Scalar(_), Val::Scalar(_)));
            Ok((l, r, scalar))
        };
        type BoolFn = fn(&BooleanArray, &BooleanArray) -> ArrowResult<BooleanArray>;
        let logic = |l: &Node, r: &Node, f: BoolFn| -> ArrowResult<Val> {
            let (l, r, scalar) = both(l, r)?;
            let n = if scalar { 1 } else { rows };
            Ok(Val::new(Arc::new(f(&l.bools(n)?, &r.bools(n)?)?), scalar))
        };
        Ok(match self {
            Node::Col(i) => {
                Val::Array(cols.get(*i).cloned().ok_or_else(|| {
                    ArrowError::SchemaError(format!("the batch has no column {i}"))
                })?)
            }
            Node::Lit(s) => Val::Scalar(s.clone()),
            Node::Cast(n, ty, safe) => n
                .eval(cols, rows)?
                .map(|a| cast_with_options(a, ty, &cast_options(*safe)))?,
            Node::Bin(l, k, r) => {
                let (l, r, scalar) = both(l, r)?;
                Val::new(k.call(l.datum(), r.datum())?, scalar)
            }
            Node::Neg(n) => n.eval(cols, rows)?.map(numeric::neg)?,
            Node::And(l, r) => logic(l, r, and_kleene)?,
            Node::Or(l, r) => logic(l, r, or_kleene)?,
            Node::Not(n) => n.eval(cols, rows)?.map(|a| Ok(Arc::new(not(bools(a)?)?)))?,
            Node::IsNull(n) => n.eval(cols, rows)?.map(|a| Ok(Arc::new(is_null(a)?)))?,
            Node::Truth(n, want) => n.eval(cols, rows)?.map(|a| {
                let b = bools(a)?.iter().map(|v| Some(v == Some(*want)));
                Ok(Arc::new(b.collect::<BooleanArray>()))
            })?,
        })
    }

    fn is_const(&self) -> bool {
        match self {
            Node::Col(_) => false,
            Node::Lit(_) => true,
            Node::Cast(n, ..) | Node::Neg(n) | Node::Not(n) | Node::IsNull(n) => n.is_const(),
            Node::Truth(n, _) => n.is_const(),
            Node::Bin(l, _, r) | Node::And(l, r) | Node::Or(l, r) => l.is_const() && r.is_const(),
        }
    }
}

impl Bound {
    fn lit(a: ArrayRef) -> Self {
        Bound {
            ty: a.data_type().clone(),
            node: Node::Lit(Scalar::new(a)),
        }
    }

    fn is_lit(&self) -> bool {
        matches!(self.node, Node::Lit(_))
    }

    fn boxed(self) -> Box<Node> {
        Box::new(self.node)
    }

    /// Whether this is a literal that converts to `to` and back without change, so it
    /// can be compared in the other side's type (`id = 5` compares as `id`'s type).
    fn exact_in(&self, to: &DataType) -> bool {
        let Node::Lit(s) = &self.node else {
            return false;
        };
        let a = s.get().0;
        cast_with_options(a, to, &cast_options(false))
            .and_then(|c| cast_with_options(&c, a.data_type(), &cast_options(false)))
            .and_then(|back| cmp::eq(&back, s))
            .is_ok_and(|same| same.value(0))
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
        match e {
            Expr::Identifier(id) => self.column(id),
            Expr::Nested(inner) => self.expr(inner),
            Expr::Value(v) => self.value(&v.value, e),
            Expr::TypedString(ts) => {
                let Some(text) = ts.value.value.clone().into_string() else {
                    return Err(self.err(format!("expected a quoted string in `{e}`")));
                };
                let ty = self.sql_type(&ts.data_type)?;
                self.cast(Bound::lit(Arc::new(StringArray::from(vec![text]))), &ty, e)
            }
            Expr::Cast {
                kind,
                expr,
                data_type,
                format: None,
            } => {
                let ty = self.sql_type(data_type)?;
                let safe = matches!(kind, CastKind::TryCast | CastKind::SafeCast);
                self.make(
                    Node::Cast(self.expr(expr)?.boxed(), ty.clone(), safe),
                    ty,
                    e,
                )
            }
            Expr::UnaryOp { op: U::Not, expr } => self.not_if(true, self.bool_expr(expr)?, e),
            Expr::UnaryOp {
                op: op @ (U::Minus | U::Plus),
                expr,
            } => {
                let inner = self.expr(expr)?;
                let ty = numeric::neg(&new_empty_array(&inner.ty))
                    .map_err(|x| self.err(format!("cannot negate {} in `{e}`: {x}", inner.ty)))?
                    .data_type()
                    .clone();
                match op {
                    U::Minus => self.make(Node::Neg(inner.boxed()), ty, e),
                    _ => Ok(inner),
                }
            }
            Expr::BinaryOp { left, op, right } => self.binary(left, op, right, e),
            Expr::IsNull(x) | Expr::IsNotNull(x) => {
                let is_null = self.pred(Node::IsNull(self.expr(x)?.boxed()), e)?;
                self.not_if(matches!(e, Expr::IsNotNull(_)), is_null, e)
            }
            Expr::IsUnknown(x) | Expr::IsNotUnknown(x) => {
                let is_null = self.pred(Node::IsNull(self.bool_expr(x)?.boxed()), e)?;
                self.not_if(matches!(e, Expr::IsNotUnknown(_)), is_null, e)
            }
            Expr::IsTrue(x) | Expr::IsNotTrue(x) | Expr::IsFalse(x) | Expr::IsNotFalse(x) => {
                let want = matches!(e, Expr::IsTrue(_) | Expr::IsNotTrue(_));
                let truth = self.pred(Node::Truth(self.bool_expr(x)?.boxed(), want), e)?;
                self.not_if(
                    matches!(e, Expr::IsNotTrue(_) | Expr::IsNotFalse(_)),
                    truth,
                    e,
                )
            }
            Expr::IsDistinctFrom(l, r) => self.op(l, Kernel::Cmp(cmp::distinct), r, e),
            Expr::IsNotDistinctFrom(l, r) => self.op(l, Kernel::Cmp(cmp::not_distinct), r, e),
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let mut any: Option<Bound> = None;
                for item in list {
                    let eq = self.op(expr, Kernel::Cmp(cmp::eq), item, e)?;
                    any = Some(match any {
                        None => eq,
                        Some(acc) => self.pred(Node::Or(acc.boxed(), eq.boxed()), e)?,
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
                let lo = self.op(expr, Kernel::Cmp(cmp::gt_eq), low, e)?;
                let hi = self.op(expr, Kernel::Cmp(cmp::lt_eq), high, e)?;
                let both = self.pred(Node::And(lo.boxed(), hi.boxed()), e)?;
                self.not_if(*negated, both, e)
            }
            Expr::Like {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            }
            | Expr::ILike {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => {
                if *any || escape_char.is_some() {
                    return Err(self.err(format!("LIKE ANY and ESCAPE are not supported: `{e}`")));
                }
                let f = match (matches!(e, Expr::ILike { .. }), negated) {
                    (false, false) => like,
                    (false, true) => nlike,
                    (true, false) => ilike,
                    (true, true) => nilike,
                };
                self.op(expr, Kernel::Like(f), pattern, e)
            }
            Expr::Function(f) => Err(self.err(format!("function {}() is not supported", f.name))),
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
        let index = match self.schema.index_of(name) {
            Ok(i) => i,
            // Unquoted names fall back to a case-insensitive match, if it is unambiguous.
            Err(_) if id.quote_style.is_none() => {
                let mut found =
                    (0..fields.len()).filter(|&i| fields[i].name().eq_ignore_ascii_case(name));
                match (found.next(), found.next()) {
                    (Some(i), None) => i,
                    (Some(_), Some(_)) => {
                        return Err(self.err(format!("column '{name}' is ambiguous; quote it")))
                    }
                    _ => util::column(self.spec, self.schema, name)?,
                }
            }
            Err(_) => util::column(self.spec, self.schema, name)?,
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
                    _ => {
                        return Err(self.err(format!("unsupported type {t}: precision is 1 to 38")))
                    }
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

    /// Wraps `node`, replacing it by its value when it has no column references.
    fn make(&self, node: Node, ty: DataType, e: &Expr) -> Result<Bound> {
        let node = match node.is_const() {
            true => match node.eval(&[], 1) {
                Ok(Val::Scalar(s)) => Node::Lit(s),
                Ok(Val::Array(_)) => node,
                Err(x) => return Err(self.err(format!("cannot evaluate `{e}`: {x}"))),
            },
            false => node,
        };
        Ok(Bound { node, ty })
    }

    /// A boolean-valued node.
    fn pred(&self, node: Node, e: &Expr) -> Result<Bound> {
        self.make(node, DataType::Boolean, e)
    }

    fn cast(&self, b: Bound, ty: &DataType, e: &Expr) -> Result<Bound> {
        match b.ty == *ty {
            true => Ok(b),
            false => self.make(Node::Cast(b.boxed(), ty.clone(), false), ty.clone(), e),
        }
    }

    /// Checks `b` is boolean (a bare NULL counts as a boolean NULL).
    fn boolean(&self, b: Bound, what: &str, e: &Expr) -> Result<Bound> {
        match b.ty {
            DataType::Boolean => Ok(b),
            DataType::Null => self.cast(b, &DataType::Boolean, e),
            ref other => Err(self.err(format!(
                "{what} is not a boolean expression (it is {other})"
            ))),
        }
    }

    fn bool_expr(&self, e: &Expr) -> Result<Bound> {
        self.boolean(self.expr(e)?, &format!("`{e}`"), e)
    }

    fn not_if(&self, negated: bool, b: Bound, e: &Expr) -> Result<Bound> {
        match negated {
            true => self.pred(Node::Not(b.boxed()), e),
            false => Ok(b),
        }
    }

    fn binary(&self, l: &Expr, op: &B, r: &Expr, e: &Expr) -> Result<Bound> {
        let kernel = match op {
            B::And | B::Or => {
                let (l, r) = (self.bool_expr(l)?.boxed(), self.bool_expr(r)?.boxed());
                return self.pred(
                    if *op == B::And {
                        Node::And(l, r)
                    } else {
                        Node::Or(l, r)
                    },
                    e,
                );
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
            _ => return Err(self.err(format!("operator {op} is not supported in `{e}`"))),
        };
        self.op(l, kernel, r, e)
    }

    /// Binds a binary operation; running the kernel on empty arrays checks it accepts the
    /// operand types and gives the result's type.
    fn op(&self, l: &Expr, kernel: Kernel, r: &Expr, e: &Expr) -> Result<Bound> {
        let (l, r) = (self.expr(l)?, self.expr(r)?);
        if let Kernel::Like(_) = kernel {
            if let Some(b) = [&l, &r]
                .into_iter()
                .find(|b| !is_string(&b.ty) && b.ty != DataType::Null)
            {
                return Err(self.err(format!("LIKE needs strings, not {}, in `{e}`", b.ty)));
            }
        }
        let (l, r) = self.coerce(l, r, !matches!(kernel, Kernel::Num(_)), e)?;
        let ty = kernel
            .call(&new_empty_array(&l.ty), &new_empty_array(&r.ty))
            .map_err(|x| {
                self.err(format!(
                    "cannot evaluate `{e}` on {} and {}: {x}",
                    l.ty, r.ty
                ))
            })?
            .data_type()
            .clone();
        self.make(Node::Bin(l.boxed(), kernel, r.boxed()), ty, e)
    }

    /// Casts both operands of a comparison (`cmp`) or of arithmetic to types the kernel
    /// accepts, following SQL's implicit conversions.
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
    matches!(
        t,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
    )
}

/// Numeric operand types: any float makes both Float64; a decimal makes both decimals
/// (comparisons share one precision and scale, arithmetic keeps each operand's and lets
/// the kernel derive the result's); integers widen to Int64 (UInt64 if both unsigned).
fn numeric_types(l: &DataType, r: &DataType, cmp: bool) -> (DataType, DataType) {
    use DataType::*;
    if l.is_floating() || r.is_floating() {
        return (Float64, Float64);
    }
    let ((p1, s1), (p2, s2)) = match (digits(l), digits(r)) {
        (Some(a), Some(b)) if !l.is_integer() || !r.is_integer() => (a, b),
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

/// Precision and scale of a decimal, or of the decimal that holds every integer of a type.
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
            let a = Decimal128Array::from(vec![v])
                .with_precision_and_scale(precision as u8, frac.len() as i8);
            return a.ok().map(|a| Arc::new(a) as ArrayRef);
        }
    }
    Some(Arc::new(Float64Array::from(vec![text
        .parse::<f64>()
        .ok()?])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;
    use arrow::compute::cast;
    use arrow::datatypes::Int64Type;
    use ferry_core::Action;

    fn spec(clause: &str) -> TransformSpec {
        let options = serde_json::json!({ "clause": clause });
        let options = options.as_object().cloned().unwrap_or_default();
        TransformSpec {
            name: Some("f".into()),
            action: Action::Filter,
            columns: vec![],
            options,
        }
    }

    /// Space-separated strings, `-` for NULL, cast to `ty`.
    fn col(values: &str, ty: &DataType) -> ArrayRef {
        let strings: StringArray = values.split(' ').map(|v| (v != "-").then_some(v)).collect();
        cast(&strings, ty).unwrap()
    }

    fn batch(amount: &DataType) -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(1..=6)) as ArrayRef,
            ),
            ("amount", col("50 150 250 100 - 300.50", amount)),
            ("country", col("DE FR DE DE US -", &DataType::Utf8)),
            (
                "email",
                col("a@x.de - c@y.com d@x.de - f@x.de", &DataType::Utf8),
            ),
            (
                "day",
                col(
                    "2024-01-15 2024-01-31 2024-02-01 2024-02-15 2024-03-01 -",
                    &DataType::Date32,
                ),
            ),
            ("Qty", Arc::new(Int32Array::from_iter_values(1..=6))),
        ])
        .unwrap()
    }

    fn kept_in(input: RecordBatch, clause: &str) -> Vec<i64> {
        let mut f =
            bind(&spec(clause), &input.schema()).unwrap_or_else(|e| panic!("{clause}: {e}"));
        let out = f
            .apply(input.clone())
            .unwrap_or_else(|e| panic!("{clause}: {e}"));
        assert_eq!(out.schema(), input.schema());
        out.column(0).as_primitive::<Int64Type>().values().to_vec()
    }

    /// Runs `clause` with `amount` as Decimal128(10,2), Float64 and Int64 (300.50 is 300 there).
    fn check(clause: &str, ids: &[i64]) {
        for amount in [
            DataType::Decimal128(10, 2),
            DataType::Float64,
            DataType::Int64,
        ] {
            let ids: Vec<i64> = match amount {
                DataType::Int64 if clause.contains("300.5") => continue,
                _ => ids.to_vec(),
            };
            assert_eq!(
                kept_in(batch(&amount), clause),
                ids,
                "{clause} (amount: {amount})"
            );
        }
    }

    fn check_err(clause: &str, needle: &str) {
        match bind(&spec(clause), &batch(&DataType::Decimal128(10, 2)).schema()) {
            Ok(_) => panic!("{clause}: expected an error"),
            Err(e) => assert!(
                e.exit_code() == 2 && e.to_string().contains(needle),
                "{clause}: {e}"
            ),
        }
    }

    #[test]
    fn boolean_logic_and_comparisons() {
        check("amount > 100 AND country = 'DE'", &[3]);
        check("country = 'DE' OR id = 5", &[1, 3, 4, 5]);
        check("NOT (country = 'DE')", &[2, 5]);
        check("NOT (amount > 100)", &[1, 4]);
        check("amount <> 100 and (id < 3 or id != 6)", &[1, 2, 3]);
        check("amount >= 100.5", &[2, 3, 6]);
        check("amount = 300.5", &[6]);
        check("1 = 1", &[1, 2, 3, 4, 5, 6]);
        check("FALSE", &[]);
        check("ID = 1 OR qty = 2 OR \"Qty\" = 3", &[1, 2, 3]);
    }

    #[test]
    fn lists_ranges_patterns_and_nulls() {
        check("id IN (1, 3, 5)", &[1, 3, 5]);
        check("country NOT IN ('DE', 'US')", &[2]);
        check("id NOT IN (1, NULL)", &[]);
        check("amount BETWEEN 100 AND 250", &[2, 3, 4]);
        check("id NOT BETWEEN 2 AND 5", &[1, 6]);
        check("email LIKE '%@x.de'", &[1, 4, 6]);
        check("email NOT LIKE '%@x.de'", &[3]);
        check("country ILIKE 'de'", &[1, 3, 4]);
        check("email IS NULL", &[2, 5]);
        check("email IS NOT NULL AND amount IS NOT NULL", &[1, 3, 4, 6]);
        check("amount > NULL", &[]);
        check("NOT (id = NULL)", &[]);
        check("id = 1 OR NULL", &[1]);
        check("(amount > 100) IS NOT TRUE", &[1, 4, 5]);
        check("(country = 'DE') IS FALSE", &[2, 5]);
        check("country IS DISTINCT FROM 'DE'", &[2, 5, 6]);
    }

    #[test]
    fn arithmetic_and_casts() {
        check("amount * 2 > 300", &[3, 6]);
        check("id % 2 = 0", &[2, 4, 6]);
        check("-id < -4", &[5, 6]);
        check("amount / 4 >= 62.5", &[3, 6]);
        check("amount - id * 50 <= 0", &[1, 4]);
        check("id + 0.5 > 3 AND qty + 1 < 6", &[3, 4]);
        check("CAST(id AS VARCHAR) = '3'", &[3]);
        check("id::double precision / 4 = 0.75", &[3]);
        check("CAST(day AS TEXT) LIKE '2024-02%'", &[3, 4]);
        check("TRY_CAST(country AS INT) IS NULL", &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn dates() {
        check("day >= DATE '2024-02-01'", &[3, 4, 5]);
        check("day >= '2024-02-01'", &[3, 4, 5]);
        check("day BETWEEN '2024-01-31' AND '2024-02-15'", &[2, 3, 4]);
        check("day < TIMESTAMP '2024-01-31 12:00:00'", &[1, 2]);
        check("day = TIMESTAMP '2024-01-31 00:00:00'", &[2]);
    }

    #[test]
    fn other_column_types() {
        use DataType::*;
        let dict = Dictionary(Box::new(Int8), Box::new(Utf8));
        let ts = Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
        let input = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(1..=3)) as ArrayRef,
            ),
            ("d", col("a b -", &dict)),
            ("l", col("xa yb xc", &LargeUtf8)),
            ("v", col("xa yb xc", &Utf8View)),
            ("u", col("1 2 18446744073709551615", &UInt64)),
            ("t", col("2024-01-01T10:00:00Z 2024-01-02T00:00:00Z -", &ts)),
            ("f", col("0.5 1.5 -", &Float32)),
        ])
        .unwrap();
        let kept = |clause: &str| kept_in(input.clone(), clause);
        assert_eq!(kept("d = 'b' OR d IS NULL"), [2, 3]);
        assert_eq!(kept("l LIKE 'x%' AND v NOT LIKE '%c' AND l = v"), [1]);
        assert_eq!(kept("u > 1 AND u > id"), [2, 3]);
        assert_eq!(kept("t >= '2024-01-01 12:00:00'"), [2]);
        assert_eq!(kept("t < TIMESTAMP '2024-01-02 00:00:00'"), [1]);
        assert_eq!(kept("t < DATE '2024-01-02'"), [1]);
        assert_eq!(kept("f * 2 = 1 OR f > 1.4"), [1, 2]);
    }

    #[test]
    fn errors_name_the_problem() {
        check_err(
            "nope > 1 AND id = 1",
            "column 'nope' not found; columns are: id, amount, country",
        );
        check_err("\"ID\" = 1", "column 'ID' not found");
        check_err(
            "amount + 1",
            "clause is not a boolean expression (it is Decimal128(",
        );
        check_err("id + 1", "clause is not a boolean expression (it is Int64)");
        check_err(
            "amount >",
            "clause does not parse: sql parser error: Expected: an expression",
        );
        check_err("id = 1 id", "clause does not parse");
        check_err(
            "country > 5",
            "incompatible types Utf8 and Int64 in `country > 5`",
        );
        check_err("upper(country) = 'DE'", "function upper() is not supported");
        check_err("id IN (SELECT 1)", "subqueries are not supported");
        check_err("CASE WHEN id = 1 THEN TRUE END", "unsupported SQL (Case)");
        check_err(
            "day >= '2024-13-45'",
            "cannot evaluate `day >= '2024-13-45'`",
        );
        check_err("id = 'x'", "`id = 'x'`");
        check_err("id LIKE '1%'", "LIKE needs strings, not Int64");
        check_err("NOT id", "`id` is not a boolean expression");
        check_err("1 / 0 = 1", "cannot evaluate `1 / 0`");
        check_err("CAST(id AS DECIMAL(50, 2)) > 1", "precision is 1 to 38");

        let schema = batch(&DataType::Float64).schema();
        let mut s = spec("id = 1");
        s.options.insert("where".into(), "x".into());
        assert!(bind(&s, &schema).is_err_and(|e| e.to_string().contains("unknown field `where`")));
        let mut s = spec("id = 1");
        s.columns.push("id".into());
        assert!(bind(&s, &schema).is_err_and(|e| e.to_string().contains("takes no 'columns'")));
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
        assert!(
            e.starts_with("transformation 'f' (Filter): evaluating the clause: Divide by zero"),
            "{e}"
        );
    }
}
