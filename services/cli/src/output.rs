//! What a command prints: an aligned table by default, the gateway's JSON
//! with `-o json`, YAML with `-o yaml`, only ids with `-q`. Streams (events,
//! logs) print a line per item, and JSON Lines with `-o json`.

use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;

/// `-o`: how results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns (a detail view for one resource).
    #[default]
    Table,
    /// The gateway's JSON (JSON Lines for streams).
    Json,
    /// The same as YAML (a document per item for streams).
    Yaml,
}

/// How a column reads its cell from an item.
#[derive(Clone, Copy)]
pub enum Get {
    /// The value at this JSON pointer.
    At(&'static str),
    /// Computed from the whole item.
    With(fn(&Value) -> String),
}

/// A column of a table: its header and its cell.
#[derive(Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    pub get: Get,
}

/// A column showing the value at a JSON pointer.
pub const fn col(header: &'static str, pointer: &'static str) -> Column {
    Column { header, get: Get::At(pointer) }
}

/// A column computed from the item.
pub const fn col_with(header: &'static str, f: fn(&Value) -> String) -> Column {
    Column { header, get: Get::With(f) }
}

impl Column {
    fn cell(&self, item: &Value) -> String {
        match self.get {
            Get::At(p) => cell(item.pointer(p)),
            Get::With(f) => f(item),
        }
    }
}

/// A JSON value as one table cell: `-` for nothing.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.is_empty() => "-".into(),
        Some(Value::Array(a)) => a.iter().map(|v| cell(Some(v))).collect::<Vec<_>>().join(","),
        Some(other) => other.to_string(),
    }
}

/// An RFC 3339 time to the second (`2026-01-02T03:04:05Z`).
pub fn time_cell(v: Option<&Value>) -> String {
    match v.and_then(Value::as_str) {
        Some(t) => match (t.find('.'), t.rfind(['Z', '+']).or_else(|| t.rfind('-').filter(|i| *i > 10))) {
            (Some(dot), Some(zone)) if dot < zone => format!("{}{}", &t[..dot], &t[zone..]),
            _ => t.to_owned(),
        },
        None => "-".into(),
    }
}

/// Where results go and in which form.
#[derive(Debug, Clone, Copy, Default)]
pub struct Out {
    pub format: Format,
    pub quiet: bool,
}

impl Out {
    /// A list: a table with a row per item, the items as a JSON or YAML list, or their ids.
    pub fn list(&self, items: &[Value], columns: &[Column]) -> String {
        if self.quiet {
            return ids(items);
        }
        match self.format {
            Format::Table => table(columns, items.iter().map(|i| columns.iter().map(|c| c.cell(i)).collect()).collect()),
            Format::Json | Format::Yaml => self.document(&Value::Array(items.to_vec())),
        }
    }

    /// One resource: a detail view (a field per line), its JSON or YAML, or its id.
    pub fn detail(&self, item: &Value, columns: &[Column]) -> String {
        if self.quiet {
            return ids(std::slice::from_ref(item));
        }
        match self.format {
            Format::Table => {
                let width = columns.iter().map(|c| c.header.len()).max().unwrap_or(0) + 1;
                columns.iter().map(|c| format!("{:<width$}  {}\n", format!("{}:", c.header), c.cell(item))).collect()
            }
            Format::Json | Format::Yaml => self.document(item),
        }
    }

    /// One resource as a table row (what an action left); itself, not a list, with `-o json`.
    pub fn row(&self, item: &Value, columns: &[Column]) -> String {
        if self.quiet || self.format == Format::Table { self.list(std::slice::from_ref(item), columns) } else { self.document(item) }
    }

    /// A whole JSON or YAML document.
    pub fn document(&self, v: &Value) -> String {
        match self.format {
            Format::Yaml => serde_norway::to_string(v).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n")),
            _ => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
        }
    }

    /// One item of a stream: `line` for tables, a JSON line, a YAML document, or its id.
    pub fn stream_item(&self, item: &Value, line: impl FnOnce(&Value) -> String) -> String {
        if self.quiet {
            return ids(std::slice::from_ref(item));
        }
        match self.format {
            Format::Table => format!("{}\n", line(item)),
            Format::Json => format!("{}\n", serde_json::to_string(item).unwrap_or_default()),
            Format::Yaml => format!("---\n{}", serde_norway::to_string(item).unwrap_or_default()),
        }
    }
}

/// The `id` of each item, a line each.
fn ids(items: &[Value]) -> String {
    items.iter().filter_map(|i| i.get("id").and_then(Value::as_str)).map(|id| format!("{id}\n")).collect()
}

/// Aligned columns without borders; no trailing spaces.
pub fn table(columns: &[Column], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(columns.iter().map(|c| c.header));
    for row in rows {
        t.add_row(row);
    }
    let last = columns.len().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 3 }));
    }
    let mut out = String::new();
    for line in t.to_string().lines() {
        let line = line.trim_end();
        if !line.is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COLS: [Column; 3] = [col("ID", "/id"), col("NAME", "/name"), col_with("PORTS", |v| cell(v.pointer("/ports")))];

    fn items() -> Vec<Value> {
        vec![json!({"id": "vm_1", "name": "web", "ports": [80, 443]}), json!({"id": "vm_22", "name": "database", "ports": []})]
    }

    #[test]
    fn tables_are_aligned_without_borders_or_trailing_space() {
        let t = Out::default().list(&items(), &COLS);
        assert_eq!(t, "ID      NAME       PORTS\nvm_1    web        80,443\nvm_22   database   -\n");
    }

    #[test]
    fn json_yaml_and_ids() {
        let json_out = Out { format: Format::Json, quiet: false }.list(&items(), &COLS);
        assert_eq!(serde_json::from_str::<Value>(&json_out).unwrap(), Value::Array(items()));
        let yaml = Out { format: Format::Yaml, quiet: false }.list(&items(), &COLS);
        assert!(yaml.contains("name: database"), "{yaml}");
        assert_eq!(Out { format: Format::Json, quiet: true }.list(&items(), &COLS), "vm_1\nvm_22\n");
        let one = Out { format: Format::Json, quiet: false }.row(&items()[0], &COLS);
        assert_eq!(serde_json::from_str::<Value>(&one).unwrap(), items()[0]);
        assert_eq!(Out { format: Format::Table, quiet: true }.detail(&items()[1], &COLS), "vm_22\n");
    }

    #[test]
    fn details_and_cells() {
        let d = Out::default().detail(&items()[0], &COLS);
        assert_eq!(d, "ID:     vm_1\nNAME:   web\nPORTS:  80,443\n");
        assert_eq!(cell(None), "-");
        assert_eq!(cell(Some(&json!(null))), "-");
        assert_eq!(cell(Some(&json!(true))), "true");
        assert_eq!(time_cell(Some(&json!("2026-01-02T03:04:05.123456Z"))), "2026-01-02T03:04:05Z");
        assert_eq!(time_cell(Some(&json!("2026-01-02T03:04:05+02:00"))), "2026-01-02T03:04:05+02:00");
        assert_eq!(time_cell(Some(&json!("2026-01-02T03:04:05.5-02:00"))), "2026-01-02T03:04:05-02:00");
    }

    #[test]
    fn stream_items() {
        let e = json!({"id": "evt_1", "seq": 3});
        assert_eq!(Out::default().stream_item(&e, |v| cell(v.get("seq"))), "3\n");
        assert_eq!(Out { format: Format::Json, quiet: false }.stream_item(&e, |_| String::new()), "{\"id\":\"evt_1\",\"seq\":3}\n");
        assert_eq!(Out { format: Format::Json, quiet: true }.stream_item(&e, |_| String::new()), "evt_1\n");
    }
}
