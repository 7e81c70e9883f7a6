//! Plain-text tables for the terminal: columns padded to their widest cell, the last one
//! left ragged so long errors do not pad every line.

/// Prints `header` and `rows` (each as long as `header`).
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render(header, rows));
}

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(&widths).enumerate() {
            if i + 1 == cols.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_and_the_last_is_not_padded() {
        let rows =
            vec![vec!["query".to_owned(), "1".to_owned(), "x".to_owned()], vec!["a".into(), "1234".into(), "".into()]];
        assert_eq!(super::render(&["NAME", "N", "ERROR"], &rows), "NAME   N     ERROR\nquery  1     x\na      1234\n");
    }
}
