//! Method overrides hidden in a request's parameters.
//!
//! Many frameworks let a parameter replace the HTTP method: `_method` in the query or a
//! form body (Rails/Rack, Laravel, Symfony, Spring's `HiddenHttpMethodFilter`, ASP.NET
//! Core's `HttpMethodOverride`), and, reading request input, in a JSON body (Laravel).
//! Through the shim that turns a token for `POST /repos/{o}/{r}/issues` into a DELETE.
//! So a request carrying an override parameter anywhere a framework looks is refused.
//!
//! Names are compared as PHP reads them (its `register_variables` mangling): leading
//! spaces dropped or kept (both readings are checked), `.` and ` ` and an unmatched `[`
//! turned into `_`, `name[...]` read as `name`, case ignored. So `.method`, ` method`, `[method`, `_METHOD` and `_method[]`
//! are all `_method`. A body that claims a form or JSON type but cannot be read is
//! refused as well: what the shim cannot check, it does not forward.

/// Parameter names that override the method or the URL, after [`mangle`].
const OVERRIDE_NAMES: [&str; 5] = [
    "_method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "_http_method",
];

/// Why a request's parameters cannot go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A parameter overrides the method.
    Override,
    /// A form or JSON body that does not parse as its type.
    Unreadable,
}

/// Whether the query string carries an override parameter.
pub fn in_query(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(key, _)| is_override(&key))
}

/// Checks a body of `content_type` (the request's `Content-Type`, if any). A body
/// without a type is read as a form, as Rack does.
pub fn in_body(content_type: Option<&str>, body: &[u8]) -> Result<(), Refusal> {
    if body.is_empty() {
        return Ok(());
    }
    let content_type = content_type.unwrap_or("application/x-www-form-urlencoded");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // Laravel reads any type containing `/json` or `+json` as JSON.
    let json = media.contains("/json") || media.contains("+json");
    let found = if media == "application/x-www-form-urlencoded" {
        let text = std::str::from_utf8(body).map_err(|_| Refusal::Unreadable)?;
        in_query(text)
    } else if media == "multipart/form-data" {
        let boundary = parameter(content_type, "boundary").ok_or(Refusal::Unreadable)?;
        multipart_names(body, &boundary)?
            .iter()
            .any(|name| is_override(name))
    } else if json {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(map)) => map.keys().any(|k| is_override(k)),
            Ok(_) => false,
            Err(_) => return Err(Refusal::Unreadable),
        }
    } else {
        false
    };
    if found {
        Err(Refusal::Override)
    } else {
        Ok(())
    }
}

/// Whether `name`, read with or without its leading spaces (PHP versions differ),
/// is an override parameter.
fn is_override(name: &str) -> bool {
    [name, name.trim_start_matches(' ')]
        .iter()
        .any(|n| OVERRIDE_NAMES.contains(&mangle(n).as_str()))
}

/// A parameter name as PHP registers it, lowercased.
fn mangle(name: &str) -> String {
    // `a[...]`: an array named `a`.
    let base = match name.find('[') {
        Some(i) if name[i..].contains(']') => &name[..i],
        _ => name,
    };
    base.chars()
        .map(|c| match c {
            '.' | ' ' | '[' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The value of parameter `name` in a header value such as
/// `multipart/form-data; boundary="x"`; None when absent or given twice (parsers
/// disagree on which one counts).
fn parameter(header: &str, name: &str) -> Option<String> {
    let mut values = header.split(';').skip(1).filter_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    });
    let value = values.next().filter(|v| !v.is_empty())?;
    values.next().is_none().then_some(value)
}

/// The `name` of every part of a `multipart/form-data` body (RFC 7578).
fn multipart_names(body: &[u8], boundary: &str) -> Result<Vec<String>, Refusal> {
    // A delimiter starts a line (RFC 2046 §5.1.1): `--boundary` inside a part's content
    // is content, as the upstream's parser reads it.
    let text = format!("\n{}", String::from_utf8_lossy(body));
    let delimiter = format!("\n--{boundary}");
    let mut parts = text.split(delimiter.as_str());
    parts.next(); // the preamble
    let mut names = Vec::new();
    let mut closed = false;
    for part in parts {
        if part.starts_with("--") {
            closed = true;
            break;
        }
        let head = part
            .split_once("\r\n\r\n")
            .or_else(|| part.split_once("\n\n"))
            .map(|(head, _)| head)
            .ok_or(Refusal::Unreadable)?;
        for line in head.lines() {
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            if field.trim().eq_ignore_ascii_case("content-disposition")
                && let Some(name) = parameter(value, "name")
            {
                names.push(name);
            }
        }
    }
    if !closed {
        return Err(Refusal::Unreadable);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_form_names_are_mangled_as_php_reads_them() {
        for query in [
            "_method=DELETE",
            "_METHOD=delete",
            ".method=DELETE",
            "%20method=DELETE",
            "[method=DELETE",
            "_method[]=DELETE",
            "_method[a]=DELETE",
            "a=1&x-http-method-override=DELETE",
            "X-HTTP-Method=PUT",
        ] {
            assert!(in_query(query), "{query}");
            let form = Some("application/x-www-form-urlencoded; charset=utf-8");
            assert_eq!(
                in_body(form, query.as_bytes()),
                Err(Refusal::Override),
                "{query}"
            );
        }
        for query in ["method=DELETE", "a_method=x", "title=_method", "m=1"] {
            assert!(!in_query(query), "{query}");
        }
    }

    #[test]
    fn multipart_and_json_bodies_are_read() {
        let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhi\r\n--XyZ\r\ncontent-disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n";
        let ct = Some("multipart/form-data; boundary=XyZ");
        assert_eq!(in_body(ct, multipart.as_bytes()), Err(Refusal::Override));
        let clean = multipart.replace("_method", "body");
        assert_eq!(in_body(ct, clean.as_bytes()), Ok(()));
        let unterminated = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx";
        assert_eq!(
            in_body(ct, unterminated.as_bytes()),
            Err(Refusal::Unreadable)
        );
        assert_eq!(
            in_body(Some("multipart/form-data"), multipart.as_bytes()),
            Err(Refusal::Unreadable)
        );

        let json = Some("application/json");
        assert_eq!(
            in_body(json, br#"{"_method":"DELETE"}"#),
            Err(Refusal::Override)
        );
        assert_eq!(
            in_body(
                Some("application/vnd.api+json"),
                br#"{"title":"x","_Method":"PUT"}"#
            ),
            Err(Refusal::Override)
        );
        assert_eq!(in_body(json, br#"{"title":"_method"}"#), Ok(()));
        assert_eq!(in_body(json, b"[1,2]"), Ok(()));
        assert_eq!(in_body(json, b"{not json"), Err(Refusal::Unreadable));
        assert_eq!(in_body(Some("text/plain"), b"_method=DELETE"), Ok(()));
        // No type: read as a form (Rack does). Laravel's JSON is any `/json`.
        assert_eq!(in_body(None, b"_method=DELETE"), Err(Refusal::Override));
        assert_eq!(
            in_body(Some("text/json"), br#"{"_method":"PUT"}"#),
            Err(Refusal::Override)
        );
        // A delimiter only counts at the start of a line, and one boundary only.
        let hidden = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx--XyZ--\r\n--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n";
        assert_eq!(in_body(ct, hidden.as_bytes()), Err(Refusal::Override));
        let two = Some("multipart/form-data; boundary=XyZ; boundary=Other");
        assert_eq!(in_body(two, multipart.as_bytes()), Err(Refusal::Unreadable));
    }
}
