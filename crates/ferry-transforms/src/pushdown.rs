//! Which leading transformations a database can apply in its own query, so fewer rows and
//! columns leave it: `RemoveColumn`, and `Filter` clauses made only of comparisons between
//! columns and literals joined by AND/OR/NOT (plus IS NULL, IN and BETWEEN). Functions,
//! CASE, intervals and regular expressions stay in ferry: a database's may differ.

use arrow::datatypes::{DataType, SchemaRef};
use ferry_core::{Action, Result, TransformSpec};
use sqlparser::ast::{BinaryOperator as B, Expr, UnaryOperator as U, Value};

use crate::bind;

/// What a source's query does in place of the first `consumed` transformations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pushdown {
    /// The columns to read, in order (`None`: all of them).
    pub columns: Option<Vec<String>>,
    /// SQL boolean expressions every row read must satisfy, identifiers quoted.
    pub filters: Vec<String>,
    /// How many leading transformations these replace.
    pub consumed: usize,
}

/// Splits off the leading transformations a SQL source can run itself. Each is bound
/// first, so a misconfigured one fails with its usual message.
pub fn pushdown(specs: &[TransformSpec], input: &SchemaRef) -> Result<Pushdown> {
    let mut out = Pushdown::default();
    let mut schema = input.clone();
    for spec in specs {
        let bound = bind(spec, &schema)?;
        match spec.action {
            Action::RemoveColumn => {
                schema = bound.output_schema();
                out.columns = Some(schema.fields().iter().map(|f| f.name().clone()).collect());
            }
            Action::Filter => {
                let clause = spec
                    .options
                    .get("clause")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                match crate::filter::parse(clause)
                    .ok()
                    .and_then(|e| sql(&e, &schema))
                {
                    Some(text) => out.filters.push(text),
                    None => break,
                }
            }
            _ => break,
        }
        out.consumed += 1;
    }
    Ok(out)
}

/// The clause as PostgreSQL-compatible SQL, or `None` when any part of it might mean
/// something else in the database than in ferry.
fn sql(e: &Expr, schema: &SchemaRef) -> Option<String> {
    match e {
        Expr::Nested(inner) => sql(inner, schema),
        Expr::BinaryOp { left, op, right } => match op {
            B::And | B::Or => Some(format!(
                "({} {op} {})",
                sql(left, schema)?,
                sql(right, schema)?
            )),
            B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq => {
                let (column, ty) = column(left, schema)?;
                Some(format!("({column} {op} {})", literal(right, &ty)?))
            }
            _ => None,
        },
        Expr::UnaryOp { op: U::Not, expr } => Some(format!("(NOT {})", sql(expr, schema)?)),
        Expr::IsNull(x) => Some(format!("({} IS NULL)", column(x, schema)?.0)),
        Expr::IsNotNull(x) => Some(format!("({} IS NOT NULL)", column(x, schema)?.0)),
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let (column, ty) = column(expr, schema)?;
            let items: Option<Vec<String>> = list.iter().map(|v| literal(v, &ty)).collect();
            let not = if *negated { "NOT " } else { "" };
            Some(format!("({column} {not}IN ({}))", items?.join(", ")))
        }
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let (column, ty) = column(expr, schema)?;
            let not = if *negated { "NOT " } else { "" };
            Some(format!(
                "({column} {not}BETWEEN {} AND {})",
                literal(low, &ty)?,
                literal(high, &ty)?
            ))
        }
        _ => None,
    }
}

/// A column named exactly as in the schema, quoted, with its type.
fn column(e: &Expr, schema: &SchemaRef) -> Option<(String, DataType)> {
    let Expr::Identifier(id) = e else { return None };
    let field = schema.field_with_name(&id.value).ok()?;
    Some((
        format!("\"{}\"", field.name().replace('"', "\"\"")),
        field.data_type().clone(),
    ))
}

/// A literal compared with a column of type `ty`: numbers with numeric columns, strings
/// with any (the database casts them to the column's type, as ferry does).
fn literal(e: &Expr, ty: &DataType) -> Option<String> {
    let numeric = ty.is_numeric();
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) if numeric => Some(n.clone()),
            Value::SingleQuotedString(s) if !numeric => {
                Some(format!("'{}'", s.replace('\'', "''")))
            }
            Value::Boolean(b) if *ty == DataType::Boolean => Some(b.to_string()),
            _ => None,
        },
        Expr::UnaryOp { op: U::Minus, expr } if numeric => {
            literal(expr, ty).map(|n| format!("-{n}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("Country", DataType::Utf8, true),
            Field::new("email", DataType::Utf8, true),
        ]))
    }

    fn specs(list: &[&str]) -> Vec<TransformSpec> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn leading_removes_and_simple_filters_are_pushed() {
        let p = pushdown(
            &specs(&[
                "RemoveColumn(email)",
                "Filter(id > 10 AND (\"Country\" IN ('DE', 'FR') OR \"Country\" IS NULL))",
                "Digest(Country)",
                "Filter(id < 5)",
            ]),
            &schema(),
        )
        .unwrap();
        assert_eq!(
            p.columns,
            Some(vec!["id".to_string(), "Country".to_string()])
        );
        assert_eq!(
            p.filters,
            ["((\"id\" > 10) AND ((\"Country\" IN ('DE', 'FR')) OR (\"Country\" IS NULL)))"]
        );
        assert_eq!(
            p.consumed, 2,
            "stops at the first transformation it cannot push"
        );
    }

    #[test]
    fn clauses_that_could_mean_something_else_stay_in_ferry() {
        for clause in [
            "Filter(email LIKE '%@x')",
            "Filter(country = 'DE')", // not the exact column name
            "Filter(email = 5)",      // a number compared with text
            "Filter(id + 1 > 3)",
        ] {
            let p = pushdown(&specs(&[clause]), &schema());
            let p = p.unwrap_or_default();
            assert_eq!(p.consumed, 0, "{clause}");
            assert!(p.filters.is_empty(), "{clause}");
        }
    }

    #[test]
    fn functions_case_intervals_and_regexes_stay_in_ferry() {
        for clause in [
            "Filter(lower(email) = 'x')",
            "Filter(id = abs(-1))",
            "Filter(\"Country\" IN (upper('de'), 'FR'))",
            "Filter(id BETWEEN round(1.5) AND 3)",
            "Filter(CASE WHEN id > 1 THEN TRUE END)",
            "Filter(coalesce(email, 'x') = 'x')",
            "Filter(email ~ '^a')",
            "Filter(regexp_like(email, 'a'))",
            "Filter(SUBSTRING(email FROM 1 FOR 2) = 'ab')",
            "Filter(EXTRACT(YEAR FROM CAST(email AS DATE)) = 2024)",
            "Filter(day + INTERVAL '1 day' > '2024-01-01')",
        ] {
            let mut schema = schema().fields().to_vec();
            schema.push(Arc::new(Field::new("day", DataType::Date32, true)));
            let schema = Arc::new(Schema::new(schema));
            let simple = specs(&["Filter(id > 1)", clause]);
            let p = pushdown(&simple, &schema).unwrap_or_else(|e| panic!("{clause}: {e}"));
            assert_eq!(p.consumed, 1, "{clause}");
            assert_eq!(p.filters, ["(\"id\" > 1)"], "{clause}");
        }
    }

    #[test]
    fn a_misconfigured_transformation_still_fails() {
        let e = pushdown(&specs(&["RemoveColumn(nope)"]), &schema()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
