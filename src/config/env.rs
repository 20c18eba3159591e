//! `${VAR}` interpolation. Secrets come from the environment; a value read here
//! never appears in a message: errors name the variable, never its content.

use std::sync::Mutex;

use super::error::Problem;

/// Every value substituted so far, with its variable's name, for [`redact`].
static SUBSTITUTED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Replaces every `${NAME}` in `text` with the environment variable's value.
/// `$$` is a literal `$`. `path` locates the value for error messages.
pub fn interpolate(text: &str, path: &str) -> Result<String, Problem> {
    interpolate_with(text, path, |name| {
        let value = std::env::var(name).ok()?;
        // Values this short are not secrets, and replacing them would garble text.
        if value.len() >= 3
            && let Ok(mut seen) = SUBSTITUTED.lock()
            && !seen.iter().any(|(_, v)| *v == value)
        {
            seen.push((name.to_string(), value.clone()));
            // Longest first, so a value inside another is not replaced first.
            seen.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        }
        Some(value)
    })
}

/// `text` with every value that came from a `${NAME}` put back as `${NAME}`.
/// Everything kpiforge prints or records passes through here, so a secret read
/// from the environment never reaches a message, a log or an output.
pub fn redact(text: &str) -> String {
    let Ok(seen) = SUBSTITUTED.lock() else {
        return text.to_string();
    };
    let mut out = text.to_string();
    for (name, value) in seen.iter() {
        // As written, and as a JSON log line escapes it.
        let escaped = serde_json::to_string(value).unwrap_or_default();
        for form in [value.as_str(), escaped.trim_matches('"')] {
            if out.contains(form) {
                out = out.replace(form, &format!("${{{name}}}"));
            }
        }
    }
    out
}

fn interpolate_with(
    text: &str,
    path: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Problem> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(body) = rest.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                return Err(Problem::new(path, "unclosed `${` in value")
                    .hint("write `${NAME}` for a variable, `$$` for a literal `$`"));
            };
            let name = &body[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(
                    Problem::new(path, format!("`${{{name}}}` is not a variable name")).hint(
                        "variable names are letters, digits and `_`, e.g. `${CRM_DATABASE_URL}`",
                    ),
                );
            }
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    return Err(Problem::new(
                        path,
                        format!("environment variable `{name}` is not set"),
                    )
                    .hint(format!(
                        "export {name}=... in the environment that runs kpiforge"
                    )));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_string())
    }

    #[test]
    fn replaces_variables_and_escapes() {
        let got = interpolate_with("a/${TOKEN}/$$x/$y", "p", lookup).unwrap();
        assert_eq!(got, "a/s3cret/$x/$y");
    }

    #[test]
    fn unset_variable_names_it_without_any_value() {
        let err = interpolate_with("${MISSING}", "sources.x.file", lookup).unwrap_err();
        assert_eq!(err.message, "environment variable `MISSING` is not set");
        assert_eq!(err.path, "sources.x.file");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(interpolate_with("${TOKEN", "p", lookup).is_err());
        assert!(interpolate_with("${1X}", "p", lookup).is_err());
    }
}
