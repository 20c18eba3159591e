//! Bad pipeline files: each gives exit code 2 and a message naming the file, the
//! line and the fix. The message text is asserted, not just the failure.

use super::util::{assert_fails, kpiforge, project};

const SQL: &str = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(count(*) AS DOUBLE) AS value FROM t GROUP BY CAST(date_trunc('month', d) AS DATE)";
const CSV: &str = "id,d,amount\n1,2026-01-05,10\n2,2026-02-07,20\n";

/// A valid pipeline with `edit` applied to its text.
fn pipeline(edit: impl Fn(String) -> String) -> String {
    edit(
        "name: p\noutput: out\nsources:\n  t:\n    file: data/t.csv\n    columns: {d: date}\nscorecard:\n  objectives:\n    - {id: grow, perspective: financial}\nkpis:\n  - id: k\n    objective: grow\n    sql: sql/k.sql\n    grain: month\n    target: 3\n    red_flag: 1\n"
            .to_string(),
    )
}

/// Validates the edited pipeline and asserts the failure.
#[track_caller]
fn rejects(edit: impl Fn(String) -> String, needles: &[&str]) {
    let yaml = pipeline(edit);
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("data/t.csv", CSV),
        ("sql/k.sql", SQL),
    ]);
    let out = kpiforge(dir.path(), &["validate", "pipelines/p.yaml"]);
    assert_fails(&out, 2, needles);
}

#[test]
fn the_unedited_pipeline_is_valid() {
    let dir = project(&[
        ("pipelines/p.yaml", &pipeline(|s| s)),
        ("data/t.csv", CSV),
        ("sql/k.sql", SQL),
    ]);
    let out = kpiforge(dir.path(), &["validate", "pipelines/p.yaml"]);
    assert!(out.status.success(), "{}", super::util::stderr(&out));
    assert!(
        super::util::stdout(&out).contains("pipeline `p` is valid: 1 sources, 0 views, 1 KPIs")
    );
}

#[test]
fn near_miss_key_suggests_the_right_one() {
    rejects(
        |s| s.replace("target: 3", "tagret: 3"),
        &[
            "pipelines/p.yaml:15:5: kpis[0]: unknown key 'tagret' in kpis[0]",
            "did you mean 'target'?",
        ],
    );
}

#[test]
fn unknown_top_level_key() {
    rejects(
        |s| s + "schedul: x\n",
        &[
            "p.yaml:17:1",
            "unknown key 'schedul' in the pipeline",
            "did you mean 'schedule'?",
        ],
    );
}

#[test]
fn wrong_type() {
    rejects(
        |s| s.replace("target: 3", "target: lots"),
        &[
            "p.yaml:15:13",
            "kpis[0].target: invalid type: string \"lots\", expected f64",
        ],
    );
}

#[test]
fn unknown_grain_value_suggests() {
    rejects(
        |s| s.replace("grain: month", "grain: monthly"),
        &[
            "p.yaml:14:12",
            "unknown value 'monthly' in kpis[0].grain",
            "did you mean 'month'?",
        ],
    );
}

#[test]
fn missing_data_file() {
    rejects(
        |s| s.replace("data/t.csv", "data/nope.csv"),
        &[
            "p.yaml:5:5: sources.t.file: file `data/nope.csv` not found",
            "relative to the project root",
        ],
    );
}

#[test]
fn glob_matching_nothing() {
    rejects(
        |s| s.replace("data/t.csv", "data/*.parquet"),
        &["sources.t.file: no file matches `data/*.parquet`"],
    );
}

#[test]
fn missing_sql_file() {
    rejects(
        |s| s.replace("sql/k.sql", "sql/gone.sql"),
        &["p.yaml:13:5: kpis[0].sql: cannot read SQL file `sql/gone.sql`"],
    );
}

#[test]
fn undefined_objective_suggests() {
    rejects(
        |s| s.replace("objective: grow", "objective: grwo"),
        &[
            "p.yaml:12:5: kpis[0].objective: unknown objective `grwo`",
            "did you mean `grow`?",
        ],
    );
}

#[test]
fn unknown_perspective() {
    rejects(
        |s| s.replace("perspective: financial", "perspective: finance"),
        &[
            "scorecard.objectives[0].perspective: unknown perspective `finance`",
            "did you mean `financial`?",
        ],
    );
}

#[test]
fn unset_variable_is_named_and_never_valued() {
    rejects(
        |s| s.replace("output: out", "output: ${KPIFORGE_TEST_SURELY_UNSET}/out"),
        &[
            "p.yaml:2:1: output: environment variable `KPIFORGE_TEST_SURELY_UNSET` is not set",
            "export KPIFORGE_TEST_SURELY_UNSET=",
        ],
    );
}

#[test]
fn set_variable_value_never_appears_in_errors() {
    let yaml = pipeline(|s| s.replace("data/t.csv", "${KPIFORGE_TEST_SECRET_DIR}/t.csv"));
    let dir = project(&[("pipelines/p.yaml", &yaml), ("sql/k.sql", SQL)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kpiforge"))
        .args(["validate", "pipelines/p.yaml"])
        .current_dir(dir.path())
        .env("KPIFORGE_TEST_SECRET_DIR", "hunter2-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = super::util::stderr(&out);
    assert!(err.contains("sources.t.file"), "{err}");
    assert!(!err.contains("hunter2"), "secret leaked: {err}");
}

#[test]
fn strategy_map_cycle_is_printed() {
    rejects(
        |s| {
            s.replace("    - {id: grow, perspective: financial}", "    - {id: grow, perspective: financial, causes: [serve]}\n    - {id: serve, perspective: customer, causes: [grow]}")
        },
        &["the strategy map has a cycle: grow -> serve -> grow"],
    );
}

#[test]
fn duplicate_key_points_at_the_duplicate() {
    rejects(
        |s| s.replace("    grain: month\n", "    grain: month\n    grain: week\n"),
        &["p.yaml:15:5: kpis[0].grain: key `grain` appears twice"],
    );
}

#[test]
fn over_indented_key_explains_indentation() {
    rejects(
        |s| s.replace("    grain: month\n", "      grain: month\n"),
        &["p.yaml:14:", "hint: check this line's indentation"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    rejects(
        |s| {
            s.replace("objective: grow", "objective: nope")
                .replace("sql/k.sql", "sql/none.sql")
                .replace("data/t.csv", "data/none.csv")
        },
        &[
            "3 problems",
            "kpis[0].objective",
            "kpis[0].sql",
            "sources.t.file",
        ],
    );
}

#[test]
fn kpi_with_extra_column_names_kpi_and_column() {
    let yaml = pipeline(|s| s);
    let sql = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(count(*) AS DOUBLE) AS value, max(id) AS extra FROM t GROUP BY 1";
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("data/t.csv", CSV),
        ("sql/k.sql", sql),
    ]);
    let out = kpiforge(dir.path(), &["validate", "pipelines/p.yaml"]);
    assert_fails(
        &out,
        2,
        &[
            "KPI `k`",
            "sql/k.sql",
            "column `extra` is not part of the KPI contract",
        ],
    );
}

#[test]
fn kpi_with_text_value_names_the_type() {
    let yaml = pipeline(|s| s);
    let sql = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, 'x' AS value FROM t";
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("data/t.csv", CSV),
        ("sql/k.sql", sql),
    ]);
    let out = kpiforge(dir.path(), &["validate", "pipelines/p.yaml"]);
    assert_fails(
        &out,
        2,
        &["KPI `k`", "column `value` is Utf8, expected a number"],
    );
}

#[test]
fn kpi_reading_an_unknown_table() {
    let yaml = pipeline(|s| s);
    let sql = "SELECT d AS period, 1.0 AS value FROM orders";
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("data/t.csv", CSV),
        ("sql/k.sql", sql),
    ]);
    let out = kpiforge(dir.path(), &["validate", "pipelines/p.yaml"]);
    assert_fails(&out, 2, &["KPI `k`", "orders"]);
}

const GOALS: &str = "    target: 3\n    red_flag: 1\n";

#[test]
fn goal_red_flag_needs_both_goals() {
    rejects(
        |s| s.replace("    red_flag: 1\n", ""),
        &[
            "p.yaml:11:5: kpis[0].red_flag: goal/red-flag scoring needs a `red_flag:` beside `target:`",
            "or use `scoring: percent_of_target`",
        ],
    );
}

#[test]
fn direction_must_agree_with_the_goals() {
    rejects(
        |s| s + "    direction: lower_is_better\n",
        &[
            "kpis[0].direction: direction is lower_is_better but target 3 and red flag 1 say higher_is_better",
        ],
    );
    rejects(
        |s| s + "    direction: target_band\n",
        &[
            "a target band needs `scoring: thresholds`",
            "best score in the middle",
        ],
    );
}

#[test]
fn thresholds_must_increase_and_stay_on_the_scale() {
    rejects(
        |s| s.replace(GOALS, "    thresholds: [[10, 0], [5, 100]]\n"),
        &["p.yaml:15:5: kpis[0].thresholds: threshold values must increase: 10 is followed by 5"],
    );
    rejects(
        |s| s.replace(GOALS, "    thresholds: [[1, 0], [5, 120]]\n"),
        &["point [5, 120]: scores run from 0 to 100"],
    );
    rejects(
        |s| s.replace(GOALS, "    scoring: thresholds\n"),
        &["`scoring: thresholds` needs at least two `[value, score]` points"],
    );
    rejects(
        |s| {
            s.replace(
                GOALS,
                "    scoring: percent_of_target\n    target: 3\n    red_flag: 1\n",
            )
        },
        &["`red_flag:` is not used by `scoring: percent_of_target`"],
    );
}

#[test]
fn targets_table_must_exist_and_not_clash_with_a_constant() {
    rejects(
        |s| s + "    targets: t\n",
        &["`target:` and `targets:` both give this KPI's target"],
    );
    rejects(
        |s| s.replace("    target: 3\n", "    targets: tt\n"),
        &[
            "kpis[0].targets: unknown source or view `tt`",
            "did you mean `t`?",
        ],
    );
    // `t` exists but has no `period` column: found by `validate` from its schema.
    rejects(
        |s| s.replace("    target: 3\n", "    targets: t\n"),
        &["KPI `k`: targets table `t`: it has no `period` column"],
    );
}

#[test]
fn custom_perspectives_are_declared_beside_the_classic_four() {
    rejects(
        |s| s.replace("perspective: financial", "perspective: sustainability"),
        &[
            "scorecard.objectives[0].perspective: unknown perspective `sustainability`",
            "known: customer, financial, internal_process, learning_growth; a custom perspective is declared under `scorecard: perspectives:`",
        ],
    );
    let yaml = pipeline(|s| {
        s.replace("perspective: financial", "perspective: sustainability")
            .replace("scorecard:\n", "scorecard:\n  perspectives:\n    - {id: sustainability, name: Sustainability, weight: 2}\n")
    });
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("data/t.csv", CSV),
        ("sql/k.sql", SQL),
    ]);
    let out = kpiforge(dir.path(), &["validate", "pipelines/p.yaml"]);
    assert!(out.status.success(), "{}", super::util::stderr(&out));
}
