//! `kpiforge init DIR`: scaffold a small working project (a pipeline, its SQL and
//! a little data) that `kpiforge run` succeeds on, as a starting point to edit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::Error;

const PIPELINE: &str = r#"# A kpiforge pipeline. Reference: https://github.com/kpiforge (docs/pipeline.md)
name: example
description: Example KPIs over a small orders file
timezone: UTC
output: out/example

sources:
  orders:
    file: fixtures/orders.csv
    columns: {order_date: date, amount: "decimal(10,2)"}
    key: [order_id]
    checks:                  # docs/quality.md; a failed check blocks the KPIs reading orders
      - not_null: [order_id, customer_id, order_date]
      - unique: order_id
      - between: {column: amount, min: 0, strict_min: true}

scorecard:                 # docs/scorecard.md: scoring, roll-up, lint
  # A starter map covers two of the four perspectives; remove this line once
  # internal process and learning & growth have KPIs too.
  lint: {allow: [empty_perspective]}
  objectives:
    - {id: grow_revenue, perspective: financial, name: Grow revenue}
    - {id: serve_customers, perspective: customer, name: Serve customers, causes: [grow_revenue]}

kpis:
  - id: monthly_revenue
    name: Monthly revenue
    objective: grow_revenue
    sql: sql/monthly_revenue.sql
    grain: month
    unit: EUR
    owner: finance
    direction: higher_is_better
    target: 3000
    red_flag: 2000
  - id: orders_per_customer
    name: Orders per customer
    objective: serve_customers
    sql: sql/orders_per_customer.sql
    grain: month
    unit: orders
    owner: sales
    direction: higher_is_better
    target: 1.5
    red_flag: 1.1
"#;

const MONTHLY_REVENUE: &str = "-- Revenue of the orders placed in each month.
SELECT CAST(date_trunc('month', order_date) AS DATE) AS period,
       CAST(sum(amount) AS DOUBLE) AS value
FROM orders
WHERE order_date <= $as_of
GROUP BY CAST(date_trunc('month', order_date) AS DATE)
";

const ORDERS_PER_CUSTOMER: &str =
    "-- Orders per ordering customer in each month: a ratio, so it keeps its parts.
SELECT CAST(date_trunc('month', order_date) AS DATE) AS period,
       count(*) AS numerator,
       count(DISTINCT customer_id) AS denominator
FROM orders
WHERE order_date <= $as_of
GROUP BY CAST(date_trunc('month', order_date) AS DATE)
";

/// Writes the example project into `dir`, which must be absent or empty.
/// Returns the files written.
pub fn scaffold(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::Usage(format!(
            "{} already exists and is not empty; choose a new folder for the project",
            dir.display()
        )));
    }
    let files = [
        ("pipelines/example.yaml", PIPELINE.to_string()),
        ("sql/monthly_revenue.sql", MONTHLY_REVENUE.to_string()),
        (
            "sql/orders_per_customer.sql",
            ORDERS_PER_CUSTOMER.to_string(),
        ),
        ("fixtures/orders.csv", orders_csv()),
    ];
    let mut written = Vec::new();
    for (relative, content) in files {
        let path = dir.join(relative);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
            std::fs::write(&path, content)
        };
        write().map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

/// Six months of made-up orders, the same every time.
fn orders_csv() -> String {
    let mut csv = String::from("order_id,customer_id,order_date,amount\n");
    let mut seed: u64 = 42;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for id in 1..=240u64 {
        let month = 1 + (id - 1) / 40;
        let day = 1 + next(28);
        let customer = 100 + next(30);
        let amount = 20 + next(180);
        let cents = next(100);
        let _ = writeln!(
            csv,
            "{id},{customer},2026-{month:02}-{day:02},{amount}.{cents:02}"
        );
    }
    csv
}
