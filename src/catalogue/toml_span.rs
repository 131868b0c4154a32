//! Where a TOML error is: the key path (`action[2].agents[1]`) of the deepest entry
//! whose span covers the error's byte span, found by walking a best-effort
//! (recoverable) parse of the document. Generic over any TOML document.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub enum KeySeg {
    Key(String),
    Index(usize),
    /// Key text as written in the file (possibly dotted or quoted).
    Raw(String),
}

pub fn locate_key(text: &str, span: &Range<usize>) -> Vec<KeySeg> {
    let (doc, _) = DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    if find_in_table(doc.get_ref(), span, &mut path) {
        return path;
    }
    // Not in the (recovered) tree, e.g. a repeated key or broken syntax: name the
    // header, or the table the error sits in and the key written on its line.
    let line_start = text
        .get(..span.start)
        .and_then(|before| before.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_default()
        .trim();
    if line.starts_with('[') {
        let header = line
            .split('#')
            .next()
            .unwrap_or_default()
            .trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace());
        return vec![KeySeg::Raw(header.to_owned())];
    }
    path.clear();
    enclosing_table(doc.get_ref(), span.start, &mut path);
    let written = match line.split_once('=') {
        Some((key, _)) => key.trim(),
        None => line.split_whitespace().next().unwrap_or_default(),
    };
    let token = text.get(span.clone()).unwrap_or_default();
    let is_key = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.\"' ".contains(&b))
    };
    if is_key(written) {
        path.push(KeySeg::Raw(written.to_owned()));
    } else if is_key(token) {
        path.push(KeySeg::Raw(token.to_owned()));
    }
    path
}

/// Descends into the table whose header comes last before `offset`.
fn enclosing_table<'a, 'i>(table: &'a DeTable<'i>, offset: usize, path: &mut Vec<KeySeg>) {
    let mut best: Option<(usize, Vec<KeySeg>, &'a DeTable<'i>)> = None;
    let mut consider = |value: &'a Spanned<DeValue<'i>>, segs: Vec<KeySeg>| {
        if let DeValue::Table(inner) = value.get_ref() {
            let start = value.span().start;
            if start <= offset && best.as_ref().is_none_or(|(b, _, _)| start >= *b) {
                best = Some((start, segs, inner));
            }
        }
    };
    for (key, value) in table.iter() {
        let name = || KeySeg::Key(key.get_ref().to_string());
        match value.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    consider(item, vec![name(), KeySeg::Index(i)]);
                }
            }
            _ => consider(value, vec![name()]),
        }
    }
    if let Some((_, segs, inner)) = best {
        path.extend(segs);
        enclosing_table(inner, offset, path);
    }
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    if inner.is_empty() {
        outer.contains(&inner.start)
    } else {
        outer.start <= inner.start && inner.end <= outer.end
    }
}

fn find_in_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<KeySeg>) -> bool {
    for (key, value) in table.iter() {
        path.push(KeySeg::Key(key.get_ref().to_string()));
        if find_in_value(value, span, path)
            || covers(&key.span(), span)
            || covers(&value.span(), span)
        {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(
    value: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &mut Vec<KeySeg>,
) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, span, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(KeySeg::Index(i));
                if find_in_value(item, span, path) || covers(&item.span(), span) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

/// Renders a key path relative to its `[[action]]` (`agents[1]`,
/// `request.method`); a bare `action[N]` or a top-level key stays as it is; an
/// unlocated error is keyed `toml`.
pub fn render_key(path: &[KeySeg]) -> String {
    let rel = match path {
        [KeySeg::Key(a), KeySeg::Index(_), rest @ ..] if a == "action" && !rest.is_empty() => rest,
        _ => path,
    };
    if rel.is_empty() {
        return "toml".to_owned();
    }
    let mut out = String::new();
    for seg in rel {
        match seg {
            KeySeg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            KeySeg::Raw(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            KeySeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}
