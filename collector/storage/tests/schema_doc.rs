//! docs/schema.md lists exactly the tables, views and columns the database
//! has, in order, with their declared types.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use collector_storage::SqliteStore;

const DOC: &str = include_str!("../../../docs/schema.md");

/// (column, type) rows of the table after the heading "### `name`".
fn documented(name: &str) -> Vec<(String, String)> {
    let heading = format!("### `{name}`");
    let mut lines = DOC.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "docs/schema.md has no heading {heading}");
    lines
        .take_while(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let column = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((column.to_string(), cells.get(2)?.to_string()))
        })
        .collect()
}

#[test]
fn every_table_and_view_is_documented_column_for_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let objects: Vec<(String, String)> = conn
        .prepare("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(objects.len() >= 11, "{objects:?}");
    for (name, kind) in objects {
        let mut columns = Vec::new();
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({name})")).unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .unwrap();
        for row in rows {
            let (column, declared) = row.unwrap();
            // Views have no declared types; the document gives the type the
            // expression yields, which the table test already pins for tables.
            columns.push((column, declared));
        }
        let doc = documented(&name);
        let doc_columns: Vec<&str> = doc.iter().map(|(c, _)| c.as_str()).collect();
        let db_columns: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(doc_columns, db_columns, "docs/schema.md columns of {kind} {name}");
        if kind == "table" {
            for ((column, declared), (_, doc_type)) in columns.iter().zip(&doc) {
                assert_eq!(declared, doc_type, "type of {name}.{column}");
            }
        }
    }
}
