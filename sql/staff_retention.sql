-- Staff retention (quarterly): share of the staff employed at the start of the quarter who have not left by the end of the quarter.
-- Quarters come from the training data and only quarters lying completely inside its date range are reported.
WITH bounds AS (
  SELECT
    min(completed_on) AS data_start,
    max(completed_on) AS data_end
  FROM training
),
quarters AS (
  SELECT DISTINCT
    CAST(date_trunc('quarter', completed_on) AS DATE) AS period
  FROM training
),
complete_quarters AS (
  SELECT
    q.period AS period,
    CAST(q.period + INTERVAL '3 months' AS DATE) AS next_period
  FROM quarters q
  CROSS JOIN bounds b
  WHERE q.period >= b.data_start
    AND q.period + INTERVAL '3 months' <= b.data_end + INTERVAL '1 day'
),
flags AS (
  SELECT
    q.period AS period,
    CASE
      WHEN s.hired_on <= q.period AND (s.left_on IS NULL OR s.left_on >= q.period)
      THEN 1 ELSE 0
    END AS at_start,
    CASE
      WHEN s.hired_on <= q.period AND (s.left_on IS NULL OR s.left_on >= q.next_period)
      THEN 1 ELSE 0
    END AS retained
  FROM complete_quarters q
  CROSS JOIN staff s
)
SELECT
  f.period,
  CAST(sum(f.retained) AS DOUBLE) / CAST(sum(f.at_start) AS DOUBLE) AS value
FROM flags f
GROUP BY f.period
ORDER BY f.period
