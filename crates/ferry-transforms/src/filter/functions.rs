//! The Filter clause's functions, CASE, EXTRACT, intervals and regular expressions: how
//! each binds (arguments counted, typed and, where they must be, constant, once, before
//! any data moves) and the vectorised kernel it runs on every batch.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{new_empty_array, Array, ArrayRef, AsArray, BooleanArray, Scalar};
use arrow::array::{Int32Array, Int64Array, LargeStringArray, StringArray, StringViewArray};
use arrow::compute::cast;
use arrow::compute::is_not_null;
use arrow::compute::kernels::length::length;
use arrow::compute::kernels::substring::substring_by_char;
use arrow::compute::kernels::temporal::{date_part, DatePart};
use arrow::compute::kernels::zip::zip;
use arrow::compute::kernels::{cmp, numeric};
use arrow::datatypes::IntervalMonthDayNanoType as Mdn;
use arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, IntervalUnit, TimeUnit};
use arrow::error::ArrowError;
use ferry_core::Result;
use regex::{Regex, RegexBuilder};
use sqlparser::ast::{CaseWhen, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments};
use sqlparser::ast::{Interval, TrimWhereField, Value};

use super::{is_datetime, ArrowResult, Binder, Bound, Kernel, Node, Val};
use crate::util::is_string;

/// The functions a clause may call, as listed in errors.
const FUNCTIONS: &str = "abs, btrim, char_length, character_length, coalesce, date_part, \
    length, lower, ltrim, regexp_like, round, rtrim, substr, substring, trim, upper";

/// The fields EXTRACT and date_part() take, as listed in errors.
const FIELDS: &str = "year, quarter, month, week, day, hour, minute, second, dow, isodow, \
    doy, isoyear";

/// A function of one or more bound arguments.
pub(super) enum Func {
    Lower,
    Upper,
    /// Removes any of `chars` from the start and/or the end.
    Trim {
        leading: bool,
        trailing: bool,
        chars: Vec<char>,
    },
    /// The 0-based first character and how many characters (`None`: to the end).
    Substr(i64, Option<u64>),
    /// In characters, not bytes.
    CharLength,
    Abs,
    /// Half away from zero, to this many decimal digits (negative: tens, hundreds, ...).
    Round(i32),
    /// `[condition, then, else]`: `else` where the condition is not TRUE.
    Case,
    /// `[a, b]`: `a` where it is not NULL, else `b`.
    Coalesce,
    /// Whether the string matches (the flag negates). Compiled once, at bind.
    Regex(Regex, bool),
    Part(DatePart),
}

impl Func {
    /// `rows` is the result's length: 1 when every argument is a scalar.
    pub(super) fn apply(&self, args: &[Val], rows: usize) -> ArrowResult<ArrayRef> {
        let Some(Val(a, scalar)) = args.first() else {
            return Err(ArrowError::InvalidArgumentError("no arguments".into()));
        };
        let a = a.as_ref();
        Ok(match self {
            Func::Lower => map_str(a, |s| Cow::Owned(s.to_lowercase()))?,
            Func::Upper => map_str(a, |s| Cow::Owned(s.to_uppercase()))?,
            Func::Trim {
                leading,
                trailing,
                chars,
            } => map_str(a, |mut s| {
                if *leading {
                    s = s.trim_start_matches(chars.as_slice());
                }
                if *trailing {
                    s = s.trim_end_matches(chars.as_slice());
                }
                Cow::Borrowed(s)
            })?,
            Func::Substr(start, count) => substr(a, *start, *count)?,
            Func::CharLength => char_length(a)?,
            Func::Abs => abs(a)?,
            Func::Round(digits) => round(a, *digits)?,
            Func::Case | Func::Coalesce => {
                let (mask, then, other) = match (self, args) {
                    (Func::Case, [_, then, other]) => (super::bools(a)?.clone(), then, other),
                    (_, [first, other]) => (is_not_null(a)?, first, other),
                    _ => return Err(ArrowError::InvalidArgumentError("arguments".into())),
                };
                zip(&super::spread(&mask, *scalar, rows), then, other)?
            }
            Func::Regex(re, negated) => {
                let is = |s: &str| re.is_match(s) != *negated;
                Arc::new(match a.data_type() {
                    DataType::Utf8 => BooleanArray::from_unary(a.as_string::<i32>(), is),
                    DataType::LargeUtf8 => BooleanArray::from_unary(a.as_string::<i64>(), is),
                    DataType::Utf8View => BooleanArray::from_unary(a.as_string_view(), is),
                    t => return Err(not_string(t)),
                })
            }
            Func::Part(part) => date_part(a, *part)?,
        })
    }
}

fn not_string(t: &DataType) -> ArrowError {
    ArrowError::InvalidArgumentError(format!("not a string: {t}"))
}

/// Applies `f` to every string, keeping the array's string type and its NULLs.
fn map_str<F>(a: &dyn Array, f: F) -> ArrowResult<ArrayRef>
where
    F: for<'s> Fn(&'s str) -> Cow<'s, str>,
{
    Ok(match a.data_type() {
        DataType::Utf8 => Arc::new(
            a.as_string::<i32>()
                .iter()
                .map(|v| v.map(&f))
                .collect::<StringArray>(),
        ),
        DataType::LargeUtf8 => Arc::new(
            a.as_string::<i64>()
                .iter()
                .map(|v| v.map(&f))
                .collect::<LargeStringArray>(),
        ),
        DataType::Utf8View => Arc::new(
            a.as_string_view()
                .iter()
                .map(|v| v.map(&f))
                .collect::<StringViewArray>(),
        ),
        t => return Err(not_string(t)),
    })
}

fn substr(a: &dyn Array, start: i64, count: Option<u64>) -> ArrowResult<ArrayRef> {
    Ok(match a.data_type() {
        DataType::Utf8 => Arc::new(substring_by_char(a.as_string::<i32>(), start, count)?),
        DataType::LargeUtf8 => Arc::new(substring_by_char(a.as_string::<i64>(), start, count)?),
        _ => {
            let (start, count) = (start as usize, count.map(|n| n as usize));
            map_str(a, |s| {
                let from = s.char_indices().nth(start).map_or(s.len(), |(i, _)| i);
                let rest = &s[from..];
                let to = count.and_then(|n| rest.char_indices().nth(n).map(|(i, _)| i));
                Cow::Borrowed(&rest[..to.unwrap_or(rest.len())])
            })?
        }
    })
}

/// Characters per string: Int32, or Int64 for LargeUtf8 (as arrow's byte `length`).
fn char_length(a: &dyn Array) -> ArrowResult<ArrayRef> {
    let chars = |s: &str| s.chars().count();
    Ok(match a.data_type() {
        DataType::Utf8 if a.as_string::<i32>().is_ascii() => length(a)?,
        DataType::LargeUtf8 if a.as_string::<i64>().is_ascii() => length(a)?,
        DataType::Utf8 => Arc::new(Int32Array::from_unary(a.as_string::<i32>(), |s| {
            chars(s) as i32
        })),
        DataType::LargeUtf8 => Arc::new(Int64Array::from_unary(a.as_string::<i64>(), |s| {
            chars(s) as i64
        })),
        DataType::Utf8View => Arc::new(Int32Array::from_unary(a.as_string_view(), |s| {
            chars(s) as i32
        })),
        t => return Err(not_string(t)),
    })
}

fn abs(a: &dyn Array) -> ArrowResult<ArrayRef> {
    let zero = Scalar::new(cast(&Int64Array::from(vec![0]), a.data_type())?);
    let negative = cmp::lt(&a, &zero)?;
    zip(&negative, &numeric::neg(a)?, &a)
}

fn round(a: &dyn Array, digits: i32) -> ArrowResult<ArrayRef> {
    let overflow = || ArrowError::ComputeError(format!("round() overflows at {digits} digits"));
    Ok(match a.data_type() {
        DataType::Float64 => {
            let scale = 10f64.powi(digits);
            let f = a
                .as_primitive::<Float64Type>()
                .unary::<_, Float64Type>(|v| {
                    // `+ 0.0` makes -0.0 zero, which arrow's comparisons tell apart.
                    let r = (v * scale).round() / scale + 0.0;
                    if r.is_finite() {
                        r
                    } else {
                        v
                    }
                });
            Arc::new(f)
        }
        DataType::Int64 => {
            let ints = a.as_primitive::<Int64Type>();
            let r = ints.try_unary::<_, Int64Type, _>(|v| {
                i64::try_from(round_to(v.into(), -digits)).map_err(|_| overflow())
            });
            Arc::new(r?)
        }
        DataType::Decimal128(p, s) => {
            let drop = i32::from(*s) - digits;
            let d = a.as_primitive::<Decimal128Type>();
            let d = d.unary::<_, Decimal128Type>(|v| round_to(v, drop));
            // Rounding up may need one more digit: 99.5 is 100.
            Arc::new(d.with_precision_and_scale((*p + 1).min(38), *s)?)
        }
        t => {
            return Err(ArrowError::InvalidArgumentError(format!(
                "round() takes no {t}"
            )))
        }
    })
}

/// `v` rounded half away from zero to a multiple of 10^`drop` (unchanged if `drop` <= 0).
fn round_to(v: i128, drop: i32) -> i128 {
    if drop <= 0 {
        return v;
    }
    let Some(unit) = 10i128.checked_pow(drop.unsigned_abs()) else {
        return 0;
    };
    let (q, r) = (v / unit, (v % unit).abs());
    let q = if r >= unit - r { q + v.signum() } else { q };
    q.saturating_mul(unit)
}

/// A literal's text, `Some(None)` for NULL, `None` if `b` is not a string literal.
fn lit_text(b: &Bound) -> Option<Option<String>> {
    let Node::Lit(a) = &b.node else { return None };
    match &b.ty {
        DataType::Null => Some(None),
        t if is_string(t) => {
            let s = cast(a, &DataType::Utf8).ok()?;
            let s = s.as_string::<i32>();
            Some(s.is_valid(0).then(|| s.value(0).to_string()))
        }
        _ => None,
    }
}

impl Binder<'_> {
    /// A function node, its result type found by running it on empty arrays.
    fn call(&self, f: Func, args: Vec<Bound>, e: &Expr) -> Result<Bound> {
        let empty: Vec<Val> = args
            .iter()
            .map(|b| Val(new_empty_array(&b.ty), false))
            .collect();
        let out = f.apply(&empty, 0);
        let out = out.map_err(|x| self.err(format!("cannot evaluate `{e}`: {x}")))?;
        let node = Node::Call(f, args.into_iter().map(|b| b.node).collect());
        self.make(node, out.data_type().clone(), e)
    }

    pub(super) fn function(&self, f: &Function, e: &Expr) -> Result<Bound> {
        let name = f.name.to_string().to_ascii_lowercase();
        if !FUNCTIONS.split(", ").any(|known| known == name) {
            return Err(self.err(format!(
                "function {}() is not supported; functions are: {FUNCTIONS}",
                f.name
            )));
        }
        let args = self.args(f, e)?;
        let n = args.len();
        let arity = |ok: bool, expected: &str| match ok {
            true => Ok(()),
            false => Err(self.err(format!(
                "function {name}() takes {expected}, not {n}, in `{e}`"
            ))),
        };
        let what = format!("function {name}()");
        match name.as_str() {
            "lower" | "upper" => {
                arity(n == 1, "1 argument")?;
                let s = self.string_arg(&what, args[0], e)?;
                let f = if name == "lower" {
                    Func::Lower
                } else {
                    Func::Upper
                };
                self.call(f, vec![s], e)
            }
            "trim" | "btrim" | "ltrim" | "rtrim" => {
                arity(n == 1 || n == 2, "1 or 2 arguments")?;
                let chars = args.get(1).map(|c| self.const_text(&what, c, e));
                let (leading, trailing) = (name != "rtrim", name != "ltrim");
                self.trim(args[0], leading, trailing, chars.transpose()?, e)
            }
            "substr" | "substring" => {
                arity(n == 2 || n == 3, "2 or 3 arguments")?;
                self.substring(&what, args[0], Some(args[1]), args.get(2).copied(), e)
            }
            "length" | "char_length" | "character_length" => {
                arity(n == 1, "1 argument")?;
                let s = self.string_arg(&what, args[0], e)?;
                self.call(Func::CharLength, vec![s], e)
            }
            "coalesce" => {
                arity(n >= 1, "at least 1 argument")?;
                let mut acc = self.expr(args[n - 1])?;
                for a in args[..n - 1].iter().rev() {
                    let (a, rest) = self.coerce(self.expr(a)?, acc, true, e)?;
                    acc = self.call(Func::Coalesce, vec![a, rest], e)?;
                }
                Ok(acc)
            }
            "abs" => {
                arity(n == 1, "1 argument")?;
                let x = self.numeric_arg(&what, args[0], e)?;
                match x.ty.is_unsigned_integer() {
                    true => Ok(x),
                    false => self.call(Func::Abs, vec![x], e),
                }
            }
            "round" => {
                arity(n == 1 || n == 2, "1 or 2 arguments")?;
                let x = self.numeric_arg(&what, args[0], e)?;
                let digits = match args.get(1) {
                    Some(d) => self.const_int(&what, d, e)?.clamp(-60, 60) as i32,
                    None => 0,
                };
                let x = match x.ty {
                    ref t if t.is_floating() => self.cast(x, &DataType::Float64, e)?,
                    ref t if t.is_integer() && digits >= 0 => return Ok(x),
                    ref t if t.is_integer() => self.cast(x, &DataType::Int64, e)?,
                    DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => {
                        self.cast(x, &DataType::Decimal128(p, s), e)?
                    }
                    DataType::Decimal128(..) => x,
                    ref t => {
                        return Err(self.err(format!(
                            "{what} takes Float, integer or Decimal128 numbers, not {t}, in `{e}`"
                        )))
                    }
                };
                self.call(Func::Round(digits), vec![x], e)
            }
            "date_part" => {
                arity(n == 2, "2 arguments")?;
                let field = self.const_text(&what, args[0], e)?;
                self.extract(&field, args[1], e)
            }
            "regexp_like" => {
                arity(n == 2 || n == 3, "2 or 3 arguments")?;
                let flags = args.get(2).map(|f| self.const_text(&what, f, e));
                let flags = flags.transpose()?.unwrap_or_default();
                self.regex(&what, args[0], args[1], &flags, false, e)
            }
            _ => Err(self.err(format!("function {name}() is not supported"))),
        }
    }

    /// The arguments of a plain call: `f(a, b)`, without DISTINCT, named arguments,
    /// FILTER, OVER or the like.
    fn args<'e>(&self, f: &'e Function, e: &Expr) -> Result<Vec<&'e Expr>> {
        let plain = || {
            self.err(format!(
                "function {}() takes plain arguments, in `{e}`",
                f.name
            ))
        };
        let extra = f.filter.is_some()
            || f.over.is_some()
            || f.null_treatment.is_some()
            || !f.within_group.is_empty()
            || !matches!(f.parameters, FunctionArguments::None);
        match &f.args {
            _ if extra => Err(plain()),
            FunctionArguments::None => Ok(vec![]),
            FunctionArguments::List(l)
                if l.duplicate_treatment.is_none() && l.clauses.is_empty() =>
            {
                let arg = |a: &'e FunctionArg| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Ok(x),
                    _ => Err(plain()),
                };
                l.args.iter().map(arg).collect()
            }
            _ => Err(plain()),
        }
    }

    /// A string argument of `what` (a bare NULL is a NULL string).
    fn string_arg(&self, what: &str, x: &Expr, e: &Expr) -> Result<Bound> {
        let b = self.expr(x)?;
        match &b.ty {
            t if is_string(t) => Ok(b),
            DataType::Null => self.cast(b, &DataType::Utf8, e),
            t => Err(self.err(format!("{what} needs a string, but `{x}` is {t}, in `{e}`"))),
        }
    }

    /// A numeric argument of `what` (a bare NULL is a NULL Int64).
    fn numeric_arg(&self, what: &str, x: &Expr, e: &Expr) -> Result<Bound> {
        let b = self.expr(x)?;
        match &b.ty {
            t if t.is_numeric() => Ok(b),
            DataType::Null => self.cast(b, &DataType::Int64, e),
            t => Err(self.err(format!("{what} needs a number, but `{x}` is {t}, in `{e}`"))),
        }
    }

    /// An argument that must be a constant string, such as a pattern or a field name.
    fn const_text(&self, what: &str, x: &Expr, e: &Expr) -> Result<String> {
        match lit_text(&self.expr(x)?) {
            Some(Some(s)) => Ok(s),
            _ => Err(self.err(format!(
                "{what} needs a constant string, not `{x}`, in `{e}`"
            ))),
        }
    }

    /// An argument that must be a constant integer, such as a position or a count.
    fn const_int(&self, what: &str, x: &Expr, e: &Expr) -> Result<i64> {
        let b = self.expr(x)?;
        let value = match (&b.node, b.ty.is_integer()) {
            (Node::Lit(a), true) => cast(a, &DataType::Int64).ok(),
            _ => None,
        };
        let value = value.and_then(|a| {
            let a = a.as_primitive::<Int64Type>();
            a.is_valid(0).then(|| a.value(0))
        });
        value.ok_or_else(|| {
            self.err(format!(
                "{what} needs a constant integer, not `{x}`, in `{e}`"
            ))
        })
    }

    /// `trim` and its kin; `chars` defaults to the space, as in SQL.
    fn trim(
        &self,
        s: &Expr,
        leading: bool,
        trailing: bool,
        chars: Option<String>,
        e: &Expr,
    ) -> Result<Bound> {
        let s = self.string_arg("TRIM", s, e)?;
        let chars = chars.map_or(vec![' '], |c| c.chars().collect());
        let f = Func::Trim {
            leading,
            trailing,
            chars,
        };
        self.call(f, vec![s], e)
    }

    /// `TRIM([BOTH | LEADING | TRAILING] [chars FROM] s)`, or `TRIM(s, chars)`.
    pub(super) fn trim_expr(
        &self,
        s: &Expr,
        side: Option<&TrimWhereField>,
        what: Option<&Expr>,
        characters: Option<&[Expr]>,
        e: &Expr,
    ) -> Result<Bound> {
        let chars = match (what, characters) {
            (Some(c), _) | (None, Some([c])) => Some(self.const_text("TRIM", c, e)?),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(self.err(format!("TRIM takes one set of characters, in `{e}`")))
            }
        };
        let (leading, trailing) = match side {
            Some(TrimWhereField::Leading) => (true, false),
            Some(TrimWhereField::Trailing) => (false, true),
            _ => (true, true),
        };
        self.trim(s, leading, trailing, chars, e)
    }

    /// `SUBSTRING(s FROM start FOR count)` and `substr(s, start, count)`: SQL's 1-based
    /// positions, the window may start before the string (`substr('abc', 0, 2)` is 'a').
    pub(super) fn substring(
        &self,
        what: &str,
        s: &Expr,
        from: Option<&Expr>,
        count: Option<&Expr>,
        e: &Expr,
    ) -> Result<Bound> {
        let s = self.string_arg(what, s, e)?;
        let start = from.map_or(Ok(1), |x| self.const_int(what, x, e))?;
        let end = match count.map(|x| self.const_int(what, x, e)).transpose()? {
            Some(n) if n < 0 => {
                return Err(self.err(format!("{what} needs a length of 0 or more, in `{e}`")))
            }
            n => n.map(|n| start.saturating_add(n)),
        };
        let first = start.max(1);
        let count = end.map(|end| end.saturating_sub(first).max(0) as u64);
        self.call(Func::Substr(first - 1, count), vec![s], e)
    }

    /// `CASE [x] WHEN ... THEN ... [ELSE ...] END`: nested zips, last branch innermost, so
    /// the first TRUE condition wins; no ELSE gives NULL.
    pub(super) fn case(
        &self,
        operand: Option<&Expr>,
        branches: &[CaseWhen],
        other: Option<&Expr>,
        e: &Expr,
    ) -> Result<Bound> {
        let null = || Bound::lit(Arc::new(arrow::array::NullArray::new(1)));
        let mut acc = other.map_or(Ok(null()), |x| self.expr(x))?;
        for w in branches.iter().rev() {
            let cond = match operand {
                Some(x) => self.op(x, Kernel::Cmp(cmp::eq), &w.condition, e)?,
                None => self.bool_expr(&w.condition)?,
            };
            let (then, rest) = self.coerce(self.expr(&w.result)?, acc, true, e)?;
            acc = self.call(Func::Case, vec![cond, then, rest], e)?;
        }
        Ok(acc)
    }

    /// `EXTRACT(field FROM x)` and `date_part('field', x)`.
    pub(super) fn extract(&self, field: &str, x: &Expr, e: &Expr) -> Result<Bound> {
        use DatePart::*;
        let part = match field.to_ascii_lowercase().as_str() {
            "year" | "years" => Year,
            "quarter" => Quarter,
            "month" | "months" => Month,
            "week" => Week,
            "day" | "days" => Day,
            "hour" | "hours" => Hour,
            "minute" | "minutes" => Minute,
            "second" | "seconds" => Second,
            "dow" | "dayofweek" => DayOfWeekSunday0,
            "isodow" => DayOfWeekMonday1,
            "doy" | "dayofyear" => DayOfYear,
            "isoyear" => YearISO,
            _ => {
                return Err(self.err(format!(
                    "EXTRACT({field}) is not supported; fields are: {FIELDS}, in `{e}`"
                )))
            }
        };
        let b = self.expr(x)?;
        let timestamp = DataType::Timestamp(TimeUnit::Microsecond, None);
        let b = match &b.ty {
            DataType::Null => self.cast(b, &timestamp, e)?,
            t if is_string(t) && b.is_lit() => self.cast(b, &timestamp, e)?,
            t if is_datetime(t) => b,
            t => {
                return Err(self.err(format!(
                    "EXTRACT needs a date or timestamp, but `{x}` is {t}, in `{e}`"
                )))
            }
        };
        self.call(Func::Part(part), vec![b], e)
    }

    /// `INTERVAL '3 days'`, `INTERVAL '2' HOUR`: a MonthDayNano literal.
    pub(super) fn interval(&self, iv: &Interval, e: &Expr) -> Result<Bound> {
        let text = match iv.value.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(n.clone()),
                other => other.clone().into_string(),
            },
            _ => None,
        };
        let text = match (text, &iv.leading_field) {
            _ if iv.last_field.is_some() || iv.fractional_seconds_precision.is_some() => None,
            (Some(t), Some(unit)) => Some(format!("{t} {unit}")),
            (t, None) => t,
            _ => None,
        };
        let text = text.ok_or_else(|| {
            self.err(format!(
                "INTERVAL takes a string such as '3 days', not `{e}`"
            ))
        })?;
        let ty = DataType::Interval(IntervalUnit::MonthDayNano);
        let lit = Bound::lit(Arc::new(StringArray::from(vec![text])));
        self.cast(lit, &ty, e)
    }

    /// `date ± interval`: a date stays a date only when the interval is whole days (or
    /// months), as in SQL; else it becomes a timestamp, so the hours are not lost.
    pub(super) fn with_interval(&self, b: Bound, other: &Bound, e: &Expr) -> Result<Bound> {
        let whole_days = match (&other.node, &other.ty) {
            (Node::Lit(a), DataType::Interval(IntervalUnit::MonthDayNano)) => {
                let a = a.as_primitive::<Mdn>();
                a.is_valid(0) && Mdn::to_parts(a.value(0)).2 == 0
            }
            _ => false,
        };
        let timestamp = DataType::Timestamp(TimeUnit::Microsecond, None);
        match b.ty {
            DataType::Date32 | DataType::Date64 if !whole_days => self.cast(b, &timestamp, e),
            DataType::Null => self.cast(b, &timestamp, e),
            _ => Ok(b),
        }
    }

    /// `s ~ 'pattern'` and kin, and `regexp_like(s, 'pattern'[, 'flags'])`: the pattern
    /// is a literal compiled here, once.
    pub(super) fn regex(
        &self,
        what: &str,
        s: &Expr,
        pattern: &Expr,
        flags: &str,
        negated: bool,
        e: &Expr,
    ) -> Result<Bound> {
        let s = self.string_arg(what, s, e)?;
        let text = match lit_text(&self.expr(pattern)?) {
            Some(Some(p)) => p,
            Some(None) => {
                // A NULL pattern matches nothing and fails nothing: NULL.
                let null = BooleanArray::from(vec![None::<bool>]);
                return Ok(Bound::lit(Arc::new(null)));
            }
            None => {
                return Err(self.err(format!(
                    "{what} needs a string literal as its pattern, not `{pattern}`, in `{e}`"
                )))
            }
        };
        let mut re = RegexBuilder::new(&text);
        for flag in flags.chars() {
            match flag {
                'i' => re.case_insensitive(true),
                'c' => re.case_insensitive(false),
                'm' => re.multi_line(true),
                's' | 'n' => re.dot_matches_new_line(true),
                _ => {
                    return Err(self.err(format!(
                        "{what} has no flag '{flag}'; flags are: i, c, m, n, s, in `{e}`"
                    )))
                }
            };
        }
        let re = re.build().map_err(|x| {
            // The parser's message spans lines (pattern, caret, reason): keep the reason.
            let x = x.to_string();
            let reason = x.lines().rev().map(str::trim).find(|l| !l.is_empty());
            let reason = reason.unwrap_or_default().trim_start_matches("error: ");
            self.err(format!(
                "invalid regular expression '{text}' in `{e}`: {reason}"
            ))
        })?;
        self.call(Func::Regex(re, negated), vec![s], e)
    }
}
