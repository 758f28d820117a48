//! The record path through the engine: format conversion and transformations between local
//! disk, S3 (moto) and Azurite.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use ferry_connectors::testkit::Remote;
use ferry_core::{DataAddress, Error, TransformSpec};
use ferry_engine::manifest::Manifest;
use ferry_engine::{transfer, CopyOptions, NoProgress, RecordOptions, RecordReport, Status};
use ferry_formats::{open_reader, FileAccess, Format, FormatOptions, Input};

const ORDERS: &str = "\
id,name,amount,day,at,active
1,\"Smith, Jane\",12.50,2024-01-31,2024-01-31T10:00:00Z,true
2,,-0.01,,2024-02-01T00:00:00.5Z,false
3,\"say \"\"hi\"\"\",99999999.99,1970-01-01,,
4,Ünïcødé,0.00,2038-01-19,1969-12-31T23:59:59Z,true
";

const SCHEMA: &str = r#"{"schema": [
    {"name": "id", "type": "int64", "nullable": false},
    {"name": "name", "type": "string"},
    {"name": "amount", "type": "decimal(10,2)"},
    {"name": "day", "type": "date"},
    {"name": "at", "type": "timestamp(us, UTC)"},
    {"name": "active", "type": "bool"}
]}"#;

fn declared() -> FormatOptions {
    serde_json::from_str(SCHEMA).unwrap()
}

fn addr(text: &str) -> DataAddress {
    DataAddress::parse(text).unwrap()
}

fn options(state: &Path) -> CopyOptions {
    CopyOptions {
        state_dir: state.to_path_buf(),
        part_size: 5 << 20,
        ..CopyOptions::default()
    }
}

async fn run(src: &str, dst: &str, rec: &RecordOptions, state: &Path) -> RecordReport {
    let report = transfer(
        &addr(src),
        &addr(dst),
        rec,
        &options(state),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(report.status, Status::Succeeded, "{:?}", report.error);
    report
}

/// Reads a local file whole.
fn read_file(path: &Path, format: Format, options: &FormatOptions) -> RecordBatch {
    let input = Input::new(FileAccess::open(path).unwrap());
    let reader = open_reader(format, options, input, &path.display().to_string(), None).unwrap();
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

fn transforms(specs: &[&str]) -> Vec<TransformSpec> {
    specs.iter().map(|s| s.parse().unwrap()).collect()
}

/// CSV → Parquet at `middle` → CSV, and the values and types are what was declared.
async fn csv_parquet_csv(middle: &str) {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = work.path().join("orders.csv");
    std::fs::write(&src, ORDERS).unwrap();
    let to_parquet = RecordOptions {
        source_options: declared(),
        dest_format: Some(Format::Parquet),
        ..RecordOptions::default()
    };
    let report = run(&src.display().to_string(), middle, &to_parquet, &state).await;
    assert_eq!((report.source.rows, report.destination.rows), (4, 4));
    let types: Vec<&str> = report
        .destination
        .schema
        .iter()
        .map(|f| f.data_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "Int64",
            "Utf8",
            "Decimal128(10, 2)",
            "Date32",
            "Timestamp(µs, \"UTC\")",
            "Boolean"
        ]
    );

    let back = work.path().join("back.csv");
    let parquet = format!("{}orders.parquet", middle);
    let report = run(
        &parquet,
        &back.display().to_string(),
        &RecordOptions::default(),
        &state,
    )
    .await;
    assert_eq!(report.source.format, Format::Parquet.to_string());
    assert_eq!(report.destination.rows, 4);

    let original = read_file(&src, Format::Csv, &declared());
    let round_tripped = read_file(&back, Format::Csv, &declared());
    assert_eq!(original, round_tripped);
    // Inferred without a declaration, the written CSV still reads as the same types.
    let inferred = read_file(&back, Format::Csv, &FormatOptions::default());
    assert_eq!(inferred.schema().field(2).data_type(), &DataType::Float64);
    assert!(matches!(
        inferred.schema().field(4).data_type(),
        DataType::Timestamp(_, Some(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_parquet_csv_round_trip_locally() {
    let work = tempfile::tempdir().unwrap();
    csv_parquet_csv(&format!("{}/lake/", work.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_parquet_csv_round_trip_through_s3() {
    if let Some(base) = Remote::S3.unique("records") {
        csv_parquet_csv(&base).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_parquet_csv_round_trip_through_azure() {
    if let Some(base) = Remote::Azure.unique("records") {
        csv_parquet_csv(&base).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_converts_to_every_other() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = work.path().join("orders.csv");
    std::fs::write(&src, ORDERS).unwrap();
    let original = read_file(&src, Format::Csv, &declared());
    // ORC keeps no decimals (orc-rust cannot write them), so it gets amount as text.
    for format in [Format::Parquet, Format::Avro, Format::Json, Format::Orc] {
        let mut rec = RecordOptions {
            source_options: declared(),
            ..RecordOptions::default()
        };
        if format == Format::Orc {
            rec.transforms = transforms(&["RemoveColumn(amount)"]);
        }
        let there = work.path().join(format!("t.{}", format.extension()));
        run(
            &src.display().to_string(),
            &there.display().to_string(),
            &rec,
            &state,
        )
        .await;
        let back = work.path().join(format!("back-{format}.csv"));
        let rec = RecordOptions::default();
        run(
            &there.display().to_string(),
            &back.display().to_string(),
            &rec,
            &state,
        )
        .await;
        let mut expected = original.clone();
        if format == Format::Orc {
            expected.remove_column(2);
        }
        let mut options = declared();
        if format == Format::Orc {
            options.schema.as_mut().unwrap().remove(2);
        }
        assert_eq!(
            read_file(&back, Format::Csv, &options),
            expected,
            "{format}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_example_runs() {
    let work = tempfile::tempdir().unwrap();
    let manifest = include_str!("../../../examples/manifests/orders-to-lake.yaml")
        .replace(
            "examples/data/orders.csv",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/data/orders.csv"
            ),
        )
        .replace(
            "out/lake/orders/",
            &format!("{}/lake/", work.path().display()),
        );
    let (src, dst, rec) = Manifest::parse(&manifest).unwrap().plan().unwrap();
    let report = transfer(
        &src,
        &dst,
        &rec,
        &options(&work.path().join("s")),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(report.status, Status::Succeeded);
    assert_eq!(report.transformations.len(), 4);

    let csv = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/orders.csv"),
    )
    .unwrap();
    let input = read_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/orders.csv"),
        Format::Csv,
        &FormatOptions::default(),
    );
    assert_eq!(input.num_rows(), csv.lines().count() - 1);
    let out = read_file(
        &work.path().join("lake/orders.parquet"),
        Format::Parquet,
        &FormatOptions::default(),
    );
    let schema = out.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "order_id",
            "customer_id",
            "email",
            "phone",
            "country",
            "amount",
            "ordered_at"
        ]
    );

    use arrow::array::AsArray;
    let col = |b: &RecordBatch, name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
    let amounts = col(&input, "amount");
    let countries = col(&input, "country");
    let expected: Vec<usize> = (0..input.num_rows())
        .filter(|&i| {
            amounts
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(i)
                > 100.0
                && countries.as_string::<i32>().value(i) == "DE"
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(out.num_rows(), expected.len());
    assert_eq!(report.destination.rows, expected.len() as u64);

    let emails = col(&out, "email");
    let phones = col(&out, "phone");
    let in_emails = col(&input, "email");
    let in_phones = col(&input, "phone");
    for (row, &i) in expected.iter().enumerate() {
        let email = in_emails.as_string::<i32>().value(i);
        let digest = ferry_core::ChecksumAlgo::Sha256
            .digest(email.as_bytes())
            .hex();
        assert_eq!(emails.as_string::<i32>().value(row), digest);
        let (before, after) = (
            in_phones.as_string::<i32>().value(i),
            phones.as_string::<i32>().value(row),
        );
        assert_ne!(before, after);
        let shape = |s: &str| {
            s.chars()
                .map(|c| if c.is_ascii_digit() { '9' } else { c })
                .collect::<String>()
        };
        assert_eq!(shape(before), shape(after));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_is_one_dataset() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = work.path().join("in");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for (i, name) in ["a.csv", "sub/b.csv", "c.csv"].iter().enumerate() {
        let rows: String = (0..=i).map(|r| format!("{r},{name}\n")).collect();
        std::fs::write(src.join(name), format!("n,file\n{rows}")).unwrap();
    }
    std::fs::write(src.join("_SUCCESS"), "").unwrap();
    let src = format!("{}/", src.display());

    // Into a directory: one output per input, the tree kept, extensions changed.
    let out = work.path().join("out");
    let rec = RecordOptions {
        dest_format: Some(Format::Parquet),
        ..RecordOptions::default()
    };
    let report = run(&src, &format!("{}/", out.display()), &rec, &state).await;
    assert_eq!((report.source.files, report.objects), (3, 3));
    for (name, rows) in [("a.parquet", 1), ("sub/b.parquet", 2), ("c.parquet", 3)] {
        let batch = read_file(&out.join(name), Format::Parquet, &FormatOptions::default());
        assert_eq!(batch.num_rows(), rows, "{name}");
    }

    // Into a file: every input in one output.
    let one = work.path().join("all.jsonl");
    let report = run(
        &src,
        &one.display().to_string(),
        &RecordOptions::default(),
        &state,
    )
    .await;
    assert_eq!((report.objects, report.destination.rows), (1, 6));
    assert_eq!(std::fs::read_to_string(&one).unwrap().lines().count(), 6);

    // A second run finds its checkpoint and the outputs still there.
    let again = run(
        &src,
        &one.display().to_string(),
        &RecordOptions::default(),
        &state,
    )
    .await;
    assert_eq!((again.objects, again.skipped), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_stop_before_anything_is_written() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = work.path().join("orders.csv");
    std::fs::write(&src, ORDERS).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cases = [
        ("Digest(emial, algo=sha256)", "column 'emial' not found"),
        ("Filter(amount >)", "Filter"),
        ("Filter(amount + 1)", "not a boolean"),
        ("Redact(name, mode=shuffle)", "shuffle"),
    ];
    for (spec, expected) in cases {
        let mut spec: TransformSpec = spec.parse().unwrap();
        spec.name = Some("my-step".into());
        let rec = RecordOptions {
            dest_format: Some(Format::Parquet),
            transforms: vec![spec],
            ..RecordOptions::default()
        };
        let err = transfer(
            &addr(&src.display().to_string()),
            &addr(&format!("{}/", out.display())),
            &rec,
            &options(&state),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::InvalidTransform { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.contains("'my-step'") && shown.contains(expected),
            "{shown}"
        );
        assert_eq!(err.exit_code(), 2);
    }
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_deep_in_the_file_leaves_no_output() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let src = work.path().join("big.csv");
    let mut text = String::from("id,value\n");
    for i in 0..30_000 {
        if i == 25_000 {
            text.push_str("25000,oops\n");
        } else {
            text.push_str(&format!("{i},{}\n", i * 2));
        }
    }
    std::fs::write(&src, text).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let rec = RecordOptions {
        dest_format: Some(Format::Parquet),
        ..RecordOptions::default()
    };
    let report = transfer(
        &addr(&src.display().to_string()),
        &addr(&format!("{}/", out.display())),
        &rec,
        &options(&state),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(report.status, Status::Failed);
    let error = report.error.unwrap();
    assert!(
        error.contains("big.csv") && error.contains("line 25002") && error.contains("'value'"),
        "{error}"
    );
    // Neither the output nor a partial file is left behind.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}
