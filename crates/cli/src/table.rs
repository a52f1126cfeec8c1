//! Plain-text tables for the list commands (`deliveries list`, `connectors list`): each column
//! is as wide as its widest value, header included, so the columns line up whatever the ids,
//! names and errors are; numbers are right-aligned; the last column is not padded (no trailing
//! blanks). Pure: rows in, text out.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Columns two spaces apart, one line per row after the header, each line ending in `\n`.
pub fn render(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain([columns[i].0.chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns.len()).map(width).collect();
    let header: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (_, align)) in columns.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            let pad = widths[i].saturating_sub(cell.chars().count());
            let last = i + 1 == columns.len();
            if i > 0 {
                line.push_str("  ");
            }
            match align {
                Align::Right => {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                Align::Left => {
                    line.push_str(cell);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A JSON value as a cell: text as it is, `-` for null or missing, anything else as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_value() {
        let rows = vec![
            vec![
                "dlv_1".into(),
                "a-very-long-connector".into(),
                "7".into(),
                "timeout".into(),
            ],
            vec!["dlv_22222".into(), "sms".into(), "12345".into(), "-".into()],
        ];
        let text = render(
            &[
                ("id", Align::Left),
                ("connector", Align::Left),
                ("attempts", Align::Right),
                ("last error", Align::Left),
            ],
            &rows,
        );
        assert_eq!(
            text,
            "id         connector              attempts  last error\n\
             dlv_1      a-very-long-connector         7  timeout\n\
             dlv_22222  sms                       12345  -\n"
        );
    }

    #[test]
    fn a_letter_beyond_ascii_is_one_column_and_the_last_column_has_no_trailing_blanks() {
        let rows = vec![
            vec!["müller".into(), "x".into()],
            vec!["a".into(), "".into()],
        ];
        let text = render(&[("name", Align::Left), ("note", Align::Left)], &rows);
        assert_eq!(text, "name    note\nmüller  x\na\n");
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&serde_json::json!(3)), "3");
        assert_eq!(cell(&serde_json::json!("s")), "s");
    }
}
