//! SQLite tables through the engine, on real database files: every supported type through
//! Parquet and back, table to table, to and from PostgreSQL, the load modes, pushdown, a
//! query source, and the errors a user sees.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{copy, options, try_copy, try_copy_with};
use ferry_connectors::sqlite::rusqlite::{types::ValueRef, Connection};
use ferry_connectors::testkit::{unique_name, Remote, TestPostgres};
use ferry_core::TransformSpec;
use ferry_engine::{RecordOptions, Status};

/// A database file, opened directly to set up and inspect.
struct Db(PathBuf);

impl Db {
    fn new(dir: &Path, name: &str) -> Self {
        Self(dir.join(name))
    }

    fn url(&self, table: &str) -> String {
        format!("sqlite://{}?table={table}", self.0.display())
    }

    fn sql(&self, sql: &str) {
        Connection::open(&self.0)
            .unwrap()
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn one(&self, sql: &str) -> String {
        let c = Connection::open(&self.0).unwrap();
        c.query_row(sql, [], |r| Ok(show(r.get_ref(0).unwrap())))
            .unwrap()
    }

    fn text(&self, sql: &str) -> String {
        let c = Connection::open(&self.0).unwrap();
        c.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Every row in rowid order, each value with its storage class.
    fn rows(&self, table: &str) -> Vec<String> {
        let c = Connection::open(&self.0).unwrap();
        let mut s = c
            .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY rowid"))
            .unwrap();
        let n = s.column_count();
        let mut rows = s.query([]).unwrap();
        let mut out = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            let values: Vec<String> = (0..n).map(|i| show(row.get_ref(i).unwrap())).collect();
            out.push(values.join(" | "));
        }
        out
    }

    /// Column names, declared types and NOT NULL, as `PRAGMA table_info` gives them.
    fn columns(&self, table: &str) -> String {
        self.text(&format!(
            "SELECT group_concat(name || ' ' || type || iif(\"notnull\", ' NOT NULL', ''), ', ') FROM pragma_table_info('{table}')"
        ))
    }

    fn tables(&self) -> String {
        self.text("SELECT coalesce(group_concat(name, ','), '') FROM (SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name)")
    }
}

/// Row by row, so a difference shows one row rather than thousands.
fn same_rows(a: &[String], b: &[String]) {
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y);
    }
    assert_eq!(a.len(), b.len());
}

fn show(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "null".into(),
        ValueRef::Integer(i) => format!("integer {i}"),
        ValueRef::Real(f) => format!("real {f:?}"),
        ValueRef::Text(t) => format!("text {}", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("blob {b:02x?}"),
    }
}

/// Every type ferry maps, with NULLs, extremes and special values, and bulk rows.
fn create_all_types(db: &Db) {
    db.sql(
        "CREATE TABLE all_types (
            id INTEGER NOT NULL, b BOOLEAN, i2 SMALLINT, i8 BIGINT, f REAL, dbl DOUBLE PRECISION,
            d12 DECIMAL(12,2), d38 NUMERIC(38,10), t TEXT, vc VARCHAR(20), bl BLOB, d DATE,
            ts TIMESTAMP, tz TIMESTAMPTZ, tm TIME, u UUID, j JSON);
         INSERT INTO all_types VALUES
          (1, 1, -32768, -9223372036854775808, 1.7976931348623157e308, -2.5, '-9999999999.99',
           '1234567890123456789012345678.0123456789', '', 'vc', X'00ff00', '0001-01-01',
           '0001-01-01 00:00:00', '1970-01-01 00:00:00+00:00', '00:00:00',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}'),
          (2, 0, 32767, 9223372036854775807, -1e-300, 3.0, 0.01,
           '-0.0000000001', 'Ünïcødé ✓ 日本', 'zzzzzzzzzzzzzzzzzzzz', X'', '9999-12-31',
           '9999-12-31 23:59:59.999999', '2024-02-29 12:34:56.5+00:00', '23:59:59.999999',
           '00000000-0000-0000-0000-000000000000', '[]'),
          (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL);
         WITH RECURSIVE g(n) AS (SELECT 4 UNION ALL SELECT n + 1 FROM g WHERE n < 5000)
         INSERT INTO all_types (id, b, i8, f, d12, t, bl, d, ts, tm)
          SELECT n, n % 2, n * 1000003, n / 7.0, printf('%.2f', n / 3.0), 'row ' || n || substr('xxxxxxxxxx', 1, n % 10),
                 zeroblob(n % 5), date('2000-01-01', '+' || n || ' days'),
                 datetime(1700000000 + n * 37, 'unixepoch'), time(n * 13, 'unixepoch')
          FROM g;
         ANALYZE;",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_goes_to_parquet_and_back_into_another_file_unchanged() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = Db::new(work.path(), "src.db");
    create_all_types(&src);
    let rec = RecordOptions::default();
    let mut lakes = vec![format!("{}/", work.path().join("lake").display())];
    lakes.extend(Remote::S3.unique("sqlite-lake"));
    for (i, lake) in lakes.iter().enumerate() {
        let out = copy(&src.url("all_types"), lake, &rec, &state).await;
        assert_eq!(out.source.rows, 5000);
        assert_eq!(out.outputs.len(), 1);
        let dst = Db::new(work.path(), &format!("dst{i}.db"));
        let back = copy(lake, &dst.url("all_types"), &rec, &state).await;
        assert_eq!(back.destination.rows, 5000);
        assert_eq!(src.columns("all_types"), dst.columns("all_types"), "{lake}");
        let rows = src.rows("all_types");
        assert_eq!(rows.len(), 5000);
        same_rows(&rows, &dst.rows("all_types"));
        assert_eq!(dst.tables(), "all_types", "no staging table is left");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_is_copied_to_another_file_directly() {
    let work = tempfile::tempdir().unwrap();
    let src = Db::new(work.path(), "src.db");
    create_all_types(&src);
    let dst = Db::new(work.path(), "nested/dir/dst.db");
    copy(
        &src.url("all_types"),
        &dst.url("copied"),
        &RecordOptions::default(),
        &work.path().join("state"),
    )
    .await;
    assert_eq!(src.columns("all_types"), dst.columns("copied"));
    same_rows(&src.rows("all_types"), &dst.rows("copied"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_go_to_postgres_and_back() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = unique_name("sqlite").replace('-', "_");
    pg.sql("ferry", &format!("CREATE SCHEMA {s}"));
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let rec = RecordOptions::default();
    let src = Db::new(work.path(), "src.db");
    src.sql(
        "CREATE TABLE people (id INTEGER NOT NULL, name TEXT, amount DECIMAL(10,2), born DATE,
            seen TIMESTAMP, ok BOOLEAN, photo BLOB, score REAL);
         INSERT INTO people VALUES
          (1, 'ada', 12.5, '1815-12-10', '2024-01-02 03:04:05.123456', 1, X'0001', 0.25),
          (2, 'grace', '-0.01', '1906-12-09', '2024-01-02 03:04:05', 0, X'', -1e300),
          (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    );
    let pg_table = format!("{}?table={s}.people", pg.url("ferry"));
    copy(&src.url("people"), &pg_table, &rec, &state).await;
    assert_eq!(
        pg.sql("ferry", &format!(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
             FROM pg_attribute WHERE attrelid = '{s}.people'::regclass AND attnum > 0"
        )),
        "id bigint, name text, amount numeric(10,2), born date, seen timestamp without time zone, ok boolean, photo bytea, score double precision"
    );
    assert_eq!(
        pg.sql(
            "ferry",
            &format!("SELECT string_agg(concat_ws(',', id, name, amount, born, seen, ok, encode(photo, 'hex'), score), ';' ORDER BY id) FROM {s}.people")
        ),
        "1,ada,12.50,1815-12-10,2024-01-02 03:04:05.123456,t,0001,0.25;2,grace,-0.01,1906-12-09,2024-01-02 03:04:05,f,,-1e+300;3"
    );

    // And back into a new file: the same values, with PostgreSQL's types named for SQLite.
    let back = Db::new(work.path(), "back.db");
    copy(&pg_table, &back.url("people"), &rec, &state).await;
    assert_eq!(
        back.columns("people"),
        "id INTEGER NOT NULL, name TEXT, amount DECIMAL(10,2), born DATE, seen TIMESTAMP, ok BOOLEAN, photo BLOB, score REAL"
    );
    let mut rows = back.rows("people");
    rows.sort();
    assert_eq!(rows, src.rows("people"));
}

#[tokio::test(flavor = "multi_thread")]
async fn overwrite_append_and_upsert_into_an_existing_table() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let rec = RecordOptions::default();
    let src = Db::new(work.path(), "src.db");
    src.sql(
        "CREATE TABLE people (id INTEGER NOT NULL, name TEXT NOT NULL);
         INSERT INTO people VALUES (1, 'ada'), (2, 'grace'), (3, 'edsger');",
    );
    let file = work.path().join("people.parquet").display().to_string();
    copy(&src.url("people"), &file, &rec, &state).await;
    let dst = Db::new(work.path(), "dst.db");
    dst.sql(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, since DATE DEFAULT '2020-01-01');
         INSERT INTO people VALUES (1, 'old', '1999-01-01'), (9, 'other', '1999-01-01');
         CREATE TABLE log (id INTEGER, name TEXT);",
    );
    let rows = |table: &str| {
        dst.one(&format!(
            "SELECT group_concat(id || ':' || name, ',') FROM (SELECT * FROM {table} ORDER BY id)"
        ))
    };

    copy(
        &file,
        &format!("{}&mode=upsert&keyColumns=id", dst.url("people")),
        &rec,
        &state,
    )
    .await;
    assert_eq!(rows("people"), "text 1:ada,2:grace,3:edsger,9:other");
    // Columns the source lacks keep their values on update and their defaults on insert.
    assert_eq!(
        dst.one("SELECT since FROM people WHERE id = 1"),
        "text 1999-01-01"
    );
    assert_eq!(
        dst.one("SELECT since FROM people WHERE id = 2"),
        "text 2020-01-01"
    );

    copy(&file, &dst.url("people"), &rec, &state).await;
    assert_eq!(
        rows("people"),
        "text 1:ada,2:grace,3:edsger",
        "overwrite replaces the rows"
    );

    let log = format!("{}&mode=append", dst.url("log"));
    copy(&file, &log, &rec, &state).await;
    let again = copy(&file, &log, &rec, &state).await;
    assert_eq!(again.skipped, 1, "the same files are not appended twice");
    assert_eq!(rows("log"), "text 1:ada,2:grace,3:edsger");
    let mut opts = options(&state);
    opts.resume = false;
    let fresh = try_copy_with(&file, &log, &rec, &opts).await.unwrap();
    assert_eq!(fresh.status, Status::Succeeded, "{:?}", fresh.error);
    assert_eq!(dst.one("SELECT count(*) FROM log"), "integer 6");

    // Upsert into a new table creates it with the key as primary key.
    copy(
        &file,
        &format!("{}&mode=upsert&keyColumns=id", dst.url("keyed")),
        &rec,
        &state,
    )
    .await;
    assert_eq!(
        dst.one("SELECT group_concat(name) FROM pragma_table_info('keyed') WHERE pk > 0"),
        "text id"
    );
    assert_eq!(dst.tables(), "keyed,log,people");
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_columns_and_filters_run_in_the_database_and_queries_are_read() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = Db::new(work.path(), "src.db");
    src.sql(
        "CREATE TABLE orders (id INTEGER, country TEXT, email TEXT);
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 1000)
         INSERT INTO orders SELECT n, 'c' || (n % 3), 'x' || n || '@example.com' FROM g;",
    );
    let out = work.path().join("orders.csv");
    let rec = RecordOptions {
        transforms: vec![
            "RemoveColumn(email)".parse::<TransformSpec>().unwrap(),
            "Filter(id > 900 AND country = 'c1')".parse().unwrap(),
        ],
        ..RecordOptions::default()
    };
    let report = copy(&src.url("orders"), &out.display().to_string(), &rec, &state).await;
    assert_eq!(
        report.source.rows, 34,
        "the database sent only matching rows"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().next(), Some("id,country"));
    assert_eq!(text.lines().count(), 35);

    let query = format!(
        "sqlite://{}?query=SELECT country, count(*) AS n, max(id) AS top FROM orders GROUP BY country ORDER BY country",
        src.0.display()
    );
    let out = work.path().join("summary.csv");
    copy(
        &query,
        &out.display().to_string(),
        &RecordOptions::default(),
        &state,
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "country,n,top\nc0,333,999\nc1,334,1000\nc2,333,998\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_file_table_column_and_row_and_leave_the_target_alone() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let rec = RecordOptions::default();
    let out = work.path().join("x.parquet").display().to_string();

    // A missing file is not created.
    let missing = Db::new(work.path(), "missing.db");
    let e = try_copy(&missing.url("t"), &out, &rec, &state)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.db") && e.contains("not found"), "{e}");
    assert!(!missing.0.exists());

    // Not a database.
    let junk = Db::new(work.path(), "junk.db");
    std::fs::write(&junk.0, vec![7u8; 4096]).unwrap();
    let e = try_copy(&junk.url("t"), &out, &rec, &state)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("junk.db") && e.contains("not an SQLite database"),
        "{e}"
    );

    let src = Db::new(work.path(), "src.db");
    src.sql(
        "CREATE TABLE src (id INTEGER, name TEXT, v REAL);
         INSERT INTO src VALUES (1, 'a', 1.5), (2, NULL, 2.5), (3, 'c', 3.5);
         CREATE TABLE bad (id INTEGER, n INTEGER);
         INSERT INTO bad VALUES (1, 10), (2, 'abc');",
    );
    let e = try_copy(&src.url("nope"), &out, &rec, &state)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("table 'nope'") && e.contains("not found"), "{e}");

    // A value that does not fit its column's declared type: file, table, column, row.
    let report = try_copy(&src.url("bad"), &out, &rec, &state).await.unwrap();
    assert_eq!(report.status, Status::Failed);
    let e = report.error.unwrap();
    assert!(
        e.contains("src.db")
            && e.contains("table=bad")
            && e.contains("column 'n' row 2")
            && e.contains("'abc'"),
        "{e}"
    );

    let dst = Db::new(work.path(), "dst.db");
    dst.sql(
        "CREATE TABLE dst (id INTEGER PRIMARY KEY, name TEXT NOT NULL, v REAL);
         INSERT INTO dst VALUES (7, 'kept', 0);
         CREATE TABLE plain (id INTEGER, name TEXT, v REAL);",
    );
    // A NULL into a NOT NULL column: named with its row; the target is unchanged.
    let report = try_copy(&src.url("src"), &dst.url("dst"), &rec, &state)
        .await
        .unwrap();
    assert_eq!(report.status, Status::Failed);
    let e = report.error.unwrap();
    assert!(
        e.contains("column 'name' row 2") && e.contains("NOT NULL"),
        "{e}"
    );
    assert_eq!(dst.rows("dst"), ["integer 7 | text kept | real 0.0"]);

    // NaN, which SQLite would turn into NULL, is refused.
    let nan = work.path().join("nan.parquet").display().to_string();
    let nan_file = Db::new(work.path(), "nan.db");
    nan_file.sql("CREATE TABLE t (id INTEGER, v REAL)");
    // SQLite has no NaN of its own, so it comes from a Parquet file.
    write_nan_parquet(&nan);
    let report = try_copy(&nan, &nan_file.url("t"), &rec, &state)
        .await
        .unwrap();
    let e = report.error.unwrap_or_default();
    assert!(e.contains("column 'v' row 2") && e.contains("NaN"), "{e}");
    assert_eq!(nan_file.one("SELECT count(*) FROM t"), "integer 0");
    assert_eq!(nan_file.tables(), "t", "the staging table is dropped");

    // A key column the source lacks; a target without a unique key.
    let e = try_copy(
        &src.url("src"),
        &format!("{}&mode=upsert&keyColumns=code", dst.url("plain")),
        &rec,
        &state,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("key column 'code'"), "{e}");
    let e = try_copy(
        &src.url("src"),
        &format!("{}&mode=upsert&keyColumns=id", dst.url("plain")),
        &rec,
        &state,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("primary key or unique index on (id)"), "{e}");

    // A column the target lacks is found before any row moves.
    dst.sql("CREATE TABLE narrow (id INTEGER)");
    let e = try_copy(&src.url("src"), &dst.url("narrow"), &rec, &state)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("column 'name'") && e.contains("narrow"), "{e}");
    assert_eq!(dst.tables(), "dst,narrow,plain", "no staging tables");

    // A failed load into a file that did not exist leaves no file behind.
    let fresh = Db::new(work.path(), "fresh.db");
    let report = try_copy(&nan, &fresh.url("t"), &rec, &state).await.unwrap();
    assert_eq!(report.status, Status::Failed);
    assert!(!fresh.0.exists());
}

/// A Parquet file of (id, v) whose second row's v is NaN.
fn write_nan_parquet(path: &str) {
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("v", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(Float64Array::from(vec![1.0, f64::NAN, 3.0])),
        ],
    )
    .unwrap();
    let mut writer = ferry_formats::open_writer(
        ferry_formats::Format::Parquet,
        &Default::default(),
        schema,
        Box::new(std::fs::File::create(path).unwrap()),
        path,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
}
