//! The MySQL connector against a real MariaDB: the commit contract when a process dies
//! between the steps of a commit, key-range partitions of a large table, and a query's
//! columns.
//!
//! Needs `FERRY_TEST_MYSQL` (and `MYSQL_PWD`): `eval "$(scripts/services env)"`.

use std::sync::Arc;

use arrow::array::{Int32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use ferry_connectors::testkit::{unique_name, TestMysql};
use ferry_connectors::{open_table, prepare_load, Selection, TableLoad};
use ferry_core::{DataAddress, TableAddress};

fn address(url: &str) -> TableAddress {
    match DataAddress::parse(url).unwrap() {
        DataAddress::Table(t) => t,
        other => panic!("{other} is not a table"),
    }
}

fn people() -> (SchemaRef, RecordBatch) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int32Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec![Some("ada"), None, Some("edsger")])),
        ],
    )
    .unwrap();
    (schema, batch)
}

/// Prepares a load with `load_id` and stages the three rows.
async fn staged(url: &str, load_id: &str) -> Box<dyn TableLoad> {
    let (schema, batch) = people();
    let mut load = prepare_load(&address(url), schema.clone(), load_id)
        .await
        .unwrap();
    load.create_staging().await.unwrap();
    let mut writer = load.writer(&schema).await.unwrap();
    writer.write(&batch).await.unwrap();
    assert_eq!(writer.finish().await.unwrap(), 3);
    load
}

fn table_count(my: &TestMysql, name: &str) -> String {
    my.sql(
        "ferry",
        &format!(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'ferry' AND TABLE_NAME LIKE '{name}%' ESCAPE '!'"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_interrupted_at_any_step_commits_once() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    let t = unique_name("contract").replace('-', "_");
    my.sql(
        "ferry",
        &format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, name text); INSERT INTO {t} VALUES (9, 'old')"
        ),
    );
    let url = |extra: &str| format!("{}?table={t}{extra}", my.url("ferry"));
    let rows = || {
        my.sql(
            "ferry",
            &format!(
                "SELECT GROUP_CONCAT(CONCAT(id, ':', COALESCE(name, '-')) ORDER BY id) FROM {t}"
            ),
        )
    };

    // Append killed after its transaction, before dropping the (now empty) staging table:
    // committing again adds nothing.
    let load = staged(&url("&mode=append"), "append000001").await;
    assert!(load.staging_exists().await.unwrap());
    let staging = format!("{t}__ferry_append000001");
    my.sql(
        "ferry",
        &format!(
            "START TRANSACTION; INSERT INTO {t} (id, name) SELECT id, name FROM {staging};
             DELETE FROM {staging}; COMMIT"
        ),
    );
    assert!(load.staging_exists().await.unwrap());
    load.commit().await.unwrap();
    assert!(!load.staging_exists().await.unwrap());
    assert_eq!(rows(), "1:ada,2:-,3:edsger,9:old");

    // Upsert killed before its transaction committed: all of it happens on the re-run.
    my.sql(
        "ferry",
        &format!("UPDATE {t} SET name = 'changed' WHERE id = 1"),
    );
    let load = staged(&url("&mode=upsert&keyColumns=id"), "upsert000001").await;
    load.commit().await.unwrap();
    assert!(!load.staging_exists().await.unwrap());
    assert_eq!(rows(), "1:ada,2:-,3:edsger,9:old");

    // Overwrite killed after the swap, before dropping the old table: the staging table is
    // gone (so the load counts as committed) and the old table is cleaned up.
    let load = staged(&url(""), "overwrite001").await;
    my.sql(
        "ferry",
        &format!("RENAME TABLE {t} TO {t}__ferry_overwrite001_old, {t}__ferry_overwrite001 TO {t}"),
    );
    assert!(!load.staging_exists().await.unwrap());
    assert_eq!(table_count(&my, &t), "1", "old table dropped");
    assert_eq!(rows(), "1:ada,2:-,3:edsger");

    // A new table killed before its rename: committing again renames it.
    let fresh = format!("{t}_new");
    let load = staged(
        &format!("{}?table={fresh}", my.url("ferry")),
        "newtable0001",
    )
    .await;
    load.commit().await.unwrap();
    assert!(!load.staging_exists().await.unwrap());
    assert_eq!(
        my.sql("ferry", &format!("SELECT COUNT(*) FROM {fresh}")),
        "3"
    );

    // Discard leaves the target as it was.
    let load = staged(&url("&mode=append"), "discard00001").await;
    load.discard().await.unwrap();
    assert!(!load.staging_exists().await.unwrap());
    assert_eq!(rows(), "1:ada,2:-,3:edsger");
    assert_eq!(table_count(&my, &format!("{t}!_!_")), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_table_is_read_in_key_ranges_and_a_query_in_one_piece() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    let t = unique_name("ranges").replace('-', "_");
    // About 80 MiB, past the size at which key ranges begin.
    my.sql(
        "ferry",
        &format!(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, pad varchar(2000));
             INSERT INTO {t} SELECT seq, REPEAT('x', 1500) FROM seq_1_to_50000;
             ANALYZE TABLE {t}"
        ),
    );
    let source = open_table(&address(&format!("{}?table={t}", my.url("ferry"))))
        .await
        .unwrap();
    assert!(
        source.estimated_bytes() >= 64 << 20,
        "{}",
        source.estimated_bytes()
    );
    let scan = source
        .scan(
            &Selection {
                columns: Some(vec!["id".into()]),
                filter: Some("\"id\" % 2 = 0".into()),
            },
            4,
        )
        .await
        .unwrap();
    assert!(scan.partitions().len() >= 2, "{:?}", scan.partitions());
    let mut ids = Vec::new();
    for i in 0..scan.partitions().len() {
        let mut rx = scan.read(i, 7_000);
        while let Some(batch) = rx.recv().await {
            let batch = batch.unwrap();
            assert!(batch.num_rows() <= 7_000);
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            ids.extend(column.values().iter().copied());
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=25_000).map(|i| i * 2).collect::<Vec<i64>>());

    let query = open_table(&address(&format!(
        "{}?query=SELECT id, CAST(id AS DECIMAL(20,3)) AS d, LEFT(pad, 2) AS p FROM {t} WHERE id <= 3",
        my.url("ferry")
    )))
    .await
    .unwrap();
    let schema = query.schema();
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    assert_eq!(schema.field(1).data_type(), &DataType::Decimal128(20, 3));
    assert_eq!(schema.field(2).data_type(), &DataType::Utf8);
    let scan = query.scan(&Selection::default(), 4).await.unwrap();
    assert_eq!(scan.partitions().len(), 1);
    let batch = scan.read(0, 100).recv().await.unwrap().unwrap();
    assert_eq!(batch.num_rows(), 3);
    my.sql("ferry", &format!("DROP TABLE {t}"));
}

/// The cipher of a session opened with `params`, as the server sees it ("" when the
/// session is plain), or the error, as the user reads it.
async fn cipher(my: &TestMysql, params: &str) -> Result<String, String> {
    use mysql_async::prelude::Queryable;
    let url = format!("{}?table=t&{params}", my.url("ferry"));
    let mut conn = ferry_connectors::mysql::connect(&address(&url))
        .await
        .map_err(|e| e.to_string())?;
    let row: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .unwrap();
    Ok(row.map(|(_, cipher)| cipher).unwrap_or_default())
}

#[tokio::test]
async fn ssl_mode_encrypts_and_checks_the_server_as_the_mysql_client_does() {
    let Some(my) = TestMysql::get() else {
        return;
    };
    if my.sql("ferry", "SELECT @@have_ssl") != "YES" {
        let msg = "the MySQL test server has no TLS: run `scripts/services up` again";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipping: {msg}");
        return;
    }
    let ca = std::env::var("FERRY_TEST_MYSQL_CA").expect("scripts/services env sets it");
    assert_eq!(cipher(&my, "ssl-mode=DISABLED").await.unwrap(), "");
    // The MySQL client's default, PREFERRED: encrypted when the server offers it.
    assert_ne!(cipher(&my, "").await.unwrap(), "");
    assert_ne!(cipher(&my, "ssl-mode=REQUIRED").await.unwrap(), "");
    for mode in ["VERIFY_CA", "VERIFY_IDENTITY", "verify-identity"] {
        let params = format!("ssl-mode={mode}&ssl-ca={ca}");
        assert_ne!(cipher(&my, &params).await.unwrap(), "", "{mode}");
    }

    // The certificate is checked against the given CA, else the built-in roots, which
    // do not know the test CA.
    let e = cipher(&my, "ssl-mode=VERIFY_IDENTITY").await.unwrap_err();
    assert!(
        e.contains("not signed by a trusted CA") && e.contains("ssl-ca=PATH"),
        "{e}"
    );
    assert!(e.contains("mysql://") && !e.contains('\n'), "{e}");
    let e = cipher(&my, "ssl-mode=VERIFY_CA&ssl-ca=/no/ca.pem")
        .await
        .unwrap_err();
    assert!(e.contains("ssl-ca /no/ca.pem"), "{e}");
    let e = cipher(&my, "ssl-mode=sometimes").await.unwrap_err();
    assert!(e.contains("unknown ssl-mode 'sometimes'"), "{e}");
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_given_up_after_connect_timeout() {
    // A server that accepts the connection and says nothing (MySQL's server speaks first).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.extend(stream.ok());
        }
    });
    let url = format!("mysql://ferry@127.0.0.1:{port}/ferry?table=t&connect-timeout=1");
    let started = std::time::Instant::now();
    let Err(e) = ferry_connectors::mysql::connect(&address(&url)).await else {
        panic!("the server never answers");
    };
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(matches!(e, ferry_core::Error::Unreachable { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}"))
            && text.contains("within 1 s (connect-timeout)"),
        "{text}"
    );
    let bad = format!("mysql://ferry@127.0.0.1:{port}/ferry?table=t&connect-timeout=soon");
    let Err(e) = ferry_connectors::mysql::connect(&address(&bad)).await else {
        panic!("connect-timeout is a number");
    };
    assert!(e.to_string().contains("connect-timeout=soon"), "{e}");
}
