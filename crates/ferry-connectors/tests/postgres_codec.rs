//! The binary COPY codec against a real PostgreSQL 15: every supported type is decoded from
//! `COPY … TO STDOUT`, written back with `COPY … FROM STDIN` and compared in SQL.
//!
//! Needs `FERRY_TEST_POSTGRES` (and `PGPASSWORD`): `eval "$(scripts/services env)"`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::*;
use bytes::{Bytes, BytesMut};
use ferry_connectors::postgres::{CodecError, CopyDecoder, CopyEncoder, PgColumn, PgType};
use futures::{SinkExt, StreamExt};
use tokio_postgres::{Client, NoTls};

/// A client of the test server, or None (after saying why) when it is not configured.
async fn connect() -> Option<Client> {
    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES") else {
        let msg = "FERRY_TEST_POSTGRES is not set: run `scripts/services up` and `eval \"$(scripts/services env)\"`";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("note: skipping the PostgreSQL codec test: {msg}");
        return None;
    };
    let mut config: tokio_postgres::Config = url
        .parse()
        .expect("FERRY_TEST_POSTGRES is a postgres:// URL");
    if let Ok(password) = std::env::var("PGPASSWORD") {
        config.password(password);
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .expect("connect to FERRY_TEST_POSTGRES");
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection: {e}");
        }
    });
    Some(client)
}

/// A schema name no other test process uses.
fn unique_schema(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("ferry_codec_{label}_{}_{nanos}_{n}", std::process::id())
}

/// A column as the catalog describes it, with its format_type() text.
struct CatalogColumn {
    column: PgColumn,
    format_type: String,
}

/// The columns of `table` with types resolved the way ferry's source does it.
async fn columns_of(client: &Client, table: &str) -> Vec<CatalogColumn> {
    let rows = client
        .query(
            "SELECT a.attname, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod), a.attnotnull \
             FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table],
        )
        .await
        .unwrap();
    // Preparing a query resolves enum, array and domain OIDs into full types.
    let stmt = client
        .prepare(&format!("SELECT * FROM {table} LIMIT 0"))
        .await
        .unwrap();
    rows.iter()
        .zip(stmt.columns())
        .map(|(row, resolved)| {
            let name: String = row.get(0);
            let format_type: String = row.get(3);
            let ty = PgType::from_pg(resolved.type_(), row.get(2), &format_type)
                .unwrap_or_else(|e| panic!("column {name}: {e}"));
            let nullable = !row.get::<_, bool>(4);
            CatalogColumn {
                column: PgColumn { name, ty, nullable },
                format_type,
            }
        })
        .collect()
}

/// `COPY table TO STDOUT (FORMAT binary)` through a CopyDecoder.
async fn copy_out(
    client: &Client,
    table: &str,
    columns: Vec<PgColumn>,
) -> Result<Vec<RecordBatch>, CodecError> {
    let stream = client
        .copy_out(&format!("COPY {table} TO STDOUT (FORMAT binary)"))
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut decoder = CopyDecoder::new(columns, 2);
    let mut batches = Vec::new();
    while let Some(chunk) = stream.next().await {
        decoder.push(&chunk.unwrap(), &mut batches)?;
    }
    batches.extend(decoder.finish()?);
    Ok(batches)
}

/// `COPY table FROM STDIN (FORMAT binary)` of `batches`, one CopyData message per batch.
async fn copy_in(
    client: &Client,
    table: &str,
    columns: Vec<PgColumn>,
    batches: &[RecordBatch],
) -> u64 {
    let mut encoder = CopyEncoder::new(columns, &batches[0].schema()).unwrap();
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    let mut buf = BytesMut::new();
    CopyEncoder::header(&mut buf);
    for batch in batches {
        encoder.encode(batch, &mut buf).unwrap();
        sink.send(buf.split().freeze()).await.unwrap();
    }
    CopyEncoder::trailer(&mut buf);
    sink.send(buf.split().freeze()).await.unwrap();
    sink.as_mut().finish().await.unwrap()
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

const ALL_TYPES: &str = "
    b boolean, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
    n12 numeric(12,2), n38 numeric(38,10), nu numeric, t text, vc varchar(20), ch char(5),
    by bytea, d date, tm time, ts timestamp, tz timestamptz, iv interval, u uuid,
    js json, jb jsonb, e {s}.mood, ai integer[], at text[], an numeric(10,2)[], ad date[],
    ae {s}.mood[], dom {s}.posint, nn integer NOT NULL";

const ALL_ROWS: &str = r#"
    (true, 32767, 2147483647, 9223372036854775807, 'NaN', 1e308,
     9999999999.99, 9999999999999999999999999999.9999999999, 'NaN', '', 'ü 𝄞 日本 "q" \', 'abc',
     '\x00ff', 'infinity', '24:00:00', 'infinity', 'infinity', '-1 year -2 mons -3 days -04:05:06.000007',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": [1, 2],  "a": null}', '{"b": null, "a": 1}', 'happy',
     '{1,NULL,3}', '{"x",NULL,"y z",""}', '{1.5,NULL,-2}', '{2000-01-01,NULL,infinity}', '{sad,NULL}', 1, 1),
    (false, -32768, -2147483648, -9223372036854775808, '-Infinity', '-Infinity',
     -9999999999.99, -0.0000000001, '-1.50', 'x', 'varying', 'c',
     '', '-infinity', '00:00:00', '-infinity', '-infinity', '0',
     '00000000-0000-0000-0000-000000000000', '[]', '[]', 'sad',
     '{}', '{}', '{}', '{}', '{}', 2147483647, 2),
    (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 3),
    (true, 0, -1, 1, 'Infinity', 'Infinity', 0, 0, '0.0001', 'tab	newline
', 'v', 'abcde',
     '\x', '1900-01-01', '23:59:59.999999', '1900-01-01 00:00:00', '2262-04-11 23:47:16.854775+00',
     '1 mon 2 days 00:00:00.000001', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 'null', '"s"', 'ok',
     '{NULL}', '{NULL}', '{0.01}', '{1999-12-31}', '{ok,happy}', 5, 4),
    (false, 1, 1, 1, 1.5, -0.5, 123.4, 1.2345678901, '12345678901234567890.1200', 'y', 'w', 'z',
     '\x0102', '2262-04-11', '12:00:00', '2000-01-01 00:00:00', '1970-01-01 00:00:00+00',
     '-178000000 years', '12345678-1234-5678-1234-567812345678', '{}', '{}', 'sad',
     '{-2147483648,2147483647}', '{"NULL"}', '{-99999999.99}', '{-infinity}', '{happy}', 7, 5)"#;

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_round_trips_through_copy() {
    let Some(client) = connect().await else {
        return;
    };
    let s = unique_schema("all");
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {s};
             CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
             CREATE DOMAIN {s}.posint AS integer CHECK (VALUE > 0);
             CREATE TABLE {s}.t ({});
             INSERT INTO {s}.t VALUES {ALL_ROWS};
             CREATE TABLE {s}.t2 (LIKE {s}.t);",
            ALL_TYPES.replace("{s}", &s)
        ))
        .await
        .unwrap();
    let table = format!("{s}.t");
    let catalog = columns_of(&client, &table).await;
    let columns: Vec<PgColumn> = catalog.iter().map(|c| c.column.clone()).collect();

    let batches = copy_out(&client, &table, columns.clone()).await.unwrap();
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    let schema = batches[0].schema();
    let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
    check_decoded_values(&all);

    // Back in through COPY FROM, then the tables must print the same, value for value.
    let target: Vec<PgColumn> = columns_of(&client, &format!("{s}.t2"))
        .await
        .into_iter()
        .map(|c| c.column)
        .collect();
    assert_eq!(target, columns);
    assert_eq!(
        copy_in(&client, &format!("{s}.t2"), target, &batches).await,
        5
    );
    let texts = catalog
        .iter()
        .map(|c| format!("{}::text", c.column.name))
        .collect::<Vec<_>>()
        .join(", ");
    let differing = count(
        &client,
        &format!(
            "SELECT count(*) FROM ((SELECT {texts} FROM {s}.t EXCEPT ALL SELECT {texts} FROM {s}.t2) \
             UNION ALL (SELECT {texts} FROM {s}.t2 EXCEPT ALL SELECT {texts} FROM {s}.t)) d"
        ),
    )
    .await;
    assert_eq!(differing, 0);
    assert_eq!(
        count(&client, &format!("SELECT count(*) FROM {s}.t2")).await,
        5
    );

    // Arrow → PostgreSQL types: the metadata recreates every declared type (domains become their base).
    let definitions = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), PgType::from_arrow(f).unwrap().sql()))
        .collect::<Vec<_>>()
        .join(", ");
    client
        .batch_execute(&format!("CREATE TABLE {s}.t3 ({definitions})"))
        .await
        .unwrap();
    let recreated = columns_of(&client, &format!("{s}.t3")).await;
    for (original, new) in catalog.iter().zip(&recreated) {
        let expected = if original.column.name == "dom" {
            "integer"
        } else {
            &original.format_type
        };
        assert_eq!(new.format_type, expected, "column {}", original.column.name);
    }

    client
        .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .await
        .unwrap();
}

/// Spot checks of what ALL_ROWS decodes into.
fn check_decoded_values(all: &RecordBatch) {
    let i2 = column(all, "i2").as_primitive::<Int16Type>();
    assert_eq!(
        (i2.value(0), i2.value(1), i2.is_null(2)),
        (i16::MAX, i16::MIN, true)
    );
    let i8 = column(all, "i8").as_primitive::<Int64Type>();
    assert_eq!((i8.value(0), i8.value(1)), (i64::MAX, i64::MIN));
    let f4 = column(all, "f4").as_primitive::<Float32Type>();
    assert!(f4.value(0).is_nan());
    assert_eq!(
        (f4.value(1), f4.value(3)),
        (f32::NEG_INFINITY, f32::INFINITY)
    );
    assert_eq!(
        column(all, "f8").as_primitive::<Float64Type>().value(0),
        1e308
    );

    let n12 = column(all, "n12");
    assert_eq!(n12.data_type(), &DataType::Decimal128(12, 2));
    let n12 = n12.as_primitive::<Decimal128Type>();
    assert_eq!(
        (n12.value(0), n12.value(1), n12.value(4)),
        (999_999_999_999, -999_999_999_999, 12_340)
    );
    let n38 = column(all, "n38").as_primitive::<Decimal128Type>();
    assert_eq!(
        n38.value(0),
        99_999_999_999_999_999_999_999_999_999_999_999_999
    );
    assert_eq!((n38.value(1), n38.value(4)), (-1, 12_345_678_901));
    let nu = column(all, "nu").as_string::<i32>();
    assert_eq!(
        (nu.value(0), nu.value(1), nu.value(3), nu.value(4)),
        ("NaN", "-1.50", "0.0001", "12345678901234567890.1200")
    );

    let t = column(all, "t").as_string::<i32>();
    assert_eq!(
        (t.value(0), t.value(1), t.value(3)),
        ("", "x", "tab\tnewline\n")
    );
    assert_eq!(
        column(all, "vc").as_string::<i32>().value(0),
        "ü 𝄞 日本 \"q\" \\"
    );
    assert_eq!(column(all, "ch").as_string::<i32>().value(1), "c    ");
    let by = column(all, "by").as_binary::<i32>();
    assert_eq!((by.value(0), by.value(1)), (&[0u8, 255][..], &[][..]));

    let d = column(all, "d").as_primitive::<Date32Type>();
    assert_eq!(
        (d.value(0), d.value(1), d.value(3), d.value(4)),
        (i32::MAX, i32::MIN, -25_567, 106_751)
    );
    let tm = column(all, "tm").as_primitive::<Time64MicrosecondType>();
    assert_eq!((tm.value(0), tm.value(3)), (86_400_000_000, 86_399_999_999));
    let ts = column(all, "ts").as_primitive::<TimestampMicrosecondType>();
    assert_eq!(
        (ts.value(0), ts.value(1), ts.value(3)),
        (i64::MAX, i64::MIN, -2_208_988_800_000_000)
    );
    let tz = column(all, "tz");
    assert_eq!(
        tz.data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let tz = tz.as_primitive::<TimestampMicrosecondType>();
    assert_eq!((tz.value(3), tz.value(4)), (9_223_372_036_854_775, 0));

    let iv = column(all, "iv").as_primitive::<IntervalMonthDayNanoType>();
    let micros = -((4 * 3600 + 5 * 60 + 6) * 1_000_000 + 7);
    assert_eq!(
        iv.value(0),
        IntervalMonthDayNano::new(-14, -3, micros * 1000)
    );
    assert_eq!(iv.value(3), IntervalMonthDayNano::new(1, 2, 1000));
    assert_eq!(
        iv.value(4),
        IntervalMonthDayNano::new(-178_000_000 * 12, 0, 0)
    );

    let u = column(all, "u").as_fixed_size_binary();
    assert_eq!(
        u.value(0),
        [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11
        ]
    );
    assert_eq!(
        column(all, "js").as_string::<i32>().value(0),
        r#"{"b": [1, 2],  "a": null}"#
    );
    assert_eq!(
        column(all, "jb").as_string::<i32>().value(0),
        r#"{"a": 1, "b": null}"#
    );
    assert_eq!(column(all, "e").as_string::<i32>().value(0), "happy");

    let ai = column(all, "ai").as_list::<i32>();
    assert_eq!(
        ai.value(0).as_primitive::<Int32Type>(),
        &Int32Array::from(vec![Some(1), None, Some(3)])
    );
    assert_eq!((ai.value(1).len(), ai.is_null(2)), (0, true));
    let at = column(all, "at").as_list::<i32>();
    assert_eq!(
        at.value(0).as_string::<i32>(),
        &StringArray::from(vec![Some("x"), None, Some("y z"), Some("")])
    );
    let an = column(all, "an").as_list::<i32>();
    let expected = Decimal128Array::from(vec![Some(150), None, Some(-200)])
        .with_precision_and_scale(10, 2)
        .unwrap();
    assert_eq!(an.value(0).as_primitive::<Decimal128Type>(), &expected);
    let ad = column(all, "ad").as_list::<i32>();
    assert_eq!(
        ad.value(0).as_primitive::<Date32Type>(),
        &Date32Array::from(vec![Some(10_957), None, Some(i32::MAX)])
    );
    let ae = column(all, "ae").as_list::<i32>();
    assert_eq!(
        ae.value(3).as_string::<i32>(),
        &StringArray::from(vec!["ok", "happy"])
    );
    assert_eq!(
        column(all, "dom").as_primitive::<Int32Type>().value(1),
        i32::MAX
    );

    let schema = all.schema();
    let nn = schema.field_with_name("nn").unwrap();
    assert!(!nn.is_nullable());
    let e = schema.field_with_name("e").unwrap();
    assert_eq!(
        e.metadata().get("ferry.pg.enum").map(String::as_str),
        Some(r#"["sad","ok","happy"]"#)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nan_in_a_constrained_numeric_names_column_and_row() {
    let Some(client) = connect().await else {
        return;
    };
    let s = unique_schema("nan");
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {s};
             CREATE TABLE {s}.n (a integer, price numeric(12,2));
             INSERT INTO {s}.n VALUES (1, 1.5), (2, NULL), (3, 'NaN');"
        ))
        .await
        .unwrap();
    let columns = columns_of(&client, &format!("{s}.n"))
        .await
        .into_iter()
        .map(|c| c.column)
        .collect();
    let err = copy_out(&client, &format!("{s}.n"), columns)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "column 'price', row 3: NaN cannot be stored as Decimal128(12,2)"
    );
    client
        .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn encoder_converts_and_rejects_values_before_postgres_sees_them() {
    let Some(client) = connect().await else {
        return;
    };
    let s = unique_schema("enc");
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {s};
             CREATE TABLE {s}.e (small smallint, id uuid, amount numeric(10,3), at timestamptz);"
        ))
        .await
        .unwrap();
    let table = format!("{s}.e");
    let columns: Vec<PgColumn> = columns_of(&client, &table)
        .await
        .into_iter()
        .map(|c| c.column)
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("small", DataType::Int64, true),
        Field::new("id", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(20, 2), true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("+02:00".into())),
            true,
        ),
    ]));
    let batch = |small: i64, id: &str| {
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![small])),
            Arc::new(StringArray::from(vec![id])),
            Arc::new(
                Decimal128Array::from(vec![-12_345])
                    .with_precision_and_scale(20, 2)
                    .unwrap(),
            ),
            Arc::new(TimestampNanosecondArray::from(vec![1_000]).with_timezone("+02:00")),
        ];
        RecordBatch::try_new(schema.clone(), arrays).unwrap()
    };
    let good = batch(-32768, "{A0EEBC99-9C0B4EF8-BB6D6BB9-BD380A11}");
    assert_eq!(
        copy_in(&client, &table, columns.clone(), &[good.clone(), good]).await,
        2
    );
    let row = client
        .query_one(&format!("SELECT small, id::text, amount::text, at = 'epoch'::timestamptz + interval '1 microsecond' FROM {table} LIMIT 1"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i16>(0), -32768);
    assert_eq!(
        row.get::<_, String>(1),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert_eq!(row.get::<_, String>(2), "-123.450");
    assert!(row.get::<_, bool>(3));

    let mut encoder = CopyEncoder::new(columns.clone(), &schema).unwrap();
    let mut out = BytesMut::new();
    encoder
        .encode(&batch(1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), &mut out)
        .unwrap();
    assert_eq!(
        encoder
            .encode(
                &batch(40_000, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                &mut out
            )
            .unwrap_err()
            .to_string(),
        "column 'small', row 2: value 40000 is out of range for smallint"
    );
    let mut encoder = CopyEncoder::new(columns.clone(), &schema).unwrap();
    assert_eq!(
        encoder
            .encode(&batch(1, "not-a-uuid"), &mut out)
            .unwrap_err()
            .to_string(),
        "column 'id', row 1: value 'not-a-uuid' is not a valid uuid"
    );
    let text_schema = Schema::new(vec![
        Field::new("small", DataType::Utf8, true),
        Field::new("id", DataType::Utf8, true),
        Field::new("amount", DataType::Utf8, true),
        Field::new("at", DataType::Utf8, true),
    ]);
    assert_eq!(
        CopyEncoder::new(columns, &text_schema)
            .err()
            .unwrap()
            .to_string(),
        "column 'small': cannot write Arrow type Utf8 into PostgreSQL type smallint"
    );
    client
        .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .await
        .unwrap();
}
