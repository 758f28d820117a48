//! MySQL/MariaDB tables through the engine, against the real server `scripts/services up`
//! starts: every supported type through Parquet and back, table to table, to and from
//! PostgreSQL, the load modes, pushdown, and the errors a user sees.

mod common;

use common::{copy, options, try_copy, try_copy_with};
use ferry_connectors::testkit::{unique_name, Remote, TestMysql, TestPostgres};
use ferry_core::TransformSpec;
use ferry_engine::{RecordOptions, Status};

/// A table name no other test uses.
fn table(label: &str) -> String {
    unique_name(label).replace('-', "_")
}

/// Every type ferry maps, with NULLs, extremes and special values, and a few thousand
/// generated rows.
fn create_all_types(my: &TestMysql, t: &str) {
    my.sql(
        "ferry",
        &format!(
            "CREATE TABLE {t} (
               id int PRIMARY KEY, b bool, i1 tinyint, u1 tinyint unsigned, i2 smallint,
               u2 smallint unsigned, i3 mediumint, u3 mediumint unsigned, i4 int,
               u4 int unsigned, i8 bigint, u8 bigint unsigned, d12 decimal(12,2),
               d38 decimal(38,10), d65 decimal(65,30), du decimal(10,3) unsigned, f4 float,
               f8 double, c5 char(5), vc varchar(40), tx text, lt longtext, bn binary(4),
               vb varbinary(10), bl blob, dt date, tm time(6), dtt datetime(6), dt0 datetime,
               ts timestamp(6) NULL, y year, e enum('a','b','c'), st set('x','y'), j json,
               bt bit(10), u uuid);
             INSERT INTO {t} VALUES
              (1, 0, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
               -9999999999.99, -9999999999999999999999999999.9999999999,
               -99999999999999999999999999999999999.999999999999999999999999999999, 0,
               -3.40282e38, -1.7976931348623157e308, '', '', '', '', X'00000000', X'', X'00',
               '1000-01-01', '00:00:00', '1000-01-01 00:00:00', '1000-01-01 00:00:00',
               '1970-01-01 00:00:01', 1901, 'a', '', '[]', 0,
               '00000000-0000-0000-0000-000000000000'),
              (2, 1, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295,
               9223372036854775807, 18446744073709551615, 9999999999.99,
               9999999999999999999999999999.9999999999,
               99999999999999999999999999999999999.999999999999999999999999999999, 9999999.999,
               1.17549e-38, 4.9e-324, 'abcde', REPEAT('z', 40), 'Ünïcødé ✓ 日本語',
               'it''s \"quoted\" \\ back', X'00ff00ff', X'0000010200', X'0000',
               '9999-12-31', '23:59:59.999999', '9999-12-31 23:59:59.999999',
               '9999-12-31 23:59:59', '2038-01-19 03:14:07.999999', 2155, 'c', 'x,y',
               '{{\"a\": [1, 2]}}', b'1111111111', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
              (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
             INSERT INTO {t} (id, i4, d12, f4, f8, vc, dtt, ts, e, bl)
              SELECT seq, seq * 7, seq / 100, seq / 3, seq / 7, MD5(seq),
                     '2024-01-01' + INTERVAL seq SECOND + INTERVAL seq MICROSECOND,
                     '2001-02-03' + INTERVAL seq MINUTE, ELT(1 + seq % 3, 'a', 'b', 'c'),
                     UNHEX(MD5(seq))
              FROM seq_4_to_3000;
             ANALYZE TABLE {t};"
        ),
    );
}

/// Column names and declared types, as the catalog prints them.
fn columns(my: &TestMysql, db: &str, table: &str) -> String {
    my.sql(
        db,
        &format!(
            "SELECT GROUP_CONCAT(CONCAT(COLUMN_NAME, ' ', COLUMN_TYPE, ' ', IS_NULLABLE)
                    ORDER BY ORDINAL_POSITION SEPARATOR ', ')
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = '{table}'"
        ),
    )
}

/// Every row, as the client prints it, ordered by id (floats also as exact doubles).
fn contents(my: &TestMysql, db: &str, table: &str, floats: &[&str]) -> String {
    let extra: String = floats
        .iter()
        .map(|f| format!(", CAST({f} AS DOUBLE)"))
        .collect();
    my.sql(db, &format!("SELECT t.*{extra} FROM {table} t ORDER BY id"))
}

/// Tables whose name holds `ferry` (staging tables) in a database.
fn staging_tables(my: &TestMysql, db: &str, prefix: &str) -> String {
    my.sql(
        db,
        &format!(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}'
             AND TABLE_NAME LIKE '{prefix}%!_!_ferry!_%' ESCAPE '!'"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_goes_to_parquet_and_back_into_another_database_unchanged() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    let t = table("alltypes");
    create_all_types(&my, &t);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    // Through S3 when the service is there, else a local directory.
    let lake = Remote::S3
        .unique("my-lake")
        .unwrap_or_else(|| format!("{}/", work.path().join("lake").display()));
    let rec = RecordOptions::default();

    let out = copy(
        &format!("{}?table={t}", my.url("ferry")),
        &lake,
        &rec,
        &state,
    )
    .await;
    assert_eq!(out.source.rows, 3000);
    let back = copy(
        &lake,
        &format!("{}?table={t}", my.url("ferry_copy")),
        &rec,
        &state,
    )
    .await;
    assert_eq!(back.destination.rows, 3000);

    assert_eq!(columns(&my, "ferry", &t), columns(&my, "ferry_copy", &t));
    let original = contents(&my, "ferry", &t, &["f4"]);
    assert!(original.contains("日本語"), "{original:.200}");
    assert_eq!(original, contents(&my, "ferry_copy", &t, &["f4"]));
    assert_eq!(staging_tables(&my, "ferry_copy", &t), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_is_copied_to_another_database_directly() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    let t = table("direct");
    create_all_types(&my, &t);
    let work = tempfile::tempdir().unwrap();
    copy(
        &format!("{}?table={t}", my.url("ferry")),
        &format!("{}?table={t}", my.url("ferry_copy")),
        &RecordOptions::default(),
        &work.path().join("state"),
    )
    .await;
    assert_eq!(columns(&my, "ferry", &t), columns(&my, "ferry_copy", &t));
    assert_eq!(
        contents(&my, "ferry", &t, &["f4"]),
        contents(&my, "ferry_copy", &t, &["f4"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_go_between_mysql_and_postgres() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let rec = RecordOptions::default();
    let t = table("topg");
    my.sql(
        "ferry",
        &format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, name varchar(20), amount decimal(10,2),
               at datetime(6), ts timestamp(6) NULL, ok bool, d date, raw varbinary(8), big bigint unsigned);
             INSERT INTO {t} VALUES
              (1, 'ada', 12.50, '2024-02-29 12:34:56.789012', '2024-01-01 00:00:00', 1,
               '1000-01-01', X'00ff', 18446744073709551615),
              (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        ),
    );
    pg.sql("ferry_copy", &format!("CREATE SCHEMA {t}"));
    copy(
        &format!("{}?table={t}", my.url("ferry")),
        &format!("{}?table={t}.{t}", pg.url("ferry_copy")),
        &rec,
        &state,
    )
    .await;
    assert_eq!(
        pg.sql(
            "ferry_copy",
            &format!("SELECT id, name, amount, at, ts, ok, d, raw, big FROM {t}.{t} ORDER BY id")
        ),
        "1|ada|12.50|2024-02-29 12:34:56.789012|2024-01-01 00:00:00+00|t|1000-01-01|\\x00ff|18446744073709551615\n2||||||||"
    );

    pg.sql(
        "ferry",
        &format!(
            "CREATE SCHEMA {t};
             CREATE TABLE {t}.back (id bigint PRIMARY KEY, name text, n numeric(10,2),
               ts timestamptz, b boolean, d date, f double precision, by bytea, vc varchar(12));
             INSERT INTO {t}.back VALUES
              (1, 'grace ✓', -3.25, '2020-05-06 07:08:09.123456+00', true, '2020-01-31', 0.1,
               '\\x0001', 'short'),
              (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        ),
    );
    copy(
        &format!("{}?table={t}.back", pg.url("ferry")),
        &format!("{}?table={t}_back", my.url("ferry_copy")),
        &rec,
        &state,
    )
    .await;
    // NaN has no MySQL value: column and row named, no table left behind.
    pg.sql(
        "ferry",
        &format!(
            "CREATE TABLE {t}.nan (id integer, f double precision);
             INSERT INTO {t}.nan VALUES (1, 1.5), (2, 'NaN')"
        ),
    );
    let report = try_copy(
        &format!("{}?table={t}.nan", pg.url("ferry")),
        &format!("{}?table={t}_nan", my.url("ferry_copy")),
        &rec,
        &state,
    )
    .await
    .unwrap();
    let e = report.error.unwrap_or_default();
    assert!(
        e.contains("column 'f', row 2") && e.contains("NaN") && e.contains(&format!("{t}_nan")),
        "{e}"
    );
    assert_eq!(
        my.sql(
            "ferry_copy",
            &format!(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'ferry_copy'
                 AND TABLE_NAME LIKE '{t}!_nan%' ESCAPE '!'"
            )
        ),
        "0"
    );

    let types = columns(&my, "ferry_copy", &format!("{t}_back"));
    assert!(
        types.starts_with("id bigint")
            && types.contains("n decimal(10,2)")
            && types.contains("d date"),
        "{types}"
    );
    assert_eq!(
        my.sql(
            "ferry_copy",
            &format!("SELECT id, name, n, ts, b, d, f, HEX(\"by\"), vc FROM {t}_back ORDER BY id")
        ),
        "1\tgrace ✓\t-3.25\t2020-05-06 07:08:09.123456\t1\t2020-01-31\t0.1\t0001\tshort\n2\tNULL\tNULL\tNULL\tNULL\tNULL\tNULL\tNULL\tNULL"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overwrite_append_and_upsert_into_an_existing_table() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    let t = table("modes");
    my.sql(
        "ferry",
        &format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, name varchar(20) NOT NULL);
             INSERT INTO {t} VALUES (1, 'ada'), (2, 'grace'), (3, 'edsger')"
        ),
    );
    my.sql(
        "ferry_copy",
        &format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, name varchar(20) NOT NULL,
               since date DEFAULT '2020-01-01');
             INSERT INTO {t} VALUES (1, 'old', '1999-01-01'), (9, 'other', '1999-01-01');
             CREATE TABLE {t}_log (id int, name text)"
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let file = work.path().join("people.parquet").display().to_string();
    let rec = RecordOptions::default();
    copy(
        &format!("{}?table={t}", my.url("ferry")),
        &file,
        &rec,
        &state,
    )
    .await;
    let target = |extra: &str| format!("{}?table={t}{extra}", my.url("ferry_copy"));
    let rows = |table: &str| {
        my.sql(
            "ferry_copy",
            &format!("SELECT GROUP_CONCAT(CONCAT(id, ':', name) ORDER BY id) FROM {table}"),
        )
    };

    copy(&file, &target("&mode=upsert&keyColumns=id"), &rec, &state).await;
    assert_eq!(rows(&t), "1:ada,2:grace,3:edsger,9:other");
    // Columns the source lacks keep their defaults on insert and their values on update.
    assert_eq!(
        my.sql("ferry_copy", &format!("SELECT since FROM {t} WHERE id = 1")),
        "1999-01-01"
    );
    assert_eq!(
        my.sql("ferry_copy", &format!("SELECT since FROM {t} WHERE id = 2")),
        "2020-01-01"
    );

    copy(&file, &target(""), &rec, &state).await;
    assert_eq!(
        rows(&t),
        "1:ada,2:grace,3:edsger",
        "overwrite replaces the rows"
    );
    assert!(
        columns(&my, "ferry_copy", &t).contains("since date"),
        "overwrite keeps the table's definition"
    );

    let log = format!("{}?table={t}_log&mode=append", my.url("ferry_copy"));
    copy(&file, &log, &rec, &state).await;
    // The same file into the same table again is skipped, not appended twice...
    let again = copy(&file, &log, &rec, &state).await;
    assert_eq!(again.skipped, 1);
    assert_eq!(rows(&format!("{t}_log")), "1:ada,2:grace,3:edsger");
    // ...unless the user asks for a fresh run.
    let mut opts = options(&state);
    opts.resume = false;
    let fresh = try_copy_with(&file, &log, &rec, &opts).await.unwrap();
    assert_eq!(fresh.status, Status::Succeeded, "{:?}", fresh.error);
    assert_eq!(
        my.sql("ferry_copy", &format!("SELECT COUNT(*) FROM {t}_log")),
        "6"
    );

    // Upsert into a new table creates it with the key as primary key.
    copy(
        &file,
        &target("_new&mode=upsert&keyColumns=id"),
        &rec,
        &state,
    )
    .await;
    assert_eq!(rows(&format!("{t}_new")), "1:ada,2:grace,3:edsger");
    assert_eq!(
        my.sql(
            "ferry_copy",
            &format!(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS
                 WHERE TABLE_SCHEMA = 'ferry_copy' AND TABLE_NAME = '{t}_new' AND INDEX_NAME = 'PRIMARY'"
            )
        ),
        "id"
    );
    assert_eq!(staging_tables(&my, "ferry_copy", &t), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_columns_and_filters_run_in_the_database() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    let t = table("push");
    my.sql(
        "ferry",
        &format!(
            "CREATE TABLE {t} AS SELECT seq AS id, CONCAT('c', seq % 3) AS country,
               MD5(seq) AS email FROM seq_1_to_1000"
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("orders.csv");
    let rec = RecordOptions {
        transforms: vec![
            "RemoveColumn(email)".parse::<TransformSpec>().unwrap(),
            "Filter(id > 900 AND country = 'c1')".parse().unwrap(),
        ],
        ..RecordOptions::default()
    };
    let report = copy(
        &format!("{}?table={t}", my.url("ferry")),
        &out.display().to_string(),
        &rec,
        &work.path().join("state"),
    )
    .await;
    // The database sent only the matching rows (rows read counts what arrived).
    assert_eq!(report.source.rows, 34);
    assert_eq!(report.destination.rows, 34);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().next(), Some("id,country"));
    assert_eq!(text.lines().count(), 35);
    assert_eq!(report.transformations.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_table_and_column_and_leave_the_target_alone() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    let t = table("errors");
    my.sql(
        "ferry",
        &format!(
            "CREATE TABLE {t} (id int, name text, n int);
             INSERT INTO {t} VALUES (1, 'a', 1), (2, 'b', 300), (3, 'c', 1)"
        ),
    );
    my.sql(
        "ferry_copy",
        &format!(
            "CREATE TABLE {t} (id smallint PRIMARY KEY, name varchar(10) NOT NULL, n tinyint);
             INSERT INTO {t} VALUES (7, 'kept', 1)"
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let rec = RecordOptions::default();
    let src = format!("{}?table={t}", my.url("ferry"));
    let dst = format!("{}?table={t}", my.url("ferry_copy"));
    let kept = || {
        my.sql(
            "ferry_copy",
            &format!("SELECT GROUP_CONCAT(CONCAT(id, name, n)) FROM {t}"),
        )
    };

    // A wrong password: one line naming the address, no secret.
    std::env::set_var("FERRY_TEST_WRONG_MYSQL_PASSWORD", "hunter22");
    let e = try_copy(
        &format!("{src}&password=env:FERRY_TEST_WRONG_MYSQL_PASSWORD"),
        &work.path().join("x.parquet").display().to_string(),
        &rec,
        &state,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("Access denied")
            && e.contains("127.0.0.1:")
            && !e.contains("hunter22")
            && !e.contains('\n'),
        "{e}"
    );

    let e = try_copy(
        &format!("{}?table=nope_{t}", my.url("ferry")),
        "x.parquet",
        &rec,
        &state,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!("table 'nope_{t}'")) && e.contains("not found"),
        "{e}"
    );

    // A key column the source does not have.
    let e = try_copy(
        &src,
        &format!("{dst}&mode=upsert&keyColumns=code"),
        &rec,
        &state,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("key column 'code'"), "{e}");
    // Key columns without a unique index.
    let e = try_copy(
        &src,
        &format!("{dst}&mode=upsert&keyColumns=name"),
        &rec,
        &state,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("primary key or unique index on (name)"), "{e}");

    // 300 does not fit tinyint: the column and row are named, the target is unchanged.
    let report = try_copy(&src, &dst, &rec, &state).await.unwrap();
    assert_eq!(report.status, Status::Failed);
    let e = report.error.unwrap();
    assert!(
        e.contains("'n'") && e.contains("row 2") && e.contains(&t),
        "{e}"
    );
    assert_eq!(kept(), "7kept1");
    // NULL into NOT NULL.
    my.sql(
        "ferry",
        &format!("UPDATE {t} SET n = 1; UPDATE {t} SET name = NULL WHERE id = 3"),
    );
    let report = try_copy(&src, &dst, &rec, &state).await.unwrap();
    let e = report.error.unwrap();
    assert!(e.contains("'name'") && e.contains("row 3"), "{e}");
    assert_eq!(kept(), "7kept1");
    // A string longer than varchar(n) holds.
    my.sql(
        "ferry",
        &format!("UPDATE {t} SET name = 'c'; UPDATE {t} SET name = 'far too long' WHERE id = 2"),
    );
    let report = try_copy(&src, &dst, &rec, &state).await.unwrap();
    let e = report.error.unwrap();
    assert!(
        e.contains("'name'") && e.contains("row 2") && e.contains("too long"),
        "{e}"
    );
    assert_eq!(kept(), "7kept1");
    assert_eq!(staging_tables(&my, "ferry_copy", &t), "0");

    // Overwrite cannot swap a table that foreign keys reference.
    my.sql(
        "ferry_copy",
        &format!("CREATE TABLE {t}_child (id smallint, FOREIGN KEY (id) REFERENCES {t} (id))"),
    );
    let e = try_copy(&src, &dst, &rec, &state)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("foreign key") && e.contains(&format!("{t}_child")),
        "{e}"
    );

    // A zero date cannot be read: column and row named.
    my.sql(
        "ferry",
        &format!(
            "SET SESSION sql_mode = '';
             CREATE TABLE {t}_zero (id int, d date);
             INSERT INTO {t}_zero VALUES (1, '2000-01-01'), (2, '0000-00-00')"
        ),
    );
    let report = try_copy(
        &format!("{}?table={t}_zero", my.url("ferry")),
        &work.path().join("zero.parquet").display().to_string(),
        &rec,
        &state,
    )
    .await
    .unwrap();
    let e = report.error.unwrap_or_default();
    assert!(
        e.contains("'d'") && e.contains("row 2") && e.contains("zero date"),
        "{e}"
    );
    assert!(!work.path().join("zero.parquet").exists());
}
