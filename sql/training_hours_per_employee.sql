-- Training hours per employee: training hours completed in the month divided by the month's headcount (staff hired on or before the month's last day and not left before its first day).
WITH monthly_hours AS (
  SELECT
    h.period,
    sum(h.training_hours) AS total_hours
  FROM (
    SELECT
      CAST(date_trunc('month', tr.completed_on) AS DATE) AS period,
      CAST(tr.hours AS DOUBLE) AS training_hours
    FROM training tr
  ) h
  GROUP BY h.period
),
headcount AS (
  SELECT
    e.period,
    sum(e.employed) AS employees
  FROM (
    SELECT
      m.period AS period,
      CASE
        WHEN s.hired_on < m.period + INTERVAL '1 month'
         AND (s.left_on IS NULL OR s.left_on >= m.period)
        THEN 1 ELSE 0
      END AS employed
    FROM monthly_hours m
    CROSS JOIN staff s
  ) e
  GROUP BY e.period
)
SELECT
  m.period AS period,
  CAST(m.total_hours AS DOUBLE) AS numerator,
  CAST(c.employees AS DOUBLE) AS denominator
FROM monthly_hours m
JOIN headcount c ON c.period = m.period
ORDER BY m.period
