-- Customer satisfaction: average satisfaction score (1..5) of support tickets opened in the month; tickets without a score are ignored.
SELECT
  t.period,
  avg(t.score) AS value
FROM (
  SELECT
    CAST(date_trunc('month', opened_at) AS DATE) AS period,
    CAST(satisfaction AS DOUBLE) AS score
  FROM tickets
  WHERE satisfaction IS NOT NULL
) t
GROUP BY t.period
ORDER BY t.period
