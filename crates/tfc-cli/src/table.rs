//! Column-aligned text for people: tables with a header row, and `key: value`
//! lists. Widths count `char`s; everything the CLI prints is single-width.
//! Lines never end in whitespace.

use std::fmt;

/// Which side of its column a cell hugs. Numbers read best right-aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table whose columns are as wide as their widest cell, two spaces apart.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it has one cell per column.
    pub fn push(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "cells per row");
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let lines = || std::iter::once(&header).chain(&self.rows);
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                lines()
                    .map(|cells| cells.get(i).map_or(0, |c| c.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for cells in lines() {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// `key: value` lines with the values lined up. A value that spans several
/// lines has its continuation lines indented to the value column.
#[derive(Debug, Default)]
pub struct Fields {
    entries: Vec<(&'static str, String)>,
}

impl Fields {
    pub fn push(&mut self, key: &'static str, value: impl Into<String>) {
        self.entries.push((key, value.into()));
    }
}

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .entries
            .iter()
            .map(|(k, _)| k.chars().count() + 1)
            .max()
            .unwrap_or(0);
        let indent = format!("\n{}", " ".repeat(width + 1));
        for (key, value) in &self.entries {
            let line = format!(
                "{:<width$} {}",
                format!("{key}:"),
                value.replace('\n', &indent)
            );
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell_and_numbers_align_right() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("MEM", Align::Right),
            ("PID", Align::Left),
        ]);
        t.push(vec!["vm-a".into(), "128MiB".into(), "-".into()]);
        t.push(vec!["vm-bbbbbb".into(), "4096MiB".into(), "".into()]);
        assert_eq!(
            t.to_string(),
            "ID             MEM  PID\n\
             vm-a        128MiB  -\n\
             vm-bbbbbb  4096MiB\n"
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let t = Table::new(&[("ID", Align::Left), ("STATE", Align::Left)]);
        assert_eq!(t.to_string(), "ID  STATE\n");
    }

    #[test]
    fn fields_line_up_and_indent_continuations() {
        let mut f = Fields::default();
        f.push("id", "vm-a");
        f.push("console log", "/x/console.log");
        f.push("failure", "boot timed out\nlast console line: ...");
        f.push("pid", "");
        assert_eq!(
            f.to_string(),
            "id:          vm-a\n\
             console log: /x/console.log\n\
             failure:     boot timed out\n             last console line: ...\n\
             pid:\n"
        );
    }
}
