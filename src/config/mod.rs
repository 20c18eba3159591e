//! Pipeline configuration: load a YAML file, check it, and return the model that
//! the later stages use. Every problem names the file, line, column and a fix.

pub mod checks;
pub mod connect;
pub mod env;
mod error;
mod locate;
mod model;
mod raw;

use std::path::Path;

pub use checks::{Check, CheckKind, OnFailure, Severity, Threshold};
pub use connect::{
    DatabaseKind, DatabaseSource, HttpAuth, HttpMethod, HttpSource, Incremental, Paginate,
    Relation, TlsMode, strip_password,
};
pub use error::{ConfigError, Problem};
pub use locate::Position;
pub use model::{
    Aggregation, CatchUp, Direction, Export, FileSource, Grain, Kpi, LintRule, LintSettings,
    Objective, Overlap, PERSPECTIVES, Perspective, Pipeline, QualitySettings, Rollup, Scheduling,
    Scorecard, Scoring, Source, SourceKind, View, parse_cron, parse_type, project_root,
};
pub use raw::{CsvOptions, FileFormat, Literal};

use locate::SourceMap;
use raw::RawPipeline;

/// Reads, parses and checks the pipeline file at `path`.
pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
    let fail = |pipeline: Option<String>, problems: Vec<Problem>| ConfigError {
        file: path.to_path_buf(),
        pipeline,
        problems,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            None,
            vec![
                Problem::new("", format!("cannot read the pipeline file: {e}"))
                    .hint("check the path; `kpiforge init DIR` scaffolds a working project"),
            ],
        )
    })?;
    parse(&text, path).map_err(|(name, problems)| fail(name, problems))
}

/// Parses and checks pipeline `text`, read from `path` (which anchors relative paths).
pub fn parse(text: &str, path: &Path) -> Result<Pipeline, (Option<String>, Vec<Problem>)> {
    // The map of every key's position is built only to locate a problem: it
    // costs about as much as parsing the file, and a valid file needs none.
    let raw: RawPipeline = match serde_norway::from_str(text) {
        Ok(raw) => raw,
        Err(e) => return Err((None, vec![serde_problem(&e, &SourceMap::build(text))])),
    };
    let name = raw.name.clone();
    Pipeline::from_raw(raw, path).map_err(|problems| {
        let map = SourceMap::build(text);
        let located = problems
            .into_iter()
            .map(|mut p| {
                p.position = p.position.or_else(|| map.find(&p.path));
                p
            })
            .collect();
        (Some(name), located)
    })
}

/// Fills in the file positions of problems found after loading (scorecard lint),
/// from the pipeline file as it is on disk now.
pub fn locate(file: &Path, problems: &mut [Problem]) {
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    let map = SourceMap::build(&text);
    for p in problems {
        p.position = p.position.or_else(|| map.find(&p.path));
    }
}

/// Rewrites a serde error as a problem: path, position, and a suggestion for a
/// near-miss key or value.
fn serde_problem(e: &serde_norway::Error, map: &SourceMap) -> Problem {
    let position = e.location().map(|l| Position {
        line: l.line(),
        column: l.column(),
    });
    let text = e.to_string();
    // serde_norway renders "path: message at line L column C".
    let text = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    let (path, message) = match text.split_once(": ") {
        Some((path, msg)) if !path.contains(' ') => (path.to_string(), msg.to_string()),
        _ => (String::new(), text.to_string()),
    };
    let mut problem = Problem {
        path,
        position,
        message: message.clone(),
        hint: None,
    };

    if (message.starts_with("duplicate entry") || message.contains("duplicate field"))
        && let Some((dup, pos)) = &map.duplicate_key
    {
        let key = dup.rsplit('.').next().unwrap_or(dup);
        return Problem {
            path: dup.clone(),
            position: Some(*pos),
            message: format!("key `{key}` appears twice"),
            hint: Some("remove one of the two entries".into()),
        };
    }
    for (what, noun) in [("unknown field", "key"), ("unknown variant", "value")] {
        if let Some(rest) = message.strip_prefix(what) {
            let mut names = rest.split('`').skip(1).step_by(2);
            let Some(bad) = names.next() else { continue };
            let expected: Vec<&str> = names.collect();
            let place = if problem.path.is_empty() {
                "the pipeline".to_string()
            } else {
                problem.path.clone()
            };
            problem.message = format!("unknown {noun} '{bad}' in {place}");
            problem.hint = Some(match model::closest(bad, expected.iter().copied()) {
                Some(best) => format!("did you mean '{best}'?"),
                None => format!("expected one of: {}", expected.join(", ")),
            });
            return problem;
        }
    }
    if message.starts_with("mapping values are not allowed")
        || message.starts_with("did not find expected key")
    {
        problem.hint = Some(
            "check this line's indentation: a key must line up with the keys beside it".into(),
        );
    }
    if let Some(field) = message.strip_prefix("missing field ") {
        problem.hint = Some(format!(
            "add {field}; if it is there, check its indentation: a key indented too far belongs to the value above it"
        ));
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<Problem> {
        parse(yaml, Path::new("/nonexistent/pipelines/p.yaml"))
            .unwrap_err()
            .1
    }

    #[test]
    fn unknown_key_suggests_the_near_miss() {
        let p = problems(
            "name: x\noutput: out\nsources: {}\nkpis:\n  - id: a\n    sql: a.sql\n    grain: month\n    tagret: 3\n",
        );
        assert_eq!(p[0].message, "unknown key 'tagret' in kpis[0]");
        assert_eq!(p[0].hint.as_deref(), Some("did you mean 'target'?"));
        assert_eq!(p[0].position, Some(Position { line: 8, column: 5 }));
    }

    #[test]
    fn duplicate_key_points_at_the_second_one() {
        let p = problems(
            "name: x\noutput: out\nsources: {}\nkpis:\n  - id: a\n    sql: a.sql\n    grain: month\n    grain: week\n",
        );
        assert_eq!(p[0].message, "key `grain` appears twice");
        assert_eq!(p[0].position, Some(Position { line: 8, column: 5 }));
    }
}
