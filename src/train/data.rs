//! Training data from the files users bring: CSV and TSV with a header row, JSON Lines (an
//! object a line), plain text (a line a document), and CoNLL columns (a token and its tag a
//! line, sentences separated by blank lines). Every record keeps the line it came from, so
//! an error names file and line: an empty file, a line that is not UTF-8, a CSV row with more
//! or fewer fields than its header, a line that is not a JSON object, a missing column, a
//! field of the wrong kind.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// How a file is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated, a header row naming the columns.
    Csv,
    /// Tab-separated, a header row naming the columns.
    Tsv,
    /// A JSON object a line (`.jsonl`, `.json`).
    JsonLines,
    /// A document a line, in the column `text` (`.txt`, `.text`).
    Text,
    /// A token a line, its tag in the last column (`.conll`), sentences separated by blank
    /// lines; each sentence a record with the columns `tokens` and `tags`.
    Conll,
}

impl Format {
    /// The format a file's extension says.
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("tsv") => Ok(Format::Tsv),
            Some("jsonl") | Some("json") => Ok(Format::JsonLines),
            Some("txt") | Some("text") => Ok(Format::Text),
            Some("conll") | Some("conll2003") => Ok(Format::Conll),
            _ => Err(Error::invalid(format!(
                "{}: the file's extension does not say its format; use .csv, .tsv, .jsonl, \
                 .txt or .conll",
                path.display()
            ))),
        }
    }
}

/// One record: its fields by column name, and the line it starts on (1-based).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The line of the file it starts on.
    pub line: usize,
    /// Its fields: strings (CSV, TSV, text), any JSON value (JSON Lines), lists of strings
    /// (CoNLL's `tokens` and `tags`).
    pub fields: Map<String, Value>,
}

/// The records of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Records {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The columns its header names (CSV, TSV: in its order), or its records (JSON Lines: in
    /// order of first appearance, each object's keys sorted).
    pub columns: Vec<String>,
    /// The records, in file order.
    pub records: Vec<Record>,
}

/// An error about line `line` of `path`.
pub(crate) fn at_line(path: &Path, line: usize, message: impl Into<String>) -> Error {
    Error::Format {
        path: format!("{}:{line}", path.display()),
        message: message.into(),
    }
}

/// Reads a file in the format its extension says ([`Format::of`]).
pub fn read(path: impl AsRef<Path>) -> Result<Records> {
    let path = path.as_ref();
    read_as(path, Format::of(path)?)
}

/// Reads a file in `format`. A file without a single record is an error.
pub fn read_as(path: impl AsRef<Path>, format: Format) -> Result<Records> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    read_bytes_as(path, &bytes, format)
}

/// Reads a file's contents already in memory (a file a browser page was handed, say): as
/// [`read`] reads the file `name`, its format from the extension of `name`, which errors
/// name with their line (`reviews.csv:7: ...`).
pub fn read_bytes(name: impl AsRef<Path>, bytes: &[u8]) -> Result<Records> {
    let name = name.as_ref();
    read_bytes_as(name, bytes, Format::of(name)?)
}

/// [`read_bytes`] in `format`, whatever the name's extension.
pub fn read_bytes_as(name: impl AsRef<Path>, bytes: &[u8], format: Format) -> Result<Records> {
    let path = name.as_ref();
    let (columns, records) = match format {
        Format::Csv => delimited(path, bytes, b',')?,
        Format::Tsv => delimited(path, bytes, b'\t')?,
        Format::JsonLines => json_lines(path, bytes)?,
        Format::Text => text_lines(path, bytes)?,
        Format::Conll => conll(path, bytes)?,
    };
    if records.is_empty() {
        return Err(Error::Format {
            path: path.display().to_string(),
            message: "no records: the file is empty".into(),
        });
    }
    Ok(Records {
        path: path.to_path_buf(),
        format,
        columns,
        records,
    })
}

/// The file's lines as text, each with its number; a line that is not UTF-8 is an error
/// naming it.
fn utf8_lines<'b>(path: &Path, bytes: &'b [u8]) -> Result<Vec<(usize, &'b str)>> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes); // a byte-order mark
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            std::str::from_utf8(line)
                .map(|l| (i + 1, l))
                .map_err(|e| at_line(path, i + 1, format!("not UTF-8 (byte {})", e.valid_up_to())))
        })
        .collect()
}

fn delimited(path: &Path, bytes: &[u8], delimiter: u8) -> Result<(Vec<String>, Vec<Record>)> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        // A row with another count of fields than the header is an error naming it.
        .flexible(false)
        .from_reader(bytes);
    let csv_error = |e: csv::Error| {
        let line = e.position().map_or(0, |p| p.line() as usize);
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("{len} fields, but the header has {expected_len}"),
            csv::ErrorKind::Utf8 { .. } => "not UTF-8".to_string(),
            _ => e.to_string(),
        };
        at_line(path, line, message)
    };
    let header = reader.headers().map_err(csv_error)?.clone();
    let columns: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    if columns.iter().all(String::is_empty) {
        return Ok((columns, Vec::new()));
    }
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return Err(at_line(
                path,
                1,
                format!("the header names column {c:?} twice"),
            ));
        }
    }
    let mut records = Vec::new();
    for row in reader.records() {
        let row = row.map_err(csv_error)?;
        let line = row.position().map_or(0, |p| p.line() as usize);
        let fields = columns
            .iter()
            .zip(row.iter())
            .map(|(c, v)| (c.clone(), Value::String(v.to_string())))
            .collect();
        records.push(Record { line, fields });
    }
    Ok((columns, records))
}

fn json_lines(path: &Path, bytes: &[u8]) -> Result<(Vec<String>, Vec<Record>)> {
    let mut columns: Vec<String> = Vec::new();
    let mut records = Vec::new();
    for (line, text) in utf8_lines(path, bytes)? {
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| at_line(path, line, format!("not JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(at_line(path, line, "not a JSON object"));
        };
        for k in fields.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
        records.push(Record { line, fields });
    }
    Ok((columns, records))
}

fn text_lines(path: &Path, bytes: &[u8]) -> Result<(Vec<String>, Vec<Record>)> {
    let records = utf8_lines(path, bytes)?
        .into_iter()
        .filter(|(_, t)| !t.trim().is_empty())
        .map(|(line, t)| Record {
            line,
            fields: Map::from_iter([("text".to_string(), Value::String(t.to_string()))]),
        })
        .collect();
    Ok((vec!["text".to_string()], records))
}

fn conll(path: &Path, bytes: &[u8]) -> Result<(Vec<String>, Vec<Record>)> {
    let mut records = Vec::new();
    let (mut tokens, mut tags, mut start) = (Vec::new(), Vec::new(), 0);
    let mut flush = |tokens: &mut Vec<Value>, tags: &mut Vec<Value>, start: usize| {
        if !tokens.is_empty() {
            records.push(Record {
                line: start,
                fields: Map::from_iter([
                    ("tokens".to_string(), Value::Array(std::mem::take(tokens))),
                    ("tags".to_string(), Value::Array(std::mem::take(tags))),
                ]),
            });
        }
    };
    for (line, text) in utf8_lines(path, bytes)? {
        let text = text.trim();
        if text.is_empty() || text.starts_with("-DOCSTART-") {
            flush(&mut tokens, &mut tags, start);
            continue;
        }
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() < 2 {
            return Err(at_line(
                path,
                line,
                "a token without a tag (CoNLL: `token ... tag`)",
            ));
        }
        if tokens.is_empty() {
            start = line;
        }
        tokens.push(Value::String(parts[0].to_string()));
        tags.push(Value::String(parts[parts.len() - 1].to_string()));
    }
    flush(&mut tokens, &mut tags, start);
    Ok((vec!["tokens".to_string(), "tags".to_string()], records))
}

impl Records {
    /// An error unless every column is there, naming the file and the columns it has.
    pub fn require(&self, columns: &[&str]) -> Result<()> {
        for c in columns {
            if !self.columns.iter().any(|have| have == c) {
                return Err(Error::Format {
                    path: self.path.display().to_string(),
                    message: format!(
                        "no column {c:?} (the file's columns: {})",
                        self.columns.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// An error about record `r`.
    pub fn error(&self, r: &Record, message: impl Into<String>) -> Error {
        at_line(&self.path, r.line, message)
    }

    /// Record `r`'s field `column`, which must be there.
    pub fn field<'r>(&self, r: &'r Record, column: &str) -> Result<&'r Value> {
        r.fields
            .get(column)
            .ok_or_else(|| self.error(r, format!("no field {column:?}")))
    }

    /// Record `r`'s field `column` as text: a string (a number is written as JSON writes it).
    pub fn text(&self, r: &Record, column: &str) -> Result<String> {
        match self.field(r, column)? {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(self.error(
                r,
                format!("field {column:?} is {}, not text", kind_of(other)),
            )),
        }
    }

    /// Record `r`'s field `column` as a list of strings (JSON Lines' lists, CoNLL's
    /// columns; numbers are written as JSON writes them).
    pub fn strings(&self, r: &Record, column: &str) -> Result<Vec<String>> {
        let Value::Array(items) = self.field(r, column)? else {
            return Err(self.error(r, format!("field {column:?} is not a list")));
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(self.error(
                    r,
                    format!("field {column:?} holds {}, not text", kind_of(other)),
                )),
            })
            .collect()
    }
}

/// What a JSON value is, for messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("roformer-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn err(path: &Path) -> String {
        read(path).unwrap_err().to_string()
    }

    #[test]
    fn each_format_reads_its_records_with_their_lines() {
        let csv = read(file(
            "a.csv",
            b"text,label\n\"hello, world\",pos\n\"two\nlines\",neg\n",
        ))
        .unwrap();
        assert_eq!(csv.columns, ["text", "label"]);
        assert_eq!(csv.records.len(), 2);
        assert_eq!(csv.text(&csv.records[0], "text").unwrap(), "hello, world");
        assert_eq!(csv.records[1].line, 3);
        assert_eq!(csv.text(&csv.records[1], "text").unwrap(), "two\nlines");
        let tsv = read(file("a.tsv", b"\xef\xbb\xbftext\tlabel\r\nhi\t1\r\n")).unwrap();
        assert_eq!(tsv.text(&tsv.records[0], "label").unwrap(), "1");
        let jsonl = read(file(
            "a.jsonl",
            b"{\"text\": \"a\", \"label\": 2}\n\n{\"tokens\": [\"x\", \"y\"], \"text\": \"b\"}\n",
        ))
        .unwrap();
        assert_eq!(jsonl.columns, ["label", "text", "tokens"]);
        assert_eq!(jsonl.records[1].line, 3);
        assert_eq!(jsonl.text(&jsonl.records[0], "label").unwrap(), "2");
        assert_eq!(
            jsonl.strings(&jsonl.records[1], "tokens").unwrap(),
            ["x", "y"]
        );
        let txt = read(file("a.txt", b"one doc\n\n  \nanother\n")).unwrap();
        assert_eq!(txt.records.len(), 2);
        assert_eq!(txt.records[1].line, 4);
        let conll = read(file(
            "a.conll",
            b"-DOCSTART- O\n\nEU B-ORG\nrejects O\n\nPeter NNP B-PER\n",
        ))
        .unwrap();
        assert_eq!(conll.records.len(), 2);
        assert_eq!(
            conll.strings(&conll.records[0], "tags").unwrap(),
            ["B-ORG", "O"]
        );
        assert_eq!(conll.records[1].line, 6);
        assert_eq!(conll.strings(&conll.records[1], "tags").unwrap(), ["B-PER"]);
    }

    #[test]
    fn bad_files_are_errors_naming_file_and_line() {
        let ragged = file("r.csv", b"text,label\na,1\nb,2,3\n");
        assert!(
            err(&ragged).ends_with("r.csv:3: 3 fields, but the header has 2"),
            "{}",
            err(&ragged)
        );
        let bytes = file("b.txt", b"fine\n\xff\xfe bad\n");
        assert!(
            err(&bytes).ends_with("b.txt:2: not UTF-8 (byte 0)"),
            "{}",
            err(&bytes)
        );
        let csv_bytes = file("b.csv", b"text\nok\n\xff\n");
        assert!(
            err(&csv_bytes).contains("b.csv:3: not UTF-8"),
            "{}",
            err(&csv_bytes)
        );
        let empty = file("e.jsonl", b"\n\n");
        assert!(err(&empty).ends_with("e.jsonl: no records: the file is empty"));
        let header_only = file("h.csv", b"text,label\n");
        assert!(err(&header_only).contains("no records"));
        let not_json = file("n.jsonl", b"{\"a\": 1}\n[1, 2]\n{oops\n");
        assert!(
            err(&not_json).contains("n.jsonl:2: not a JSON object"),
            "{}",
            err(&not_json)
        );
        let twice = file("t.csv", b"a,a\n1,2\n");
        assert!(err(&twice).contains("t.csv:1: the header names column \"a\" twice"));
        let tagless = file("c.conll", b"EU B-ORG\nrejects\n");
        assert!(err(&tagless).contains("c.conll:2: a token without a tag"));
        assert!(read(file("x.parquet", b""))
            .unwrap_err()
            .to_string()
            .contains(".csv, .tsv"));
        let missing = std::env::temp_dir().join("roformer-no-such-file.csv");
        assert!(matches!(read(&missing), Err(Error::Io { .. })));
    }

    #[test]
    fn bytes_read_as_their_file_reads() {
        let files: [(&str, &[u8]); 5] = [
            ("m.csv", b"text,label\n\"hello, world\",pos\nbye,neg\n"),
            ("m.tsv", b"text\tlabel\r\nhi\t1\r\n"),
            (
                "m.jsonl",
                b"{\"text\": \"a\", \"label\": 2}\n\n{\"text\": \"b\"}\n",
            ),
            ("m.txt", b"one doc\n\nanother\n"),
            ("m.conll", b"EU B-ORG\nrejects O\n\nPeter B-PER\n"),
        ];
        for (name, bytes) in files {
            let from_file = read(file(name, bytes)).unwrap();
            let from_bytes = read_bytes(name, bytes).unwrap();
            assert_eq!(from_bytes.path, Path::new(name));
            assert_eq!(
                Records {
                    path: from_file.path.clone(),
                    ..from_bytes
                },
                from_file,
                "{name}"
            );
        }
        // Errors name the given name and the line, as they name a file's.
        let ragged = read_bytes("upload.csv", b"text,label\na,1\nb,2,3\n").unwrap_err();
        let ragged_file = read(file("upload.csv", b"text,label\na,1\nb,2,3\n")).unwrap_err();
        assert!(ragged_file.to_string().ends_with(&ragged.to_string()));
        assert!(ragged.to_string().contains("upload.csv:3: 3 fields"));
        let bad = read_bytes("u.jsonl", b"{\"text\": 1}\n\xff\n").unwrap_err();
        assert!(bad.to_string().contains("u.jsonl:2: not UTF-8"), "{bad}");
        assert!(read_bytes("empty.csv", b"")
            .unwrap_err()
            .to_string()
            .contains("empty.csv: no records"));
        assert!(read_bytes("data.xlsx", b"x")
            .unwrap_err()
            .to_string()
            .contains("data.xlsx: the file's extension"));
        let jsonl = read_bytes_as("anything", b"{\"text\": \"a\"}\n", Format::JsonLines).unwrap();
        assert_eq!(jsonl.records.len(), 1);
    }

    #[test]
    fn fields_are_checked_where_they_are_used() {
        let r = read(file("f.jsonl", b"{\"text\": [1], \"tokens\": \"x\"}\n")).unwrap();
        let rec = &r.records[0];
        assert!(r
            .require(&["text", "label"])
            .unwrap_err()
            .to_string()
            .ends_with("f.jsonl: no column \"label\" (the file's columns: text, tokens)"));
        assert!(r
            .text(rec, "text")
            .unwrap_err()
            .to_string()
            .ends_with("f.jsonl:1: field \"text\" is a list, not text"));
        assert!(r
            .strings(rec, "tokens")
            .unwrap_err()
            .to_string()
            .contains("is not a list"));
        assert!(r
            .text(rec, "label")
            .unwrap_err()
            .to_string()
            .contains("no field \"label\""));
    }
}
