//! Every format writes what it reads: values and types survive a round trip, and bad files
//! fail with errors that name the file, the line and the column.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use ferry_formats::{open_reader, open_writer, FileAccess, Format, FormatOptions, Input};

fn sample(with_decimal: bool) -> RecordBatch {
    let mut fields = vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("active", DataType::Boolean, true),
        Field::new("day", DataType::Date32, true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, -2, i64::MAX])),
        Arc::new(StringArray::from(vec![
            Some("a, \"quoted\" name"),
            None,
            Some("ünï"),
        ])),
        Arc::new(Float64Array::from(vec![Some(1.5), Some(-0.25), None])),
        Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        Arc::new(Date32Array::from(vec![Some(19_000), Some(0), None])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1_700_000_000_123_456), None, Some(0)])
                .with_timezone("UTC"),
        ),
    ];
    if with_decimal {
        fields.push(Field::new("amount", DataType::Decimal128(10, 2), true));
        columns.push(Arc::new(
            Decimal128Array::from(vec![Some(12345), Some(-1), None])
                .with_precision_and_scale(10, 2)
                .unwrap(),
        ));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

fn write(format: Format, batch: &RecordBatch, path: &Path) {
    let out = Box::new(std::fs::File::create(path).unwrap());
    let mut writer = open_writer(
        format,
        &FormatOptions::default(),
        batch.schema(),
        out,
        &path.display().to_string(),
    )
    .unwrap();
    writer.write(batch).unwrap();
    writer.finish().unwrap();
}

fn read(format: Format, path: &Path, schema: Option<SchemaRef>) -> RecordBatch {
    let input = Input::new(FileAccess::open(path).unwrap());
    let reader = open_reader(
        format,
        &FormatOptions::default(),
        input,
        &path.display().to_string(),
        schema,
    )
    .unwrap();
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

#[test]
fn self_describing_formats_round_trip_values_and_types() {
    let dir = tempfile::tempdir().unwrap();
    for (format, decimal) in [
        (Format::Parquet, true),
        (Format::Avro, true),
        (Format::Orc, false),
    ] {
        let batch = sample(decimal);
        let path = dir.path().join(format!("t.{}", format.extension()));
        write(format, &batch, &path);
        let back = read(format, &path, None);
        assert_eq!(back.num_rows(), 3, "{format}");
        for (i, field) in batch.schema().fields().iter().enumerate() {
            let got = back.schema().field(i).clone();
            assert_eq!(got.name(), field.name(), "{format}");
            // Zone spellings differ between formats (+00:00, UTC); the instants may not.
            let column = arrow::compute::cast(back.column(i), field.data_type()).unwrap();
            assert_eq!(&column, batch.column(i), "{format} column {}", field.name());
            if !matches!(field.data_type(), DataType::Timestamp(..)) {
                assert_eq!(got.data_type(), field.data_type(), "{format}");
            }
        }
    }
}

#[test]
fn text_formats_round_trip_with_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    for format in [Format::Csv, Format::Json] {
        let batch = sample(true);
        let path = dir.path().join(format!("t.{}", format.extension()));
        write(format, &batch, &path);
        let back = read(format, &path, Some(batch.schema()));
        assert_eq!(back, batch, "{format}");
    }
}

#[test]
fn csv_inference_keeps_instants_and_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(
        &path,
        "id,amount,at,when\n1,2.50,2026-01-03T17:06:00Z,2026-01-03T17:06:00\n2,,2026-01-04T00:00:00Z,\n",
    )
    .unwrap();
    let back = read(Format::Csv, &path, None);
    let schema = back.schema();
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    assert_eq!(schema.field(1).data_type(), &DataType::Float64);
    assert!(
        matches!(schema.field(2).data_type(), DataType::Timestamp(_, Some(z)) if z.as_ref() == "UTC"),
        "{:?}",
        schema.field(2)
    );
    assert!(matches!(
        schema.field(3).data_type(),
        DataType::Timestamp(_, None)
    ));
    assert_eq!(back.column(1).null_count(), 1);
}

#[test]
fn malformed_csv_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.csv");
    std::fs::write(&path, "id,amount\n1,2.5\n2,abc\n").unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("amount", DataType::Float64, true),
    ]));
    let input = Input::new(FileAccess::open(&path).unwrap());
    let reader = open_reader(
        Format::Csv,
        &FormatOptions::default(),
        input,
        "orders.csv",
        Some(schema),
    )
    .unwrap();
    let err = reader
        .collect::<Result<Vec<_>, _>>()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("orders.csv: "), "{err}");
    assert_eq!(
        err,
        "orders.csv: line 3, column 'amount': cannot read 'abc' as Float64"
    );

    // Found while inferring the schema, before a reader exists.
    std::fs::write(&path, "id,amount\n1,2.5\n2,3,4\n").unwrap();
    let input = Input::new(FileAccess::open(&path).unwrap());
    let err = open_reader(
        Format::Csv,
        &FormatOptions::default(),
        input,
        "orders.csv",
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("line 3: 3 fields where 2 were expected"),
        "{err}"
    );
}

#[test]
fn declared_schema_must_match_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, "id,amt\n1,2\n").unwrap();
    let options: FormatOptions =
        serde_json::from_str(r#"{"schema": [{"name": "id", "type": "int64"}, {"name": "amount", "type": "decimal(10,2)"}]}"#).unwrap();
    let input = Input::new(FileAccess::open(&path).unwrap());
    let err = open_reader(Format::Csv, &options, input, "t.csv", None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("header names columns [id, amt]") && err.contains("[id, amount]"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_parquet_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.parquet");
    std::fs::write(&path, b"id,amount\n1,2\n").unwrap();
    let input = Input::new(FileAccess::open(&path).unwrap());
    let err = open_reader(
        Format::Parquet,
        &FormatOptions::default(),
        input,
        "bad.parquet",
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with("bad.parquet: not a valid Parquet file"),
        "{err}"
    );
}

#[test]
fn orc_refuses_decimals_before_writing() {
    let batch = sample(true);
    let err = open_writer(
        Format::Orc,
        &FormatOptions::default(),
        batch.schema(),
        Box::new(std::io::sink()),
        "out.orc",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("column 'amount' has type Decimal128(10, 2)"),
        "{err}"
    );
}

#[test]
fn parquet_settings_are_checked() {
    let options: FormatOptions = serde_json::from_str(r#"{"compression": "brotli9"}"#).unwrap();
    let err = open_writer(
        Format::Parquet,
        &options,
        sample(false).schema(),
        Box::new(std::io::sink()),
        "x",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("'brotli9' for Parquet"), "{err}");
    assert!(serde_json::from_str::<FormatOptions>(r#"{"rowGroupSise": 5}"#).is_err());
}

#[test]
fn allow_lossy_writes_what_a_format_cannot_hold_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.orc");
    let batch = sample(true);
    let options: FormatOptions = serde_json::from_str(r#"{"allowLossy": true}"#).unwrap();
    let out = Box::new(std::fs::File::create(&path).unwrap());
    let mut writer = open_writer(Format::Orc, &options, batch.schema(), out, "t.orc").unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    let back = read(Format::Orc, &path, None);
    let amount = back.column(back.schema().index_of("amount").unwrap());
    assert_eq!(amount.data_type(), &DataType::Utf8);
    let text = arrow::compute::cast(batch.column(6), &DataType::Utf8).unwrap();
    assert_eq!(amount, &text);
}

#[test]
fn parquet_row_groups_split_batches_and_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groups.parquet");
    let options: FormatOptions = serde_json::from_str(r#"{"rowGroupSize": 3}"#).unwrap();
    let batch = sample(true);
    let batches: Vec<RecordBatch> = (0..4).map(|_| batch.clone()).collect();
    let out = Box::new(std::fs::File::create(&path).unwrap());
    let mut writer = open_writer(Format::Parquet, &options, batch.schema(), out, "g").unwrap();
    for b in &batches {
        // Uneven pieces, so row groups straddle the batches the writer is given.
        writer.write(&b.slice(0, 2)).unwrap();
        writer.write(&b.slice(2, 1)).unwrap();
    }
    writer.finish().unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let meta = parquet::file::reader::FileReader::metadata(
        &parquet::file::reader::SerializedFileReader::new(file).unwrap(),
    )
    .clone();
    assert_eq!(meta.num_row_groups(), 4);
    let expected = arrow::compute::concat_batches(&batch.schema(), &batches).unwrap();
    assert_eq!(read(Format::Parquet, &path, None), expected);
}

#[test]
fn whole_file_compression_round_trips_and_a_corrupt_stream_names_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    for (format, name) in [
        (Format::Csv, "t.csv.gz"),
        (Format::Json, "t.jsonl.zst"),
        (Format::Json, "t.json.gz"),
        (Format::Avro, "t.avro.zst"),
    ] {
        assert_eq!(Format::from_name(name), Some(format), "{name}");
        let batch = sample(true);
        let path = dir.path().join(name);
        write(format, &batch, &path);
        let packed = std::fs::read(&path).unwrap();
        let magic: &[u8] = if name.ends_with(".gz") {
            &[0x1f, 0x8b]
        } else {
            &[0x28, 0xb5, 0x2f, 0xfd]
        };
        assert!(packed.starts_with(magic), "{name} is not compressed");
        let schema = (format != Format::Avro).then(|| batch.schema());
        let back = read(format, &path, schema);
        assert_eq!(back.num_rows(), batch.num_rows(), "{name}");
        assert_eq!(back.column(1), batch.column(1), "{name}");

        // The stream cut short: the error names the file and how far it got.
        std::fs::write(&path, &packed[..packed.len() - 9]).unwrap();
        let input = Input::new(FileAccess::open(&path).unwrap());
        let location = path.display().to_string();
        let schema = (format != Format::Avro).then(|| batch.schema());
        let err = match open_reader(format, &FormatOptions::default(), input, &location, schema) {
            Err(e) => e.to_string(),
            Ok(reader) => reader
                .map(|b| b.map(|_| ()))
                .collect::<Result<Vec<()>, _>>()
                .unwrap_err()
                .to_string(),
        };
        assert!(err.contains(&location), "{name}: {err}");
        assert!(err.contains("compressed byte"), "{name}: {err}");
    }
}

#[test]
fn compression_is_an_option_of_text_formats_and_refused_around_parquet() {
    let options = FormatOptions {
        compression: Some("zstd".into()),
        ..Default::default()
    };
    assert_eq!(
        options.file_name(Format::Csv, "in/a.json").unwrap(),
        "in/a.csv.zst"
    );
    assert_eq!(
        FormatOptions::default()
            .file_name(Format::Csv, "in/a.csv.gz")
            .unwrap(),
        "in/a.csv"
    );
    let batch = sample(false);
    let err = open_writer(
        Format::Parquet,
        &FormatOptions::default(),
        batch.schema(),
        Box::new(std::io::sink()),
        "out/t.parquet.gz",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("out/t.parquet.gz"), "{err}");
}
