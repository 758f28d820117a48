//! PostgreSQL tables through the engine, against the real server `scripts/services up`
//! starts: every supported type through Parquet and back, the load modes, pushdown, and
//! the errors a user sees.

mod common;

use common::{copy, options, try_copy, try_copy_with};
use ferry_connectors::testkit::{unique_name, Remote, TestPostgres};
use ferry_core::TransformSpec;
use ferry_engine::{RecordOptions, Status};

/// A schema of its own in both test databases, so tests can run side by side.
fn schema(pg: &TestPostgres, label: &str) -> String {
    let name = unique_name(label).replace('-', "_");
    for db in ["ferry", "ferry_copy"] {
        pg.sql(db, &format!("CREATE SCHEMA {name}"));
    }
    name
}

/// Every type ferry maps, with NULLs, extremes and special values, and enough bulk rows
/// that the table is read in more than one partition.
fn create_all_types(pg: &TestPostgres, s: &str) {
    pg.sql(
        "ferry",
        &format!(
            "CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
             CREATE DOMAIN {s}.positive AS integer CHECK (VALUE > 0);
             CREATE TABLE {s}.all_types (
                id bigint PRIMARY KEY, b bool, i2 smallint, i4 integer, i8 bigint,
                f4 real, f8 double precision, n12 numeric(12,2), n38 numeric(38,10), n numeric,
                t text, vc varchar(20), c5 char(5), by bytea, d date, tm time, ts timestamp,
                tz timestamptz, iv interval, u uuid, j json, jb jsonb, m {s}.mood,
                ai integer[], at text[], an numeric(10,2)[], ad date[], p {s}.positive);
             INSERT INTO {s}.all_types VALUES
              (1, true, -32768, -2147483648, -9223372036854775808, 'NaN', 'Infinity', -9999999999.99,
               '1234567890123456789012345678.0123456789', 'NaN', '', 'vc', 'ab', '\\x00ff', 'infinity',
               '00:00:00', '-infinity', 'infinity', '-1 year -2 days -00:00:00.000001',
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"a\": [1, 2]}}', '{{\"b\": null}}', 'sad',
               '{{1,NULL,3}}', '{{\"x\",NULL,\"\"}}', '{{1.50,-2.25}}', '{{2000-01-01,infinity}}', 1),
              (2, false, 32767, 2147483647, 9223372036854775807, '-Infinity', 1e308, 0.01,
               '-0.0000000001', '12.3400', 'Ünïcødé ✓', repeat('z', 20), 'abcde', '\\x', '-infinity',
               '23:59:59.999999', '2262-04-11 23:47:16.854775', '1900-01-01 00:00:00+00',
               '178000000 years', '00000000-0000-0000-0000-000000000000', '[]', '[]', 'happy',
               '{{}}', '{{}}', '{{}}', '{{}}', 2147483647),
              (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
             INSERT INTO {s}.all_types (id, i4, n12, t, d, tz, iv, m, at)
              SELECT g, g, g / 100.0, md5(g::text) || repeat('x', g % 50), date '2000-01-01' + g,
                     timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
                     make_interval(0, g % 12, 0, g % 30), (ARRAY['sad','ok','happy'])[1 + g % 3]::{s}.mood,
                     ARRAY[g::text, 'k']
              FROM generate_series(4, 120000) g;
             ANALYZE {s}.all_types;"
        ),
    );
    pg.sql(
        "ferry_copy",
        &format!("CREATE DOMAIN {s}.positive AS integer CHECK (VALUE > 0)"),
    );
}

/// Column names and declared types, as PostgreSQL prints them.
fn columns(pg: &TestPostgres, db: &str, table: &str) -> String {
    pg.sql(
        db,
        &format!(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
             FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
        ),
    )
}

/// The whole table's contents, as one digest (json has no equality, text does).
fn contents(pg: &TestPostgres, db: &str, table: &str) -> String {
    pg.sql(
        db,
        &format!(
            "SELECT count(*) || ' ' || md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM {table} t"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_goes_to_parquet_and_back_into_another_database_unchanged() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg, "alltypes");
    create_all_types(&pg, &s);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    // Through S3 when the service is there, else a local directory.
    let lake = Remote::S3
        .unique("pg-lake")
        .unwrap_or_else(|| format!("{}/", work.path().join("lake").display()));
    let table = format!("{s}.all_types");
    // Parquet has no month-day-microsecond interval (ferry refuses it before data moves,
    // see below); intervals go table to table.
    pg.sql("ferry", &format!("ALTER TABLE {table} DROP COLUMN iv"));
    let rec = RecordOptions::default();

    let out = copy(
        &format!("{}?table={table}", pg.url("ferry")),
        &lake,
        &rec,
        &state,
    )
    .await;
    assert_eq!(out.source.rows, 120_000);
    assert!(
        out.outputs.len() >= 2,
        "read in partitions: {:?}",
        out.outputs
    );
    assert!(out
        .outputs
        .iter()
        .all(|o| o.key.starts_with("part-") && o.key.ends_with(".parquet")));
    // The bigint primary key splits the table, not its pages.
    assert!(
        out.outputs.iter().all(|o| o.inputs[0].starts_with("keys-")),
        "{:?}",
        out.outputs
    );

    let back = copy(
        &lake,
        &format!("{}?table={table}", pg.url("ferry_copy")),
        &rec,
        &state,
    )
    .await;
    assert_eq!(back.destination.rows, 120_000);

    // The enum type was created from the Parquet metadata; a domain arrives as its base
    // type; otherwise types and contents are equal.
    assert_eq!(
        columns(&pg, "ferry", &table).replace(&format!("p {s}.positive"), "p integer"),
        columns(&pg, "ferry_copy", &table)
    );
    assert_eq!(
        contents(&pg, "ferry", &table),
        contents(&pg, "ferry_copy", &table)
    );

    pg.sql(
        "ferry",
        &format!("ALTER TABLE {table} ADD COLUMN iv interval DEFAULT '1 day'"),
    );
    let e = try_copy(
        &format!("{}?table={table}", pg.url("ferry")),
        &lake,
        &rec,
        &state,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("column 'iv'") && e.contains("allowLossy"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_is_copied_to_another_database_directly() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg, "direct");
    create_all_types(&pg, &s);
    let work = tempfile::tempdir().unwrap();
    let table = format!("{s}.all_types");
    copy(
        &format!("{}?table={table}", pg.url("ferry")),
        &format!("{}?table={table}", pg.url("ferry_copy")),
        &RecordOptions::default(),
        &work.path().join("state"),
    )
    .await;
    assert_eq!(
        contents(&pg, "ferry", &table),
        contents(&pg, "ferry_copy", &table)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overwrite_append_and_upsert_into_an_existing_table() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg, "modes");
    pg.sql(
        "ferry",
        &format!(
            "CREATE TABLE {s}.people (id integer PRIMARY KEY, name text NOT NULL);
         INSERT INTO {s}.people VALUES (1, 'ada'), (2, 'grace'), (3, 'edsger')"
        ),
    );
    pg.sql("ferry_copy", &format!(
        "CREATE TABLE {s}.people (id integer PRIMARY KEY, name text NOT NULL, since date DEFAULT '2020-01-01');
         INSERT INTO {s}.people VALUES (1, 'old', '1999-01-01'), (9, 'other', '1999-01-01');
         CREATE TABLE {s}.log (id integer, name text)"));
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let file = work.path().join("people.parquet").display().to_string();
    let rec = RecordOptions::default();
    copy(
        &format!("{}?table={s}.people", pg.url("ferry")),
        &file,
        &rec,
        &state,
    )
    .await;
    let target = |extra: &str| format!("{}?table={s}.people{extra}", pg.url("ferry_copy"));
    let rows = |table: &str| {
        pg.sql(
            "ferry_copy",
            &format!("SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM {s}.{table}"),
        )
    };

    copy(&file, &target("&mode=upsert&keyColumns=id"), &rec, &state).await;
    assert_eq!(rows("people"), "1:ada,2:grace,3:edsger,9:other");
    // Columns the source lacks keep their defaults on insert and their values on update.
    assert_eq!(
        pg.sql(
            "ferry_copy",
            &format!("SELECT since FROM {s}.people WHERE id = 1")
        ),
        "1999-01-01"
    );
    assert_eq!(
        pg.sql(
            "ferry_copy",
            &format!("SELECT since FROM {s}.people WHERE id = 2")
        ),
        "2020-01-01"
    );

    copy(&file, &target(""), &rec, &state).await;
    assert_eq!(
        rows("people"),
        "1:ada,2:grace,3:edsger",
        "overwrite replaces the rows"
    );

    let log = format!("{}?table={s}.log&mode=append", pg.url("ferry_copy"));
    copy(&file, &log, &rec, &state).await;
    // The same files into the same table again are skipped, not appended twice...
    let again = copy(&file, &log, &rec, &state).await;
    assert_eq!(again.skipped, 1);
    assert_eq!(rows("log"), "1:ada,2:grace,3:edsger");
    // ...unless the user asks for a fresh run.
    let mut opts = options(&state);
    opts.resume = false;
    let fresh = try_copy_with(&file, &log, &rec, &opts).await.unwrap();
    assert_eq!(fresh.status, Status::Succeeded, "{:?}", fresh.error);
    assert_eq!(
        pg.sql("ferry_copy", &format!("SELECT count(*) FROM {s}.log")),
        "6"
    );
    // No staging tables are left behind.
    assert_eq!(
        pg.sql("ferry_copy", &format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{s}' AND tablename LIKE '%ferry%'")),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_columns_and_filters_run_in_the_database() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg, "push");
    pg.sql(
        "ferry",
        &format!(
        "CREATE TABLE {s}.orders AS SELECT g AS id, 'c' || (g % 3) AS country, md5(g::text) AS email
         FROM generate_series(1, 1000) g"),
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
        &format!("{}?table={s}.orders", pg.url("ferry")),
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
    assert_eq!(
        report.transformations.len(),
        2,
        "the report still lists both"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_table_and_column_and_leave_the_target_alone() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let s = schema(&pg, "errors");
    pg.sql(
        "ferry",
        &format!(
            "CREATE TABLE {s}.src (id integer, name text, n numeric);
         INSERT INTO {s}.src VALUES (1, 'a', 1), (2, NULL, 'NaN')"
        ),
    );
    pg.sql(
        "ferry_copy",
        &format!(
            "CREATE TABLE {s}.dst (id smallint PRIMARY KEY, name text NOT NULL);
         INSERT INTO {s}.dst VALUES (7, 'kept')"
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let rec = RecordOptions::default();
    let src = format!("{}?table={s}.src", pg.url("ferry"));

    // A wrong password: one line, the user, no secret.
    std::env::set_var("FERRY_TEST_WRONG_PASSWORD", "hunter22");
    let e = try_copy(
        &format!(
            "{}?table={s}.src&password=env:FERRY_TEST_WRONG_PASSWORD",
            pg.url("ferry")
        ),
        &work.path().join("x.parquet").display().to_string(),
        &rec,
        &state,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("password authentication failed") && !e.contains("hunter22"),
        "{e}"
    );

    let e = try_copy(
        &format!("{}?table={s}.nope", pg.url("ferry")),
        "x.parquet",
        &rec,
        &state,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!("table '{s}.nope'")) && e.contains("not found"),
        "{e}"
    );

    // A column the target lacks, and a NULL into a NOT NULL column: named, target kept.
    let dst = format!("{}?table={s}.dst", pg.url("ferry_copy"));
    let e = try_copy(&src, &dst, &rec, &state)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("column 'n'") && e.contains(s.as_str()), "{e}");
    let narrow = RecordOptions {
        transforms: vec!["RemoveColumn(n)".parse().unwrap()],
        ..RecordOptions::default()
    };
    let report = try_copy(&src, &dst, &narrow, &state).await.unwrap();
    assert_eq!(report.status, Status::Failed);
    let e = report.error.unwrap();
    assert!(
        e.contains("column 'name'") && e.to_lowercase().contains("null"),
        "{e}"
    );
    assert_eq!(
        pg.sql(
            "ferry_copy",
            &format!("SELECT string_agg(id || name, ',') FROM {s}.dst")
        ),
        "7kept"
    );

    // A key column the source does not have.
    let e = try_copy(
        &src,
        &format!("{dst}&mode=upsert&keyColumns=code"),
        &narrow,
        &state,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("key column 'code'"), "{e}");

    // NaN cannot be held by a Decimal: the unconstrained numeric is text, so it goes;
    // but a numeric(10,2) column holding NaN names column and row.
    pg.sql("ferry", &format!("CREATE TABLE {s}.nan (id integer, v numeric(10,2)); INSERT INTO {s}.nan VALUES (1, 1.5), (2, 'NaN')"));
    let report = try_copy(
        &format!("{}?table={s}.nan", pg.url("ferry")),
        &work.path().join("nan.parquet").display().to_string(),
        &rec,
        &state,
    )
    .await
    .unwrap();
    let e = report.error.unwrap_or_default();
    assert!(
        e.contains("'v'") && e.contains("row 2") && e.contains("NaN"),
        "{e}"
    );
    assert!(
        !work.path().join("nan.parquet").exists(),
        "no output from a failed read"
    );
}

/// Whether the session that reads is encrypted, as the server sees it.
const ENCRYPTED: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test]
async fn sslmode_encrypts_and_checks_the_server_as_libpq_does() {
    let Some(pg) = TestPostgres::get() else {
        return;
    };
    let ca = std::env::var("FERRY_TEST_POSTGRES_CA").expect("scripts/services env sets it");
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let base = pg.url("ferry");
    let encrypted = |params: String| {
        let out = work.path().join(format!("{}.csv", unique_name("ssl")));
        let (src, state) = (format!("{base}?{params}&query={ENCRYPTED}"), state.clone());
        async move {
            try_copy(
                &src,
                out.to_str().unwrap(),
                &RecordOptions::default(),
                &state,
            )
            .await
            .map(|_| std::fs::read_to_string(&out).unwrap())
            .map(|csv| csv.lines().nth(1).unwrap().to_string())
            .map_err(|e| e.to_string())
        }
    };
    assert_eq!(encrypted("sslmode=disable".into()).await.unwrap(), "false");
    // libpq's default, prefer: encrypted when the server offers it.
    assert_eq!(
        encrypted("application_name=x".into()).await.unwrap(),
        "true"
    );
    assert_eq!(encrypted("sslmode=require".into()).await.unwrap(), "true");
    let verified = format!("sslmode=verify-full&sslrootcert={ca}");
    assert_eq!(encrypted(verified).await.unwrap(), "true");

    // The certificate is checked against the given root, else the system's roots, which
    // do not know the test CA.
    let e = encrypted("sslmode=verify-full".into()).await.unwrap_err();
    assert!(
        e.contains("certificate") && e.contains("postgres://"),
        "{e}"
    );
    let e = encrypted(format!(
        "sslmode=verify-ca&sslrootcert={}",
        work.path().join("none.pem").display()
    ))
    .await
    .unwrap_err();
    assert!(e.contains("sslrootcert") && e.contains("none.pem"), "{e}");
    let e = encrypted("sslmode=sometimes".into()).await.unwrap_err();
    assert!(e.contains("unknown sslmode 'sometimes'"), "{e}");
}
